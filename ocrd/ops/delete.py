"""The only module that deletes: carries out a Plan's deletions inside model_dir, and no further.

Every path is walked from a directory file descriptor opened with O_NOFOLLOW, one component at
a time, so a symbolic link at any depth — even a directory swapped for a link while we work —
cannot lead outside model_dir (the tmpreaper CVE-2019-3461 and systemd-tmpfiles CVE-2018-6954
class). Each file is re-checked just before its unlink: still the same device, inode, size and
mtime that were planned, and held open or mapped by no process at all.

"No process holds it" is asked of the kernel, per file: a write lease (F_SETLEASE, F_WRLCK) is
granted only while no other open file description of the file exists, in any process, user or
PID namespace, and whether the holder has it open or only mapped. The lease is held across the
identity check and the unlink, so a process that opens the file meanwhile waits for us, and
one that already had it makes the lease fail. Only where a lease cannot be taken (a
filesystem without leases; another user's file without CAP_LEASE) is /proc asked instead
(``ocrd.fs.holders``), and where /proc cannot tell either, the file is kept (``in_use_unknown``)
unless the operator chose otherwise (``retention.unknown_holders = "delete"``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import heapq
import os
import signal
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from ocrd.base import log
from ocrd.base.collector import collecting_paused
from ocrd.fs import private
from ocrd.fs.dirfds import DirFds
from ocrd.fs.holders import Answer, Holders, Mounts, View, file_id, lease_blind, take_own
from ocrd.fs.inventory import display
from ocrd.ops.fanout import FanOut, Timer
from ocrd.rules.retention import INTERRUPTED, Decision, Plan


class Status(StrEnum):
    DELETED = "deleted"
    WOULD_DELETE = "would_delete"
    SKIPPED = "skipped"
    FAILED = "failed"


class Outcome(NamedTuple):
    decision: Decision
    status: Status
    detail: str | None = None  # the skip reason, or the OS error
    freed: int = 0  # bytes given back: the size, if the unlink removed the file's last link


# Opening a file to lease it must not block: O_NONBLOCK makes a FIFO swapped in, or a file
# under someone else's lease, answer at once instead of waiting.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


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

    def by_proc(self, fd: int | None, parent: int, ino: int) -> Answer:
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
        if answer is Answer.UNKNOWN:
            self._warn(view)
        return answer

    def mappings(self, fd: int, dev: int) -> Answer:
        """For a file we hold leased as ``fd``, on device ``dev``: LEASED, unless it is on a
        filesystem where a lease misses a process that only maps the file (overlayfs; see
        holders.STACKED). There /proc must show no mapping, in a view taken now: our lease
        makes every open() of the file wait, and a mapping needs an fd, so none can appear
        while we hold it. A view that could not see every process: UNKNOWN."""
        blind = self._blind.get(dev)
        if blind is None:
            blind = self._blind[dev] = lease_blind(fd, self.mounts)
        if not blind:
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


def apply(
    plan: Plan,
    model_dir: os.PathLike[str] | str,
    *,
    dry_run: bool = False,
    stop: Callable[[], bool] = lambda: False,
    in_use: InUse | None = None,
    fan_out: FanOut[Decision, Outcome] | None = None,
) -> Generator[Outcome, None, None]:
    """Delete what ``plan`` says, yielding one Outcome per planned deletion as it happens.

    Each directory's deletions are done together, in inode order (the order of the
    filesystem's own tables, which saves it work); ``fan_out`` decides whether directories go
    to threads. ``stop`` is asked between files; once it says yes, the files in hand are
    finished and the rest are left for a later pass.
    Subdirectories emptied by the deletions are removed too; model_dir itself never is.
    Closing the generator early deletes nothing more: a file in hand is put back.
    """
    deletions = plan.deletions
    if not deletions:
        return
    if dry_run:
        for d in deletions:
            yield Outcome(d, Status.WOULD_DELETE)
        return
    yield from delete_groups(
        by_directory(deletions), model_dir, stop=stop, in_use=in_use, fan_out=fan_out
    )


def delete_groups(
    groups: Iterable[list[Decision]],
    model_dir: os.PathLike[str] | str,
    *,
    stop: Callable[[], bool] = lambda: False,
    in_use: InUse | None = None,
    fan_out: FanOut[Decision, Outcome] | None = None,
) -> Generator[Outcome, None, None]:
    """apply()'s deletions, one group per directory, each group in inode order (by_directory);
    ``groups`` may be made while the first are deleted (FanOut.run). If making them raises, the
    groups already taken are finished, their outcomes yielded, then the error is raised."""
    ignore_lease_breaks()
    holders = in_use if in_use is not None else InUse()
    fan: FanOut[Decision, Outcome] = fan_out if fan_out is not None else FanOut()

    def work(
        dirs: DirFds, group: list[Decision], timer: Timer | None, pause: Callable[[], bool]
    ) -> Iterator[Outcome]:
        return _empty(dirs, group, holders, timer, pause)

    dirs = DirFds(os.fsencode(model_dir))
    emptied: set[bytes] = set()
    # The cyclic collector is off while the pass deletes: a few objects per file, none in a
    # cycle, would start a collection every 700 of them, and each older-generation one walks
    # every Decision of the plan. Measured on ``ocrd clean``, 100k files, 55k deletions: the
    # deleting part took 3.27/3.49 s with it off, 3.89/4.06 s with it on.
    try:
        with collecting_paused():
            for outcome in fan.run(groups, dirs, work, stop):
                if outcome.status is Status.DELETED:
                    emptied.add(_parent(outcome.decision))
                yield outcome
            _remove_emptied(dirs, emptied, stop)
    finally:
        dirs.close()


def _parent(d: Decision) -> bytes:
    return d.entry.path.rpartition(b"/")[0]


def _inode(d: Decision) -> int:
    return d.entry.ino


def by_directory(deletions: Iterable[Decision]) -> deque[list[Decision]]:
    """Deletions grouped by directory, each group in inode order."""
    by_dir: dict[bytes, list[Decision]] = {}
    for d in deletions:
        by_dir.setdefault(_parent(d), []).append(d)
    for group in by_dir.values():
        group.sort(key=_inode)
    return deque(by_dir.values())


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
            checked = _check(dirs, d, in_use, probe=True)
            assert isinstance(checked, Outcome)  # a probe never keeps a file open
            yield checked
    finally:
        if dirs is not None:
            dirs.close()


class _Checked(NamedTuple):
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


def _check(dirs: DirFds, d: Decision, holders: InUse, *, probe: bool) -> Outcome | _Checked:
    """Re-check one planned file just before it goes: still the planned regular file (device,
    inode, size, mtime), reached without following any link, and held by no process. An
    Outcome says why it stays (or, probing, that it would go); a _Checked hands over its fd."""
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
        handed_over = isinstance(result, _Checked)
        return result
    finally:
        if fd is not None and not handed_over:
            os.close(fd)  # lets go of the lease


def _check_open(
    d: Decision, parent: int, name: bytes, fd: int | None, *, holders: InUse, probe: bool
) -> Outcome | _Checked:
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
    return _Checked(d, parent, name, fd, answer is Answer.LEASED, now)


def _opening(fd: int) -> bool:
    """Whether another process is opening the file we hold leased as ``fd`` right now: its
    open() waits for us, and the kernel has begun to break our lease."""
    return fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_WRLCK


def _empty(
    dirs: DirFds,
    group: list[Decision],
    holders: InUse,
    timer: Timer | None,
    pause: Callable[[], bool],
) -> Iterator[Outcome]:
    """Delete one directory's planned files (``group``), one behind: see _Behind. ``pause``
    is asked before each file; the file in hand is finished all the same."""
    behind = _Behind(timer)
    try:
        for d in group:
            if pause():
                break
            checked = _check(dirs, d, holders, probe=False)
            if isinstance(checked, Outcome):
                yield checked
            else:
                yield from behind.take(checked)
        last = behind.finish()
        if last is not None:
            yield last
    finally:
        behind.abandon()


class _Behind:
    """Deletes exactly the checked files of one directory, one file behind.

    unlink() takes a name, and another file can be renamed over that name between our check
    and the unlink: it would be deleted in its place. So each checked file is first renamed to
    a name only we use, in the same directory (ocrd.fs.private: unique to this process, on any
    host, in any PID namespace), and the inode found there is compared with the checked one;
    a stranger found there is put back under its name ("changed"), not deleted. The verified
    file then waits under the private name, its lease still held, and the next file's rename
    over that name is its deletion: one directory operation per file, as a plain unlink is
    (measured in bench/RESULTS*.md), not two. finish() unlinks the last one. Just before a
    waiting file goes, its lease is asked once more: if a process is opening it meanwhile, it
    is put back ("in_use").

    A private name is taken only where nothing is (private.claim: a squatter's entry, of any
    kind, is logged as ``private_name_taken`` and passed over for a fresh name), and nothing
    is renamed over it, unlinked or linked from it unless the entry there is still the very
    file we left waiting (same device and inode; we hold it open, so the inode cannot be
    reused meanwhile). An entry that is not is a stranger's: left alone, and the waiting file
    is reported "vanished" (it is no longer where we left it).

    A waiting file's directory is our own fd (a dup), so it never depends on DirFds' cache.
    If the work ends early (an error, or the consumer went away) the waiting file is put
    back: nothing is deleted that no Outcome reports. If ocrd is killed, the private name is
    left; rule ``interrupted`` deletes it on the next pass (it was due, and checked).
    """

    CLAIMS = 8  # fresh names tried for one file before it is given up (each one was taken)

    def __init__(self, timer: Timer | None) -> None:
        self.timer = timer
        self.dir_fd = -1
        self.private = b""  # the name self.waiting waits under
        self.waiting: _Checked | None = None

    def take(self, c: _Checked) -> tuple[Outcome, ...]:
        """The file ``c`` goes under the private name; the outcomes this settled: the file
        that was waiting there (deleted by the rename, or put back first), and ``c`` itself
        unless it now waits."""
        if self.dir_fd < 0:
            self.dir_fd = os.dup(c.parent)
        settled: list[Outcome] = []
        if self.waiting is not None and self.waiting.opening():
            settled.append(self._put_back_waiting("in_use"))
        if self.waiting is not None and not self._still_waiting():
            settled.append(self._lost())
        began = time.perf_counter()
        try:
            if self.waiting is None:
                self._claim(c)
            else:
                os.rename(c.name, self.private, src_dir_fd=c.parent, dst_dir_fd=self.dir_fd)
        except OSError as exc:
            _close(c.fd)
            if isinstance(exc, FileNotFoundError):
                return (*settled, Outcome(c.decision, Status.SKIPPED, "vanished"))
            return (*settled, Outcome(c.decision, Status.FAILED, exc.strerror or str(exc)))
        finally:
            if self.timer is not None:
                self.timer.since(began)
        if self.waiting is not None:  # the rename replaced it: its last name here is gone
            settled.append(self._gone(self.waiting))
            self.waiting = None
        try:
            there = os.stat(self.private, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError as exc:
            _close(c.fd)
            if isinstance(exc, FileNotFoundError):  # someone removed it meanwhile
                return (*settled, Outcome(c.decision, Status.SKIPPED, "vanished"))
            return (*settled, Outcome(c.decision, Status.FAILED, exc.strerror or str(exc)))
        if (there.st_dev, there.st_ino) != (c.now.st_dev, c.now.st_ino):
            _close(c.fd)
            return (*settled, self._put_back(c.decision, c.name, "changed"))
        self.waiting = c
        return tuple(settled)

    def _claim(self, c: _Checked) -> None:
        """Rename ``c`` to a fresh private name where nothing is; a name someone else's entry
        holds is logged and passed over. OSError if every name tried was taken."""
        for _ in range(self.CLAIMS):
            name = private.make()
            try:
                private.claim(c.parent, c.name, self.dir_fd, name)
            except FileExistsError:
                self._taken(c.decision, name)
                continue
            self.private = name
            return
        raise OSError(errno.EEXIST, f"{self.CLAIMS} private names in a row were taken")

    def _taken(self, d: Decision, name: bytes) -> None:
        """Say what holds a private name we were about to use (it stays as it is)."""
        where = d.entry.path.rpartition(b"/")[0]
        path = display(where + b"/" + name if where else name)
        try:
            st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError:
            owner, kind = None, "gone again"
        else:
            owner, kind = st.st_uid, _KINDS.get(stat.S_IFMT(st.st_mode), "other")
        log.get().warning(
            "private_name_taken",
            path=path,
            owner=owner,
            kind=kind,
            action="left as it is; another private name is used",
        )

    def _still_waiting(self) -> bool:
        """Whether the entry under our private name is still the file we left there."""
        w = self.waiting
        assert w is not None
        try:
            there = os.stat(self.private, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError:
            return False
        return (there.st_dev, there.st_ino) == (w.now.st_dev, w.now.st_ino)

    def _lost(self) -> Outcome:
        """The waiting file is no longer under our private name: someone moved it, or renamed
        their own entry over it. Whatever is there now is theirs and is left alone."""
        w = self.waiting
        assert w is not None
        self.waiting = None
        _close(w.fd)
        if _exists(self.dir_fd, self.private):
            self._taken(w.decision, self.private)
        return Outcome(w.decision, Status.SKIPPED, "vanished")

    def finish(self) -> Outcome | None:
        """Delete the file still waiting, if any."""
        w = self.waiting
        if w is None:
            return None
        if w.opening():
            return self._put_back_waiting("in_use")
        if not self._still_waiting():
            return self._lost()
        self.waiting = None
        began = time.perf_counter()
        try:
            os.unlink(self.private, dir_fd=self.dir_fd)
        except OSError as exc:
            _close(w.fd)
            if isinstance(exc, FileNotFoundError):
                return Outcome(w.decision, Status.SKIPPED, "vanished")
            return Outcome(w.decision, Status.FAILED, exc.strerror or str(exc))
        finally:
            if self.timer is not None:
                self.timer.since(began)
        return self._gone(w)

    def abandon(self) -> None:
        """Put back a file still waiting (the work ended early), and let go of the directory."""
        try:
            if self.waiting is not None:
                with contextlib.suppress(OSError):
                    self._put_back_waiting("in_use")
        finally:
            if self.dir_fd >= 0:
                os.close(self.dir_fd)
                self.dir_fd = -1

    def _gone(self, w: _Checked) -> Outcome:
        # Closing our fd is where a deleted file is really freed (it held the inode), so it is
        # timed with the unlink: on ext4 with discard it is most of a deletion's cost.
        began = time.perf_counter()
        _close(w.fd)
        if self.timer is not None:
            self.timer.since(began)
        # Space comes back only with a file's last link: a hard link elsewhere keeps the data.
        return Outcome(
            w.decision, Status.DELETED, None, w.decision.entry.size * (w.now.st_nlink <= 1)
        )

    def _put_back_waiting(self, why: str) -> Outcome:
        w = self.waiting
        assert w is not None
        if not self._still_waiting():
            return self._lost()
        self.waiting = None
        try:
            return self._put_back(w.decision, w.name, why)
        finally:
            _close(w.fd)  # after the file has its name again: an opener waiting on us finds it

    def _put_back(self, d: Decision, name: bytes, why: str) -> Outcome:
        """The file under the private name gets ``name`` back; then the Outcome ``why``."""
        try:
            _put_back(self.dir_fd, self.private, name)
        except OSError as exc:
            return Outcome(d, Status.FAILED, exc.strerror or str(exc))
        return Outcome(d, Status.SKIPPED, why)


_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "symbolic link",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _put_back(parent: int, private: bytes, name: bytes) -> None:
    """Give a file we moved by mistake its name back, without replacing whatever may have
    taken the name since (link() fails rather than replace; rename() would not)."""
    try:
        os.link(private, name, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EEXIST:  # the name was taken yet again: keep both, say where
            raise OSError(
                errno.EEXIST, f"a file renamed over it meanwhile was kept as {private!r}"
            ) from exc
        if exc.errno not in (errno.EPERM, errno.EISDIR):
            raise
        # A directory (which cannot be linked): renamed back if the name is still free.
        if not _exists(parent, name):
            os.rename(private, name, src_dir_fd=parent, dst_dir_fd=parent)
        return
    os.unlink(private, dir_fd=parent)


def _exists(parent: int, name: bytes) -> bool:
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


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


def _remove_emptied(
    dirs: DirFds, emptied: set[bytes], stop: Callable[[], bool] = lambda: False
) -> None:
    """rmdir each directory we deleted from, then its parents, deepest first; a directory that
    is not empty (or was replaced) stays. rmdir is atomic, so a file that just arrived is safe.

    A heap orders them (a scan for the deepest per rmdir was quadratic in their number). After
    each rmdir its parent is tried at once, reached through ``..`` of the directory in hand and
    checked against the identity seen from the root (DirFds.parent): a chain emptied from the
    bottom is climbed a step at a time, not re-walked from the root per level (quadratic in the
    depth). A parent that still holds a sibling waiting in the heap is tried again when that
    sibling goes. ``stop`` is asked between directories."""
    heap = [(-rel.count(b"/"), rel) for rel in emptied if rel]
    heapq.heapify(heap)
    while heap:
        if stop():
            return
        _, rel = heapq.heappop(heap)
        parent_rel, _, name = rel.rpartition(b"/")
        try:
            parent = dirs.open(parent_rel)
            dirs.forget(rel)
            os.rmdir(name, dir_fd=parent)
        except OSError:
            continue
        while parent_rel and not stop():
            rel = parent_rel
            parent_rel, _, name = rel.rpartition(b"/")
            try:
                up = dirs.parent(rel, parent)
                dirs.forget(rel)
                os.rmdir(name, dir_fd=up)
            except OSError:
                break
            parent = up
