"""Puts a file from the trash back where it was: the same inode (bytes, mode, owner, mtime),
the directories on its way made as they were, nothing ever replaced, the file held from every
rule for the grace (ocrd.fs.holds); docs/trash.md."""

from __future__ import annotations

import contextlib
import errno
import os

from ocrd.base import log
from ocrd.base.errors import OcrdError
from ocrd.fs import private
from ocrd.fs.holds import hold, let_go
from ocrd.fs.inventory import display
from ocrd.fs.place import DIR_FLAGS, identify
from ocrd.fs.trash import (
    DATA,
    RECORD,
    Entry,
    Trash,
    clear_entry,
    fault,
    iso,
    load_record,
    read_entry,
)

_EXISTS = "a file is there now: it is not replaced"
_EXDEV = "its directory is on another filesystem than model_dir"


class Refused(OcrdError):
    """A restore that would change something it must not: ``why`` is one of ``exists``
    (something is at the path now), ``parent`` (a component of the path is not a directory
    reached without a link, or is on another filesystem), ``missing`` (its record is
    unreadable), ``gone`` (the entry left the trash meanwhile)."""

    def __init__(self, path: bytes, why: str, detail: str) -> None:
        super().__init__(f"{display(path)}: {detail}")
        self.path = path
        self.why = why


def restore(t: Trash, entry: Entry, *, now: float, grace: float) -> Entry:
    """Put ``entry``'s file back at its path, byte for byte (the same inode: mode, owner and
    mtime kept), making missing parent directories as its parent was; the file is held from
    every rule until ``now + grace``. Refused if anything is at the path, and then nothing
    has changed."""
    if entry.path is None:
        raise Refused(entry.id, "missing", "its record is unreadable: the path is unknown")
    path = entry.path
    with t.locked(entry.id, wait=True) as efd:
        if efd is None:
            raise Refused(path, "gone", "it left the trash meanwhile (purged or restored)")
        now_entry = read_entry(entry.id, efd)
        if now_entry is None or (now_entry.dev, now_entry.ino) != (entry.dev, entry.ino):
            raise Refused(path, "gone", "it left the trash meanwhile (purged or restored)")
        parent_rel, _, name = path.rpartition(b"/")
        pfd = _parents(t, parent_rel, efd)
        try:
            held = hold(t, path, entry, now + grace)  # before the file is back: see holds
            try:
                private.claim(efd, DATA, pfd, name)
            except OSError as exc:
                let_go(t, held)
                if isinstance(exc, FileExistsError):
                    raise Refused(path, "exists", _EXISTS) from None
                if exc.errno == errno.EXDEV:
                    raise Refused(path, "parent", _EXDEV) from None
                raise
            fault("restore:renamed")
        finally:
            os.close(pfd)
        clear_entry(efd, t.fd, entry.id)
    log.get().info(
        "model_restored",
        path=display(path),
        size=entry.size,
        rule=entry.rule,
        deleted_at=iso(entry.deleted_at),
        held_until=iso(now + grace, up=True),
    )
    return now_entry


def _parents(t: Trash, parent_rel: bytes, efd: int) -> int:
    """An fd on ``parent_rel`` under model_dir, each missing component made (with the mode
    and, as root, the owner its old parent had), none followed if it is a link."""
    mode, uid, gid = _record_dir(efd)
    fd = os.dup(t.root_fd)
    walked = b""
    try:
        for part in parent_rel.split(b"/") if parent_rel else ():
            walked = walked + b"/" + part if walked else part
            try:
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, mode, dir_fd=fd)
                    _made_dir(fd, part, mode, uid, gid)
                nfd = _enter(fd, part, walked)
            except OSError as exc:
                raise _not_dir(walked, exc) from None
            if identify(nfd).crosses(identify(t.root_fd)):
                os.close(nfd)
                raise Refused(walked, "parent", "is on another filesystem than model_dir")
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _enter(fd: int, part: bytes, walked: bytes) -> int:
    try:
        return os.open(part, DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        raise _not_dir(walked, exc) from None


def _not_dir(walked: bytes, exc: OSError) -> Refused:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return Refused(walked, "parent", "is not a directory (a file or a link is there)")
    return Refused(walked, "parent", exc.strerror or str(exc))


def _record_dir(efd: int) -> tuple[int, int, int]:
    """The mode, owner and group of the directory the file was deleted from."""
    rec = load_record(efd, RECORD)
    try:
        mode, uid, gid = (int(x) for x in rec["dir"])
    except (KeyError, TypeError, ValueError):
        return 0o755, -1, -1
    return mode & 0o7777, uid, gid


def _made_dir(parent: int, part: bytes, mode: int, uid: int, gid: int) -> None:
    """A directory restore made: its old parent's mode (past the umask) and, as root, owner."""
    fd = os.open(part, DIR_FLAGS, dir_fd=parent)
    try:
        os.fchmod(fd, mode)
        if os.geteuid() == 0 and uid >= 0:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
