"""The watch on model_dir through its life: the kind the config asks for, starting the best
that starts on model_dir's root, the probe that proves it delivers events, the ladder it steps
down when a kind cannot start, dies or is shown blind (and back up at a reload or a periodic
rescan), and the check that inotify watches every directory (docs/watching.md)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from ocrd.base import log
from ocrd.base.clock import Clock
from ocrd.base.errors import ModelDirMissing, Stopped
from ocrd.config.schema import Watch
from ocrd.fs.dirfds import DirFds
from ocrd.fs.inventory import display
from ocrd.fs.place import Place, open_root
from ocrd.fs.procfs import filesystem_type, mounts_below, watched_inodes
from ocrd.watch.observer import LADDER, Changes, Counts, Kind, Unavailable, Watcher

COVERAGE_DELAY_S = 1.0  # lets watchdog add its watches for new directories before we check
PROBE_WAIT_S = 2.0  # an inotify watch reports its probe in well under a millisecond
PROBE_SYNC_S = 0.5  # how long arming waits for that report before the loop takes over

# Filesystems whose changes inotify does not see when made by another host.
REMOTE_FS = {
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


class Watching:
    """The Watcher on model_dir and what is known of it: the rung of the LADDER below which
    none is tried (``floor``), why the watch is not the one asked for (``degraded``), the
    probe that is out, the misses in a row, and when to look again (``probe_due``,
    ``coverage_due``). Its owner (ocrd.watch.mirror) opens model_dir's root and hands it to
    ``start``; ``wake`` is what the watcher calls on an event."""

    def __init__(
        self,
        model_dir: Path,
        place: Place,
        watch: Watch,
        clock: Clock,
        *,
        wake: Callable[[], None],
        tick: Callable[[], bool],
        on_use: Callable[[bytes, float], None] | None = None,
    ) -> None:
        self.model_dir = model_dir  # as configured
        self.place = place  # where it was resolved to
        self.watch = watch
        self.clock = clock
        self.wake = wake
        self.tick = tick
        self.on_use = on_use  # the watch's word that a file was read (ocrd.watch.lastuse)
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
        self.counts = Counts()  # what every watcher armed so far delivered

    def aim(self, model_dir: Path, place: Place, watch: Watch) -> bool:
        """A reload: True when the watch is to be armed anew, because anything about model_dir
        or the watch changed, or to try the watch the config asks for again after a fallback."""
        old = (self.model_dir, self.watch, self.place)
        self.model_dir, self.watch, self.place = model_dir, watch, place
        if old == (model_dir, watch, place) and not self.floor:
            return False
        self.floor = 0
        return True

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

    def poll_interval(self) -> float:
        return max(1.0, self.watch.settle)

    # -- arming ----------------------------------------------------------------------------

    def disarm(self) -> None:
        """The watcher stopped and dropped, with its probe and any re-arming due: arming anew
        (or model_dir missing) follows."""
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        self.probe_due = None
        self.rearm_due = False

    def start(self, root_fd: int) -> None:
        """Watch model_dir (its root open as ``root_fd``) with the best watch that starts, and
        send the probe that proves it."""
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
                counts=self.counts,
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

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()

    def take(self) -> Changes:
        """What the watcher marked since the last call."""
        return self.watcher.take() if self.watcher is not None else Changes()

    # -- the probe -------------------------------------------------------------------------

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
            self.shown_blind(watcher.kind, "the probe directory made at the top of model_dir")

    # -- the ladder ------------------------------------------------------------------------

    def shown_blind(self, kind: Kind, missed: str, **extra: object) -> None:
        """The watch missed what it should have reported: ``watch_blind``, armed anew at the
        next look, and after a second miss in a row the next kind down."""
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

    def sound(self) -> bool:
        """Whether the watch is alive and not shown blind. One whose observer or emitter thread
        stopped (a library error there is logged as thread_failed) or that reported a failure
        is struck: the same kind once more, then the next."""
        alive = self.watcher is not None and self.watcher.alive
        if not alive and not self.rearm_due and self.watcher is not None:
            self.watcher.fail("the observer or its emitter thread stopped")
            self._strike(self.watcher.kind)
        return alive and not self.rearm_due

    def back_to_wanted(self) -> bool:
        """After a fallback, the watch the config asks for is to be tried again: True when
        there was a fallback (the owner arms anew)."""
        if self.floor == 0:
            return False
        self.floor = 0
        return True

    # -- coverage --------------------------------------------------------------------------

    def check_coverage_soon(self) -> None:
        """New directories came: once watchdog had time to watch them, see that it did."""
        if self.watcher is not None and self.watcher.kind == "inotify":
            self.coverage_due = self.clock.monotonic() + COVERAGE_DELAY_S

    def check_coverage(self, directories: dict[bytes, int]) -> bool:
        """Once due (a little after new directories came): True when some of ``directories``
        (each with its inode) were left unwatched and the watch is to be armed anew (or, the
        second time, as polling); it warns either way. watchdog logs (and drops) a watch it
        could not add below the root."""
        if self.coverage_due is None or self.clock.monotonic() < self.coverage_due:
            return False
        self.coverage_due = None
        limit = _read_int("/proc/sys/fs/inotify/max_user_watches")
        if self.limit_hit is not None:
            why, self.limit_hit = self.limit_hit, None
            # The probe that polling has not answered yet is no directory of model_dir's.
            probe = self.watcher.probe if self.watcher is not None else None
            count = len(directories) - (probe in directories)
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
        # directories is left as the mirror wrote it: the arrivals compare its inodes with what
        # a later refresh finds.
        with DirFds(self.place) as fds:
            for rel, ino in list(directories.items()):
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
            directories=len(directories),
            unwatched=len(unwatched),
            example=display(unwatched[0]) or ".",
            max_user_watches=limit,
            action="watching by polling; raise fs.inotify.max_user_watches to watch by inotify"
            if at_limit
            else "arming the watch anew",
        )
        return True


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None
