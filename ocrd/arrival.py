"""When a file arrived in model_dir, as far as the filesystem (and this process) can tell.

A file's own ctime is the kernel's record of its last status change: creating, renaming,
linking or chmod-ing it sets it to the current time, and no tool can set it back (``tar -x``,
``cp -p``, ``rsync -t`` and ``touch -d`` set mtime and atime only). It is the file's arrival,
unless the file came inside a directory: ``mv`` of a directory sets the ctime of that directory
only, not of the files in it. So each directory strictly below model_dir adds its own evidence:

- its ctime, if that is later than its mtime. Adding or removing an entry sets a directory's
  mtime and ctime to the same instant; a ctime later than the mtime means something else
  happened to the directory after its last change of contents: it was renamed (moved in),
  chmod-ed, chown-ed or had an extended attribute written. Each of these counts as an arrival
  of everything under it (the safe side: such files wait longer).
- the moment this process saw it arrive (a directory moved in while ``ocrd run`` watched,
  recognised by the same ctime-after-mtime sign at that moment), kept in memory: a later
  change of its contents (a file added, or deleted by ocrd) makes mtime equal ctime again and
  hides the rename from the first rule.

A file's arrival is the latest of its own ctime and the evidence of every directory above it;
``entry.ctime`` is raised to it, so settle and ``age_from = "arrival"`` both count from it.
model_dir's own ctime is not evidence (it changes with every file added at the top).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Container, Iterable

from ocrd.inventory import FileEntry


class Arrivals:
    """Directory evidence for one model_dir. ``seen`` holds the directories this process saw
    arrive (relative path → wall time); ``forget``/``keep_only`` drop those that are gone."""

    def __init__(self, model_dir: os.PathLike[str] | str | bytes) -> None:
        self.root = os.fsencode(model_dir)
        self.seen: dict[bytes, float] = {}

    def saw(self, rel_dir: bytes, st: os.stat_result, at: float) -> None:
        """The directory ``rel_dir`` (its stat ``st``) appeared under model_dir at wall time
        ``at``. Remembered only if it shows a status change after its contents' last change
        (moved in, as opposed to made here by mkdir, whose files are new anyway): a storm of
        mkdirs costs no memory here."""
        if rel_dir and st.st_ctime > st.st_mtime:
            self.seen[rel_dir] = max(at, self.seen.get(rel_dir, at))

    def forget(self, rel_dir: bytes) -> None:
        """``rel_dir`` and everything under it is gone. Costs nothing for a directory not seen
        arriving; sightings below one that was are dropped with it (others at the next scan)."""
        if rel_dir in self.seen:
            prefix = rel_dir + b"/"
            for p in [p for p in self.seen if p == rel_dir or p.startswith(prefix)]:
                del self.seen[p]

    def keep_only(self, dirs: Container[bytes], before: float) -> None:
        """After a full scan: forget sightings of directories not in ``dirs``, and those from
        before ``before`` (now less the longest max_age and settle), which no rule can be held
        back by any more."""
        if self.seen:
            self.seen = {p: t for p, t in self.seen.items() if p in dirs and t >= before}

    def floor(self, rel_dir: bytes, cache: dict[bytes, float]) -> float:
        """The latest directory evidence for files directly in ``rel_dir`` (b"" = model_dir)."""
        # Iterative, not recursive: a tree of any depth is fine.
        chain: list[bytes] = []
        found = float("-inf")
        while rel_dir:
            cached = cache.get(rel_dir)
            if cached is not None:
                found = cached
                break
            chain.append(rel_dir)
            rel_dir = rel_dir.rpartition(b"/")[0]
        for d in reversed(chain):
            found = max(found, self._own(d))
            cache[d] = found
        return found

    def _own(self, rel_dir: bytes) -> float:
        own = self.seen.get(rel_dir, float("-inf"))
        try:
            st = os.stat(self.root + b"/" + rel_dir, follow_symlinks=False)
        except OSError:
            # Gone, unreadable, or deeper than PATH_MAX: what the daemon saw, and the file's
            # own ctime, are what is left.
            return own
        if stat.S_ISDIR(st.st_mode) and st.st_ctime > st.st_mtime:
            return max(own, st.st_ctime)
        return own

    def apply(
        self, entries: Iterable[FileEntry], cache: dict[bytes, float] | None = None
    ) -> list[FileEntry]:
        """``entries`` with each ctime raised to its directories' evidence. ``cache`` may be
        shared across calls of one pass (one stat per directory, not per file)."""
        cache = {} if cache is None else cache
        out = []
        for e in entries:
            floor = self.floor(e.path.rpartition(b"/")[0], cache)
            out.append(e._replace(ctime=floor) if floor > e.ctime else e)
        return out
