"""The re-check each planned file passes just before it goes, and the probe: every check of a
deletion, and no deletion (what ``list`` and ``clean --dry-run`` report)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from ocrd.fs.dirfds import DirFds
from ocrd.fs.holders import Answer
from ocrd.ops.inuse import InUse, held_by_us, ignore_lease_breaks
from ocrd.ops.outcomes import Outcome, Status
from ocrd.rules.decision import Decision, Plan
from ocrd.rules.leftovers import INTERRUPTED

# Opening a file to lease it must not block: O_NONBLOCK makes a FIFO swapped in, or a file
# under someone else's lease, answer at once instead of waiting.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def probe(plan: Plan, model_dir: os.PathLike[str] | str, in_use: InUse) -> Iterator[Outcome]:
    """Every check a deletion makes, and no deletion: WOULD_DELETE for a file that would go
    now, else the skip it would meet. A lease taken to ask is let go at once."""
    return probe_each(plan.deletions, model_dir, in_use)


def probe_each(
    deletions: Iterable[Decision], model_dir: os.PathLike[str] | str, in_use: InUse
) -> Iterator[Outcome]:
    """probe() for ``deletions`` that may be made while the first are probed (ocrd.ops.stream):
    ``ocrd list`` and ``ocrd clean --dry-run`` both ask this."""
    dirs: DirFds | None = None
    try:
        for d in deletions:
            if dirs is None:
                ignore_lease_breaks()
                dirs = DirFds(os.fsencode(model_dir))
            checked = check_file(dirs, d, in_use, probe=True)
            assert isinstance(checked, Outcome)  # a probe never keeps a file open
            yield checked
    finally:
        if dirs is not None:
            dirs.close()


class Checked(NamedTuple):
    """A file that passed every check and may go: open as ``fd`` (None when it could not even
    be opened and /proc answered), ``leased`` by us or not (/proc answered), in directory
    ``parent`` under ``name``, with the identity ``now`` that was checked."""

    decision: Decision
    parent: int
    name: bytes
    fd: int | None
    leased: bool
    now: os.stat_result

    def opening(self) -> bool:
        """Whether another process is opening the file right now (seen only through our
        lease: its open() waits for us, and the kernel has begun to break the lease)."""
        return self.leased and self.fd is not None and _opening(self.fd)


def check_file(dirs: DirFds, d: Decision, holders: InUse, *, probe: bool) -> Outcome | Checked:
    """Re-check one planned file just before it goes: still the planned regular file (device,
    inode, size, mtime), reached without following any link, and held by no process. An
    Outcome says why it stays (or, probing, that it would go); a Checked hands over its fd."""
    entry = d.entry
    parent_rel, _, name = entry.path.rpartition(b"/")
    try:
        parent = dirs.open(parent_rel)
    except FileNotFoundError:
        return Outcome(d, Status.SKIPPED, "vanished")
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ESTALE):
            return Outcome(d, Status.SKIPPED, "changed")
        return Outcome(d, Status.FAILED, exc.strerror or str(exc))
    try:
        fd: int | None = os.open(name, FILE_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return Outcome(d, Status.SKIPPED, "vanished")
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            return Outcome(d, Status.SKIPPED, "changed")  # now a link, or a socket
        if exc.errno == errno.EWOULDBLOCK:
            return Outcome(d, Status.SKIPPED, "in_use")  # another process holds a lease on it
        if exc.errno not in (errno.EACCES, errno.EPERM):
            return Outcome(d, Status.FAILED, exc.strerror or str(exc))
        fd = None  # not ours to read: no lease, so /proc must answer (below)
    handed_over = False
    try:
        result = _check_open(d, parent, name, fd, holders=holders, probe=probe)
        handed_over = isinstance(result, Checked)
        return result
    finally:
        if fd is not None and not handed_over:
            os.close(fd)  # lets go of the lease


def _check_open(
    d: Decision, parent: int, name: bytes, fd: int | None, *, holders: InUse, probe: bool
) -> Outcome | Checked:
    entry = d.entry
    try:
        now = (
            os.fstat(fd) if fd is not None else os.stat(name, dir_fd=parent, follow_symlinks=False)
        )
    except FileNotFoundError:
        return Outcome(d, Status.SKIPPED, "vanished")
    except OSError as exc:
        return Outcome(d, Status.FAILED, exc.strerror or str(exc))
    if (
        not stat.S_ISREG(now.st_mode)
        or (now.st_dev, now.st_ino) != (entry.dev, entry.ino)
        or now.st_size != entry.size
        or now.st_mtime != entry.mtime
    ):
        return Outcome(d, Status.SKIPPED, "changed")
    if d.rule == INTERRUPTED and now.st_uid != os.geteuid():
        # A leftover is finished only if it is ocrd's own (its uid): anyone may name a file
        # like a private one, and a stranger's file is not ocrd's to finish.
        return Outcome(d, Status.SKIPPED, "foreign")
    if probe and (cannot := _cannot_unlink(fd, parent, now.st_uid)) is not None:
        return Outcome(d, Status.FAILED, cannot)
    answer = holders.check(fd, parent, now.st_ino)
    if answer is Answer.LEASED and fd is not None:
        answer = holders.mappings(fd, now.st_dev)
    if answer is Answer.HELD and probe and fd is not None and held_by_us(fd, holders.mounts):
        # Held by ocrd's own process, i.e. its engine: the very thing a free is for.
        return Outcome(d, Status.WOULD_DELETE, "held_by_engine")
    if answer is Answer.HELD:
        return Outcome(d, Status.SKIPPED, "in_use")
    if answer is Answer.UNKNOWN and holders.unknown == "keep":
        return Outcome(d, Status.SKIPPED, "in_use_unknown")
    if probe and answer is Answer.LEASED and fd is not None and _opening(fd):
        return Outcome(d, Status.SKIPPED, "in_use")  # a deletion asks just before the file goes
    if probe:
        return Outcome(d, Status.WOULD_DELETE)
    return Checked(d, parent, name, fd, answer is Answer.LEASED, now)


def _opening(fd: int) -> bool:
    """Whether another process is opening the file we hold leased as ``fd`` right now: its
    open() waits for us, and the kernel has begun to break our lease."""
    return fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_WRLCK


FS_IOC_GETFLAGS = 0x80086601  # linux/fs.h, as _IOR('f', 1, long) on 64-bit


FS_IMMUTABLE_FL, FS_APPEND_FL = 0x10, 0x20


def _cannot_unlink(fd: int | None, parent: int, owner: int) -> str | None:
    """Why an unlink is bound to fail whatever the engine does, or None: a directory we may not
    write, or an immutable or append-only file or directory (chattr +i / +a). ``owner``: the
    file's uid, from the identity check's fstat."""
    if not os.access(".", os.W_OK, dir_fd=parent, effective_ids=True):
        return "Permission denied: the directory is not writable"
    me = os.geteuid()
    if me != 0 and fd is not None:
        ds = os.fstat(parent)
        if ds.st_mode & stat.S_ISVTX and me not in (ds.st_uid, owner):
            return "Operation not permitted: a sticky directory, and the file is another user's"
    for what, target in (("file", fd), ("directory", parent)):
        if target is None:
            continue
        try:
            buf = fcntl.ioctl(target, FS_IOC_GETFLAGS, b"\0" * 8)
        except OSError:
            continue  # a filesystem without inode flags: nothing to fear from them
        flags = int.from_bytes(buf[:4], sys.byteorder)
        if flags & FS_IMMUTABLE_FL:
            return f"Operation not permitted: the {what} is immutable (chattr +i)"
        if flags & FS_APPEND_FL and what == "directory":
            return "Operation not permitted: the directory is append-only (chattr +a)"
        if flags & FS_APPEND_FL:
            return "Operation not permitted: the file is append-only (chattr +a)"
    return None
