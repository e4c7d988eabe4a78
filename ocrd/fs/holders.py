"""The fallback in-use check: which files the processes in /proc hold open or mapped.

The first check is the kernel's own (a write lease, see ``ocrd.ops.delete``): it sees every holder
in every user and PID namespace. This module answers only for files where a lease cannot be taken
(a filesystem without leases, such as NFS; a file of another user without CAP_LEASE), and it
answers in three ways, never two: held, free, or *unknown* — a process we could not fully
inspect, a PID namespace that hides processes, a view that did not finish in time. The caller
keeps a file whose holders are unknown (fail closed).

How it reads /proc matters as much as what it reads:

- Only procfs is touched. A process's open files are named by ``/proc/PID/fdinfo/N`` (``mnt_id``
  and ``ino``), never by ``stat(/proc/PID/fd/N)``, which asks the file's own filesystem and hangs
  for as long as a dead NFS server or FUSE daemon does.
- A file is identified by (superblock device, inode). ``st_dev`` is not that on btrfs (each
  subvolume reports an anonymous device of its own, while /proc/PID/maps and mountinfo show the
  superblock's): comparing ``st_dev`` with maps misses every mapped model on btrfs.
- The view is taken in a thread of its own and waited for at most ``timeout_s``: should procfs
  ever block (a process stuck with its mmap lock held), the pass goes on and the answer is
  unknown.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum

from ocrd.fs.procfs import fdinfo, mnt_ino, mountinfo

FileId = tuple[int, int]  # (superblock device as in mountinfo and maps, inode)

PROC_PID_INIT_INO = 0xEFFFFFFC  # the inode of the initial PID namespace (include/linux/proc_ns.h)
PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread, which holds no files


class Answer(StrEnum):
    HELD = "held"
    FREE = "free"
    UNKNOWN = "unknown"
    LEASED = "leased"  # free, and kept free by our lease (ocrd.ops.delete)


@dataclass(frozen=True)
class View:
    """Every file some visible process had open or mapped at ``taken_at`` (monotonic).

    ``held`` is keyed by superblock device; ``held_any_device`` holds inodes whose device could
    not be told (an fd through a mount that no mountinfo lists, such as a lazily unmounted bind
    mount): such an inode counts as held on every device, which can only keep a file too many.
    ``limits`` says why the view is not complete, each with the fix; empty when it is.
    """

    held: frozenset[FileId] = frozenset()
    held_any_device: frozenset[int] = frozenset()
    limits: tuple[str, ...] = ()
    processes: int = 0
    taken_at: float = float("-inf")

    @property
    def complete(self) -> bool:
        return not self.limits

    def answer(self, file_id: FileId) -> Answer:
        if file_id in self.held or file_id[1] in self.held_any_device:
            return Answer.HELD
        return Answer.FREE if self.complete else Answer.UNKNOWN


@dataclass
class Holders:
    """A shared, lazily refreshed View: taken when first asked for, then reused while younger
    than ``max_age_s``, so a pass costs at most one walk of /proc per ``max_age_s``, and none
    at all while every file can be leased."""

    proc: str = "/proc"
    max_age_s: float = 2.0
    timeout_s: float = 2.0
    current: View = field(default_factory=View)
    # Deleting threads share one view; the lock makes a stale one be retaken once.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _taking: threading.Thread | None = field(default=None, repr=False, compare=False)
    _taken: list[View] = field(default_factory=list, repr=False, compare=False)

    def view(self) -> View:
        if time.monotonic() - self.current.taken_at <= self.max_age_s:
            return self.current
        with self.lock:
            if time.monotonic() - self.current.taken_at > self.max_age_s:
                self.current = self._take_in_time()
            return self.current

    def answer(self, file_id: FileId) -> Answer:
        return self.view().answer(file_id)

    def refresh(self) -> View:
        """A new view now, whatever the age of the last one."""
        with self.lock:
            self.current = self._take_in_time()
            return self.current

    def _take_in_time(self) -> View:
        if self._taking is not None and self._taking.is_alive():
            return _limited(
                "the last look into /proc has not returned yet (a process stuck in "
                "the kernel?); ocrd keeps the files until it does"
            )
        self._taken.clear()
        worker = threading.Thread(
            target=lambda: self._taken.append(take(self.proc)), name="ocrd-holders", daemon=True
        )
        self._taking = worker
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive() or not self._taken:
            return _limited(f"looking into /proc took longer than {self.timeout_s:g}s")
        return self._taken[0]


def _limited(why: str) -> View:
    return View(limits=(why,), taken_at=time.monotonic())


def take(proc: str = "/proc") -> View:
    """Walk ``proc`` once: every (device, inode) open or mapped by a process we can see."""
    limits: list[str] = []
    if not initial_pid_namespace(proc):
        limits.append(
            "ocrd runs in a PID namespace of its own (a container?): processes outside it are "
            "invisible; run it in the host's PID namespace, or use a filesystem with leases"
        )
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError as exc:
        return _limited(f"cannot list {proc}: {exc.strerror or exc}")
    devices = Mounts(proc)
    own = str(os.getpid())
    held: set[FileId] = set()
    any_device: set[int] = set()
    uninspected = 0
    first_error: str | None = None
    for pid in pids:
        try:
            _inspect(proc, pid, devices, held, any_device, fds=pid != own)
        except ProcessGone:
            continue
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM) and _kernel_thread(proc, pid):
                continue
            uninspected += 1
            if first_error is None:
                first_error = f"{exc.strerror or exc} ({exc.filename or pid})"
    if uninspected:
        fix = (
            "their files can only be judged by a lease (CAP_LEASE), or by /proc as root"
            if any(e in (first_error or "") for e in ("Permission", "Operation not permitted"))
            else "raise its open-file limit or retry"
        )
        limits.append(
            f"{uninspected} of {len(pids)} processes could not be inspected, first: "
            f"{first_error}; {fix}"
        )
    return View(frozenset(held), frozenset(any_device), tuple(limits), len(pids), time.monotonic())


def take_own(
    skip_fd: int | None = None, proc: str = "/proc", mounts: Mounts | None = None
) -> set[FileId]:
    """What this process itself holds (open on any fd but ``skip_fd``, or mapped)."""
    held: set[FileId] = set()
    devices = mounts or Mounts(proc)
    _inspect(proc, "self", devices, held, set(), fds=False)
    try:
        numbers = os.listdir(f"{proc}/self/fd")
    except OSError:
        return held
    for fd in numbers:
        if str(skip_fd) == fd:
            continue
        found = _own_fd(fd, proc)
        device = None if found is None else devices.device(found[0])
        if found is not None and device is not None:
            held.add((device, found[1]))
    return held


def _own_fd(fd: int | str, proc: str = "/proc") -> tuple[int, int] | None:
    """(mnt_id, ino) of this process's fd ``fd``, from /proc/self/fdinfo; None where /proc
    cannot tell (the fd is closed, or the kernel is older than 5.14)."""
    try:
        return mnt_ino(fdinfo(f"{proc}/self", fd))
    except OSError:
        return None


class ProcessGone(Exception):
    """The process exited while we looked: it holds nothing any more."""


def _inspect(
    proc: str,
    pid: str,
    devices: Mounts,
    held: set[FileId],
    any_device: set[int],
    *,
    fds: bool = True,
) -> None:
    """Adds what process ``pid`` holds. ``fds=False`` (ocrd itself) reads only its mappings:
    its open model files are the ones it is checking right now, and the engine, which maps
    its model, is freed before any deletion."""
    base = f"{proc}/{pid}"
    try:
        numbers = os.listdir(f"{base}/fd") if fds else []
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone from exc
    for fd in numbers:
        try:
            info = fdinfo(base, fd)
        except FileNotFoundError:
            continue  # closed since the listing: it holds nothing now
        except ProcessLookupError as exc:
            raise ProcessGone from exc
        found = mnt_ino(info)
        if found is None:
            raise OSError(errno.ENOTSUP, "fdinfo has no mnt_id/ino (kernel older than 5.14)")
        mnt_id, ino = found
        device = devices.device(mnt_id, pid)
        if device is not None:
            held.add((device, ino))
        elif not _anonymous(f"{base}/fd/{fd}"):
            any_device.add(ino)
    try:
        with open(f"{base}/maps", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone from exc
    for line in data.splitlines():
        # address perms offset dev inode pathname — e.g. "7f..-7f.. r--s 00000000 fd:01 1234 /m/x"
        parts = line.split(None, 5)
        if len(parts) < 5 or parts[4] == b"0":
            continue
        major, _, minor = parts[3].partition(b":")
        held.add((os.makedev(int(major, 16), int(minor, 16)), int(parts[4])))


def _anonymous(fd_link: str) -> bool:
    """A socket, pipe or anon inode: readlink names those without asking any filesystem."""
    try:
        target = os.readlink(fd_link)
    except OSError:
        return False
    return target.startswith(("socket:", "pipe:", "anon_inode:", "[", "/memfd:"))


def _kernel_thread(proc: str, pid: str) -> bool:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as fh:
            stat = fh.read()
        flags = int(stat[stat.rindex(b")") + 2 :].split()[6])
    except (OSError, ValueError, IndexError):
        return False
    return bool(flags & PF_KTHREAD)


def initial_pid_namespace(proc: str = "/proc") -> bool:
    try:
        return os.stat(f"{proc}/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError:
        return False


class Mounts:
    """mnt_id → the superblock device mountinfo shows for it. Mount ids are unique across
    mount namespaces, so one map serves every process; an id we do not know is looked up in
    that process's own mountinfo (it lives in another mount namespace)."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.devices: dict[int, int] = {}
        self.types: dict[int, bytes] = {}  # mnt_id → filesystem type, e.g. b"overlay"
        self.read_from: set[str] = set()
        self._read(f"{proc}/self/mountinfo")

    def device(self, mnt_id: int, pid: str = "self") -> int | None:
        found = self.devices.get(mnt_id)
        if found is None and pid not in self.read_from:
            self.read_from.add(pid)
            self._read(f"{self.proc}/{pid}/mountinfo")
            found = self.devices.get(mnt_id)
        return found

    def _read(self, path: str) -> None:
        for m in mountinfo(path) or ():
            if m.mnt_id is None or m.device is None:
                continue
            self.devices[m.mnt_id] = m.device
            if m.fstype is not None:
                self.types[m.mnt_id] = m.fstype


STACKED = (b"overlay", b"fuse")
"""Filesystems whose files may be mapped through another file: overlayfs maps the file of the
layer below (measured: a lease on the overlay file was granted while another process had it
mapped, its fd closed), and FUSE may pass mappings through to a backing file. A lease there
sees every open fd, but not every mapping."""


def lease_blind(fd: int, mounts: Mounts) -> bool:
    """Whether a lease on ``fd`` may miss a process that only maps the file: its filesystem
    is one of STACKED (or /proc cannot tell which it is)."""
    found = _own_fd(fd, mounts.proc)
    if found is None or mounts.device(found[0]) is None:
        return True
    fstype = mounts.types.get(found[0], b"")
    return fstype.partition(b".")[0] in STACKED


def file_id(fd: int, mounts: Mounts | None = None) -> FileId | None:
    """(superblock device, inode) of an open fd, as /proc shows its holders; None if /proc
    cannot tell."""
    found = _own_fd(fd)
    if found is None:
        return None
    device = (mounts or Mounts()).device(found[0])
    return None if device is None else (device, found[1])
