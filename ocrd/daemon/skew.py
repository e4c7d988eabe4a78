"""Says once per file that its mtime lies in the future, instead of on every pass."""

from __future__ import annotations

from collections.abc import Container, Iterable

from ocrd.base import log
from ocrd.fs.inventory import display
from ocrd.rules.decision import Decision


class FutureMtimes:
    """The files reported with an mtime in the future, each with the mtime it had then.

    Such a file settles from its ctime instead (``retention.changed_at``), so rules still apply;
    the warning is for the operator, whose clock or whose copy tool is off. It is repeated only
    when the file gets another future mtime. An entry is dropped as soon as a plan sees the
    file's mtime in the past, and by ``keep_only`` when the file is gone, so the set never holds
    more than the files that currently have a future mtime."""

    def __init__(self) -> None:
        self._seen: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, decisions: Iterable[Decision], now: float) -> None:
        seen = self._seen
        for d in decisions:
            e = d.entry
            if e.mtime > now and not e.is_link:
                if seen.get(e.path) != e.mtime:
                    seen[e.path] = e.mtime
                    log.get().warning(
                        "future_timestamp",
                        path=display(e.path),
                        mtime=e.mtime,
                        ahead_s=round(e.mtime - now, 1),
                        detail="settling counts from the file's ctime instead",
                    )
            elif seen and e.path in seen:
                del seen[e.path]

    def keep_only(self, present: Container[bytes]) -> None:
        """Forget the files not in ``present`` (the index after a full scan)."""
        self._seen = {p: m for p, m in self._seen.items() if p in present}
