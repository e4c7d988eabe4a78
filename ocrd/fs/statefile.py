"""The state file: where it lives, opened only where no other user can swap or plant it, locked
against a second ``ocrd run``, and every way it can be unusable named (docs/budget.md)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from ocrd.base import log

SCHEMA = 1
"""The layout of the state file this code writes (PRAGMA user_version). A file from a newer
ocrd is left as it is: this one runs from memory until restarted."""

NAME_MODE = 0o600
DIR_MODE = 0o700
WRITE_TIMEOUT_S = 1.0  # how long a write waits for a reader's lock before it tries next time

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
# ``ocrd list`` notes here each model file it is about to open for a lease (where /proc cannot
# tell who holds it): the daemon drops the close that follows, as it does for its own opens.
_LOOKS = "CREATE TABLE IF NOT EXISTS looks (path BLOB NOT NULL, at REAL NOT NULL)"
LOOK_S = 5.0  # a use seen this long after a look noted for its file is that look's

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


def _connect(
    dir_fd: int, name: str, *, read_only: bool, existing: bool = False
) -> sqlite3.Connection:
    """SQLite on ``name`` inside the directory ``dir_fd`` (checked above), through /proc so
    that a directory swapped in meanwhile is not followed; its journal goes beside it."""
    where = f"/proc/self/fd/{dir_fd}/{name}"
    if read_only or existing:
        mode = "ro" if read_only else "rw"
        db = sqlite3.connect(f"file:{where}?mode={mode}", uri=True, isolation_level=None)
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
                db.execute(_LOOKS)
                db.execute(f"PRAGMA user_version = {SCHEMA}")
        elif version != SCHEMA or "uses" not in tables:
            raise Unusable("corrupt", f"{path} is not an ocrd state file")
        elif create and "looks" not in tables:
            db.execute(_LOOKS)
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


def open_writable(path: Path) -> tuple[sqlite3.Connection, int, dict[Key, Row]]:
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


def read_only(path: Path) -> dict[Key, Row]:
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


class Looks:
    """``ocrd list``'s notes to the daemon: "the next close of this file is my look, no use".
    Written only to a state file that passes the checks a reader makes, by a user who may
    write it (root, or ocrd's own user); any failure ends the noting quietly: the look then
    counts as a use, as it would without this."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._off = False

    def note(self, rel: bytes) -> None:
        if self._off:
            return
        try:
            if self._db is None:
                self._db = _open_existing(self.path)
            with self._db:
                self._db.execute("INSERT INTO looks VALUES (?, ?)", (rel, time.time()))
        except (sqlite3.Error, OSError, Unusable):
            self._off = True
            self.close()

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


def take_looks(db: sqlite3.Connection, now: float, uses: dict[bytes, float]) -> set[bytes]:
    """The paths among ``uses`` (path → when used) whose use is a look an ``ocrd list`` noted
    at most LOOK_S before it; those looks are taken out of the file, and so is every look
    older than a minute (the daemon's)."""
    with db:
        rows = db.execute("SELECT rowid, path, at FROM looks").fetchall()
        taken, spent = set(), []
        for rowid, path, at in rows:
            used = uses.get(bytes(path))
            if used is not None and at <= used <= at + LOOK_S:
                taken.add(bytes(path))  # the closes of several looks come as one use
                spent.append((rowid,))
            elif at < now - 60.0:
                spent.append((rowid,))
        db.executemany("DELETE FROM looks WHERE rowid = ?", spent)
    return taken


def _open_existing(path: Path) -> sqlite3.Connection:
    dir_fd = _open_dir(path.parent, create=False)
    try:
        _safe_dir(dir_fd, path.parent, owner=None)
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        try:
            _safe_file(fd, path, owner=None)
        finally:
            os.close(fd)
        db = _connect(dir_fd, path.name, read_only=False, existing=True)
        db.execute(f"PRAGMA busy_timeout = {int(WRITE_TIMEOUT_S * 1000)}")
        return db
    finally:
        os.close(dir_fd)


def move_aside(path: Path) -> Path | None:
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
