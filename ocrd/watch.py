"""A watchdog observer on model_dir whose handler only marks what is dirty, and never raises."""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

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
from watchdog.observers.api import DEFAULT_EMITTER_TIMEOUT, BaseObserver, EventQueue, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyConstants, InotifyFD, Mask
from watchdog.observers.inotify_move_event_grouper import GroupedInotifyEvent, PathedInotifyEvent
from watchdog.observers.polling import PollingEmitter
from watchdog.utils import Seconds
from watchdog.utils.dirsnapshot import DirectorySnapshot

from ocrd import log
from ocrd.errors import ModelDirMissing, Stopped
from ocrd.fsdirs import DirFds
from ocrd.rootdir import Place, open_root, walk_dirs

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
    mark, to wake the main loop; everything else happens in the main loop via ``take()``.

    The watch is on model_dir's pinned directory (never on a symlink naming it) and covers its
    filesystem only. Directories are found by ocrd's own walk (rootdir.walk_dirs: no recursion,
    fds bounded, mount points not entered), and each watch is added through its verified fd;
    watchdog's own recursive walk (os.walk, recursive in Python 3.11) is not used: a deep tree
    made it raise RecursionError at start and kill its thread at run time."""

    def __init__(
        self,
        model_dir: Place,
        kind: Literal["auto", "inotify", "polling"],
        on_change: Callable[[], None],
        poll_interval: float = 2.0,
        tick: Callable[[], bool] | None = None,
    ) -> None:
        self.place = model_dir
        self.root = model_dir.real
        self.kind = kind
        self.poll_interval = poll_interval
        self._on_change = on_change
        self._tick = tick
        self._lock = threading.Lock()
        self._changes = Changes()
        self._observer: BaseObserver | None = None
        self.used: str | None = None
        self.failed: str | None = None  # why the observer broke down, once it did
        self._log_hook = _LostEventsHook(self.mark_lost)

    def start(self) -> str:
        """Arm the watch; returns "inotify" or "polling" (what was actually used)."""
        self.stop()
        self.failed = None
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
        extra: dict[str, Any] = {"place": self.place, "on_error": self._failed, "tick": self._tick}
        observer: BaseObserver = (
            BaseObserver(_PollingEmitter, timeout=self.poll_interval, **extra)
            if kind == "polling"
            else _InotifyObserver(**extra)
        )
        observer.daemon = True
        observer.schedule(
            _Handler(self), os.fsdecode(self.root), recursive=True, event_filter=_EVENTS
        )
        try:
            observer.start()
        except BaseException:
            observer.stop()
            raise
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
        """False once the observer thread or its emitter died (e.g. the watched dir vanished),
        or watching failed in a way that only arming anew can repair."""
        o = self._observer
        return (
            o is not None
            and self.failed is None
            and o.is_alive()
            and all(e.is_alive() for e in o.emitters)
        )

    def _failed(self, where: str, exc: BaseException) -> None:
        """An observer thread caught ``exc``: said once, and the daemon re-arms and rescans."""
        if self.failed is None:
            self.failed = f"{where}: {exc!r}"[:300]
            log.get().error("watch_failed", where=where, error=repr(exc)[:300])
        self.mark_lost()

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


ErrorSink = Callable[[str, BaseException], None]


@dataclass
class _WatchGroup(InotifyWatchGroup):
    """watchdog's recursive watch group, with its three walks replaced: directories are found
    by rootdir.walk_dirs from model_dir's pinned fd (one filesystem, no recursion, bounded
    fds), and each watch is added on ``/proc/self/fd/N`` of the verified directory — the very
    inode the walk opened, at any depth (a path longer than PATH_MAX cannot be watched by
    name). Errors in its callbacks, which run in watchdog's reader thread, are reported to
    ``on_error`` instead of killing that thread."""

    place: Place | None = None
    on_error: ErrorSink | None = None
    tick: Callable[[], bool] | None = None  # only while arming, in the main thread

    def _add_all_callbacks(self, path: bytes) -> None:
        assert self.place is not None
        rel = b"" if path == self.path else os.path.relpath(path, self.path)
        if rel.startswith(b".."):
            return
        try:
            with DirFds(self.place) as dirs:
                fd = os.dup(dirs.open(rel))
                boundary = dirs.boundary
        except (OSError, ModelDirMissing) as exc:
            if not rel:
                raise OSError(f"cannot watch {os.fsdecode(path)}: {exc}") from exc
            return  # gone or replaced since the event: the daemon's refresh looks at it
        try:
            for here in walk_dirs(fd, boundary=boundary, tick=self.tick if not rel else None):
                self._add_fd_callback(path + b"/" + here.path if here.path else path, here.fd)
                try:
                    with os.scandir(here.fd) as it:
                        here.subdirs.extend(e.name for e in it if e.is_dir(follow_symlinks=False))
                except OSError:
                    continue  # unreadable: the scan reports it, the rescan covers it
        except Stopped:
            return  # SIGTERM while arming: the daemon is on its way out

    def _add_fd_callback(self, path: bytes, fd: int) -> None:
        mask = Mask(self.event_mask & ~InotifyConstants.IN_DONT_FOLLOW)
        try:
            # Following /proc/self/fd/N is safe: it is the directory the walk verified.
            wd = self._inotify_fd.add_callback(
                f"/proc/self/fd/{fd}".encode(), mask, self._callback, self._id
            )
        except OSError:
            if path == self.path:
                raise
            return  # max_user_watches: Daemon._watch_incomplete notices and says so
        self._active_callbacks_by_path[path] = wd
        self._active_callbacks_by_watch[wd] = path

    def _recursive_simulate(self, src_path: bytes) -> list[Any]:
        return []  # a new directory is walked whole by the daemon's refresh, events or not

    def on_event(self, event: Any) -> None:
        try:
            super().on_event(event)
        except Exception as exc:  # noqa: BLE001 — it would kill watchdog's reader thread
            if self.on_error is not None:
                self.on_error("inotify", exc)

    def on_queue_overflow(self) -> None:
        try:
            super().on_queue_overflow()
        except Exception as exc:  # noqa: BLE001 — as above
            if self.on_error is not None:
                self.on_error("inotify", exc)


class _InotifyEmitter(InotifyEmitter):
    def __init__(
        self,
        event_queue: EventQueue,
        watch: ObservedWatch,
        *,
        timeout: Seconds = DEFAULT_EMITTER_TIMEOUT,
        event_filter: list[type[FileSystemEvent]] | None = None,
        inotify_fd: InotifyFD | None = None,
        place: Place,
        on_error: ErrorSink,
        tick: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(
            event_queue, watch, timeout=timeout, event_filter=event_filter, inotify_fd=inotify_fd
        )
        self._place, self._on_error, self._tick = place, on_error, tick

    def on_thread_start(self) -> None:
        group = _WatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=True,
            event_mask=self.get_event_mask_from_filter(),
            place=self._place,
            on_error=self._on_error,
            tick=self._tick,
        )
        group.tick = None  # later walks run in watchdog's thread, not the main loop's
        self._inotify = group

    def queue_events(self, timeout: Seconds, *, full_events: bool = False) -> None:
        try:
            super().queue_events(timeout, full_events=full_events)
        except Exception as exc:  # noqa: BLE001 — it would kill the emitter thread
            self._on_error("emitter", exc)
            self.stop()

    def build_and_queue_event(
        self, event: GroupedInotifyEvent, *, full_events: bool = False
    ) -> None:
        # A directory moved in or within: its own event only. watchdog would add one per entry
        # below it from os.walk (recursive: RecursionError in a deep tree); the daemon walks a
        # marked directory whole anyway.
        if not isinstance(event, PathedInotifyEvent):
            src, dest = (self._decode_path(e.path) for e in event)
            moved = DirMovedEvent if event[0].ev.is_directory else FileMovedEvent
            self.queue_event(moved(src, dest))
        elif event.ev.is_moved_to and event.ev.is_directory:
            self.queue_event(DirCreatedEvent(self._decode_path(event.path)))
        else:
            super().build_and_queue_event(event, full_events=full_events)


class _InotifyObserver(BaseObserver):
    """watchdog's InotifyObserver with our emitter (its constructor fixes the emitter class)."""

    def __init__(self, **emitter_kwargs: Any) -> None:
        self._inotify_fd = InotifyFD()
        self._inotify_fd.start()
        super().__init__(_InotifyEmitter, inotify_fd=self._inotify_fd, **emitter_kwargs)

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self._inotify_fd.stop()
        self._inotify_fd.join()


