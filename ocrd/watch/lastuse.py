"""When each model file was last used by another process: kept in memory, written in batches to
a small SQLite file so it survives restarts, and never a reason to crash (docs/budget.md).

A file is known by its identity (device, inode) together with its content stamp (size, mtime):
a rename keeps all three, so it keeps its history; a new file at an old path has another inode,
and an inode the filesystem hands out again comes with other contents, so neither inherits. A
file never seen used has no record here: the caller takes its arrival as its last use.

Use is what the watch reports as a file closed after reading (docs/budget.md says why the close
and not the open). ocrd's own opens (the lease check before a deletion) come back as the same
events: ``own()`` notes each just before it is made, and ``saw()`` drops one event per note.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from ocrd.base import log
from ocrd.base.clock import Clock, SystemClock
from ocrd.fs.inventory import FileEntry, display
from ocrd.fs.statefile import (
    WRITE_TIMEOUT_S,
    Key,
    Row,
    Unusable,
    move_aside,
    open_writable,
    read_only,
    take_looks,
)

OWN_NOTE_S = 5.0
"""How long a note of ocrd's own open waits for its event: the kernel queues the event during
the close itself, so it comes within milliseconds unless the queue overflowed (then it never
comes, and a note kept longer would eat someone's real use)."""


class LastUse:
    """The one owner of recorded use. ``saw()`` and ``own()`` may be called from the watch's
    thread; everything else belongs to the main loop."""

    def __init__(
        self,
        path: Path,
        rows: dict[Key, Row],
        db: sqlite3.Connection | None,
        lock_fd: int | None,
        clock: Clock,
        *,
        writable: bool,
    ) -> None:
        self.path = path
        self.rows = rows
        self._db = db
        self._lock_fd = lock_fd
        self._clock = clock
        self.writable = writable
        self._lock = threading.Lock()
        self._pending: dict[bytes, float] = {}
        self._own: dict[bytes, list[float]] = {}
        self._dirty: set[Key] = set()
        self._gone: set[Key] = set()
        self._failing = False
        self.problem: str | None = None  # why the file is not used, for ``ocrd list``

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, clock: Clock | None = None) -> LastUse:
        """The daemon's store at ``path``, created if missing. Never raises: a state file that
        is unsafe, locked, corrupt or from a newer ocrd is a ``state_unusable`` event, and this
        run records use in memory (a corrupt one is moved aside and started afresh on disk)."""
        clock = clock or SystemClock()
        for attempt in range(2):
            try:
                db, fd, rows = open_writable(path)
            except Unusable as exc:
                if exc.reason == "corrupt" and attempt == 0:
                    aside = move_aside(path)
                    if aside is not None:
                        _say(path, exc, f"moved aside to {aside}; starting afresh")
                        continue
                _say(path, exc, "last use is kept in memory until ocrd restarts")
                store = cls(path, {}, None, None, clock, writable=True)
                store.problem = f"{exc.reason}: {exc.detail}"
                return store
            return cls(path, rows, db, fd, clock, writable=True)
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def read(cls, path: Path, *, clock: Clock | None = None) -> LastUse:
        """What ``ocrd list`` reads: the rows as the daemon last wrote them, read-only, never
        created, never locked against the daemon. An absent or unusable file reads as empty,
        with ``problem`` saying why."""
        clock = clock or SystemClock()
        try:
            rows = read_only(path)
        except Unusable as exc:
            store = cls(path, {}, None, None, clock, writable=False)
            store.problem = f"{exc.reason}: {exc.detail}"
            return store
        return cls(path, rows, None, None, clock, writable=False)

    @classmethod
    def empty(cls, path: Path, *, clock: Clock | None = None) -> LastUse:
        """No recorded use at all, and no file read: every file's arrival stands for it."""
        return cls(path, {}, None, None, clock or SystemClock(), writable=False)

    @property
    def on_disk(self) -> bool:
        """Whether recorded use is being written to the state file."""
        return self._db is not None

    def __len__(self) -> int:
        return len(self.rows)

    def close(self) -> None:
        db, self._db = self._db, None
        fd, self._lock_fd = self._lock_fd, None
        if db is not None:
            db.close()
        if fd is not None:
            os.close(fd)  # lets go of the flock

    # -- recording (any thread) --------------------------------------------------------------

    def own(self, rel: bytes) -> None:
        """ocrd itself is about to open and close ``rel``: drop the next use event for it."""
        deadline = self._clock.monotonic() + OWN_NOTE_S
        with self._lock:
            self._own.setdefault(rel, []).append(deadline)

    @property
    def pending(self) -> bool:
        """Whether uses wait for the next flush."""
        return bool(self._pending)

    def saw(self, rel: bytes, at: float) -> bool:
        """The watch saw ``rel`` closed after use at wall time ``at``. O(1); never raises.
        True when it is the first use waiting for the next flush."""
        with self._lock:
            notes = self._own.get(rel)
            if notes:
                now = self._clock.monotonic()
                while notes and notes[0] < now:
                    notes.pop(0)
                if notes:
                    notes.pop(0)
                    if not notes:
                        del self._own[rel]
                    return False
                del self._own[rel]
            first = not self._pending
            if at > self._pending.get(rel, at - 1):
                self._pending[rel] = at
            return first

    # -- the main loop -----------------------------------------------------------------------

    def flush(
        self,
        identify: Callable[[bytes], FileEntry | None],
        *,
        timeout: float = WRITE_TIMEOUT_S,
    ) -> int:
        """Take the uses seen since the last flush, match each path to the file there now
        (``identify``: the mirror's entry, or None when it is gone), and write them and any
        forgotten files in one transaction. Returns how many files' last use changed. A write
        that fails (a reader's lock, a full disk) keeps everything for the next flush."""
        if not self.writable:
            raise RuntimeError("a read-only LastUse records nothing")
        with self._lock:
            pending, self._pending = self._pending, {}
        if self._db is not None and pending:
            self._discount_looks(pending, self._db)
        with self._lock:
            now = self._clock.monotonic()
            for rel in [r for r, notes in self._own.items() if notes[-1] < now]:
                del self._own[rel]
        changed = 0
        for rel, at in pending.items():
            entry = identify(rel)
            if entry is None or entry.is_link:
                continue
            key = (entry.dev, entry.ino)
            row = self.rows.get(key)
            if row is not None and _same(row, entry) and row.used >= at:
                continue
            self.rows[key] = Row(entry.path, entry.size, entry.mtime, at)
            log.get().debug("use_recorded", path=display(entry.path), at=at)
            self._dirty.add(key)
            self._gone.discard(key)
            changed += 1
        self._write(timeout)
        return changed

    def _discount_looks(self, pending: dict[bytes, float], db: sqlite3.Connection) -> None:
        """Drop each use that an ``ocrd list`` noted as its own look just before."""
        try:
            looks = take_looks(db, self._clock.time(), pending)
        except sqlite3.Error:
            return  # a reader's lock: the looks are taken at the next flush
        for rel in looks:
            del pending[rel]

    def last_used(self, entry: FileEntry) -> float | None:
        """When ``entry`` was last seen used; None if never (its arrival stands for it)."""
        row = self.rows.get((entry.dev, entry.ino))
        if row is None or not _same(row, entry):
            return None
        return row.used

    def forget(self, entries: Iterable[FileEntry]) -> None:
        """These files are gone (ocrd deleted them): their rows go at the next flush."""
        for e in entries:
            self._drop((e.dev, e.ino))

    def prune(self, present: Iterable[Key]) -> int:
        """Drop every row whose file a complete scan did not find; returns how many."""
        keep = set(present)
        gone = [k for k in self.rows if k not in keep]
        for key in gone:
            self._drop(key)
        return len(gone)

    def _drop(self, key: Key) -> None:
        if self.rows.pop(key, None) is not None:
            self._dirty.discard(key)
            self._gone.add(key)

    def _write(self, timeout: float) -> None:
        db = self._db
        if db is None or not (self._dirty or self._gone):
            return
        rows = [(k[0], k[1], *self.rows[k]) for k in self._dirty if k in self.rows]
        gone = list(self._gone)
        try:
            db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT OR REPLACE INTO uses VALUES (?, ?, ?, ?, ?, ?)", rows)
                db.executemany("DELETE FROM uses WHERE dev = ? AND ino = ?", gone)
        except sqlite3.Error as exc:
            if not self._failing:
                log.get().warning(
                    "state_write_failed",
                    path=str(self.path),
                    error=str(exc)[:300],
                    action="kept in memory; written at the next flush",
                )
            self._failing = True
            return
        if self._failing:
            log.get().info("state_write_recovered", path=str(self.path))
        self._failing = False
        self._dirty.clear()
        self._gone.clear()


def _same(row: Row, entry: FileEntry) -> bool:
    return row.size == entry.size and row.mtime == entry.mtime


def _say(path: Path, exc: Unusable, action: str) -> None:
    log.get().warning(
        "state_unusable", path=str(path), reason=exc.reason, detail=exc.detail, action=action
    )
