"""The watch on model_dir: a watchdog observer, used through its public API only, whose
handler only marks what is dirty and never raises; the probe that proves it delivers events;
and, where no observer can be had, rescans that stand in for one (docs/watching.md)."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Literal

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserverVFS

from ocrd.base import log
from ocrd.base.errors import Stopped
from ocrd.fs.place import Place
from ocrd.fs.scan import TOP_SKIP
from ocrd.watch.warnings import WatchdogWarnings

Kind = Literal["inotify", "polling", "rescan"]
LADDER: tuple[Kind, ...] = ("inotify", "polling", "rescan")
"""What watches model_dir, best first. A watch that cannot start, dies or is shown blind gives
way to the next: inotify (one event per change), watchdog's polling (a snapshot per interval,
one filesystem), and ocrd's own full rescans (always works; costs a walk per interval)."""

# Only what changes the set of files: creations, removals, renames, and a writer letting go of a
# file (IN_CLOSE_WRITE): a file still open for writing is in use and skipped, and its close is
# the moment to look again. Each write is not needed (settling is judged from mtime/ctime when
# the file is looked at again); leaving IN_MODIFY out of the kernel mask cuts handler calls ~5x
# and makes queue overflow much rarer (docs/watch-facts.md). EventsLostEvent is how watchdog
# says the kernel queue overflowed: only a full rescan is trustworthy then.
# A reader letting go of a file (IN_CLOSE_NOWRITE) is that file's last use (docs/budget.md: the
# close, not the open, so that a rescan's own directory opens raise half the events): it
# changes nothing, so it is recorded, never marked.
EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
]
NO_READS = [e for e in EVENTS if e is not FileClosedNoWriteEvent]

# watchdog's own loggers: a warning there (a watch it could not add, a snapshot that failed) is
# something it did not tell the handler. Logger names are how the logging module is used; no
# attribute of watchdog is touched.
_WATCHDOG_LOGGERS = ("watchdog.observers.inotify", "watchdog.observers.polling")
PROBE_PREFIX = b".ocrd-probe-"
"""The directory the probe makes at the top of model_dir. A directory, not a file: it is never
a model, so no rule, listing or count ever sees it, even one a crash left behind."""


class Counts:
    """What the watch handed over since the daemon started, over every watcher it armed (the
    daemon says it in ``daemon_stopped``; tests count work with it, not time)."""

    def __init__(self) -> None:
        self.events = 0  # the handler's calls: one per event watchdog delivered


class Changes:
    """What the handler marked since the main loop last looked (relative paths, as bytes)."""

    def __init__(self) -> None:
        self.files: set[bytes] = set()
        self.dirs: set[bytes] = set()
        self.lost = False  # events were lost: only a full rescan is trustworthy
        self.poll = False  # no observer: the rescan interval is up

    def __bool__(self) -> bool:
        return bool(self.files or self.dirs or self.lost or self.poll)

    def merged(self, later: Changes) -> Changes:
        """These marks and ``later``'s together (both are consumed)."""
        self.files |= later.files
        self.dirs |= later.dirs
        self.lost = self.lost or later.lost
        self.poll = self.poll or later.poll
        return self


class Unavailable(Exception):
    """This kind of watch could not be started here (the library's error is the cause)."""

    def __init__(self, kind: Kind, exc: BaseException) -> None:
        super().__init__(f"{kind}: {exc!r}"[:300])
        self.kind = kind
        self.errno = getattr(exc, "errno", None)


