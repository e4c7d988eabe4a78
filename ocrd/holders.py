"""Finds which files some process holds open or mapped, by reading /proc (best effort)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

FileId = tuple[int, int]  # (st_dev, st_ino)


@dataclass
class Holders:
    """A snapshot of every (device, inode) that any visible process has open or mapped.

    One snapshot serves a whole batch of deletions (refreshed when older than ``max_age_s``), so
    the cost is one walk of /proc per pass, not one per file: on a host with P processes and F
    open files it is about P directory listings, P small reads of ``maps`` and F stat calls.
    ``blind`` counts the processes we were not allowed to look into (another user's, without
    CAP_SYS_PTRACE): their files are unknown to us, and the caller says so in the log.
    """

    proc: str = "/proc"
    max_age_s: float = 2.0
    held: set[FileId] = field(default_factory=set)
    blind: int = 0
    processes: int = 0
    taken_at: float = float("-inf")
    # Deleting threads share one snapshot; the lock makes a stale one be retaken once, not by
    # each thread that notices.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def holds(self, file_id: FileId) -> bool:
        if time.monotonic() - self.taken_at > self.max_age_s:
            with self.lock:
                if time.monotonic() - self.taken_at > self.max_age_s:
                    self.refresh()
        return file_id in self.held

    def refresh(self) -> None:
        held: set[FileId] = set()
        blind = processes = 0
        try:
            pids = [name for name in os.listdir(self.proc) if name.isdigit()]
        except OSError:
            pids = []
        for pid in pids:
            processes += 1
            fd_dir = f"{self.proc}/{pid}/fd"
            try:
                fds = os.listdir(fd_dir)
            except FileNotFoundError:
                continue  # exited meanwhile
            except PermissionError:
                blind += 1
                fds = []
            for fd in fds:
                try:
                    s = os.stat(f"{fd_dir}/{fd}")
                except OSError:
                    continue  # closed meanwhile, or a socket/pipe we cannot stat
                held.add((s.st_dev, s.st_ino))
            held.update(_mapped(f"{self.proc}/{pid}/maps"))
        self.held, self.blind, self.processes = held, blind, processes
        self.taken_at = time.monotonic()


def _mapped(maps_path: str) -> set[FileId]:
    found: set[FileId] = set()
    try:
        with open(maps_path, "rb") as fh:
            data = fh.read()
    except OSError:
        return found
    for line in data.splitlines():
        # address perms offset dev inode pathname — e.g. "7f..-7f.. r--s 00000000 fd:01 1234 /m/x"
        parts = line.split(None, 5)
        if len(parts) < 5 or parts[4] == b"0":
            continue
        major, _, minor = parts[3].partition(b":")
        try:
            found.add((os.makedev(int(major, 16), int(minor, 16)), int(parts[4])))
        except ValueError:
            continue
    return found
