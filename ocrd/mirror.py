"""model_dir as the daemon knows it between scans: its files, its directories, the paths to look
at again, its root's identity and the watch on it; brought up to date from the disk, never from
what an event claims."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ocrd import log
from ocrd.arrival import Arrivals
from ocrd.clock import Clock
from ocrd.config import Watch
from ocrd.errors import ModelDirMissing, OtherFilesystem, Stopped
from ocrd.fsdirs import DirFds
from ocrd.index import Index
from ocrd.inventory import FileEntry, display, entry_from_stat
from ocrd.rootdir import identify, open_root, pin
from ocrd.walker import collecting_paused, scan_batches, walk
from ocrd.watch import Changes, Watcher, watched_inodes

COVERAGE_DELAY_S = 1.0  # lets watchdog add its watches for new directories before we check


class Root(StrEnum):
    """What became of model_dir since the mirror last looked."""

    OK = "ok"  # the same directory, watched
    MISSING = "missing"  # still gone
    VANISHED = "vanished"  # gone since the last look: the mirror forgot what it held
    RETURNED = "returned"  # back after it was gone: watched anew, to be scanned
    REARMED = "rearmed"  # replaced, or its watch died or fell short: watched anew, to be scanned


@dataclass
class Refreshed:
    """What a refresh found: files (re)indexed, files gone, and how many paths it forgot with
    directories that went."""

    touched: set[bytes] = field(default_factory=set)
    gone: list[bytes] = field(default_factory=list)
    forgotten: int = 0


class Mirror:
    """model_dir's files (a packed Index), every directory under it with its inode (what the
    watch must cover), the paths to look at again, its root's identity, the mount points not
    entered, and the Watcher. ``tick`` is asked between directories of every walk (SIGTERM,
    the watchdog); ``wake`` is what the watcher calls on an event."""

    def __init__(
        self,
        model_dir: Path,
        watch: Watch,
        clock: Clock,
        *,
        wake: Callable[[], None],
        tick: Callable[[], bool],
    ) -> None:
        self.model_dir = model_dir  # as configured
        self.place = pin(model_dir)  # resolved once; a reload resolves anew
        self.watch = watch
        self.clock = clock
        self.wake = wake
        self.tick = tick
        self.arrivals = Arrivals(self.place.real)  # what was seen arriving, and when
        self.index = Index()
        self.directories: dict[bytes, int] = {}  # every directory under model_dir → its inode
        self.pending: set[bytes] = set()  # files to look at again at the next refresh
        self.root_id: tuple[int, int] | None = None
        self.missing = False
        self.watcher: Watcher | None = None
        self.force_polling = False  # set once inotify could not cover the tree (auto only)
        self.coverage_due: float | None = None  # when to check every directory is watched
        self.mounts: set[tuple[bytes, str]] = set()  # (path, device) not entered, as logged

    # -- model_dir itself and its watch ----------------------------------------------------

    def reconfigure(self, model_dir: Path, watch: Watch) -> None:
        """A reload: model_dir is resolved anew, and watched anew if anything about it changed."""
        old = (self.model_dir, self.watch, self.place)
        self.model_dir, self.watch, self.place = model_dir, watch, pin(model_dir)
        if old[2] != self.place:
            self.arrivals = Arrivals(self.place.real)
        if old != (self.model_dir, self.watch, self.place):
            self.missing = False
            self.force_polling = False
            self.arm()

    def where(self) -> dict[str, str]:
        """model_dir as configured, and the directory it was resolved to where that differs."""
        where = {"model_dir": str(self.model_dir)}
        if os.fsencode(self.model_dir) != self.place.real:
            where["resolved"] = str(self.place)
        return where

    def arm(self) -> None:
        """Watch model_dir (anew); if it is not there, it is missing."""
        if self.watcher is not None:
            if self.watcher.failed and self.watch.observer == "auto":
                self.force_polling = True  # inotify broke down once: polling, until a reload
            self.watcher.stop()
        try:
            fd = open_root(self.place)
        except (ModelDirMissing, OSError):
            self.missing = True
            log.get().warning("model_dir_missing", **self.where())
            return
        try:
            self.root_id = identify(fd)[:2]
        finally:
            os.close(fd)
        kind = "polling" if self.force_polling else self.watch.observer
        self.watcher = Watcher(
            self.place,
            kind,
            self.wake,
            poll_interval=max(1.0, self.watch.settle),
            tick=self.tick,
        )
        used = self.watcher.start()
        log.get().debug("watch_armed", model_dir=str(self.place), observer=used)

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()

    def check_root(self) -> Root:
        """Notices model_dir vanishing, returning, or being replaced (a new inode needs a new
        watch), and a watch that died. model_dir is looked for at its pinned path without
        following a symlink anywhere: a link put in its place is missing, whatever it points to."""
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
            log.get().warning("model_dir_missing", **self.where())
            self.stop()
            self.index.clear()
            self.pending.clear()
            return Root.VANISHED
        if self.missing or ident[:2] != self.root_id or not (self.watcher and self.watcher.alive):
            was_missing = self.missing
            self.missing = False
            self.arm()
            if was_missing:
                log.get().info("model_dir_returned", **self.where())
                return Root.RETURNED
            log.get().warning("watch_rearmed", **self.where())
            return Root.REARMED
        return Root.OK

    def check_coverage(self) -> bool:
        """Once due (a little after new directories came): True when directories were left
        unwatched (max_user_watches reached: watchdog drops that error silently) and the watch
        was re-armed as polling; it warns either way."""
        if self.coverage_due is None or self.clock.monotonic() < self.coverage_due:
            return False
        self.coverage_due = None
        watched = watched_inodes()
        if watched is None or self.watcher is None or self.watcher.used != "inotify":
            return False
        unwatched = []
        with DirFds(self.place) as fds:
            for rel, ino in list(self.directories.items()):
                if ino in watched:
                    continue
                try:
                    now_ino = os.fstat(fds.open(rel)).st_ino
                except OSError:
                    del self.directories[rel]  # gone since we saw it; nothing to watch
                    continue
                self.directories[rel] = now_ino
                if now_ino not in watched:
                    unwatched.append(rel)
        if not unwatched:
            return False
        switch = self.watch.observer == "auto"
        log.get().warning(
            "watch_limit",
            directories=len(self.directories),
            unwatched=len(unwatched),
            example=display(unwatched[0]) or ".",
            max_user_watches=_read_int("/proc/sys/fs/inotify/max_user_watches"),
            action="switching to polling"
            if switch
            else f"relying on rescan every {self.watch.rescan:g}s; raise "
            "fs.inotify.max_user_watches",
        )
        if switch:
            self.force_polling = True
            self.arm()
        return switch

    def _check_coverage_soon(self) -> None:
        if self.watcher is not None and self.watcher.used == "inotify":
            self.coverage_due = self.clock.monotonic() + COVERAGE_DELAY_S

    def take_changes(self) -> Changes:
        """What the watcher marked since the last call."""
        return self.watcher.take() if self.watcher is not None else Changes()

    # -- what is in it ---------------------------------------------------------------------

    def entries(self, paths: Iterable[bytes] | None = None) -> list[FileEntry]:
        """The indexed files (those of ``paths``, or all), each with its arrival applied."""
        if paths is None:
            return self.arrivals.apply(self.index.entries())
        return self.arrivals.apply(e for p in paths if (e := self.index.get(p)) is not None)

    def refresh(self, changes: Changes) -> Refreshed:
        """Bring the index up to date for every path the watcher marked. An event's word on
        what a path is (file or directory) is not trusted — polling reports a reused inode as a
        move, directory to file — each path is looked at on disk."""
        done = Refreshed()
        with DirFds(self.place) as fds:
            for rel in changes.dirs | changes.files:
                if not rel:
                    continue  # model_dir itself: check_root's business
                if _below_any(rel, changes.dirs):
                    continue  # that directory is forgotten and walked whole below
                try:
                    st = fds.stat(rel)
                except OSError as exc:
                    # Any directory may become unreadable at any time (another user's
                    # chmod 700): what is in it stays as last seen, and nothing there is
                    # deleted, since deleting goes through the same directories.
                    _unreadable(rel, exc)
                    continue
                is_dir = st is not None and stat.S_ISDIR(st.st_mode)
                if not is_dir and (rel in changes.dirs or rel in self.directories):
                    done.forgotten += self._forget_tree(rel)  # a directory gone or now a file
                    self.arrivals.forget(rel)
                if st is None:
                    self.index.pop(rel)
                    done.gone.append(rel)
                elif is_dir:
                    # What the mirror held there before: a directory it holds already, as the
                    # very same inode, did not arrive again (its sighting stays as it was).
                    known = self._held_under(rel)
                    self.index.pop(rel)
                    done.forgotten += self._forget_tree(rel)
                    try:
                        sub = walk(os.dup(fds.open(rel)), boundary=fds.boundary, tick=self.tick)
                    except OtherFilesystem as exc:
                        self._report_mounts([(rel, exc.device)], full=False)
                        continue
                    except OSError as exc:
                        _unreadable(rel, exc)
                        continue
                    except Stopped:
                        break  # SIGTERM: the loop exits; the index no longer matters
                    prefix = rel + b"/"
                    self.arrivals.found(
                        ((prefix + d if d else rel, ino) for d, ino in sub.directories),
                        known,
                        self.clock.time(),
                        holding=(prefix + e.path for e in sub.files),
                    )
                    for where, why in sub.unreadable:
                        log.get().warning(
                            "scan_unreadable", path=display(prefix + where), error=why
                        )
                    self._report_mounts([(prefix + p, dev) for p, dev in sub.mounts], full=False)
                    self.directories.update(
                        (prefix + d if d else rel, ino) for d, ino in sub.directories
                    )
                    self._check_coverage_soon()
                    for e in sub.files:
                        found = e._replace(path=prefix + e.path)
                        self.index.put(found)
                        done.touched.add(found.path)
                elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    prior = self.index.get(rel)
                    if stat.S_ISREG(st.st_mode) and (prior is None or prior.ino != st.st_ino):
                        self.arrivals.saw_file(rel, st, self.clock.time())
                    self.index.put(entry_from_stat(rel, st))
                    done.touched.add(rel)
                else:
                    self.index.pop(rel)  # a fifo or socket: not a model
        return done

    def _held_under(self, rel: bytes) -> dict[bytes, int]:
        """The directories held at ``rel`` and below it, with their inodes."""
        if rel not in self.directories:
            return {}  # a directory just made: mkdir storms cost nothing
        prefix = rel + b"/"
        return {p: i for p, i in self.directories.items() if p == rel or p.startswith(prefix)}

    def _forget_tree(self, rel: bytes) -> int:
        """Forget directory ``rel`` and all below it; how many indexed paths went with it."""
        prefix = rel + b"/"
        forgotten = self.index.forget_under(prefix)  # costs what the subtree holds
        if rel in self.directories:  # a directory just made is not: mkdir storms cost nothing
            for stale in [p for p in self.directories if p == rel or p.startswith(prefix)]:
                del self.directories[stale]
        return forgotten

    # -- the full scan ---------------------------------------------------------------------

    def scan(self) -> Scan:
        """A full scan, to be iterated: what the watcher marked so far and the pending paths
        are covered by it."""
        self.take_changes()
        self.pending.clear()
        return Scan(self)

    def adopt(self, scan: Scan) -> None:
        """A scan walked to its end: what it found replaces what the mirror held, and the
        sightings of what is gone are dropped."""
        self.index = scan.index
        self.directories = dict(scan.directories)
        self.arrivals.keep_only(self.directories, self.index, self.root_id)
        self._check_coverage_soon()

    def report(self, scan: Scan) -> None:
        """The places a full scan could not read, and the mount points it did not enter."""
        for rel, why in scan.unreadable:
            log.get().warning("scan_unreadable", path=display(rel), error=why)
        self._report_mounts(scan.mounts, full=True)

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
        self.unreadable: list[tuple[bytes, str]] = []
        self.directories: list[tuple[bytes, int]] = []
        self.mounts: list[tuple[bytes, str]] = []

    def __iter__(self) -> Iterator[list[FileEntry]]:
        arrived: dict[bytes, float] = {}  # one stat per directory for ocrd.arrival
        met = 0  # directories handed to arrivals.found so far
        with collecting_paused():
            for found in scan_batches(
                self.place, self.unreadable, self.directories, mounts=self.mounts, tick=self.tick
            ):
                if self.known is not None:
                    # Before the batch's arrivals are applied: its directory is among these.
                    self.arrivals.found(self.directories[met:], self.known, self.clock.time())
                    met = len(self.directories)
                for e in found:
                    self.index.put(e)
                yield self.arrivals.apply(found, arrived)
            if self.known is not None:
                self.arrivals.found(self.directories[met:], self.known, self.clock.time())


def _unreadable(rel: bytes, exc: OSError) -> None:
    log.get().warning("scan_unreadable", path=display(rel), error=exc.strerror or str(exc))


def _below_any(rel: bytes, dirs: set[bytes]) -> bool:
    """Whether a directory above ``rel`` is in ``dirs``. Polling reports every directory of a
    tree moved in, each of which was walked whole: quadratic in its depth."""
    while True:
        rel = rel.rpartition(b"/")[0]
        if not rel:
            return False
        if rel in dirs:
            return True


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None
