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

import contextlib
import errno
import fcntl
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from ocrd import log
from ocrd.clock import Clock, SystemClock
from ocrd.inventory import FileEntry

SCHEMA = 1
"""The layout of the state file this code writes (PRAGMA user_version). A file from a newer
ocrd is left as it is: this one runs from memory until restarted."""

NAME_MODE = 0o600
DIR_MODE = 0o700
OWN_NOTE_S = 5.0
"""How long a note of ocrd's own open waits for its event: the kernel queues the event during
the close itself, so it comes within milliseconds unless the queue overflowed (then it never
comes, and a note kept longer would eat someone's real use)."""
WRITE_TIMEOUT_S = 1.0  # how long a flush waits for a reader's lock before it tries next time

_FILE_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

_CREATE = """
CREATE TABLE uses (
    dev   INTEGER NOT NULL,
    ino   INTEGER NOT NULL,
    path  BLOB    NOT NULL,
    size  INTEGER NOT NULL,
    mtime REAL    NOT NULL,
    used  REAL    NOT NULL,
    PRIMARY KEY (dev, ino)
) WITHOUT ROWID
"""

Key = tuple[int, int]


class Row(NamedTuple):
    """A file seen used: where it was, its content stamp then, and when (Unix seconds)."""

    path: bytes
    size: int
    mtime: float
    used: float