class _PollingEmitter(PollingEmitter):
    """watchdog's polling emitter with ocrd's walk for its snapshots (watchdog's follows
    symlinks to directories, crosses mounts and recurses)."""

    def __init__(
        self,
        event_queue: EventQueue,
        watch: ObservedWatch,
        *,
        timeout: Seconds = DEFAULT_EMITTER_TIMEOUT,
        event_filter: list[type[FileSystemEvent]] | None = None,
        place: Place,
        on_error: ErrorSink,
        tick: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(event_queue, watch, timeout=timeout, event_filter=event_filter)
        self._on_error = on_error
        self._place, self._tick = place, tick
        self._take_snapshot = lambda: _snapshot(place, str(watch.path))

    def on_thread_start(self) -> None:
        # The first snapshot is taken in the main thread, while arming: it pings the watchdog
        # between directories and gives way to SIGTERM, as the scan does.
        try:
            self._snapshot = _snapshot(self._place, str(self.watch.path), self._tick)
        except Stopped:
            return
        except Exception as exc:  # noqa: BLE001 — polled again at the next interval
            self._on_error("polling", exc)

    def queue_events(self, timeout: Seconds) -> None:
        try:
            super().queue_events(timeout)
        except Exception as exc:  # noqa: BLE001 — it would kill the emitter thread
            self._on_error("polling", exc)
            self.stop()


def _snapshot(place: Place, top: str, tick: Callable[[], bool] | None = None) -> DirectorySnapshot:
    """A DirectorySnapshot of model_dir's filesystem, by rootdir.walk_dirs, links not followed."""
    snap = DirectorySnapshot.__new__(DirectorySnapshot)  # not its __init__: that walks itself
    snap.recursive, snap.stat, snap.listdir = True, os.stat, os.scandir
    info: dict[bytes | str, os.stat_result] = {}
    inodes: dict[tuple[int, int], bytes | str] = {}
    snap._stat_info, snap._inode_to_path = info, inodes  # filled as its __init__ would
    try:
        fd = open_root(place)
    except ModelDirMissing as exc:  # polling reports the watched directory deleted, and stops
        raise FileNotFoundError(str(exc)) from exc
    st = os.fstat(fd)
    info[top], inodes[(st.st_ino, st.st_dev)] = st, top
    for here in walk_dirs(fd, tick=tick):
        base = f"{top}/{os.fsdecode(here.path)}" if here.path else top
        try:
            with os.scandir(here.fd) as it:
                for entry in it:
                    try:
                        s = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    path = f"{base}/{entry.name}"
                    info[path], inodes[(s.st_ino, s.st_dev)] = s, path
                    if stat.S_ISDIR(s.st_mode):
                        here.subdirs.append(entry.name)
        except OSError:
            continue
    return snap


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
