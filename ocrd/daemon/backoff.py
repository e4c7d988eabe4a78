"""When a deletion that was skipped or failed is tried again: later and later, per file.

A file some process holds, an immutable file, a directory ocrd may not write: trying again
every minute forever costs a /proc walk or an engine cycle each time, and a log line. The
wait doubles from ``first`` up to ``cap`` with each attempt on the same version of the file;
a file that changed (another inode, size or mtime) starts again at ``first``. Pure arithmetic
over the times it is given.
"""

from __future__ import annotations

from collections.abc import Callable

Version = tuple[int, int, float]  # (inode, size, mtime): what makes it "the same file"

FIRST_S = 60.0
CAP_S = 3600.0


class Backoff:
    def __init__(self, first: float = FIRST_S, cap: float = CAP_S) -> None:
        self.first = first
        self.cap = cap
        self._state: dict[bytes, tuple[int, Version, float]] = {}  # attempts, version, next

    def __len__(self) -> int:
        return len(self._state)

    def failed(self, path: bytes, version: Version, now: float) -> tuple[int, float]:
        """One more attempt did not delete ``path``: (which attempt it was, wait before the
        next)."""
        attempts, was, _ = self._state.get(path, (0, version, 0.0))
        attempts = attempts + 1 if was == version else 1
        wait = min(self.first * 2 ** (attempts - 1), self.cap)
        self._state[path] = (attempts, version, now + wait)
        return attempts, wait

    def waiting_until(self, path: bytes, version: Version, now: float) -> float | None:
        """When the next attempt on this version of ``path`` is due, if that is still ahead."""
        state = self._state.get(path)
        if state is None or state[1] != version or state[2] <= now:
            return None
        return state[2]

    def lift(self, path: bytes) -> None:
        """Something happened to the file (an event): its next attempt is due now, though it
        keeps its count."""
        state = self._state.get(path)
        if state is not None:
            self._state[path] = (state[0], state[1], 0.0)

    def forget(self, path: bytes) -> None:
        self._state.pop(path, None)

    def clear(self) -> None:
        self._state.clear()

    def keep_only(self, present: Callable[[bytes], bool]) -> None:
        """Drop what is kept for paths that are gone: nothing is kept for a path that is gone."""
        self._state = {p: s for p, s in self._state.items() if present(p)}

    def paths(self) -> set[bytes]:
        return set(self._state)
