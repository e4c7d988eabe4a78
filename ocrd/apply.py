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
(``ocrd.holders``), and where /proc cannot tell either, the file is kept (``in_use_unknown``)
unless the operator chose otherwise (``retention.unknown_holders = "delete"``).
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import itertools
import os
import queue
import signal
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from ocrd.fsdirs import DirFds
from ocrd.holders import Answer, Holders, Mounts, View, file_id, take_own
from ocrd.retention import Decision, Plan


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
    _warned: View | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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
            with self._lock:
                if self._warned is not view:
                    self._warned = view
                    self.on_limited(view)
        return answer


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
        fix="grant CAP_LEASE (the shipped unit does) so the kernel answers for every file",
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


THREADS = 4
"""At most this many directories are emptied at once, when unlink() dominates a deletion.

Where unlink() is cheap next to ocrd's own per-file work (tmpfs) one thread is fastest: more
threads just pass the GIL back and forth. Where it is not — the kernel's own work on ext4, a
synchronous discard per unlink on ext4 mounted with ``discard``, a network filesystem's round
trip — that time is spent with the GIL released, and threads overlap it. bench/RESULTS.md has
the numbers. One directory is never shared between threads: unlinks in one directory
serialise on its lock anyway."""

SAMPLE = 64  # deletions timed before deciding whether more threads would pay
UNLINK_SHARE = 0.6
"""Threads are used once unlink() — where the GIL is released — takes this share of the time
per deletion or more. Measured here (unlink vs everything else per file, including the
caller's logging): tmpfs 5.7 vs 6.3 µs (0.48), and four threads made a pass 45 % slower;
ext4 without online discard (Debian's default) 17 vs 7 µs (0.71), threads 19 % faster; ext4
with ``discard`` 86 vs 15 µs (0.85), threads 40 % faster. A share is a ratio of two times on
one machine, so a faster or slower CPU moves both alike."""
HANDFUL = 32  # outcomes a worker hands over at once
IDLE_POLL_S = 0.1  # how often ``stop`` is asked while no deletion completes


def apply(
    plan: Plan,
    model_dir: os.PathLike[str] | str,
    *,
    dry_run: bool = False,
    stop: Callable[[], bool] = lambda: False,
    in_use: InUse | None = None,
    threads: int = THREADS,
) -> Iterator[Outcome]:
    """Delete what ``plan`` says, yielding one Outcome per planned deletion as it happens.

    Each directory's deletions are done together, in inode order (the order of the
    filesystem's own tables, which saves it work). The first ones are done in the calling
    thread, and timed: if most of their time is spent in unlink(), outside the GIL, the
    remaining directories are spread over up to ``threads`` threads. ``stop`` is asked in the
    calling thread between outcomes; once it says yes, the files in hand are finished and the
    rest are left for a later pass.
    Subdirectories emptied by the deletions are removed too; model_dir itself never is.
    """
    deletions = plan.deletions
    if not deletions:
        return
    if dry_run:
        for d in deletions:
            yield Outcome(d, Status.WOULD_DELETE)
        return
    ignore_lease_breaks()
    holders = in_use if in_use is not None else InUse()
    dirs = DirFds(os.fsencode(model_dir))
    emptied: set[bytes] = set()
    try:
        for outcome in _delete(dirs, _by_directory(deletions), holders, stop, threads):
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


def _by_directory(deletions: Iterable[Decision]) -> deque[list[Decision]]:
    by_dir: dict[bytes, list[Decision]] = {}
    for d in deletions:
        by_dir.setdefault(_parent(d), []).append(d)
    for group in by_dir.values():
        group.sort(key=_inode)
    return deque(by_dir.values())


def _delete(
    dirs: DirFds,
    groups: deque[list[Decision]],
    holders: InUse,
    stop: Callable[[], bool],
    threads: int,
) -> Iterator[Outcome]:
    """In this thread while SAMPLE deletions are timed, the caller's handling of each outcome
    included; then, if unlink() took UNLINK_SHARE of that time and at least two directories are
    left, in threads."""
    timed = 0
    unlinking = [0.0]
    started = time.perf_counter()
    while groups:
        group = groups.popleft()
        for i, d in enumerate(group):
            if stop():
                return
            sampling = timed < SAMPLE
            outcome = _delete_one(dirs, d, holders, unlinking if sampling else None)
            if sampling and (timed := timed + 1) == SAMPLE:
                share = unlinking[0] / (time.perf_counter() - started)
                unfinished = i + 1 < len(group)
                if share >= UNLINK_SHARE and threads > 1 and len(groups) + unfinished >= 2:
                    # This thread mostly waits in unlink(): threads can wait together.
                    yield outcome
                    if unfinished:
                        groups.appendleft(group[i + 1 :])
                    yield from _parallel(dirs.root_fd, groups, holders, stop, threads)
                    return
            yield outcome