class Watcher:
    """Owns one observer (or, as kind "rescan", the timer that stands in for one).

    ``on_change`` is called from the observer's thread after each mark, to wake the main loop;
    ``on_use`` with each file another process closed after reading (its path relative to
    model_dir, and the wall time), to record its last use;
    everything else happens in the main loop through ``take()``. The watch is on model_dir's
    resolved path; the disk is the truth (events are hints: each marked path is looked at again
    through model_dir's pinned fd, one filesystem, no symlink followed)."""

    def __init__(
        self,
        model_dir: Place,
        kind: Kind,
        on_change: Callable[[], None],
        poll_interval: float = 2.0,
        tick: Callable[[], bool] | None = None,
        *,
        on_use: Callable[[bytes, float], None] | None = None,
        counts: Counts | None = None,
    ) -> None:
        self.place = model_dir
        self.root = model_dir.real
        self._below = self.root.rstrip(b"/") + b"/"  # what every path inside model_dir starts with
        self.counts = counts or Counts()
        self.kind: Kind = kind
        self.poll_interval = poll_interval
        self._on_change = on_change
        self._on_use = on_use
        self._tick = tick
        self._lock = threading.Lock()
        self._changes = Changes()
        self._observer: BaseObserver | None = None
        self._timer: _Timer | None = None
        self._log_hook = WatchdogWarnings(self)
        self.armed_at = 0.0  # wall time the watch started delivering (for the rescan check)
        self.probe: bytes | None = None  # the probe's name while one is out
        self._probes: deque[bytes] = deque(maxlen=4)  # the latest probes' names
        self.probe_seen = threading.Event()
        self.proven = False  # its probe came through at least once
        self.failed: str | None = None  # why the observer broke down, once it did

    def start(self) -> None:
        """Start watching; raises Unavailable if this kind cannot watch model_dir, Stopped if
        SIGTERM came while polling took its first snapshot."""
        self.failed = None
        self.armed_at = time.time()
        if self.kind == "rescan":
            self._timer = _Timer(self.poll_interval, self._poke)
            self._timer.start()
            return
        observer: BaseObserver
        if self.kind == "polling":
            try:
                dev = os.stat(self.root, follow_symlinks=False).st_dev
            except OSError as exc:  # gone meanwhile: check_root says so
                raise Unavailable(self.kind, exc) from exc
            observer = PollingObserverVFS(
                _lstat, self._listdir(dev), polling_interval=self.poll_interval
            )
        else:
            observer = InotifyObserver()
        observer.daemon = True
        for name in _WATCHDOG_LOGGERS:
            logging.getLogger(name).addHandler(self._log_hook)
        logging.getLogger("py.warnings").addFilter(self._log_hook)
        try:
            observer.schedule(
                _Handler(self),
                os.fsdecode(self.root),
                recursive=True,
                # Reads are asked of the kernel only when someone records them: each rescan's
                # directory opens raise such events too (docs/budget.md, what it costs).
                event_filter=EVENTS if self._on_use else NO_READS,
            )
            observer.start()
        except Stopped:
            self._drop(observer)
            raise
        except Exception as exc:
            self._drop(observer)
            raise Unavailable(self.kind, exc) from exc
        self._observer = observer

    def _drop(self, observer: BaseObserver) -> None:
        for name in _WATCHDOG_LOGGERS:
            logging.getLogger(name).removeHandler(self._log_hook)
        logging.getLogger("py.warnings").removeFilter(self._log_hook)
        try:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=2)
        except Exception as exc:  # noqa: BLE001 — stopping what never ran may fail; said
            log.get().debug("watch_stop_failed", error=repr(exc)[:300])

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.stop()
        if observer is not None:
            self._drop(observer)

    @property
    def alive(self) -> bool:
        """False once the observer or one of its emitters died (a library error in its thread,
        model_dir removed), or watching failed in a way only arming anew can repair."""
        if self.failed is not None:
            return False
        if self._timer is not None:
            return self._timer.is_alive()
        o = self._observer
        return o is not None and o.is_alive() and all(e.is_alive() for e in o.emitters)

    def fail(self, why: str) -> None:
        """The watch can no longer be trusted: said once; the loop re-arms and rescans."""
        if self.failed is None:
            self.failed = why[:300]
            log.get().error("watch_failed", observer=self.kind, error=self.failed)
        self.mark_lost()

    # -- the probe -----------------------------------------------------------------------

    def send_probe(self, root_fd: int) -> str | None:
        """Make the probe directory at the top of model_dir; the handler sets ``probe_seen``
        when the watch reports it. None when sent, else why it could not be."""
        self.probe_seen.clear()
        for _ in range(8):  # a name someone else made first is not ours: another one
            name = PROBE_PREFIX + f"{os.getpid()}-{secrets.token_hex(8)}".encode()
            self.probe = name  # before the mkdir: its event may come before mkdir returns
            self._probes.append(name)  # its removal's event is known for ours too
            try:
                os.mkdir(name, 0o700, dir_fd=root_fd)
            except FileExistsError:
                continue
            except OSError as exc:
                self.probe = None
                return exc.strerror or str(exc)
            return None
        self.probe = None
        return "every probe name tried was taken"

    def take_probe(self, root_fd: int) -> None:
        """Remove the probe directory (it stays ours: made 0700, and only ocrd's uid or root
        can remove an entry of ours from a sticky model_dir)."""
        name, self.probe = self.probe, None
        if name is None:
            return
        try:
            os.rmdir(name, dir_fd=root_fd)
        except FileNotFoundError:
            pass  # someone removed it: nothing of ours is left
        except OSError as exc:
            log.get().warning("watch_probe_left", path=os.fsdecode(name), error=exc.strerror)

    def _saw(self, path: bytes) -> bool:
        """Whether ``path`` is a probe of this watcher's, at the top of model_dir (the one out
        is then seen: the watch works). Its own events are not marked; anything inside it, or
        any other entry with a probe-like name, is a change like any other."""
        top, _, name = path.rpartition(b"/")
        if top != self.root or name not in self._probes:
            return False
        if name == self.probe:
            self.probe_seen.set()
            self._on_change()
        return True

    # -- marks ---------------------------------------------------------------------------

    def _relative(self, path: bytes) -> bytes | None:
        """``path`` (as watchdog names it: model_dir's path joined with what is below it)
        relative to model_dir, b"" for model_dir itself, None if outside it. A prefix cut, not
        os.path.relpath: this runs once per event, in the observer's thread."""
        if path.startswith(self._below):
            return path[len(self._below) :]
        return b"" if path == self.root else None

    def used(self, path: bytes) -> None:
        """Another process closed the file ``path`` after reading it (ocrd.watch.lastuse)."""
        if self._on_use is None:
            return
        rel = self._relative(path)
        if rel:
            self._on_use(rel, time.time())

    def mark(self, path: bytes, is_dir: bool) -> None:
        """``path`` is to be looked at again. Marks are a set: any number of events on one
        path before the loop takes them are one look at it; the loop is woken once per batch."""
        if self._saw(path):
            return
        rel = self._relative(path)
        if rel is None:
            return
        with self._lock:
            changes = self._changes
            first = not changes
            (changes.dirs if is_dir else changes.files).add(rel)
        if first:
            self._on_change()

    def mark_lost(self) -> None:
        with self._lock:
            self._changes.lost = True
        self._on_change()

    def _poke(self) -> None:
        with self._lock:
            self._changes.poll = True
        self._on_change()

    def take(self) -> Changes:
        with self._lock:
            changes, self._changes = self._changes, Changes()
        if changes.poll and self._timer is not None:
            self._timer.taken.set()
        return changes

    def _listdir(self, dev: int) -> Callable[[str | None], Iterator[os.DirEntry[str]]]:
        """scandir for watchdog's snapshots: directories on another filesystem are left out
        (never entered, as everywhere in ocrd), and the first snapshot, taken while arming in
        the main thread, feeds systemd's watchdog and gives way to SIGTERM between directories."""
        main = threading.main_thread()
        tick = self._tick
        root = os.fsdecode(self.root)

        def listdir(path: str | None) -> Iterator[os.DirEntry[str]]:
            if tick is not None and threading.current_thread() is main and tick():
                raise Stopped
            with os.scandir(path) as it:
                entries = list(it)
            # The trash is no model's place (ocrd.fs.trash): not walked each interval either.
            skip = TOP_SKIP if path == root else None
            return iter([e for e in entries if e.name != skip and not _crosses(e, dev)])

        return listdir


