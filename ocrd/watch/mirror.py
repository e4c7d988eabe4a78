"""model_dir as the daemon knows it between scans: its files, its directories, the paths to look
at again, its root's identity and the watch on it; brought up to date from the disk, never from
what an event claims."""

from __future__ import annotations

import errno
import math
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ocrd.base import log
from ocrd.base.clock import Clock
from ocrd.base.collector import collecting_paused
from ocrd.base.errors import ModelDirMissing, OtherFilesystem, Stopped
from ocrd.config.schema import Watch
from ocrd.fs.arrival import Arrivals
from ocrd.fs.dirfds import DirFds
from ocrd.fs.inventory import FileEntry, display, entry_from_stat
from ocrd.fs.place import identify, open_root, pin
from ocrd.fs.procfs import filesystem_type, mounts_below, watched_inodes
from ocrd.fs.scan import scan_batches, unreadable, walk
from ocrd.fs.trash import is_trash
from ocrd.watch.index import Index
from ocrd.watch.observer import (
    LADDER,
    REMOTE_FS,
    Changes,
    Kind,
    Unavailable,
    Watcher,
)

COVERAGE_DELAY_S = 1.0  # lets watchdog add its watches for new directories before we check
PROBE_WAIT_S = 2.0  # an inotify watch reports its probe in well under a millisecond
PROBE_SYNC_S = 0.5  # how long arming waits for that report before the loop takes over
MISSED_GRACE_S = 2.0  # a change this recent may still be on its way through the watch
SCAN_CHUNK = 8192  # records a full scan hands on at once, however big a directory


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
        on_use: Callable[[bytes, float], None] | None = None,
    ) -> None:
        self.model_dir = model_dir  # as configured
        self.place = pin(model_dir)  # resolved once; a reload resolves anew
        self.watch = watch
        self.clock = clock
        self.wake = wake
        self.tick = tick
        self.on_use = on_use  # the watch's word that a file was read (ocrd.watch.lastuse)
        self.arrivals = Arrivals(self.place.real)  # what was seen arriving, and when
        self.index = Index()
        self.directories: dict[bytes, int] = {}  # every directory under model_dir → its inode
        self.pending: set[bytes] = set()  # files to look at again at the next refresh
        self.root_id: tuple[int, int] | None = None
        self.missing = False
        self.watcher: Watcher | None = None
        self.floor = 0  # LADDER index below which no watch is tried (it failed here) for now
        self.degraded: str | None = None  # why the watch is not the one asked for, or unproven
        self.for_mounts = False  # polling because mount points are inside model_dir
        self.unproven = False  # the probe could not be made
        self.blind = 0  # probes or rescans in a row that the watch of this kind did not report
        self.rearm_due = False  # the watch was shown blind: arm anew at the next look
        self.limit_hit: str | None = None  # inotify's instance or watch limit, until said
        self.probe_due: float | None = None  # monotonic deadline of the probe that is out
        self.coverage_due: float | None = None  # when to check every directory is watched
        self.mounts: set[tuple[bytes, str]] = set()  # (path, device) not entered, as logged

    # -- model_dir itself and its watch ----------------------------------------------------

    def reconfigure(self, model_dir: Path, watch: Watch) -> None:
        """A reload: model_dir is resolved anew, and watched anew if anything about it changed."""
        old = (self.model_dir, self.watch, self.place)
        self.model_dir, self.watch, self.place = model_dir, watch, pin(model_dir)
        if old[2] != self.place:
            self.arrivals = Arrivals(self.place.real)
        if old != (self.model_dir, self.watch, self.place) or self.floor:
            # A reload also tries the watch the config asks for again, after a fallback.
            self.missing = False
            self.floor = 0
            self.arm()

    def where(self) -> dict[str, str]:
        """model_dir as configured, and the directory it was resolved to where that differs."""
        where = {"model_dir": str(self.model_dir)}
        if os.fsencode(self.model_dir) != self.place.real:
            where["resolved"] = str(self.place)
        return where

    def wanted(self) -> Kind:
        """The watch the config asks for: "auto" is inotify, or polling on a network
        filesystem, whose changes made on other hosts inotify never sees."""
        if self.watch.observer != "auto":
            return self.watch.observer
        return "polling" if filesystem_type(self.place.real) in REMOTE_FS else "inotify"

    def arm(self) -> None:
        """Watch model_dir (anew), with the best watch that starts, and send the probe that
        proves it; if model_dir is not there, it is missing."""
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        self.probe_due = None
        self.rearm_due = False
        try:
            fd = open_root(self.place)
        except (ModelDirMissing, OSError):
            self.missing = True
            log.get().warning("model_dir_missing", **self.where())
            return
        try:
            self.root_id = identify(fd)[:2]
            self._start_watch(fd)
        finally:
            os.close(fd)

    def _start_watch(self, root_fd: int) -> None:
        wanted = self.wanted()
        first = max(LADDER.index(wanted), self.floor)
        why = self.degraded if first > LADDER.index(wanted) else None
        said, self.for_mounts, self.unproven = self.for_mounts, False, False
        if LADDER[first] == "inotify" and (below := mounts_below(self.place.real)):
            # watchdog's inotify walks into every directory below its root, mounts included;
            # polling's walk is ocrd's to bound. One filesystem outweighs the cheaper watch.
            first = LADDER.index("polling")
            self.for_mounts = True
            why = f"mount points inside model_dir (e.g. {display(below[0])}): inotify would "
            why += "watch inside them"
            if not said:  # said once, not again at each periodic retry
                log.get().warning("watch_fallback", failed="inotify", observer="polling", why=why)
        for kind in LADDER[first:]:
            watcher = Watcher(
                self.place,
                kind,
                self.wake,
                poll_interval=self.poll_interval(),
                tick=self.tick,
                on_use=self.on_use,
            )
            try:
                watcher.start()
            except Stopped:
                return  # SIGTERM while polling took its first snapshot: the loop exits
            except Unavailable as exc:
                if exc.errno in (errno.ENOSPC, errno.EMFILE):
                    self.limit_hit = str(exc)
                    self.coverage_due = self.clock.monotonic()  # said after the next scan
                why = str(exc)
                log.get().error(
                    "watch_fallback",
                    failed=kind,
                    observer=LADDER[LADDER.index(kind) + 1],
                    why=why,
                )
                continue
            self.watcher = watcher
            break
        assert self.watcher is not None  # "rescan" always starts
        kind = self.watcher.kind
        self.floor = LADDER.index(kind) if kind != wanted else 0
        self.degraded = None if kind == wanted else f"watching by {kind}: {why}"
        if kind == "rescan":
            self._proven(interval_s=self.poll_interval())
            return
        self._send_probe(root_fd)

    def probe(self) -> None:
        """Prove the watch again (a periodic rescan does): the probe goes out, and its outcome
        is ``check_probe``'s."""
        if self.watcher is None or self.watcher.kind == "rescan" or self.probe_due is not None:
            return
        try:
            fd = open_root(self.place)
        except (ModelDirMissing, OSError):
            return  # check_root says so
        try:
            self._send_probe(fd)
        finally:
            os.close(fd)

    def _send_probe(self, root_fd: int) -> None:
        """The probe directory goes out. inotify reports it at once: it is waited for here
        (briefly), so it is gone before anything else looks at model_dir; polling's answer comes
        at its next snapshot, and the loop looks for it then."""
        assert self.watcher is not None
        kind = self.watcher.kind
        unsent = self.watcher.send_probe(root_fd)
        if unsent is not None:
            if self.degraded is None:  # a fallback's reason stays the one said
                self.unproven = True
                self.degraded = f"watch unproven: {unsent}"
            log.get().warning(
                "watch_unproven",
                observer=kind,
                why=f"cannot make the probe directory in model_dir: {unsent}",
                **self.where(),
            )
            return
        wait = PROBE_WAIT_S if kind == "inotify" else 2 * self.poll_interval() + PROBE_WAIT_S
        self.probe_due = self.clock.monotonic() + wait
        if kind == "inotify" and self.watcher.probe_seen.wait(PROBE_SYNC_S):
            self.check_probe()

    def poll_interval(self) -> float:
        return max(1.0, self.watch.settle)

    def _proven(self, **extra: float) -> None:
        """Said at info once per arming; the periodic rescans' proofs at debug."""
        assert self.watcher is not None
        self.blind = 0
        again = self.watcher.proven
        self.watcher.proven = True
        (log.get().debug if again else log.get().info)(
            "watch_armed",
            model_dir=str(self.place),
            observer=self.watcher.kind,
            degraded=self.degraded,
            **extra,
        )

    def check_probe(self) -> None:
        """The probe's outcome, once there is one: the watch proven (``watch_armed``), or shown
        blind (``watch_blind``): armed anew, and after a second miss the next watch down."""
        watcher = self.watcher
        if watcher is None or watcher.probe is None or self.probe_due is None:
            return
        seen = watcher.probe_seen.is_set()
        if not seen and self.clock.monotonic() < self.probe_due:
            return
        self.probe_due = None
        try:
            fd = open_root(self.place)
        except (ModelDirMissing, OSError):
            watcher.probe = None  # model_dir went: check_root says so
            return
        try:
            watcher.take_probe(fd)
        finally:
            os.close(fd)
        if seen:
            if self.unproven:
                self.unproven = False
                self.degraded = None
            self._proven()
        else:
            self._blind(watcher.kind, "the probe directory made at the top of model_dir")

    def _blind(self, kind: Kind, missed: str, **extra: object) -> None:
        step_down = self._strike(kind)
        log.get().error(
            "watch_blind",
            observer=kind,
            missed=missed,
            action=f"watching by {LADDER[self.floor]}" if step_down else "arming anew",
            **extra,
        )
        self.rearm_due = True
        self.wake()

    def _strike(self, kind: Kind) -> bool:
        """One more failure of this kind of watch; True when it was the second in a row and
        the next kind down takes over (until a reload or the next periodic rescan)."""
        self.blind += 1
        if self.blind < 2 or kind == "rescan":
            return False
        self.floor = LADDER.index(kind) + 1
        self.degraded = f"{kind} failed twice in a row"
        self.blind = 0
        return True

    def retry_wanted(self) -> bool:
        """A periodic rescan tries the watch the config asks for again, after a fallback;
        True if it armed anew."""
        if self.floor == 0 or self.missing:
            return False
        self.floor = 0
        self.arm()
        return True

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()

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
            log.get().warning("model_dir_missing", **self.where())
            self.stop()
            self.index.clear()
            self.pending.clear()
            return Root.VANISHED
        alive = self.watcher is not None and self.watcher.alive
        if self.missing or ident[:2] != self.root_id or not alive or self.rearm_due:
            was_missing = self.missing
            if not (was_missing or alive or self.rearm_due) and self.watcher is not None:
                # The observer's thread died (a library error there is logged as
                # thread_failed) or reported a failure: the same kind once more, then the next.
                self.watcher.fail("the observer or its emitter thread stopped")
                self._strike(self.watcher.kind)
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
        unwatched and the watch was armed anew (or, the second time, as polling); it warns
        either way. watchdog logs (and drops) a watch it could not add below the root."""
        if self.coverage_due is None or self.clock.monotonic() < self.coverage_due:
            return False
        self.coverage_due = None
        limit = _read_int("/proc/sys/fs/inotify/max_user_watches")
        if self.limit_hit is not None:
            why, self.limit_hit = self.limit_hit, None
            # The probe that polling has not answered yet is no directory of model_dir's.
            probe = self.watcher.probe if self.watcher is not None else None
            count = len(self.directories) - (probe in self.directories)
            log.get().warning(
                "watch_limit",
                directories=count,
                unwatched=count,
                example=".",
                max_user_watches=limit,
                error=why,
                action="watching by polling; raise fs.inotify.max_user_watches (or "
                "max_user_instances) to watch by inotify",
            )
            return False
        watched = watched_inodes()
        if watched is None or self.watcher is None or self.watcher.kind != "inotify":
            return False
        unwatched = []
        # self.directories is left as refresh and adopt wrote it: the arrivals compare its
        # inodes with what a later refresh finds.
        with DirFds(self.place) as fds:
            for rel, ino in list(self.directories.items()):
                if ino in watched:
                    continue
                try:
                    now_ino = os.fstat(fds.open(rel)).st_ino
                except OSError:
                    continue  # gone since we saw it; nothing to watch
                if now_ino not in watched:
                    unwatched.append(rel)
        if not unwatched:
            return False
        at_limit = limit is not None and len(watched) >= limit - 1
        self.floor = LADDER.index("polling") if at_limit else 0
        if at_limit:
            self.degraded = "inotify's watch limit (fs.inotify.max_user_watches) reached"
        log.get().warning(
            "watch_limit" if at_limit else "watch_incomplete",
            directories=len(self.directories),
            unwatched=len(unwatched),
            example=display(unwatched[0]) or ".",
            max_user_watches=limit,
            action="watching by polling; raise fs.inotify.max_user_watches to watch by inotify"
            if at_limit
            else "arming the watch anew",
        )
        self.arm()
        return True

    def _check_coverage_soon(self) -> None:
        if self.watcher is not None and self.watcher.kind == "inotify":
            self.coverage_due = self.clock.monotonic() + COVERAGE_DELAY_S

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
        # A file in a directory the mirror does not hold came with that directory, whatever
        # order its events came in (polling reports a tree's files before its directories):
        # the topmost such directory is walked, and so dated, as if its own event had come.
        dirs = set(changes.dirs)
        for rel in changes.files:
            if (top := _unheld_top(rel, self.directories)) is not None:
                dirs.add(top)
        with DirFds(self.place) as fds:
            for rel in dirs | changes.files:
                if not rel:
                    continue  # model_dir itself: check_root's business
                if is_trash(rel):
                    continue  # not a model (ocrd.trash); the polling observer sees into it
                if _below_any(rel, dirs):
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
                if not is_dir and (rel in dirs or rel in self.directories):
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
                        unreadable(prefix + where, why)
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


def _unreadable(rel: bytes, exc: OSError) -> None:
    unreadable(rel, exc.strerror or str(exc))


def _unheld_top(rel: bytes, held: dict[bytes, int]) -> bytes | None:
    """The topmost directory above ``rel`` that ``held`` does not hold, if any (none before
    the first full scan, which holds model_dir itself)."""
    if b"" not in held:
        return None
    top = None
    d = rel.rpartition(b"/")[0]
    while d and d not in held:
        top = d
        d = d.rpartition(b"/")[0]
    return top


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
