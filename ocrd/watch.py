"""A watchdog observer on model_dir whose handler only marks what is dirty, and never raises."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from ocrd import log

# Only what changes the set of files: creations, removals, renames, and a writer letting go of a
# file (IN_CLOSE_WRITE): a file still open for writing is in use and skipped, and its close is
# the moment to look again. Each write is not needed (settling is judged from mtime/ctime when
# the file is looked at again), and leaving IN_MODIFY out of the kernel mask cuts handler calls
# ~5x and makes queue overflow much rarer (WATCH_NOTES: a 50k burst lost events in 2 of 4 runs
# with the default mask).
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]
# Filesystems whose changes inotify does not see when made by another host.
_REMOTE_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "9p",
    "fuse.sshfs",
    "afs",
    "lustre",
    "gpfs",
    "beegfs",
}
_WATCHDOG_LOGGERS = (
    "watchdog.observers.inotify_c",
    "watchdog.observers.inotify",
    "watchdog.observers.api",
)


class Changes:
    """What the handler marked since the main loop last looked (relative paths, as bytes)."""

    def __init__(self) -> None:
        self.files: set[bytes] = set()
        self.dirs: set[bytes] = set()
        self.lost = False  # events were lost: only a full rescan is trustworthy

    def __bool__(self) -> bool:
        return bool(self.files or self.dirs or self.lost)


class Watcher:
    """Owns the observer thread. ``on_change`` is called (from the observer's thread) after each
    mark, to wake the main loop; everything else happens in the main loop via ``take()``."""

    def __init__(
        self,
        model_dir: Path,
        kind: Literal["auto", "inotify", "polling"],
        on_change: Callable[[], None],
        poll_interval: float = 2.0,
    ) -> None:
        self.root = os.fsencode(model_dir)
        self.kind = kind
        self.poll_interval = poll_interval
        self._on_change = on_change
        self._lock = threading.Lock()
        self._changes = Changes()
        self._observer: BaseObserver | None = None
        self.used: str | None = None
        self._log_hook = _LostEventsHook(self.mark_lost)

    def start(self) -> str:
        """Arm the watch; returns "inotify" or "polling" (what was actually used)."""
        self.stop()
        kind = self.kind
        if kind == "auto":
            fs = filesystem_type(self.root)
            kind = "polling" if fs in _REMOTE_FS else "inotify"
        for logger_name in _WATCHDOG_LOGGERS:
            logging.getLogger(logger_name).addHandler(self._log_hook)
        try:
            observer = self._arm(kind)
        except OSError as exc:
            if kind == "polling":
                raise
            # ENOSPC (max_user_watches) or EMFILE (max_user_instances): inotify can't cover us.
            # Even where inotify was asked for, a daemon that watches by polling beats one that
            # crash-loops; the log says so at error level then.
            level = log.get().warning if self.kind == "auto" else log.get().error
            level("watch_fallback", observer="polling", error=str(exc))
            kind = "polling"
            observer = self._arm(kind)
        self._observer = observer
        self.used = kind
        return kind

    def _arm(self, kind: str) -> BaseObserver:
        observer: BaseObserver = (
            PollingObserver(timeout=self.poll_interval) if kind == "polling" else InotifyObserver()
        )
        observer.daemon = True
        observer.schedule(
            _Handler(self), os.fsdecode(self.root), recursive=True, event_filter=_EVENTS
        )
        observer.start()
        return observer

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        for logger_name in _WATCHDOG_LOGGERS:
            logging.getLogger(logger_name).removeHandler(self._log_hook)
        if observer is not None:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=2)

    @property
    def alive(self) -> bool:
        """False once the observer thread or its emitter died (e.g. the watched dir vanished)."""
        o = self._observer
        return o is not None and o.is_alive() and all(e.is_alive() for e in o.emitters)

    def mark(self, path: bytes, is_dir: bool) -> None:
        rel = os.path.relpath(path, self.root) if path != self.root else b""
        if rel.startswith(b".."):
            return
        with self._lock:
            (self._changes.dirs if is_dir else self._changes.files).add(b"" if rel == b"." else rel)
        self._on_change()

    def mark_lost(self) -> None:
        with self._lock:
            self._changes.lost = True
        self._on_change()

    def take(self) -> Changes:
        with self._lock:
            changes, self._changes = self._changes, Changes()
        return changes


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            for path in (event.src_path, event.dest_path):
                if path:
                    self.watcher.mark(os.fsencode(path), event.is_directory)
        except Exception:  # noqa: BLE001 — a handler must never raise; lose nothing instead
            self.watcher.mark_lost()


class _LostEventsHook(logging.Handler):
    """watchdog tells the handler nothing when inotify's queue overflows (or a watch can't be
    added); it only logs. We listen to its loggers and turn those lines into a full rescan."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        super().__init__(level=logging.WARNING)
        self._on_lost = on_lost

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            log.get().warning("events_lost", source=record.name, detail=message[:200])
            self._on_lost()
        except Exception:  # noqa: BLE001 — logging handlers must not raise either
            self.handleError(record)


def watched_inodes() -> set[int] | None:
    """Inodes of every directory this process has an inotify watch on, from
    /proc/self/fdinfo; None where that cannot be read.

    watchdog swallows the ENOSPC of a watch it could not add below the root (the
    max_user_watches limit): the directory is then silently unwatched. Comparing this set
    with the directories a scan found is how the daemon notices.
    """
    found: set[int] = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}", "rb") as fh:
                info = fh.read()
        except OSError:
            continue  # closed meanwhile (listdir's own fd, for one)
        for line in info.splitlines():
            if line.startswith(b"inotify wd:"):
                for part in line.split():
                    if part.startswith(b"ino:"):
                        found.add(int(part[4:], 16))
    return found


class Mount(NamedTuple):
    """One line of /proc/self/mountinfo: where, what filesystem, the per-mount options."""

    point: bytes
    fstype: str
    options: frozenset[str]

    @property
    def atime(self) -> str:
        """How this mount updates atime: "noatime", "relatime" or "strictatime"."""
        for mode in ("noatime", "relatime"):
            if mode in self.options:
                return mode
        return "strictatime"


_OCTAL = re.compile(rb"\\([0-7]{3})")


def mount_of(path: bytes) -> Mount | None:
    """The mount holding ``path`` (after realpath), from /proc/self/mountinfo: the longest
    matching mount point, the last one mounted if several share it. None if unreadable."""
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mountinfo", "rb") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    best: Mount | None = None
    for line in lines:
        left, _, right = line.partition(b" - ")
        fields = left.split()
        if len(fields) < 6 or not right:
            continue
        # The kernel escapes space, tab, newline and backslash as \ooo.
        point = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4])
        inside = real == point or real.startswith(point.rstrip(b"/") + b"/")
        if inside and (best is None or len(point) >= len(best.point)):
            options = frozenset(fields[5].decode(errors="replace").split(","))
            best = Mount(point, right.split()[0].decode(errors="replace"), options)
    return best


def filesystem_type(path: bytes) -> str | None:
    """The type of the filesystem holding ``path``, from /proc/self/mountinfo (longest match)."""
    mount = mount_of(path)
    return mount.fstype if mount else None
