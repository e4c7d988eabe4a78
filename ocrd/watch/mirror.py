"""model_dir as the daemon knows it between scans: its files, its directories, the paths to look
at again and its root's identity, brought up to date from the disk, never from what an event
claims; the watch on it is ocrd.watch.watching's."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from pathlib import Path

from ocrd.base import log
from ocrd.base.clock import Clock
from ocrd.base.collector import collecting_paused
from ocrd.base.errors import ModelDirMissing
from ocrd.config.schema import Watch
from ocrd.fs.arrival import Arrivals
from ocrd.fs.inventory import FileEntry, display
from ocrd.fs.place import identify, open_root, pin
from ocrd.fs.scan import scan_batches, unreadable
from ocrd.watch.index import Index
from ocrd.watch.observer import Changes, Kind, Watcher
from ocrd.watch.refresh import Refreshed, refresh
from ocrd.watch.refresh import below_any as _below_any
from ocrd.watch.watching import Watching

MISSED_GRACE_S = 2.0  # a change this recent may still be on its way through the watch
SCAN_CHUNK = 8192  # records a full scan hands on at once, however big a directory


class Root(StrEnum):
    """What became of model_dir since the mirror last looked."""

    OK = "ok"  # the same directory, watched
    MISSING = "missing"  # still gone
    VANISHED = "vanished"  # gone since the last look: the mirror forgot what it held
    RETURNED = "returned"  # back after it was gone: watched anew, to be scanned
    REARMED = "rearmed"  # replaced, or its watch died or fell short: watched anew, to be scanned


class Mirror:
    """model_dir's files (a packed Index), every directory under it with its inode (what the
    watch must cover), the paths to look at again, its root's identity, the mount points not
    entered, and the watch on it (``watching``, ocrd.watch.watching). ``tick`` is asked
    between directories of every walk (SIGTERM, the watchdog); ``wake`` is what the watch
    calls on an event."""

    def __init__(
        self,
        model_dir: Path,
        watch: Watch,
        clock: Clock,
        *,
        wake: Callable[[], None],
        tick: Callable[[], bool],
        on_use: Callable[[bytes, float], None] | None = None,
    ) -> None:
        self.place = pin(model_dir)  # resolved once; a reload resolves anew
        self.clock = clock
        self.wake = wake
        self.tick = tick
        self.watching = Watching(
            model_dir, self.place, watch, clock, wake=wake, tick=tick, on_use=on_use
        )
        self.arrivals = Arrivals(self.place.real)  # what was seen arriving, and when
        self.index = Index()
        self.directories: dict[bytes, int] = {}  # every directory under model_dir → its inode
        self.pending: set[bytes] = set()  # files to look at again at the next refresh
        self.root_id: tuple[int, int] | None = None
        self.missing = False
        self.mounts: set[tuple[bytes, str]] = set()  # (path, device) not entered, as logged

    # -- model_dir itself ------------------------------------------------------------------

    def reconfigure(self, model_dir: Path, watch: Watch) -> None:
        """A reload: model_dir is resolved anew, and watched anew if anything about it changed
        (or to try the watch the config asks for again, after a fallback)."""
        place = pin(model_dir)
        if place != self.place:
            self.arrivals = Arrivals(place.real)
        self.place = place
        if self.watching.aim(model_dir, place, watch):
            self.missing = False
            self.arm()

    def arm(self) -> None:
        """Watch model_dir (anew), with the best watch that starts, and send the probe that
        proves it; if model_dir is not there, it is missing."""
        self.watching.disarm()
        try:
            fd = open_root(self.place)
        except (ModelDirMissing, OSError):
            self.missing = True
            log.get().warning("model_dir_missing", **self.watching.where())
            return
        try:
            self.root_id = identify(fd)[:2]
            self.watching.start(fd)
        finally:
            os.close(fd)

    def retry_wanted(self) -> bool:
        """A periodic rescan tries the watch the config asks for again, after a fallback;
        True if it armed anew."""
        if self.missing or not self.watching.back_to_wanted():
            return False
        self.arm()
        return True

    def check_root(self) -> Root:
        """Notices model_dir vanishing, returning, or being replaced (a new inode needs a new
        watch), and a watch that died or was shown blind. model_dir is looked for at its pinned
        path without following a symlink anywhere: a link put in its place is missing,
        whatever it points to."""
        try:
            fd = open_root(self.place)
        except (ModelDirMissing, OSError):
            ident = None
        else:
            try:
                ident = identify(fd)
            finally:
                os.close(fd)
        if ident is None:
            if self.missing:
                return Root.MISSING
            self.missing = True
            log.get().warning("model_dir_missing", **self.watching.where())
            self.watching.stop()
            self.index.clear()
            self.pending.clear()
            return Root.VANISHED
        if self.missing or not self.watching.sound() or ident[:2] != self.root_id:
            was_missing = self.missing
            self.missing = False
            self.arm()
            if was_missing:
                log.get().info("model_dir_returned", **self.watching.where())
                return Root.RETURNED
            log.get().warning("watch_rearmed", **self.watching.where())
            return Root.REARMED
        return Root.OK

    def check_coverage(self) -> bool:
        """Once due (a little after new directories came): True when directories were left
        unwatched and the watch was armed anew (ocrd.watch.watching says which, and warns)."""
        if not self.watching.check_coverage(self.directories):
            return False
        self.arm()
        return True

    # -- the watch as the full scan reads and resets it (scan, adopt, report) ---------------

    @property
    def watcher(self) -> Watcher | None:
        return self.watching.watcher

    @property
    def rearm_due(self) -> bool:
        return self.watching.rearm_due

    @rearm_due.setter
    def rearm_due(self, due: bool) -> None:
        self.watching.rearm_due = due

    @property
    def floor(self) -> int:
        return self.watching.floor

    @floor.setter
    def floor(self, rung: int) -> None:
        self.watching.floor = rung

    @property
    def for_mounts(self) -> bool:
        return self.watching.for_mounts

    def poll_interval(self) -> float:
        return self.watching.poll_interval()

    def _blind(self, kind: Kind, missed: str, **extra: object) -> None:
        self.watching.shown_blind(kind, missed, **extra)

    def _check_coverage_soon(self) -> None:
        self.watching.check_coverage_soon()

    def look_again(self, paths: Iterable[bytes]) -> None:
        """``paths`` are looked at again on disk at the next refresh."""
        self.pending |= set(paths)

    def take_pending(self) -> set[bytes]:
        """The paths to look at again, handed over once."""
        taken, self.pending = self.pending, set()
        return taken

    def gone(self, path: bytes) -> None:
        """``path`` is no model any more (deleted, vanished): out of the index."""
        self.index.pop(path)

    def take_changes(self) -> Changes:
        """What the watcher marked since the last call."""
        return self.watching.take()

    # -- what is in it ---------------------------------------------------------------------

    def entries(self, paths: Iterable[bytes] | None = None) -> list[FileEntry]:
        """The indexed files (those of ``paths``, or all), each with its arrival applied."""
        if paths is None:
            return self.arrivals.apply(self.index.entries())
        return self.arrivals.apply(e for p in paths if (e := self.index.get(p)) is not None)

    def refresh(self, changes: Changes) -> Refreshed:
        """Bring the index up to date for every path the watch marked, each looked at on disk
        (ocrd.watch.refresh)."""
        return refresh(
            changes,
            place=self.place,
            index=self.index,
            directories=self.directories,
            arrivals=self.arrivals,
            clock=self.clock,
            tick=self.tick,
            mounts=lambda found: self._report_mounts(found, full=False),
            walked=self.watching.check_coverage_soon,
        )

    # -- the full scan ---------------------------------------------------------------------

    def scan(self) -> Scan:
        """A full scan, to be iterated: what the watcher marked so far and the pending paths
        are covered by it."""
        scan = Scan(self)
        scan.marked = self.take_changes()
        w = self.watcher
        if w is not None and w.alive and w.kind != "rescan" and not scan.marked.lost:
            scan.watched_since = w.armed_at
            scan.grace = MISSED_GRACE_S if w.kind == "inotify" else 2 * self.poll_interval()
        self.pending.clear()
        return scan

    def adopt(self, scan: Scan) -> None:
        """A scan walked to its end: what it found replaces what the mirror held (which the
        scan emptied as it went, keeping one record per file, not two), and the sightings
        of what is gone are dropped."""
        self._missed(scan)
        self.index = scan.index
        self.directories = dict(scan.directories)
        self.arrivals.keep_only(self.directories, self.index, self.root_id)
        self._check_coverage_soon()

    def abandon(self, scan: Scan) -> None:
        """A scan that did not walk to its end (SIGTERM, a reload, model_dir gone): what it
        took out of the index goes back, as it found it."""
        for e in scan.index.entries():
            self.index.put(e)

    def _missed(self, scan: Scan) -> None:
        """A rescan that finds a file which arrived while the watch was armed, and which the
        watch never reported, shows the watch blind to part of the tree."""
        w = self.watcher
        if scan.watched_since is None or w is None or not w.alive or self.rearm_due:
            return
        marked = scan.marked
        missed = [
            path
            for path in scan.arrived
            if path not in marked.files and not _below_any(path, marked.dirs)
        ]
        if missed:
            self._blind(
                w.kind, "files a rescan found", files=len(missed), example=display(missed[0])
            )

    def report(self, scan: Scan) -> None:
        """The places a full scan could not read, and the mount points it did not enter."""
        for rel, why in scan.unreadable:
            unreadable(rel, why)
        self._report_mounts(scan.mounts, full=True)
        if not self.mounts and self.for_mounts:
            # The mounts that made inotify unfit are gone: inotify again, with a rescan.
            self.floor = 0
            self.rearm_due = True
            self.wake()

    def _report_mounts(self, found: list[tuple[bytes, str]], *, full: bool) -> None:
        """``mount_skipped`` once per mount point (and device) found inside model_dir: ocrd
        neither enters, watches nor deletes anything there. A full scan also forgets the ones
        gone, so a mount that comes back is said again."""
        now = set(found)
        for rel, device in found:
            if (rel, device) not in self.mounts:
                log.get().warning(
                    "mount_skipped",
                    path=display(rel),
                    device=device,
                    detail="another filesystem than model_dir's: not entered, not watched, "
                    "nothing deleted there",
                )
        self.mounts = now if full else self.mounts | now


class Scan:
    """One full walk of model_dir, one directory's files at a time (each batch with its
    arrival applied), so a caller can plan and drop them as it goes: a rescan of a large tree
    never holds a full record per file beyond the index's packed one. Raises ModelDirMissing
    (or OSError) if model_dir goes away during it, Stopped if ``tick`` says so."""

    def __init__(self, mirror: Mirror) -> None:
        self.place = mirror.place
        self.arrivals = mirror.arrivals
        self.clock = mirror.clock
        # A directory this scan meets that the mirror did not hold (or held under another
        # inode) arrived unannounced: compared only with a full picture of the same model_dir.
        self.known = mirror.directories if mirror.arrivals.pictured == mirror.root_id else None
        self.tick = mirror.tick
        self.index = Index()
        # What the mirror held: each record this scan finds anew is taken out of it, so the
        # two together hold one record per file (Mirror.adopt, Mirror.abandon).
        self.older = mirror.index
        # Files the older index did not hold that arrived, by ctime, while the watch was
        # armed (watched_since + grace, until grace before the scan): ones it should have
        # reported (Mirror._missed).
        self.arrived: list[bytes] = []
        self.grace = MISSED_GRACE_S
        self.unreadable: list[tuple[bytes, str]] = []
        self.directories: list[tuple[bytes, int]] = []
        self.mounts: list[tuple[bytes, str]] = []
        self.started = time.time()  # ctime is the kernel's wall clock
        self.marked = Changes()  # what the watch had reported when the scan began
        self.watched_since: float | None = None  # when the watch that ran all along started

    def __iter__(self) -> Iterator[list[FileEntry]]:
        arrived: dict[bytes, float] = {}  # one stat per directory for ocrd.fs.arrival
        met = 0  # directories handed to arrivals.found so far
        with collecting_paused():
            for found in scan_batches(
                self.place,
                self.unreadable,
                self.directories,
                mounts=self.mounts,
                tick=self.tick,
                chunk=SCAN_CHUNK,
            ):
                if self.known is not None:
                    # Before the batch's arrivals are applied: its directory is among these.
                    self.arrivals.found(self.directories[met:], self.known, self.clock.time())
                    met = len(self.directories)
                put, pop, older = self.index.put, self.older.pop, self.older
                since = self.watched_since
                after = -math.inf if since is None else since + self.grace
                before = -math.inf if since is None else self.started - self.grace
                for e in found:
                    if after < e.ctime < before and e.path not in older:
                        self.arrived.append(e.path)
                    put(e)
                    pop(e.path)
                yield self.arrivals.apply(found, arrived)
            if self.known is not None:
                self.arrivals.found(self.directories[met:], self.known, self.clock.time())