class Unusable(Exception):
    """The state file cannot be used as it is; ``reason`` is the event's reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def default_path(env: Mapping[str, str] | None = None) -> Path:
    """``$STATE_DIRECTORY/state.db`` under systemd (``StateDirectory=ocrd``; the first if it
    names several), else ``$XDG_STATE_HOME/ocrd/state.db``, else
    ``~/.local/state/ocrd/state.db``. Relative values are ignored, as the XDG spec says."""
    env = os.environ if env is None else env
    first = env.get("STATE_DIRECTORY", "").split(":")[0]
    if os.path.isabs(first):
        return Path(first) / "state.db"
    xdg = env.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "ocrd" / "state.db"
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".local" / "state" / "ocrd" / "state.db"


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
                db, fd, rows = _open_writable(path)
            except Unusable as exc:
                if exc.reason == "corrupt" and attempt == 0:
                    aside = _move_aside(path)
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
            rows = _read_only(path)
        except Unusable as exc:
            store = cls(path, {}, None, None, clock, writable=False)
            store.problem = f"{exc.reason}: {exc.detail}"
            return store
        return cls(path, rows, None, None, clock, writable=False)

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

    def saw(self, rel: bytes, at: float) -> None:
        """The watch saw ``rel`` closed after use at wall time ``at``. O(1); never raises."""
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
                    return
                del self._own[rel]
            if at > self._pending.get(rel, at - 1):
                self._pending[rel] = at

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
            self._dirty.add(key)
            self._gone.discard(key)
            changed += 1
        self._write(timeout)
        return changed

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


# -- the file itself ---------------------------------------------------------------------------


def _safe_dir(fd: int, path: Path, *, owner: int | None) -> None:
    """The directory holding the state file: only its owner may add or swap names in it (else
    another user could plant a link or squat the name); for the daemon, that owner is it or
    root."""
    st = os.fstat(fd)
    if st.st_mode & 0o022:
        raise Unusable("unsafe", f"{path} is writable by other users than its owner")
    if owner is not None and st.st_uid not in (owner, 0):
        raise Unusable("unsafe", f"{path} belongs to uid {st.st_uid}, not to ocrd's user")


def _safe_file(fd: int, path: Path, *, owner: int | None) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise Unusable("unsafe", f"{path} is not a regular file")
    if st.st_mode & 0o022:
        raise Unusable("unsafe", f"{path} is writable by other users than its owner")
    if owner is not None and st.st_uid != owner:
        raise Unusable("unsafe", f"{path} belongs to uid {st.st_uid}, not to ocrd's user")


def _make_dirs(directory: Path) -> None:
    """Make the missing directories above the state file, private to this user."""
    missing = []
    here = directory
    while not os.path.lexists(here) and here != here.parent:
        missing.append(here)
        here = here.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, DIR_MODE)


def _open_dir(directory: Path, *, create: bool) -> int:
    if create:
        try:
            _make_dirs(directory)
        except OSError as exc:
            raise Unusable("unwritable", f"cannot make {directory}: {exc.strerror}") from exc
    try:
        return os.open(directory, _DIR_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise Unusable("unreadable", f"cannot open {directory}: {exc.strerror}") from exc


def _connect(dir_fd: int, name: str, *, read_only: bool) -> sqlite3.Connection:
    """SQLite on ``name`` inside the directory ``dir_fd`` (checked above), through /proc so
    that a directory swapped in meanwhile is not followed; its journal goes beside it."""
    where = f"/proc/self/fd/{dir_fd}/{name}"
    if read_only:
        db = sqlite3.connect(f"file:{where}?mode=ro", uri=True, isolation_level=None)
    else:
        db = sqlite3.connect(where, isolation_level=None)
    # A state file is data, never code: no function of ours runs from its schema.
    db.execute("PRAGMA trusted_schema = OFF")
    return db


def _load(db: sqlite3.Connection, path: Path, *, create: bool) -> dict[Key, Row]:
    try:
        if create:
            db.execute("PRAGMA synchronous = NORMAL")  # a lost batch on power loss is harmless
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA:
            raise Unusable(
                "newer_version",
                f"{path} was written by a newer ocrd (schema {version}, this one knows "
                f"{SCHEMA}): left as it is",
            )
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version == 0 and not tables and create:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(_CREATE)
                db.execute(f"PRAGMA user_version = {SCHEMA}")
        elif version != SCHEMA or "uses" not in tables:
            raise Unusable("corrupt", f"{path} is not an ocrd state file")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise Unusable("corrupt", f"{path} failed SQLite's quick_check")
        return {
            (dev, ino): Row(bytes(p), size, mtime, used)
            for dev, ino, p, size, mtime, used in db.execute(
                "SELECT dev, ino, path, size, mtime, used FROM uses"
            )
        }
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise Unusable("locked", f"{path}: {exc}") from exc
        raise Unusable("corrupt", f"{path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise Unusable("corrupt", f"{path}: {exc}") from exc


def _open_writable(path: Path) -> tuple[sqlite3.Connection, int, dict[Key, Row]]:
    uid = os.geteuid()
    dir_fd = _open_dir(path.parent, create=True)
    name = path.name
    fd: int | None = None
    db: sqlite3.Connection | None = None
    try:
        _safe_dir(dir_fd, path.parent, owner=uid)
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
            created = False
        except FileNotFoundError:
            fd = os.open(name, _FILE_FLAGS | os.O_CREAT | os.O_EXCL, NAME_MODE, dir_fd=dir_fd)
            created = True
        _safe_file(fd, path, owner=uid)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Unusable("locked", f"{path} is in use by another ocrd run") from exc
        db = _connect(dir_fd, name, read_only=False)
        rows = _load(db, path, create=True)
        if created:
            log.get().info("state_created", path=str(path))
        return db, fd, rows
    except OSError as exc:
        if db is not None:
            db.close()
        if fd is not None:
            os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise Unusable("unsafe", f"{path} is a symbolic link or not a file") from exc
        raise Unusable("unreadable", f"{path}: {exc.strerror}") from exc
    except BaseException:
        if db is not None:
            db.close()
        if fd is not None:
            os.close(fd)
        raise
    finally:
        os.close(dir_fd)


def _read_only(path: Path) -> dict[Key, Row]:
    try:
        dir_fd = _open_dir(path.parent, create=False)
    except FileNotFoundError:
        raise Unusable("missing", f"{path} does not exist (yet)") from None
    try:
        _safe_dir(dir_fd, path.parent, owner=None)
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError:
            raise Unusable("missing", f"{path} does not exist (yet)") from None
        except OSError as exc:
            raise Unusable("unsafe", f"{path}: {exc.strerror}") from exc
        try:
            _safe_file(fd, path, owner=None)
        finally:
            os.close(fd)
        db = _connect(dir_fd, path.name, read_only=True)
        try:
            db.execute(f"PRAGMA busy_timeout = {int(WRITE_TIMEOUT_S * 1000)}")
            return _load(db, path, create=False)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise Unusable("unreadable", f"{path}: {exc}") from exc
    finally:
        os.close(dir_fd)


def _move_aside(path: Path) -> Path | None:
    """Rename a corrupt state file to ``<name>.corrupt`` (replacing an older one) beside it."""
    aside = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, aside)
    except OSError as exc:
        log.get().warning("state_unusable", path=str(path), reason="corrupt", error=exc.strerror)
        return None
    for suffix in ("-journal", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.unlink(path.with_name(path.name + suffix))
    return aside
