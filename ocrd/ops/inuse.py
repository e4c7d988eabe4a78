"""The in-use policy: how "no process holds this file" is established (the kernel's lease
first; /proc where no lease can be had, or where a lease does not see mappings), and what is
done where nobody can tell."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ocrd.fs.holders import Answer, Holders, Mounts, View, file_id, lease_blind, take_own


@dataclass
class InUse:
    """How "no process holds this file" is established, shared by every deleting thread.

    ``on_limited`` is called with the fallback's View the first time a file's fate depends on
    an incomplete one, before that file's outcome: the caller's warning always comes before
    anything that warning is about.
    """

    holders: Holders = field(default_factory=Holders)
    unknown: Literal["keep", "delete"] = "keep"
    on_limited: Callable[[View], None] = lambda view: None
    mounts: Mounts = field(default_factory=Mounts)
    # False: ask /proc first (``ocrd list``, ``clean --dry-run``), so that looking opens no model
    # file, which the daemon would record as a use (docs/budget.md); only where /proc cannot
    # tell (other users' processes hidden from this one) is the file opened for a lease.
    open_files: bool = True
    # Told each file's relative path just before it is opened to ask: the daemon's own opens
    # are no use of the file (ocrd.watch.lastuse.LastUse.own).
    before_open: Callable[[bytes], None] | None = None
    _warned: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _blind: dict[int, bool] = field(default_factory=dict, repr=False)

    def check(self, fd: int | None, parent: int, ino: int) -> Answer:
        """Whether any process holds the file we have open as ``fd`` (None: we may not even
        open it) with inode ``ino`` in directory ``parent``. LEASED means free, and held free
        by our lease until ``fd`` is closed."""
        if fd is not None:
            leased = _lease(fd)
            if leased is None:
                return Answer.HELD
            if leased:
                return Answer.LEASED
        return self.by_proc(fd, parent, ino)

    def by_proc(self, fd: int | None, parent: int, ino: int, *, warn: bool = True) -> Answer:
        """The fallback: /proc, for a file we hold as ``fd`` or, when it could not even be
        opened, known as inode ``ino`` in directory ``parent`` (a file is on its directory's
        filesystem)."""
        fid = file_id(fd, self.mounts) if fd is not None else None
        if fid is None:
            where = file_id(parent, self.mounts)
            fid = None if where is None else (where[0], ino)
        view = self.holders.view()
        if fid is None:
            view = View(limits=("/proc/self/fdinfo does not name the file's mount",))
        answer = view.answer(fid) if fid is not None else Answer.UNKNOWN
        if answer is Answer.UNKNOWN and warn:
            self._warn(view)
        return answer

    def mappings(self, fd: int, dev: int) -> Answer:
        """For a file we hold leased as ``fd``, on device ``dev``: LEASED, unless it is on a
        filesystem where a lease misses a process that only maps the file (overlayfs; see
        holders.STACKED). There /proc must show no mapping, in a view taken now: our lease
        makes every open() of the file wait, and a mapping needs an fd, so none can appear
        while we hold it. A view that could not see every process: UNKNOWN."""
        if not self.lease_blind(fd, dev):
            return Answer.LEASED
        fid = file_id(fd, self.mounts)
        if fid is None:
            view = View(limits=("/proc/self/fdinfo does not name the file's mount",))
        else:
            view = self.holders.refresh()
        answer = view.answer(fid) if fid is not None else Answer.UNKNOWN
        if answer is Answer.UNKNOWN:
            self._warn(dataclasses.replace(view, limits=(STACKED_WHY, *view.limits)))
        return Answer.LEASED if answer is Answer.FREE else answer

    def lease_blind(self, fd: int, dev: int) -> bool:
        """Whether a lease on device ``dev`` (asked once per device, of the file ``fd``) misses
        a process that only maps the file: see mappings()."""
        blind = self._blind.get(dev)
        if blind is None:
            blind = self._blind[dev] = lease_blind(fd, self.mounts)
        return blind

    def _warn(self, view: View) -> None:
        with self._lock:
            if not self._warned:
                self._warned = True
                self.on_limited(view)


STACKED_WHY = (
    "model files on overlayfs or FUSE: a lease there does not see a process that only maps a "
    "file (its fd closed), so every process's mappings must be read in /proc as well"
)


def limited_check(logger: Any, view: View, unknown: str) -> None:
    """The warning that comes before any file is kept (or, if the operator chose so, deleted)
    because no one could tell whether a process holds it."""
    logger.warning(
        "in_use_check_limited",
        why=list(view.limits),
        processes=view.processes,
        action="keeping files whose holders are unknown (deletion_skipped in_use_unknown)"
        if unknown == "keep"
        else 'deleting them anyway: retention.unknown_holders = "delete"',
        fix="keep model_dir off overlayfs/FUSE, or run ocrd where it can read every process's "
        "/proc/PID/maps (as root, in the host's PID namespace)"
        if STACKED_WHY in view.limits
        else "grant CAP_LEASE (the shipped unit does) so the kernel answers for every file",
    )


def ignore_lease_breaks() -> None:
    """A lease we hold is broken by the kernel with SIGIO, whose default action kills the
    process (measured: exit -29 when another process opened a file we had leased). We hold a
    lease for microseconds and never need the notice: ignored, the opener simply waits until
    we let go. Must run in the main thread before the first lease."""
    if signal.getsignal(signal.SIGIO) is not signal.SIG_IGN:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("SIGIO must be ignored (from the main thread) before leasing")
        signal.signal(signal.SIGIO, signal.SIG_IGN)


def held_by_us(fd: int, mounts: Mounts) -> bool:
    """Whether this process has the file of ``fd`` mapped or open on another fd."""
    me = file_id(fd, mounts)
    return me is not None and me in take_own(skip_fd=fd, mounts=mounts)


def _lease(fd: int) -> bool | None:
    """True: we hold a write lease, so no other open file description of the file exists.
    None: one does (EAGAIN): the file is in use. False: no lease can be had here (EINVAL: the
    filesystem has none, e.g. NFS; EACCES: another user's file and no CAP_LEASE; leases
    disabled by fs.leases-enable)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return None
        return False
    return True
