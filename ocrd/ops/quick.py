"""The re-check of a deletion in the case that is nearly every file: ocrd may open it, the kernel
grants the lease, and the filesystem's leases see every holder. It asks exactly what
ocrd.ops.check.check_file asks, in the same order, with the syscalls it must make (open, fstat,
lease) and little else; every other case (a file ocrd may not open, a filesystem without
leases, one whose leases miss a mapping) is handed back to check_file, which knows the rest.

The directory is the caller's: a Parent, opened and verified by DirFds once per ``every``
files instead of once per file. Between two verifications the fd stays on the very directory
that was verified (an fd follows its inode, whatever is renamed or mounted over its path), and
each file is still compared with its planned identity (device, inode, size, mtime) through the
fd that holds its lease, so a swap of the directory can only make files "changed" or "vanished",
never reach a file that was not planned.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from ocrd.fs.dirfds import DirFds
from ocrd.fs.holders import Answer
from ocrd.ops.check import FILE_FLAGS, Checked
from ocrd.ops.inuse import InUse
from ocrd.ops.outcomes import Outcome, Status
from ocrd.rules.decision import Decision
from ocrd.rules.leftovers import INTERRUPTED

_CHANGED_ON_OPEN = (errno.ELOOP, errno.ENOTDIR, errno.ENXIO)
_ASK_ELSEWHERE = (errno.EACCES, errno.EPERM)


class Parent:
    """One directory of model_dir for a run of deletions from it: our own fd (a dup of
    DirFds', so DirFds may close its copy at will), verified from model_dir's root again every
    ``every`` files. ``fd`` is -1 when the last verification failed: the caller then asks
    check_file, which says why (vanished, changed, failed) file by file."""

    # One stat per path component per verification: at 256 files that is 0.4 % of the
    # syscalls of their deletions, and a directory swapped meanwhile is seen within 256 files.
    EVERY = 256

    def __init__(self, dirs: DirFds, rel: bytes, every: int | None = None) -> None:
        self.dirs = dirs
        self.rel = rel
        self.every = every or self.EVERY
        self.fd = -1
        self.left = 0  # files until the next verification

    def get(self) -> int:
        """The directory's fd for one file, verified within the last ``every`` files; -1 if
        it cannot be."""
        if self.left <= 0:
            self.close()
            self.left = self.every
            with contextlib.suppress(OSError):
                self.fd = os.dup(self.dirs.open(self.rel))
        self.left -= 1
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def quick_check(parent: int, d: Decision, holders: InUse, me: int) -> Outcome | Checked | None:
    """check_file's answer for ``d`` in directory ``parent``, or None where this case is not
    the common one and check_file must answer instead. ``me``: our effective uid."""
    entry = d.entry
    name = entry.path.rpartition(b"/")[2]
    before = holders.before_open
    if before is not None:
        before(entry.path)
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return Outcome(d, Status.SKIPPED, "vanished")
    except OSError as exc:
        if exc.errno in _CHANGED_ON_OPEN:
            return Outcome(d, Status.SKIPPED, "changed")  # now a link, or a socket
        if exc.errno == errno.EWOULDBLOCK:
            return Outcome(d, Status.SKIPPED, "in_use")  # another process holds a lease on it
        if exc.errno in _ASK_ELSEWHERE:
            return None  # not ours to read: check_file asks /proc
        return Outcome(d, Status.FAILED, exc.strerror or str(exc))
    kept = False
    try:
        now = os.fstat(fd)
        if (
            now.st_ino != entry.ino
            or now.st_dev != entry.dev
            or now.st_size != entry.size
            or now.st_mtime != entry.mtime
            or not stat.S_ISREG(now.st_mode)
        ):
            return Outcome(d, Status.SKIPPED, "changed")
        if d.rule == INTERRUPTED and now.st_uid != me:
            return Outcome(d, Status.SKIPPED, "foreign")  # see check._check_open
        answer = holders.check(fd, parent, now.st_ino)
        if answer is Answer.HELD:
            return Outcome(d, Status.SKIPPED, "in_use")
        if answer is not Answer.LEASED:
            return None  # no lease to be had here, /proc answered: check_file says the rest
        if holders.lease_blind(fd, now.st_dev):
            return None  # a lease that misses mappings: check_file reads /proc as well
        kept = True
        return Checked(d, parent, name, fd, True, now)
    finally:
        if not kept:
            os.close(fd)  # lets go of the lease, if one was taken
