"""When a file arrived in model_dir: what the filesystem shows, and what this process saw.

A file's own ctime is the kernel's record of its last status change: creating, renaming,
linking or chmod-ing it sets it to the current time, and no tool can set it back (``tar -x``,
``cp -p``, ``rsync -t`` and ``touch -d`` set mtime and atime only). It is the file's arrival,
unless the file came inside a directory: ``mv`` of a directory sets the ctime of that directory
only, not of the files in it. So each directory strictly below model_dir adds its own evidence:

- its ctime, if that is later than its mtime. Adding or removing an entry sets a directory's
  mtime and ctime to the same instant; a ctime later than the mtime means something else
  happened to the directory after its last change of contents: it was renamed (moved in),
  chmod-ed, chown-ed or had an extended attribute written. Each of these counts as an arrival
  of everything under it (the safe side: such files wait longer). This sign is fleeting: the
  next change of the directory's contents (a download tool's marker written into it straight
  after the move, a file ocrd deletes) makes mtime equal ctime again.
- its sighting: the moment ``ocrd run`` saw the directory arrive. That is a fact this process
  keeps (``Arrivals``), not one it derives again from the disk: once recorded, it stays
  whatever changes inside the directory and whatever rules are in force, until the directory
  is gone. A reload therefore never makes a file due earlier than the time it has really been
  in model_dir.

A file's arrival is the latest of its own ctime, its own sighting (see ``Arrivals.saw_file``)
and the evidence of every directory above it; ``entry.ctime`` is raised to it, so settle (for
every rule) and ``age_from = "arrival"`` both count from it. model_dir's own ctime is not
evidence (it changes with every file added at the top).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Container, Iterable, Mapping

from ocrd.fs.inventory import FileEntry

# A file seen arriving whose own ctime is older than the sighting by more than this does not
# vouch for its arrival (a file server's clock behind ours): its sighting is kept. Below it,
# the ctime is the kernel's exact record and the sighting would only repeat it.
CTIME_SLACK_S = 60.0


class Arrivals:
    """The one owner of what this process saw arrive under one model_dir: each directory seen
    arriving (relative path → wall time), and each file seen arriving whose own ctime does not
    say so. Sightings are kept regardless of the rules in force (which a reload may change at
    any time) and dropped only when their directory or file is gone: one record per such
    directory or file present, so memory follows the tree, not the churn. No limit by age: a
    valid ``max_age`` may be up to 100 years, so such a limit would bound nothing.

    In memory only: a restart starts with none, and the files of a directory moved in and
    changed before it count from their own ctimes (docs/arrivals.md). A persistent store
    belongs behind this class."""

    def __init__(self, model_dir: os.PathLike[str] | str | bytes) -> None:
        self.root = os.fsencode(model_dir)
        self.dirs: dict[bytes, float] = {}
        self.files: dict[bytes, float] = {}
        # model_dir's (device, inode) at the last full scan adopted: a later full scan of the
        # same directory compares what it finds with the mirror's directories of then.
        self.pictured: tuple[int, int] | None = None

    def saw(self, rel_dir: bytes, at: float) -> None:
        """The directory ``rel_dir`` appeared under model_dir (moved in, or made) and was seen
        at wall time ``at``, which is no earlier than its arrival."""
        if rel_dir:
            self.dirs[rel_dir] = max(at, self.dirs.get(rel_dir, at))

    def saw_file(self, rel: bytes, st: os.stat_result, at: float) -> None:
        """The file ``rel`` (its stat ``st``) was seen arriving at ``at``. Remembered only if
        its own ctime is older than that by more than CTIME_SLACK_S."""
        if st.st_ctime < at - CTIME_SLACK_S:
            self.files[rel] = max(at, self.files.get(rel, at))

    def found(
        self,
        dirs: Iterable[tuple[bytes, int]],
        known: Mapping[bytes, int],
        at: float,
        holding: Iterable[bytes] | None = None,
    ) -> None:
        """A walk met ``dirs`` (path, inode) at ``at``: each one not in ``known`` (what the
        mirror held before), or there under another inode, arrived since.

        With ``holding`` (the paths of the files the walk found), only the topmost of the new
        directories that have a file below them are remembered: their sighting dates all
        below, and whatever comes into an empty directory later arrives with a ctime of its
        own (create, rename and link all set it) or is a directory seen arriving in turn, so
        a storm of mkdirs costs no memory here. Without it (a full scan, one directory at a
        time), every new directory is."""
        new = {rel for rel, ino in dirs if rel and known.get(rel) != ino}
        if holding is None:
            for rel in new:
                self.saw(rel, at)
            return
        if not new:
            return
        tops = {rel for rel in new if rel.rpartition(b"/")[0] not in new}
        looked: set[bytes] = set()
        for path in holding:
            d = path.rpartition(b"/")[0]
            while d and d not in looked:
                looked.add(d)
                if d in tops:
                    self.saw(d, at)
                    break
                d = d.rpartition(b"/")[0]

    def forget(self, rel_dir: bytes) -> None:
        """``rel_dir`` and everything under it is gone."""
        prefix = rel_dir + b"/"
        for seen in (self.dirs, self.files):
            if seen:
                for p in [p for p in seen if p == rel_dir or p.startswith(prefix)]:
                    del seen[p]

    def keep_only(
        self, dirs: Container[bytes], files: Container[bytes], root: tuple[int, int] | None
    ) -> None:
        """After a full scan of model_dir ``root``: forget the sightings of directories not in
        ``dirs`` and of files not in ``files``, which are gone."""
        if self.dirs:
            self.dirs = {p: t for p, t in self.dirs.items() if p in dirs}
        if self.files:
            self.files = {p: t for p, t in self.files.items() if p in files}
        self.pictured = root

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
        own = self.dirs.get(rel_dir, float("-inf"))
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
        """``entries`` with each ctime raised to its arrival. ``cache`` may be shared across
        calls of one pass (one stat per directory, not per file)."""
        cache = {} if cache is None else cache
        files = self.files
        floor_of = self.floor
        out: list[FileEntry] = []
        append = out.append
        # A walk hands on a directory's files together: the floor is looked up again only
        # when the directory changes (this runs once per file of every pass).
        here: bytes | None = None
        floor = float("-inf")
        for e in entries:
            rel_dir = e.path.rpartition(b"/")[0]
            if rel_dir != here:
                here, floor = rel_dir, floor_of(rel_dir, cache)
            at = max(floor, files.get(e.path, floor)) if files else floor
            append(e._replace(ctime=at) if at > e.ctime else e)
        return out