def _lstat(path: str) -> os.stat_result:
    return os.stat(path, follow_symlinks=False)


def _crosses(entry: os.DirEntry[str], dev: int) -> bool:
    try:
        return (
            entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_dev != dev
        )
    except OSError:
        return True  # gone, or unreadable: the rescan reports it


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.watcher.counts.events += 1
        try:
            if isinstance(event, EventsLostEvent):
                return  # on_events_lost
            if isinstance(event, FileClosedNoWriteEvent):
                self.watcher.used(os.fsencode(event.src_path))
                return
            for path in (event.src_path, event.dest_path):
                if path:
                    self.watcher.mark(os.fsencode(path), event.is_directory)
        except Exception:  # noqa: BLE001 — a handler must never raise; lose nothing instead
            self.watcher.mark_lost()

    def on_events_lost(self, event: EventsLostEvent) -> None:
        try:
            log.get().warning(
                "events_lost",
                source=self.watcher.kind,
                detail="inotify queue overflow: events were lost; rescanning model_dir",
            )
        finally:
            self.watcher.mark_lost()


class _Timer(threading.Thread):
    """Kind "rescan": asks the loop for a full rescan every ``interval`` seconds, counted from
    when the loop took the last request (a slow scan is never stacked on another)."""

    def __init__(self, interval: float, poke: Callable[[], None]) -> None:
        super().__init__(name="ocrd-rescan-timer", daemon=True)
        self.interval = interval
        self.poke = poke
        self.halt = threading.Event()
        self.taken = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.taken.clear()
            self.poke()
            while not self.taken.wait(1.0):
                if self.halt.is_set():
                    return

    def stop(self) -> None:
        self.halt.set()
        self.taken.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=2)
