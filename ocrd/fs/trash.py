"""The trash: deleted model files kept for a grace period in ``.ocrd-trash/`` at the top of
model_dir, listed, restored and purged, every step through directory fds and safe to kill. This
module is the trash directory (opened, made, judged usable) and what is put in it; one entry's
format on disk and its crash-safety rule are ocrd.fs.trashentry.

The neighbours may be hostile (a sticky 1777 model_dir): ``.ocrd-trash`` as a symlink, a file,
a directory someone else owns or others may write, or another filesystem mounted there makes
the trash unusable (``Unusable``, logged ``trash_unusable``); nothing is renamed into it, and a
deletion that needed it keeps the file. No link is followed at any step.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from typing import NamedTuple

from ocrd.base.errors import OcrdError
from ocrd.fs import private
from ocrd.fs.place import DIR_FLAGS, Place, identify, open_root
from ocrd.fs.trashentry import (
    DATA,
    ENTRY,
    NAME,
    RECORD,
    Entry,
    clear_entry,
    fault,
    names,
    new_id,
    read_entry,
    write_record,
)

RULE = "trash"  # the rule a purge is decided by, in the deleter's outcomes


class Unusable(OcrdError):
    """``.ocrd-trash`` is there but not a directory ocrd may use; ``reason`` says what it is."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{os.fsdecode(NAME)}: {reason}")
        self.reason = reason


class Usage(NamedTuple):
    bytes: int
    entries: int


class Freed(NamedTuple):
    """What a purge gave back: ``bytes`` (a file with another hard link gives none), the
    ``entries`` purged, and how many due entries were ``skipped`` (in use, changed)."""

    bytes: int
    entries: list[Entry]
    skipped: int


def is_trash(rel: bytes) -> bool:
    """Whether ``rel`` (relative to model_dir) is the trash or inside it: never a model."""
    return rel == NAME or rel.startswith(NAME + b"/")


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
        eid = new_id(now)
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
