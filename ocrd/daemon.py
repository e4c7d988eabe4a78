"""``ocrd run``: one main loop that wakes on filesystem events, timers and signals and runs
retention passes (scan → plan → apply) while the supervisor keeps the engine out of the way."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

from ocrd import __version__, log, signals
from ocrd.apply import InUse, Outcome, Status, apply, limited_check, probe
from ocrd.arrival import Arrivals
from ocrd.backoff import Backoff
from ocrd.clock import Clock, SystemClock
from ocrd.config import Config, load, log_warnings
from ocrd.engine import EngineBusy, Supervisor, load_runtime
from ocrd.errors import EXIT_CONFIG, ConfigError
from ocrd.fsdirs import DirFds, OtherFilesystem, entry_from_stat
from ocrd.holders import Holders, View
from ocrd.index import Index
from ocrd.inventory import (
    FileEntry,
    ModelDirMissing,
    collecting_paused,
    display,
    still_there,
    walk,
    walk_batches,
)
from ocrd.metrics import Metrics
from ocrd.notify import Notifier
from ocrd.retention import Decision, Plan, Rules, Verdict, plan, revisit_at
from ocrd.rootdir import Stopped, identify, open_root, pin, raise_fd_limit
from ocrd.scheduler import Scheduler
from ocrd.skew import FutureMtimes
from ocrd.stats import Totals
from ocrd.timejump import ClockGuard
from ocrd.waker import Waker
from ocrd.watch import Changes, Watcher, watched_inodes

COVERAGE_DELAY_S = 1.0  # lets watchdog add its watches for new directories before we check
CHANGED_RECHECK_S = 1.0  # a file that changed under a deletion is looked at again after this
MISSING_POLL_S = 1.0  # how often a vanished model_dir is looked for
LOG_PUMP_S = 1.0  # how soon held log lines and summaries are written
HEALTH_S = 30.0  # the loop looks at model_dir and the watch at least this often, events or not


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        runtime: Any = None,
    ) -> None:
        self.config = config
        self.place = pin(config.model_dir)  # resolved once; a reload resolves anew
        self.clock = clock or SystemClock()
        self.notifier = notifier or Notifier()
        self.rules = Rules.from_config(config.retention, config.watch.settle)
        self.arrivals = Arrivals(self.place.real)  # directories moved in: their files arrived
        self.scheduler = Scheduler(self.clock, config.watch.rescan, self.notifier.watchdog_interval)
        self.scheduler.coarse_s = self.rules.due_slack
        self.supervisor = Supervisor(
            config.engine, config.model_dir, runtime=runtime, after_native_call=self.install_signals
        )
        self.waker = Waker()
        self.clock_guard = ClockGuard(self.clock, on_jump=self.waker.wake)  # suspends max_age
        self.stop_signal: int | None = None
        self.reload_requested = False
        self.log_closed = False  # stdout's reader went away: stop, and say so on stderr
        self.index = Index()
        self.watcher: Watcher | None = None
        self.missing = False
        self.root_id: tuple[int, int] | None = None
        self.holders = Holders()
        # Deletions that passed every check that does not depend on the engine, waiting for
        # the batch window to close (engine.batch) so that they share one free/start cycle.
        self.due: dict[bytes, Decision] = {}
        self.flush_at: float | None = None  # monotonic: when the due deletions are done
        self.restart_at: float | None = None  # monotonic: when a freed engine starts again
        self.backoff = Backoff()  # when files skipped or failed are tried again
        # Dry-run decisions already logged: path → the (inode, mtime) they were about.
        self.reported: dict[bytes, tuple[int, float]] = {}
        self.future = FutureMtimes()  # files already reported with an mtime in the future
        self.pending: set[bytes] = set()  # files to look at again on the next step
        self.dirs: dict[bytes, int] = {}  # every directory under model_dir → its inode
        self.mounts: set[tuple[bytes, str]] = set()  # (path, device) not entered, as logged
        self.coverage_due: float | None = None  # when to check every directory is watched
        self.force_polling = False  # set once inotify could not cover the tree (auto only)
        self.totals = Totals()  # STATUS= and the metrics file read it
        self.metrics = Metrics(self.totals, config.metrics.textfile)
        self.status_sent = ""
        self.log = log.get()

    # -- signals ---------------------------------------------------------------------------

    def install_signals(self) -> None:
        """(Re)install our handlers. Must follow the .NET runtime's own installation (at import
        and at the first set_post_processor, ASPOSE_NOTES 2), or SIGTERM kills us with 143."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (*signals.STOP, *signals.RELOAD):
            signal.signal(sig, self._on_signal)
        for sig in signals.IGNORED:
            signal.signal(sig, signal.SIG_IGN)
        self.waker.wake_on_signals()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags and a wake-up here; the loop does the work (uvicorn's server.py pattern).
        if signum == signal.SIGHUP:
            self.reload_requested = True
        elif self.stop_signal is not None and signum == signal.SIGINT:
            log.emergency("warning", "daemon_killed", signal="SIGINT", detail="second SIGINT")
            os._exit(130)
        else:
            self.stop_signal = signum
        self.waker.wake()

    def _should_stop(self) -> bool:
        """Asked between files of a batch: also where the watchdog is fed during long passes.
        A reload stops the batch too: the rules may now keep what is left of it, so nothing
        more is deleted until the reload has planned again."""
        self._ping()
        if log.busy():
            log.pump()
        return (
            self.stop_signal is not None
            or self.reload_requested
            or self.log_closed
            or self.clock_guard.jumped()
        )

    def _ping(self) -> None:
        if self.scheduler.ping_due():
            self.notifier.watchdog()

    # -- the loop --------------------------------------------------------------------------

    def serve(self) -> int:
        c = self.config
        self.log.info(
            "daemon_started",
            version=__version__,
            config=str(c.path),
            model_dir=str(c.model_dir),
            pid=os.getpid(),
            dry_run=c.retention.dry_run,
        )
        log_warnings(c)
        with self.supervisor:
            self._arm()
            self._full_pass("startup")
            self._publish()
            if self.stop_signal is None:  # a SIGTERM mid-scan: STOPPING=1 follows, never READY=1
                self.notifier.ready(self._status())
            while self.stop_signal is None and not self.log_closed:
                if self.reload_requested:
                    self.reload_requested = False
                    self._reload()
                    continue
                self.waker.wait(self.scheduler.timeout(self._wait_cap()))
                self._ping()
                if self.stop_signal is not None or self.reload_requested or self.log_closed:
                    continue
                self._step()
            self.notifier.stopping()
            if self.watcher is not None:
                self.watcher.stop()
        name = signal.Signals(self.stop_signal).name if self.stop_signal else None
        log.pump(force=True)
        if self.log_closed:
            self.log.error(
                "daemon_stopped",
                signal=name,
                reason="stdout_closed",
                engine_cycles=self.supervisor.cycles,
            )
            return 1  # an error: under systemd, a restart reconnects the journal
        self.log.info("daemon_stopped", signal=name, engine_cycles=self.supervisor.cycles)
        return 0

    def log_went_away(self) -> None:
        """stdout's reader closed it (EPIPE): stop cleanly; the log goes on on stderr."""
        self.log_closed = True
        self.waker.wake()

    def _wait_cap(self) -> float:
        caps = [MISSING_POLL_S if self.missing else HEALTH_S]
        if log.busy():
            caps.append(LOG_PUMP_S)
        mono = self.clock.monotonic()
        for at in (self.coverage_due, self.flush_at, self.restart_at):
            if at is not None:
                caps.append(at - mono)
        return min(caps)

    def _step(self) -> None:
        try:
            if self.clock_guard.jumped() or self.clock_guard.pending:
                self._after_clock_jump()
            self._reconcile()
            if self.flush_at is not None and self.clock.monotonic() >= self.flush_at:
                self._flush()
        except ModelDirMissing:
            self._root_state()  # it went away under our feet: say so, stop, wait for it
        self._restart_engine_when_quiet()
        self._compact()
        self._send_status()
        log.pump()

    def _after_clock_jump(self) -> None:
        """Nothing planned under the old clock is deleted; a fresh scan under the new one
        plans again, with no file ageing from before the jump (ocrd.timejump)."""
        self.clock_guard.pending = False
        self.rules = self.rules.not_before(self.clock_guard.not_before)
        self.due.clear()
        self.flush_at = None
        self._full_pass("clock_jumped")

    def _restart_engine_when_quiet(self) -> None:
        if self.restart_at is None or self.due or self.missing:
            return
        if self.clock.monotonic() >= self.restart_at:
            self.restart_at = None
            self.supervisor.start()

    def _reconcile(self) -> None:
        root_state = self._root_state()
        if root_state == "missing":
            return
        if self.coverage_due is not None and self.clock.monotonic() >= self.coverage_due:
            self.coverage_due = None
            if self._watch_incomplete():
                root_state = "rearmed"
        changes = self.watcher.take() if self.watcher is not None else Changes()
        if root_state == "rearmed":
            self._full_pass("rearmed")
        elif changes.lost or b"" in changes.dirs:
            self._full_pass("events_lost")
        elif self.scheduler.rescan_due():
            self._full_pass("rescan")
        else:
            # Events only name a path; a revisit or a deletion skipped as "changed" may hold an
            # entry the file has since outgrown (writes raise no event we listen to). All of
            # them are looked at again on disk before planning: the disk is the truth.
            # An event on a file that is backing off (a writer closed it, it was renamed in)
            # makes it worth a look now: the next attempt is not held to its backoff.
            for p in changes.files:
                self.backoff.lift(p)
            changes.files |= self.scheduler.due_revisits() | self.pending
            self.pending.clear()
            touched = self._refresh(changes)
            entries = self.arrivals.apply(
                e for p in touched if (e := self.index.get(p)) is not None
            )
            if entries:
                if self.rules.per_file:
                    self._pass(plan(entries, self.rules, self.clock.time()))
                else:
                    everything = self.arrivals.apply(self.index.entries())
                    self._pass(plan(everything, self.rules, self.clock.time()))

    def _root_state(self) -> str:
        """Returns "ok", "missing" or "rearmed": notices model_dir vanishing, returning, or being
        replaced (a new inode needs a new watch), and a watch that died. model_dir is looked
        for at its pinned path without following a symlink anywhere: a link put in its place
        is "missing", whatever it points to."""
        root = self.place
        try:
            fd = open_root(root)
        except (ModelDirMissing, OSError):
            ident = None
        else:
            try:
                ident = identify(fd)
            finally:
                os.close(fd)
        if ident is None:
            if not self.missing:
                self.missing = True
                self.log.warning("model_dir_missing", **self._where())
                self._send_status()
                if self.watcher is not None:
                    self.watcher.stop()
                self.index.clear()
                self.pending.clear()
                self.scheduler.clear_revisits()
            return "missing"
        if self.missing or ident[:2] != self.root_id or not (self.watcher and self.watcher.alive):
            was_missing = self.missing
            self.missing = False
            self._arm()
            if was_missing:
                self.log.info("model_dir_returned", **self._where())
                self.supervisor.start()
            else:
                self.log.warning("watch_rearmed", **self._where())
            return "rearmed"
        return "ok"

    def _where(self) -> dict[str, str]:
        """model_dir as configured, and the directory it was resolved to where that differs."""
        where = {"model_dir": str(self.config.model_dir)}
        if os.fsencode(self.config.model_dir) != self.place.real:
            where["resolved"] = str(self.place)
        return where

    def _arm(self) -> None:
        c = self.config
        if self.watcher is not None:
            if self.watcher.failed and c.watch.observer == "auto":
                self.force_polling = True  # inotify broke down once: polling, until a reload
            self.watcher.stop()
        try:
            fd = open_root(self.place)
        except (ModelDirMissing, OSError):
            self.missing = True
            self.log.warning("model_dir_missing", **self._where())
            return
        try:
            self.root_id = identify(fd)[:2]
        finally:
            os.close(fd)
        kind = "polling" if self.force_polling else c.watch.observer
        self.watcher = Watcher(
            self.place,
            kind,
            self.waker.wake,
            poll_interval=max(1.0, c.watch.settle),
            tick=self._should_stop,
        )
        used = self.watcher.start()
        self.log.debug("watch_armed", model_dir=str(self.place), observer=used)

    def _refresh(self, changes: Changes) -> set[bytes]:
        """Bring the index up to date for every path the watcher marked; returns the files
        touched. An event's word on what a path is (file or directory) is not trusted — polling
        reports a reused inode as a move, directory to file — each path is looked at on disk."""
        touched: set[bytes] = set()
        with DirFds(self.place) as dirs:
            for rel in changes.dirs | changes.files:
                if not rel:
                    continue  # model_dir itself: _root_state's business
                if _below_any(rel, changes.dirs):
                    continue  # that directory is forgotten and walked whole below
                try:
                    st = dirs.stat(rel)
                except OSError as exc:
                    # Any directory may become unreadable at any time (another user's
                    # chmod 700): what is in it stays as last seen, and nothing there is
                    # deleted, since deleting goes through the same directories.
                    self._unreadable(rel, exc)
                    continue
                is_dir = st is not None and stat.S_ISDIR(st.st_mode)
                if not is_dir and (rel in changes.dirs or rel in self.dirs):
                    self._forget_tree(rel)  # a directory we knew is gone or became a file
                if st is None:
                    self._gone(rel)
                elif is_dir:
                    self.index.pop(rel)
                    self._forget_tree(rel)
                    try:
                        sub = walk(
                            os.dup(dirs.open(rel)), boundary=dirs.boundary, tick=self._should_stop
                        )
                    except OtherFilesystem as exc:
                        self._report_mounts([(rel, exc.device)], full=False)
                        continue
                    except OSError as exc:
                        self._unreadable(rel, exc)
                        continue
                    except Stopped:
                        break  # SIGTERM: the loop exits; the index no longer matters
                    self.arrivals.saw(rel, st, self.clock.time())
                    prefix = rel + b"/"
                    for where, why in sub.unreadable:
                        self.log.warning("scan_unreadable", path=display(prefix + where), error=why)
                    self._report_mounts([(prefix + p, dev) for p, dev in sub.mounts], full=False)
                    self.dirs.update((prefix + d if d else rel, ino) for d, ino in sub.dirs)
                    self._check_watch_soon()
                    for e in sub.files:
                        found = e._replace(path=prefix + e.path)
                        self.index.put(found)
                        touched.add(found.path)
                elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    self.index.put(entry_from_stat(rel, st))
                    touched.add(rel)
                else:
                    self.index.pop(rel)  # a fifo or socket: not a model
        return touched

    def _forget_tree(self, rel: bytes) -> None:
        prefix = rel + b"/"
        self.arrivals.forget(rel)
        self.scheduler.gone(self.index.forget_under(prefix))  # costs what the subtree holds
        if rel in self.dirs:  # a directory just made is not: mkdir storms cost nothing here
            for stale in [p for p in self.dirs if p == rel or p.startswith(prefix)]:
                del self.dirs[stale]

    def _unreadable(self, rel: bytes, exc: OSError) -> None:
        self.log.warning("scan_unreadable", path=display(rel), error=exc.strerror or str(exc))

    def _gone(self, path: bytes) -> None:
        """``path`` is no model any more (deleted, vanished): nothing is kept for it."""
        self.index.pop(path)
        self.backoff.forget(path)
        self.reported.pop(path, None)
        self.scheduler.gone()

    def _compact(self) -> None:
        """Revisits and dry-run notes held for paths since gone are dropped in bulk, once they
        are a quarter of all entries: memory follows the files, not the churn."""
        if self.scheduler.compact_due():
            present = self.index.__contains__
            self.scheduler.compact(present)
            self.reported = {p: v for p, v in self.reported.items() if present(p)}
            self.backoff.keep_only(present)

    def _check_watch_soon(self) -> None:
        if self.watcher is not None and self.watcher.used == "inotify":
            self.coverage_due = self.clock.monotonic() + COVERAGE_DELAY_S

    def _watch_incomplete(self) -> bool:
        """True when directories are left unwatched (max_user_watches reached: watchdog drops
        that error silently) and the daemon switched to polling; it warns either way."""
        watched = watched_inodes()
        if watched is None or self.watcher is None or self.watcher.used != "inotify":
            return False
        unwatched = []
        with DirFds(self.place) as dirs:
            for rel, ino in list(self.dirs.items()):
                if ino in watched:
                    continue
                try:
                    now_ino = os.fstat(dirs.open(rel)).st_ino
                except OSError:
                    del self.dirs[rel]  # gone since we saw it; nothing to watch
                    continue
                self.dirs[rel] = now_ino
                if now_ino not in watched:
                    unwatched.append(rel)
        if not unwatched:
            return False
        switch = self.config.watch.observer == "auto"
        self.log.warning(
            "watch_limit",
            directories=len(self.dirs),
            unwatched=len(unwatched),
            example=display(unwatched[0]) or ".",
            max_user_watches=_read_int("/proc/sys/fs/inotify/max_user_watches"),
            action="switching to polling"
            if switch
            else f"relying on rescan every "
            f"{self.config.watch.rescan:g}s; raise fs.inotify.max_user_watches",
        )
        if switch:
            self.force_polling = True
            self._arm()
        return switch

    def _full_pass(self, trigger: str) -> None:
        """Scan everything and apply the rules to everything. With per-file rules the walk is
        planned one directory at a time and only packed records are kept, so a rescan of a
        large tree never holds a full record per file (RSS stays near the index's size)."""
        if self.watcher is not None:
            self.watcher.take()  # the scan below sees all of it
        self.scheduler.rescanned()
        self.scheduler.clear_revisits()
        self.pending.clear()
        started = time.perf_counter()
        now = self.clock.time()
        self.totals.census.begin()
        unreadable: list[tuple[bytes, str]] = []
        dirs: list[tuple[bytes, int]] = []
        mounts: list[tuple[bytes, str]] = []
        index = Index()
        deletions: list[Decision] = []
        whole: list[FileEntry] = []
        arrived: dict[bytes, float] = {}  # one stat per directory for ocrd.arrival
        try:
            fd = open_root(self.place)
            root = identify(fd)
            with collecting_paused():
                for found in walk_batches(
                    fd, unreadable, dirs, mounts=mounts, tick=self._should_stop
                ):
                    for e in found:
                        index.put(e)
                    batch = self.arrivals.apply(found, arrived)
                    if self.rules.per_file:
                        batch_plan = self.totals.census.add(plan(batch, self.rules, now))
                        deletions.extend(self._note_revisits(batch_plan))
                    else:
                        whole.extend(batch)
            still_there(self.place, root)
        except (ModelDirMissing, OSError):
            self._root_state()
            return
        except Stopped:
            return  # SIGTERM mid-scan: the loop exits at once, nothing half-planned is applied
        self.index = index
        self.future.keep_only(index)
        self.dirs = dict(dirs)
        self.arrivals.keep_only(self.dirs, now - self.rules.horizon)
        # Nothing is kept for a path that is gone.
        self.backoff.keep_only(lambda p: index.get(p) is not None)
        self._check_watch_soon()
        self.log.info(
            "scan_completed",
            files=index.files,
            bytes=index.bytes,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            trigger=trigger,
        )
        for rel, why in unreadable:
            self.log.warning("scan_unreadable", path=display(rel), error=why)
        self._report_mounts(mounts, full=True)
        if not self.rules.per_file:
            deletions = self._note_revisits(self.totals.census.add(plan(whole, self.rules, now)))
        if self.config.retention.dry_run:
            # What a full pass no longer plans to delete (gone, renamed, rules changed) is
            # forgotten, so the set stays as large as the would-be deletions, not the churn.
            planned = {d.entry.path: (d.entry.ino, d.entry.mtime) for d in deletions}
            self.reported = {p: v for p, v in self.reported.items() if planned.get(p) == v}
        self._apply(Plan(tuple(deletions), now), at_once=True)
        self.totals.full_pass(trigger, now, time.perf_counter() - started)

    def _report_mounts(self, found: list[tuple[bytes, str]], *, full: bool) -> None:
        """``mount_skipped`` once per mount point (and device) found inside model_dir: ocrd
        neither enters, watches nor deletes anything there. A full pass also forgets the ones
        gone, so a mount that comes back is said again."""
        now = set(found)
        for rel, device in found:
            if (rel, device) not in self.mounts:
                self.log.warning(
                    "mount_skipped",
                    path=display(rel),
                    device=device,
                    detail="another filesystem than model_dir's: not entered, not watched, "
                    "nothing deleted there",
                )
        self.mounts = now if full else self.mounts | now

    def _pass(self, the_plan: Plan) -> None:
        self._apply(Plan(tuple(self._note_revisits(the_plan)), the_plan.now))

    def _note_revisits(self, the_plan: Plan) -> list[Decision]:
        """Schedule a second look where time alone may change a verdict; the deletions."""
        self.future.check(the_plan.decisions, the_plan.now)
        deletions = []
        for d in the_plan.decisions:
            if d.verdict is Verdict.DELETE:
                deletions.append(d)
            elif (at := revisit_at(d, self.rules, the_plan.now)) is not None:
                self.scheduler.revisit(d.entry.path, at, coarse=d.verdict is Verdict.KEEP)
        return deletions

    def _apply(self, the_plan: Plan, *, at_once: bool = False) -> None:
        """Deletions become due. Each is first checked for everything that does not depend on
        the engine (identity, other holders, a writable directory, no immutable flag), so that
        the engine is freed only for deletions that will happen; those wait up to
        engine.batch for others (unless ``at_once``: a full pass is a batch already)."""
        deletions = the_plan.deletions
        if not deletions:
            return
        if self.config.retention.dry_run:
            self._report_dry_run(the_plan)
            return
        deletions = self._not_backing_off(deletions)
        if deletions:
            self.totals.begin_pass(self.clock.time())
        ready = deletions
        if ready and self.supervisor.running:
            ready = tuple(self._precheck(the_plan))
        for d in ready:
            self.due[d.entry.path] = d
        if not self.due:
            return
        if at_once or not self.supervisor.running or self.config.engine.batch <= 0:
            self._flush()
        elif self.flush_at is None:
            self.flush_at = self.clock.monotonic() + self.config.engine.batch

    def _not_backing_off(self, deletions: Iterable[Decision]) -> tuple[Decision, ...]:
        """Drops deletions of unchanged files whose next attempt is still ahead (a full pass
        plans them again: it must not undo their backoff), and keeps their revisit."""
        if not len(self.backoff):
            return tuple(deletions)
        now = self.clock.time()
        kept = []
        for d in deletions:
            e = d.entry
            until = self.backoff.waiting_until(e.path, (e.ino, e.size, e.mtime), now)
            if until is not None:
                self.scheduler.revisit(e.path, until)
                continue
            kept.append(d)
        return tuple(kept)

    def _precheck(self, the_plan: Plan) -> Iterable[Decision]:
        """The deletions that would go now if the engine held nothing; the others are logged
        and retried later, without an engine cycle."""
        for o in probe(the_plan, str(self.place), self._in_use()):
            if o.status is Status.WOULD_DELETE:
                yield o.decision
            else:
                self._not_done(o)

    def _flush(self) -> None:
        """Free the engine once for every due deletion, and do them."""
        due = tuple(self.due.values())
        self.due.clear()
        self.flush_at = None
        if not due:
            return
        if self.clock_guard.jumped():
            return  # the next step plans them again under the new clock
        the_plan = Plan(due, self.clock.time())
        try:
            self.supervisor.free("deletion", deletions=len(due))
        except EngineBusy:
            for d in due:
                self._not_done(Outcome(d, Status.SKIPPED, "engine_busy"))
            self.restart_at = None
            return
        left = {d.entry.path for d in due}
        try:
            for o in apply(
                the_plan, str(self.place), stop=self._should_stop, in_use=self._in_use()
            ):
                e = o.decision.entry
                left.discard(e.path)
                if o.status is Status.DELETED:
                    self._gone(e.path)
                    self.totals.deleted(o.freed, o.decision.rule)
                    self.log.info(
                        "model_deleted", path=display(e.path), size=e.size, rule=o.decision.rule
                    )
                else:
                    self._not_done(o)
        finally:
            # Not reached (a stop or a reload came first): looked at again, under whatever
            # rules are in force by then, at the next step.
            self.pending |= left
            # The engine stays freed while deletions keep coming; it starts again after a
            # quiet engine.restart_after (a free with nothing left to wait for restarts now).
            self.restart_at = self.clock.monotonic() + self.config.engine.restart_after
            if self.config.engine.restart_after <= 0:
                self._restart_engine_when_quiet()
        if self.pending:
            self.waker.wake()

    def _not_done(self, o: Outcome) -> None:
        """Log a deletion that was not done, and when it will be tried again."""
        e = o.decision.entry
        path = display(e.path)
        if o.status is Status.FAILED:
            self.totals.failed()
        else:
            self.totals.skipped(o.detail)
        if o.detail == "vanished":
            self._gone(e.path)
            self.log.info("deletion_skipped", path=path, reason=o.detail)
            return
        if o.detail == "changed":
            # Looked at again soon, never in a busy loop: a file that keeps changing is seen
            # at most once per CHANGED_RECHECK_S (and settle keeps it from being planned).
            self.scheduler.revisit(e.path, self.clock.time() + CHANGED_RECHECK_S)
            self.log.info("deletion_skipped", path=path, reason=o.detail)
            return
        now = self.clock.time()
        attempts, delay = self.backoff.failed(e.path, (e.ino, e.size, e.mtime), now)
        self.scheduler.revisit(e.path, now + delay)
        if o.status is Status.FAILED:
            self.log.error(
                "deletion_failed", path=path, error=o.detail, attempt=attempts, retry_in_s=delay
            )
        else:
            level = self.log.warning if o.detail == "engine_busy" else self.log.info
            level(
                "deletion_skipped", path=path, reason=o.detail, attempt=attempts, retry_in_s=delay
            )

    def _in_use(self) -> InUse:
        return InUse(self.holders, self.config.retention.unknown_holders, on_limited=self._limited)

    def _limited(self, view: View) -> None:
        limited_check(self.log, view, self.config.retention.unknown_holders)

    def _report_dry_run(self, the_plan: Plan) -> None:
        if any(
            self.reported.get(d.entry.path) != (d.entry.ino, d.entry.mtime)
            for d in the_plan.deletions
        ):
            self.totals.begin_pass(self.clock.time())
        for d in the_plan.deletions:
            e = d.entry
            version = (e.ino, e.mtime)
            if self.reported.get(e.path) == version:
                continue  # said once per file version; every rescan would repeat it otherwise
            self.reported[e.path] = version
            self.totals.would_delete(e.size)
            self.log.info("model_would_be_deleted", path=display(e.path), size=e.size, rule=d.rule)

    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load(self.config.path)
        except ConfigError as exc:
            self.log.error(
                "config_rejected", config=str(self.config.path), errors=list(exc.problems)
            )
            self.totals.rejected(exc.problems, self.clock.time(), str(self.config.path))
            self._publish()
            self.notifier.ready(self._status())
            return
        held = self._widening(new)
        if held is not None:
            self.log.error("reload_held", config=str(new.path), **held)
            why = f"it would delete {held['would_delete']} of {held['of_files']} models more"
            self.totals.rejected([why], self.clock.time(), str(new.path), held=True)
            self._publish()
            self.notifier.ready(self._status())
            return
        log.configure(new.log.level, new.log.format, daemon=True, on_closed=self.log_went_away)
        self.log = log.get()
        old = self.config
        old_place, self.place = self.place, pin(new.model_dir)
        # Deletions waiting for their batch were planned under the old rules: the reload's
        # full pass plans them again under the new ones.
        self.due.clear()
        self.flush_at = None
        self.backoff.clear()  # the operator acted: every skipped file gets a fresh try
        # A model reload costs the host; only a new model_dir or new engine settings need one.
        timing = {"batch", "restart_after"}
        if old.model_dir != new.model_dir or old.engine.model_dump(
            exclude=timing
        ) != new.engine.model_dump(exclude=timing):
            try:
                self.supervisor.free("reload")
                self.supervisor.reconfigure(new.engine, new.model_dir)
            except EngineBusy:
                # Logged by free(). The instance that refused stays the one we own (and must
                # free before any deletion); it is not replaced behind its back.
                pass
        else:
            self.supervisor.settings = new.engine
        self.config = new
        self.metrics.reconfigure(new.metrics.textfile)
        self.rules = Rules.from_config(new.retention, new.watch.settle).not_before(
            self.clock_guard.not_before
        )
        if old_place != self.place:
            self.arrivals = Arrivals(self.place.real)
        self.scheduler.rescan = new.watch.rescan
        self.scheduler.coarse_s = self.rules.due_slack
        if (old.model_dir, old.watch, old_place) != (new.model_dir, new.watch, self.place):
            self.missing = False
            self.force_polling = False
            self._arm()
        if self.restart_at is None:
            self.supervisor.start()
        self.reported.clear()
        self.log.info(
            "config_reloaded",
            config=str(new.path),
            changed=_diff(old, new),
            values=_values(old, new),
        )
        log_warnings(new)
        self.totals.reloaded()
        self._full_pass("reload")
        self._publish()
        self.notifier.ready(self._status())

    def _widening(self, new: Config) -> dict[str, Any] | None:
        """Why a reload must wait for the operator, or None: its rules would delete, beyond what
        the rules in force delete, more than retention.reload_guard of the models by count or
        by bytes (at least two files: one file is no mass deletion). A typo such as
        max_age = "1s" deletes everything within a second; this gives it a second look."""
        guard = new.retention.reload_guard
        if guard >= 1 or new.retention.dry_run or not self.index.files:
            return None
        now = self.clock.time()
        entries = self.arrivals.apply(self.index.entries())
        before = {d.entry.path for d in plan(entries, self.rules, now).deletions}
        if self.config.retention.dry_run:
            before = set()
        rules = Rules.from_config(new.retention, new.watch.settle).not_before(
            self.clock_guard.not_before
        )
        extra = [d for d in plan(entries, rules, now).deletions if d.entry.path not in before]
        files, size = self.index.files, self.index.bytes
        extra_bytes = sum(d.entry.size for d in extra)
        if len(extra) < 2 or (len(extra) <= guard * files and extra_bytes <= guard * size):
            return None
        return {
            "would_delete": len(extra),
            "would_free": extra_bytes,
            "of_files": files,
            "of_bytes": size,
            "guard": f"{guard:.0%}",
            "changed": _diff(self.config, new),
            "values": _values(self.config, new),
            "sample": [display(d.entry.path) for d in extra[:5]],
            "action": "the rules in force stay; to apply the new ones, run 'ocrd clean -c "
            f"{new.path}' yourself (then reload), or raise retention.reload_guard",
        }

    # -- status ----------------------------------------------------------------------------

    def _status(self) -> str:
        missing = str(self.config.model_dir) if self.missing else None
        return self.totals.status(self.index.files, self.index.bytes, missing, len(self.due))

    def _publish(self) -> None:
        """The engine's own counts into the totals; the metrics file if anything moved."""
        self.totals.engine(self.supervisor.cycles, self.supervisor.downtime_s)
        self.metrics.publish()

    def _send_status(self) -> None:
        """STATUS= when its text changed, and the metrics file when the totals did."""
        self._publish()
        status = self._status()
        if status != self.status_sent:
            self.status_sent = status
            self.notifier.status(status)


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


def _diff(old: Config, new: Config) -> list[str]:
    a, b = old.model_dump(), new.model_dump()
    return sorted(_changed_keys(a, b, ""))


def _values(old: Config, new: Config) -> dict[str, list[Any]]:
    """Each changed key with its old and new value, as JSON can carry them."""
    a = json.loads(old.model_dump_json())
    b = json.loads(new.model_dump_json())
    out = {}
    for key in _diff(old, new):
        va, vb = a, b
        for part in key.split("."):
            va = va.get(part) if isinstance(va, dict) else None
            vb = vb.get(part) if isinstance(vb, dict) else None
        out[key] = [va, vb]
    return out


def _changed_keys(a: dict[str, Any], b: dict[str, Any], prefix: str) -> Iterable[str]:
    for key in a.keys() | b.keys():
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            yield from _changed_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            yield f"{prefix}{key}"


def run(config_path: Path) -> int:
    """``ocrd run``: 0 after SIGTERM/SIGINT, 78 for an invalid config at start, 1 otherwise.
    Every outcome is a log line (JSON off a TTY), start-up config errors and crashes included."""
    try:
        config = load(config_path)
    except ConfigError as exc:
        log.configure()  # the config's own [log] is unknown: the defaults
        log.get().error("config_invalid", config=str(config_path), errors=list(exc.problems))
        return EXIT_CONFIG
    daemons: list[Daemon] = []

    def went_away() -> None:
        for d in daemons:
            d.log_went_away()

    log.configure(config.log.level, config.log.format, daemon=True, on_closed=went_away)
    threading.excepthook = _thread_failed
    before, after = raise_fd_limit()
    log.get().debug("fd_limit", soft_before=before, soft=after)
    try:
        # The runtime is imported before any signal handler is installed: see install_signals.
        runtime = load_runtime() if config.engine.enabled else None
        daemon = Daemon(config, runtime=runtime)
        daemons.append(daemon)
        daemon.install_signals()
        signals.release()  # every handler is in place: what arrived meanwhile is delivered now
        return daemon.serve()
    except Exception as exc:  # noqa: BLE001 — logged loudly, exit 1, systemd restarts us
        log.get().exception("daemon_failed", error=repr(exc))
        return 1


def _thread_failed(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught exception (the observer's, a library's) as a log line, not a bare
    traceback on stderr; the main loop notices a dead watch by itself."""
    thread = args.thread.name if args.thread is not None else None
    log.get().error(
        "thread_failed",
        thread=thread,
        error=repr(args.exc_value),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