def _parallel(
    root_fd: int,
    groups: deque[list[Decision]],
    holders: InUse,
    stop: Callable[[], bool],
    threads: int,
) -> Iterator[Outcome]:
    """Worker threads each take whole directories and delete through their own DirFds; the
    calling thread yields their outcomes as they come. An error in a worker stops the others
    once the files in hand are done, and is raised here after every outcome already produced
    was yielded, so no deletion goes unreported."""
    threads = min(threads, len(groups))
    work: queue.SimpleQueue[list[Decision] | None] = queue.SimpleQueue()
    for group in groups:
        work.put(group)
    for _ in range(threads):
        work.put(None)
    done: queue.SimpleQueue[list[Outcome] | None] = queue.SimpleQueue()
    halt = threading.Event()
    errors: list[BaseException] = []

    def delete() -> None:
        # Outcomes go out in handfuls: a put() per file would wake the calling thread, and
        # hand it the GIL, once per file.
        outcomes: list[Outcome] = []
        try:
            with DirFds(os.dup(root_fd)) as dirs:
                while (group := work.get()) is not None:
                    for d in group:
                        if halt.is_set():
                            return
                        outcomes.append(_delete_one(dirs, d, holders))
                        if len(outcomes) == HANDFUL:
                            done.put(outcomes)
                            outcomes = []
        except BaseException as exc:  # noqa: BLE001 — re-raised in the calling thread
            errors.append(exc)
            halt.set()
        finally:
            if outcomes:
                done.put(outcomes)
            done.put(None)

    workers = [
        threading.Thread(target=delete, name=f"ocrd-delete-{i}", daemon=True)
        for i in range(threads)
    ]
    for t in workers:
        t.start()
    running = threads
    try:
        while running:
            try:
                outcomes = done.get(timeout=IDLE_POLL_S)
            except queue.Empty:
                if stop():
                    halt.set()
                continue
            if outcomes is None:
                running -= 1
                continue
            for outcome in outcomes:
                yield outcome
                if not halt.is_set() and stop():
                    halt.set()
    finally:
        halt.set()
        for t in workers:
            t.join()
    if errors:
        raise errors[0]


def probe(plan: Plan, model_dir: os.PathLike[str] | str, in_use: InUse) -> Iterator[Outcome]:
    """Every check a deletion makes, and no deletion: WOULD_DELETE for a file that would go
    now, else the skip it would meet (``ocrd list`` shows files in use with their own verdict).
    A lease taken to ask is let go at once."""
    if not plan.deletions:
        return
    ignore_lease_breaks()
    with DirFds(os.fsencode(model_dir)) as dirs:
        for d in plan.deletions:
            yield _delete_one(dirs, d, in_use, probe=True)


def _delete_one(
    dirs: DirFds,
    d: Decision,
    holders: InUse,
    unlinking: list[float] | None = None,
    *,
    probe: bool = False,
) -> Outcome:
    """Re-check and unlink one file; adds the time unlink() took to ``unlinking[0]``."""
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
    try:
        return _delete_checked(
            d, parent, name, fd, holders=holders, unlinking=unlinking, probe=probe
        )
    finally:
        if fd is not None:
            # Lets go of the lease. After an unlink this close is where the file is really
            # freed (our fd held the inode), so it is timed with the unlink: on ext4 with
            # discard it is most of a deletion's cost, and the choice of threads depends on it.
            if unlinking is None:
                os.close(fd)
            else:
                began = time.perf_counter()
                os.close(fd)
                unlinking[0] += time.perf_counter() - began


def _delete_checked(
    d: Decision,
    parent: int,
    name: bytes,
    fd: int | None,
    *,
    holders: InUse,
    unlinking: list[float] | None,
    probe: bool,
) -> Outcome:
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
    if probe and (cannot := _cannot_unlink(fd, parent, now.st_uid)) is not None:
        return Outcome(d, Status.FAILED, cannot)
    answer = holders.check(fd, parent, now.st_ino)
    if answer is Answer.HELD and probe and fd is not None and held_by_us(fd, holders.mounts):
        # Held by ocrd's own process, i.e. its engine: the very thing a free is for.
        return Outcome(d, Status.WOULD_DELETE, "held_by_engine")
    if answer is Answer.HELD:
        return Outcome(d, Status.SKIPPED, "in_use")
    if answer is Answer.UNKNOWN and holders.unknown == "keep":
        return Outcome(d, Status.SKIPPED, "in_use_unknown")
    if (
        answer is Answer.LEASED
        and fd is not None
        and fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_WRLCK
    ):
        return Outcome(d, Status.SKIPPED, "in_use")  # someone is opening it right now
    if probe:
        return Outcome(d, Status.WOULD_DELETE)
    try:
        if unlinking is None:
            why = _unlink_exactly(parent, name, (now.st_dev, now.st_ino))
        else:
            began = time.perf_counter()
            why = _unlink_exactly(parent, name, (now.st_dev, now.st_ino))
            unlinking[0] += time.perf_counter() - began
    except FileNotFoundError:
        return Outcome(d, Status.SKIPPED, "vanished")
    except OSError as exc:
        return Outcome(d, Status.FAILED, exc.strerror or str(exc))
    if why is not None:
        return Outcome(d, Status.SKIPPED, why)
    # Space comes back only with a file's last link: a hard link elsewhere keeps the data.
    return Outcome(d, Status.DELETED, None, entry.size if now.st_nlink <= 1 else 0)


_PRIVATE = itertools.count()
_PREFIX: list[bytes] = []  # b".ocrd-deleting-PID-", made once: getpid() is a syscall
os.register_at_fork(after_in_child=_PREFIX.clear)


def _private_prefix() -> bytes:
    if not _PREFIX:
        _PREFIX.append(b".ocrd-deleting-%d-" % os.getpid())
    return _PREFIX[0]


def _unlink_exactly(parent: int, name: bytes, checked: tuple[int, int]) -> str | None:
    """Unlink the file we checked, and only it. unlink() takes a name, and another file can be
    renamed over that name between our check and the unlink. So the name is first renamed to
    one only we know, in the same directory (atomic, and no other file can take it), the
    inode found there is compared with the checked one, and only then is that private name
    unlinked. If another file had taken the name, it is put back, not deleted: "changed"."""
    private = b"%s%d" % (_private_prefix(), next(_PRIVATE))
    os.rename(name, private, src_dir_fd=parent, dst_dir_fd=parent)
    try:
        there = os.stat(private, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return "vanished"  # someone removed it in the meantime
    if (there.st_dev, there.st_ino) != checked:
        _put_back(parent, private, name)
        return "changed"
    os.unlink(private, dir_fd=parent)
    return None


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
