"""The trash: deleted model files kept for a grace period in ``.ocrd-trash/`` at the top of
model_dir, listed, restored and purged, every step through directory fds and safe to kill.

The format on disk (docs/trash.md)::

    .ocrd-trash/                      0700, ocrd's own, on model_dir's filesystem
      20261206T023600.123456Z-<16 hex>/   one entry per deletion, named for its time
        entry.json                    the record: the path it had, rule, times, identity
        data                          the file itself, renamed here (inode, mode, owner, mtime)
      held/<id>.json                  a restored file held from every rule until a time

The file is three levels below model_dir: an engine that lists model_dir and one level of
subdirectories never sees it.

Crash safety rests on one rule: **an entry is a file in the trash exactly when its ``data``
exists.** The record is written before the file is renamed in, and removed only after the
file has left (restored or purged); renames are atomic, so a SIGKILL at any point leaves the
file either at its path, in an entry with its record, or purged, never two of these. An entry
without ``data`` is debris: ``ocrd.ops.purge.recover`` removes it (a purge killed after its
rename to a private name leaves that name, which it purges, lease-checked). Each entry is
worked on under ``flock`` of its directory, so ``ocrd restore`` beside a running daemon, or two
passes, never work on one entry at once, and a killed process's lock goes with it.

The neighbours may be hostile (a sticky 1777 model_dir): ``.ocrd-trash`` as a symlink, a file,
a directory someone else owns or others may write, or another filesystem mounted there makes
the trash unusable (``Unusable``, logged ``trash_unusable``); nothing is renamed into it, and a
deletion that needed it keeps the file. No link is followed at any step.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import json
import math
import os
import re
import secrets
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from ocrd.base.errors import OcrdError
from ocrd.fs import private
from ocrd.fs.inventory import display
from ocrd.fs.place import DIR_FLAGS, Place, identify, open_root

NAME = b".ocrd-trash"
DATA = b"data"
RECORD = b"entry.json"
HELD = b"held"
RULE = "trash"  # the rule a purge is decided by, in the deleter's outcomes
ENTRY = re.compile(rb"[0-9]{8}T[0-9]{6}\.[0-9]{6}Z-[0-9a-f]{16}")
HOLD = re.compile(rb"[0-9a-f]{16}\.json")
MAX_RECORD = 64 * 1024  # a record is a few hundred bytes; this bounds what a damaged one costs
FILE_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
FILE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FAULT_ENV = "OCRD_TRASH_FAULT"  # the tests' crash points: see fault


class Unusable(OcrdError):
    """``.ocrd-trash`` is there but not a directory ocrd may use; ``reason`` says what it is."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{os.fsdecode(NAME)}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Entry:
    """One file in the trash. ``path`` is where it was, relative to model_dir (None when its
    record could not be read: then ``deleted_at`` is when it was renamed in, its ctime)."""

    id: bytes
    path: bytes | None
    size: int
    rule: str | None
    deleted_at: float
    purge_at: float
    dev: int
    ino: int
    mtime: float
    nlink: int

    def due(self, now: float, grace: float) -> float:
        """When it is purged under ``grace`` now: as promised when it was trashed, or sooner
        if the grace has been shortened since (``grace = "0s"`` empties the trash)."""
        return min(self.purge_at, self.deleted_at + grace)

    def rel(self) -> bytes:
        """Where its file is now, relative to model_dir."""
        return NAME + b"/" + self.id + b"/" + DATA

    def as_json(self) -> dict[str, Any]:
        return {
            "path": None if self.path is None else display(self.path),
            "size": self.size,
            "rule": self.rule,
            "deleted_at": iso(self.deleted_at),
            "purge_at": iso(self.purge_at, up=True),
        }


class Usage(NamedTuple):
    bytes: int
    entries: int


class Freed(NamedTuple):
    """What a purge gave back: ``bytes`` (a file with another hard link gives none), the
    ``entries`` purged, and how many due entries were ``skipped`` (in use, changed)."""

    bytes: int
    entries: list[Entry]
    skipped: int


