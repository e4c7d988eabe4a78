"""One entry of the trash on disk: its name, its record (``entry.json``) and its file
(``data``), read, written and cleared through directory fds. The trash directory itself, and who
may use it, is ocrd.fs.trash.

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
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import re
import secrets
import signal
import stat
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ocrd.fs.inventory import display
from ocrd.fs.place import DIR_FLAGS

NAME = b".ocrd-trash"
DATA = b"data"
RECORD = b"entry.json"
HELD = b"held"
ENTRY = re.compile(rb"[0-9]{8}T[0-9]{6}\.[0-9]{6}Z-[0-9a-f]{16}")
HOLD = re.compile(rb"[0-9a-f]{16}\.json")
MAX_RECORD = 64 * 1024  # a record is a few hundred bytes; this bounds what a damaged one costs
FILE_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
FILE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FAULT_ENV = "OCRD_TRASH_FAULT"  # the tests' crash points: see fault


class Owner(Protocol):
    """Who a new record is given to (ocrd.fs.trash.Trash.own)."""

    def own(self, fd: int) -> None: ...


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


def names(dir_fd: int) -> list[bytes]:
    """The names in a directory, as the bytes they are (os.listdir of an fd gives str)."""
    return [os.fsencode(n) for n in os.listdir(dir_fd)]


def iso(t: float, *, up: bool = False) -> str:
    """ISO 8601 UTC to the second: ``2026-12-06T02:36:00Z``; ``up``: rounded up, for a time
    before which something does not happen (a purge, the end of a hold)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(t) if up else math.floor(t)))


def fault(point: str) -> None:
    """A crash point for the tests: with ``OCRD_TRASH_FAULT=<point>`` in its environment the
    process kills itself with SIGKILL there, as an operator's ``kill -9`` or the OOM killer
    would at that instant (tests/test_trash.py)."""
    if os.environ.get(FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def new_id(now: float) -> bytes:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    micro = int((now - math.floor(now)) * 1_000_000)
    return b"%s.%06dZ-%s" % (stamp.encode(), micro, secrets.token_hex(8).encode())


def write_record(dir_fd: int, name: bytes, record: dict[str, Any], trash: Owner) -> None:
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