def names(dir_fd: int) -> list[bytes]:
    """The names in a directory, as the bytes they are (os.listdir of an fd gives str)."""
    return [os.fsencode(n) for n in os.listdir(dir_fd)]


def iso(t: float, *, up: bool = False) -> str:
    """ISO 8601 UTC to the second: ``2026-12-06T02:36:00Z``; ``up``: rounded up, for a time
    before which something does not happen (a purge, the end of a hold)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(t) if up else math.floor(t)))


def is_trash(rel: bytes) -> bool:
    """Whether ``rel`` (relative to model_dir) is the trash or inside it: never a model."""
    return rel == NAME or rel.startswith(NAME + b"/")


def fault(point: str) -> None:
    """A crash point for the tests: with ``OCRD_TRASH_FAULT=<point>`` in its environment the
    process kills itself with SIGKILL there, as an operator's ``kill -9`` or the OOM killer
    would at that instant (tests/test_trash.py)."""
    if os.environ.get(FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


# -- the trash directory ------------------------------------------------------------------------


def _root_fd(model_dir: Place | os.PathLike[str] | str | bytes | int) -> tuple[int, bool]:
    """An fd on model_dir, and whether it is ours to close."""
    if isinstance(model_dir, int):
        return model_dir, False
    if isinstance(model_dir, Place):
        return open_root(model_dir), True
    return open_root(os.path.realpath(os.fsencode(model_dir))), True


class Trash:
    """The trash of one model_dir, open as ``fd``. Made by ``open()``; a context manager."""

    def __init__(self, root_fd: int, fd: int, *, own_root: bool = False) -> None:
        self.root_fd = root_fd
        self.fd = fd
        self.own_root = own_root
        st = os.fstat(fd)
        self.uid, self.gid = st.st_uid, st.st_gid

    @classmethod
    def open(
        cls, model_dir: Place | os.PathLike[str] | str | bytes | int, *, create: bool
    ) -> Trash | None:
        """The trash of ``model_dir`` (an fd on it is not closed), made if absent and
        ``create``; None if absent otherwise. Unusable if something else is there."""
        root, own = _root_fd(model_dir)
        try:
            fd = _open_trash(root, create=create)
        except BaseException:
            if own:
                os.close(root)
            raise
        if fd is None:
            if own:
                os.close(root)
            return None
        return cls(root, fd, own_root=own)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.own_root and self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def __enter__(self) -> Trash:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every file in the trash, oldest first, read from the disk. Debris (an entry without
        its file) is not one; names ocrd does not make are left alone."""
        found: list[Entry] = []
        for name in names(self.fd):
            if ENTRY.fullmatch(name) is None:
                continue
            try:
                efd = os.open(name, DIR_FLAGS, dir_fd=self.fd)
            except OSError:
                continue
            try:
                entry = read_entry(name, efd)
            finally:
                os.close(efd)
            if entry is not None:
                found.append(entry)
        found.sort(key=lambda e: (e.deleted_at, e.id))
        return found

    def usage(self) -> Usage:
        entries = self.entries()
        return Usage(sum(e.size for e in entries), len(entries))

    # -- putting a file in ----------------------------------------------------------------------

    def put(
        self,
        parent: int,
        name: bytes,
        rel: bytes,
        checked: os.stat_result,
        *,
        rule: str | None,
        now: float,
        grace: float,
    ) -> Entry:
        """Move the checked file ``name`` of directory ``parent`` (``rel`` from model_dir)
        into a new entry, as the deletion of it. ``checked`` is its identity as the deleter
        verified it; if the file renamed in is not that one (another was renamed over the
        name meanwhile), it is put back and OSError(ESTALE) raised. FileNotFoundError if it
        vanished; any other OSError leaves the file where it was."""
        eid = _new_id(now)
        os.mkdir(eid, 0o700, dir_fd=self.fd)
        efd = -1
        moved = False
        try:
            efd = os.open(eid, DIR_FLAGS, dir_fd=self.fd)
            fcntl.flock(efd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.own(efd)
            ps = os.fstat(parent)
            record = {
                "v": 1,
                "path": base64.b64encode(rel).decode(),
                "size": checked.st_size,
                "rule": rule,
                "deleted_at": now,
                "purge_at": now + grace,
                "dev": checked.st_dev,
                "ino": checked.st_ino,
                "mtime": checked.st_mtime,
                "dir": [stat.S_IMODE(ps.st_mode), ps.st_uid, ps.st_gid],
            }
            write_record(efd, RECORD, record, self)
            fault("put:recorded")
            private.claim(parent, name, efd, DATA)
            moved = True
            fault("put:renamed")
            there = os.stat(DATA, dir_fd=efd, follow_symlinks=False)
            if (there.st_dev, there.st_ino) != (checked.st_dev, checked.st_ino):
                # A stranger renamed over the name between the check and our rename: it goes
                # back. If the name was taken yet again, it stays here, restorable by its path.
                private.claim(efd, DATA, parent, name)
                moved = False
                raise OSError(errno.ESTALE, "another file took its name", os.fsdecode(rel))
            entry = read_entry(eid, efd)
            assert entry is not None
            return entry
        finally:
            if efd >= 0:
                if not moved:
                    clear_entry(efd, self.fd, eid)
                os.close(efd)
            elif not moved:
                with contextlib.suppress(OSError):
                    os.rmdir(eid, dir_fd=self.fd)

    def own(self, fd: int) -> None:
        """An entry made by root in a trash another user owns (``ocrd clean`` run by root
        beside the daemon's user) is given to the trash's owner, who purges it later."""
        if os.geteuid() == 0 and (self.uid, self.gid) != (0, 0):
            os.fchown(fd, self.uid, self.gid)

    # -- taking a file out ----------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, entry_id: bytes, *, wait: bool) -> Iterator[int | None]:
        """The entry's directory fd under its lock, or None if it is not there any more or
        (without ``wait``) another process is working on it."""
        try:
            efd = os.open(entry_id, DIR_FLAGS, dir_fd=self.fd)
        except OSError:
            yield None
            return
        try:
            try:
                fcntl.flock(efd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield None
                return
            yield efd
        finally:
            os.close(efd)


def _open_trash(root: int, *, create: bool) -> int | None:
    """An fd on ``.ocrd-trash`` if it is a directory ocrd may use; None if absent and not
    ``create``; Unusable if it is something else. Never follows a link."""
    try:
        fd = os.open(NAME, DIR_FLAGS, dir_fd=root)
    except FileNotFoundError:
        if not create:
            return None
        made = False
        with contextlib.suppress(FileExistsError):  # a neighbour's is judged below
            os.mkdir(NAME, 0o700, dir_fd=root)
            made = True
        try:
            fd = os.open(NAME, DIR_FLAGS, dir_fd=root)
        except OSError as exc:
            raise _unusable(exc) from None
        if made and os.geteuid() == 0:
            # Made by root (``ocrd clean`` or ``restore`` run by root): given to model_dir's
            # owner, as the daemon's user usually is, so that it may use it too.
            # Only the very directory root made (root's own, still empty), never one swapped in.
            rs = os.fstat(root)
            if os.fstat(fd).st_uid == 0 and not os.listdir(fd):
                with contextlib.suppress(OSError):
                    os.fchown(fd, rs.st_uid, rs.st_gid)
    except OSError as exc:
        raise _unusable(exc) from None
    try:
        _verify(fd, root)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unusable(exc: OSError) -> Unusable:
    if exc.errno == errno.ELOOP:
        return Unusable("is a symbolic link: never followed")
    if exc.errno == errno.ENOTDIR:
        return Unusable("is not a directory")
    return Unusable(f"cannot be opened: {exc.strerror or exc}")


def _verify(fd: int, root: int) -> None:
    """The trash must be a directory on model_dir's filesystem, owned by ocrd's user (or by
    model_dir's owner, or root), and writable by no one else."""
    st = os.fstat(fd)
    rs = os.fstat(root)
    if identify(fd).crosses(identify(root)):
        raise Unusable("is on another filesystem than model_dir")
    if st.st_uid not in (os.geteuid(), rs.st_uid, 0):
        raise Unusable(f"is owned by uid {st.st_uid}, not by ocrd's user or model_dir's owner")
    if st.st_mode & 0o022:
        raise Unusable(f"may be written by others (mode {stat.S_IMODE(st.st_mode):o})")


def _new_id(now: float) -> bytes:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    micro = int((now - math.floor(now)) * 1_000_000)
    return b"%s.%06dZ-%s" % (stamp.encode(), micro, secrets.token_hex(8).encode())


def write_record(dir_fd: int, name: bytes, record: dict[str, Any], trash: Trash) -> None:
    fd = os.open(name, FILE_NEW, 0o600, dir_fd=dir_fd)
    try:
        trash.own(fd)
        os.write(fd, json.dumps(record).encode())
    finally:
        os.close(fd)


def load_record(dir_fd: int, name: bytes) -> dict[str, Any]:
    """A record, or {} if it is missing, not a regular file, too large or not JSON."""
    try:
        fd = os.open(name, FILE_READ, dir_fd=dir_fd)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        raw = os.read(fd, MAX_RECORD + 1)
    except OSError:
        return {}
    finally:
        os.close(fd)
    if len(raw) > MAX_RECORD:
        return {}
    try:
        rec = json.loads(raw)
    except ValueError:
        return {}
    return rec if isinstance(rec, dict) else {}


def read_entry(eid: bytes, efd: int) -> Entry | None:
    """The entry in directory ``efd``, or None if it holds no file (debris)."""
    try:
        st = os.stat(DATA, dir_fd=efd, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    rec = load_record(efd, RECORD)
    try:
        path: bytes | None = base64.b64decode(rec["path"], validate=True)
        deleted_at = float(rec["deleted_at"])
        purge_at = float(rec["purge_at"])
        rule = rec["rule"]
        if not (rule is None or isinstance(rule, str)) or not path or b"\0" in path:
            raise ValueError(rule)
    except (KeyError, TypeError, ValueError, binascii.Error):
        # Unreadable (a power cut before it reached the disk): the file is kept, purged after
        # the grace counted from its rename into the trash (its ctime), never restored blind.
        path, rule, deleted_at, purge_at = None, None, st.st_ctime, math.inf
    return Entry(
        eid,
        path,
        st.st_size,
        rule,
        deleted_at,
        purge_at,
        st.st_dev,
        st.st_ino,
        st.st_mtime,
        st.st_nlink,
    )


def clear_entry(efd: int, trash_fd: int, eid: bytes) -> None:
    """Remove an entry that holds no file: its record, then its directory. Only under the
    entry's lock, and only once ``data`` is gone: the order keeps "data exists" the truth."""
    if taken(efd, DATA):
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(RECORD, dir_fd=efd)
    with contextlib.suppress(OSError):
        os.rmdir(eid, dir_fd=trash_fd)


def taken(dir_fd: int, rel: bytes) -> bool:
    """Whether anything is at ``rel`` below ``dir_fd``, looked up without following links (a
    link on the way means something is in the way)."""
    parent_rel, _, name = rel.rpartition(b"/")
    fd = dir_fd
    opened: list[int] = []
    try:
        for part in parent_rel.split(b"/") if parent_rel else ():
            try:
                fd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return False
            except OSError:
                return True
            opened.append(fd)
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True
    finally:
        for o in opened:
            os.close(o)


# -- module-level verbs: what the CLI, the daemon and the budget call ---------------------------


def usage(model_dir: Place | os.PathLike[str] | str | bytes | int) -> Usage:
    """What the trash holds now (Usage(0, 0) if it is absent or unusable)."""
    try:
        t = Trash.open(model_dir, create=False)
    except Unusable:
        return Usage(0, 0)
    if t is None:
        return Usage(0, 0)
    with t:
        return t.usage()
