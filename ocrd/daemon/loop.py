"""``ocrd run``: one main loop that wakes on filesystem events, timers and signals and runs
retention passes (scan → plan → apply) while the supervisor keeps the engine out of the way.

The rooms it drives: the mirror of model_dir (ocrd.watch.mirror), when work is due
(ocrd.daemon.scheduler), the planner (ocrd.rules.retention) and the deletions in hand
(ocrd.daemon.batcher); it keeps the loop, the signals, reloads and STATUS=."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from ocrd import __version__
from ocrd.base import log
from ocrd.base.clock import Clock, SystemClock
from ocrd.base.errors import ConfigError, ModelDirMissing, Stopped
from ocrd.config.lint import log_warnings
from ocrd.config.load import load
from ocrd.config.schema import Config
from ocrd.daemon import signals
from ocrd.daemon.batcher import Batcher
from ocrd.daemon.budget import Keeper
from ocrd.daemon.engine import Supervisor
from ocrd.daemon.metrics import Metrics
from ocrd.daemon.notify import Notifier
from ocrd.daemon.scheduler import Scheduler
from ocrd.daemon.skew import FutureMtimes
from ocrd.daemon.timejump import ClockGuard
from ocrd.daemon.waker import Waker
from ocrd.fs import trash
from ocrd.fs.holds import holds
from ocrd.fs.inventory import FileEntry
from ocrd.ops import purge
from ocrd.ops.purge import Schedule
from ocrd.ops.stats import Totals
from ocrd.rules.decision import Decision, Plan, Verdict
from ocrd.rules.parts import chunks, kin, parts
from ocrd.rules.reload import changed_keys, changed_values, widening
from ocrd.rules.retention import Rules, plan, revisit_at
from ocrd.rules.trust import model_dir_owner
from ocrd.watch.mirror import Mirror, Root

MISSING_POLL_S = 1.0  # how often a vanished model_dir is looked for
LOG_PUMP_S = 1.0  # how soon held log lines and summaries are written
HEALTH_S = 30.0  # the loop looks at model_dir and the watch at least this often, events or not


class Daemon:
    """``ocrd run`` itself: the loop, its signals, reloads and STATUS=. What model_dir holds is
    the mirror's, when work is due the scheduler's, the deletions in hand the batcher's."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        runtime: Any = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.notifier = notifier or Notifier()
        self.rules = Rules.from_config(
            config.retention, config.watch.settle, model_dir_owner(config.model_dir)
        )
        self.scheduler = Scheduler(self.clock, config.watch.rescan, self.notifier.watchdog_interval)
        self.scheduler.coarse_s = self.rules.due_slack
        self.engine = Supervisor(
            config.engine, config.model_dir, runtime=runtime, after_native_call=self.install_signals
        )
        self.waker = Waker()
        self.clock_guard = ClockGuard(self.clock, on_jump=self.waker.wake)  # suspends max_age
        self.stop_signal: int | None = None
        self.reload_requested = False
        self.log_closed = False  # stdout's reader went away: stop, and say so on stderr
        self.totals = Totals()  # STATUS= and the metrics file read it
        self.keeper = Keeper(config, self.clock, self.totals, self.waker.wake)  # last use, budget
        self.mirror = Mirror(
            config.model_dir,
            config.watch,
            self.clock,
            wake=self.waker.wake,
            tick=self._tick,
            on_use=self.keeper.saw if self.keeper.recording else None,
        )
        self.future = FutureMtimes()  # files already reported with an mtime in the future
        self.purger = Schedule()  # when the trash is purged next (ocrd.ops.purge)
        self.batcher = Batcher(
            config,
            mirror=self.mirror,
            scheduler=self.scheduler,
            engine=self.engine,
            totals=self.totals,
            clock=self.clock,
            clock_guard=self.clock_guard,
            stop=self._tick,
            wake=self.waker.wake,
            before_open=self.keeper.own,
            trashed=self.purger.trashed,
        )
        self.metrics = Metrics(self.totals, config.metrics.textfile)
        self.status_sent = ""
        self.log = log.get()

    # -- signals ---------------------------------------------------------------------------

    def install_signals(self) -> None:
        """(Re)install our handlers. Must follow the .NET runtime's own installation (at import
        and at the first set_post_processor: docs/aspose-engine.md §2), or SIGTERM exits 143."""
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

    def _tick(self) -> bool:
        """The heartbeat of a long walk or batch, asked between directories and files: feeds
        systemd's watchdog, writes the log lines held meanwhile, and answers _should_stop."""
        self._ping()
        if log.busy():
            log.pump()
        return self._should_stop()

    def _step(self) -> None:
        """Between parts of a long plan: the heartbeat (_tick), and Stopped once the loop must
        stop, or reload (what is in hand was planned under rules about to change)."""
        if self._tick():
            raise Stopped("stopped between parts of a plan")

    def _parts(self, rules: Rules) -> Iterator[list[FileEntry]]:
        """Every indexed file, arrivals applied, in parts that ``rules`` plan alone as they
        would plan all of them (ocrd.rules.parts), the heartbeat between parts."""
        index = self.mirror.index
        cache: dict[bytes, float] = {}  # one stat per directory over the whole pass
        return parts(
            index.entries,
            len(index),
            rules,
            get=index.get,
            finish=lambda part: self.mirror.arrivals.apply(part, cache),
            tick=self._step,
        )

    def _should_stop(self) -> bool:
        """Whether a walk or batch in hand stops now. A reload stops the batch too: the rules may
        now keep what is left of it, so nothing more is deleted until the reload has planned
        again."""
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
        self.keeper.start()
        with self.engine:
            self._trash_at_start()
            self.mirror.arm()
            self._hold()
            self._rescan_all("startup")
            self._keep_budget()
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
                self._after_wake()
            self.notifier.stopping()
            self.mirror.watching.stop()
        self.keeper.flush(self.mirror.index.get, force=True)
        self.keeper.close()
        name = signal.Signals(self.stop_signal).name if self.stop_signal else None
        log.pump(force=True)
        if self.log_closed:
            self.log.error(
                "daemon_stopped",
                signal=name,
                reason="stdout_closed",
                engine_cycles=self.engine.cycles,
            )
            return 1  # an error: under systemd, a restart reconnects the journal
        self.log.info("daemon_stopped", signal=name, engine_cycles=self.engine.cycles)
        return 0

    def log_went_away(self) -> None:
        """stdout's reader closed it (EPIPE): stop cleanly; the log goes on on stderr."""
        self.log_closed = True
        self.waker.wake()

    def _wait_cap(self) -> float:
        caps = [MISSING_POLL_S if self.mirror.missing else HEALTH_S]
        if log.busy():
            caps.append(LOG_PUMP_S)
        mono = self.clock.monotonic()
        watching = self.mirror.watching
        dues = (watching.coverage_due, watching.probe_due, self.keeper.deadline())
        for at in (*dues, *self.batcher.deadlines()):
            if at is not None:
                caps.append(at - mono)
        if self.purger.next_at < math.inf:
            caps.append(self.purger.next_at - self.clock.time())
        return min(caps)

    def _after_wake(self) -> None:
        """One turn of the loop: whatever woke it (an event, a timer, a revisit) is looked at."""
        try:
            if self.clock_guard.jumped() or self.clock_guard.pending:
                self._after_clock_jump()
            self._hold()
            self._catch_up()
            self.batcher.run_if_due()
            self._purge()
            self._keep_budget()
        except ModelDirMissing:
            self._check_root()  # it went away under our feet: say so, stop, wait for it
        self.batcher.restart_engine_when_quiet()
        self._compact()
        self._send_status()
        log.pump()

    # -- the trash (docs/trash.md) ------------------------------------------------------------

    def _trash_at_start(self) -> None:
        """The trash as the disk has it: what a killed ocrd left half done is cleared. Under
        dry_run nothing is deleted, in the trash neither."""
        if self.mirror.missing or self.config.retention.dry_run:
            return
        try:
            purge.recover(self.mirror.place, in_use=self.batcher.in_use())
        except (ModelDirMissing, OSError) as exc:
            self.log.warning("trash_recovery_failed", error=str(exc))

    def _hold(self) -> None:
        """The files restored from the trash, held from every rule (``ocrd restore`` may have
        run since the last turn: the hold is on disk before the file is back)."""
        held = {} if self.mirror.missing else holds(self.mirror.place, self.clock.time())
        self.rules = self.rules.holding(held)

    def _purge(self) -> None:
        """Purge what is due in the trash; the engine need not be freed: it never sees the
        trash, and the lease tells whether anything holds a file there."""
        if self.mirror.missing or self.config.retention.dry_run:
            return
        self.purger.run_if_due(
            self.mirror.place,
            now=self.clock.time(),
            grace=self.config.trash.grace,
            in_use=self.batcher.in_use(),
        )

    def _keep_budget(self) -> None:
        """Last use to the state file, then the budget's look (ocrd.daemon.budget)."""
        self.keeper.flush(self.mirror.index.get)
        if self.mirror.missing:
            return
        index = self.mirror.index
        self.keeper.look(
            self.mirror.place.real,
            index=(index.files, index.bytes),
            entries=self.mirror.entries,
            rules=self.rules,
            evict=lambda evictions: self.batcher.submit(evictions, self.rules, at_once=True),
            engine_lists=self._engine_lists,
            in_use=self.batcher.backing_off,
            trash=(self._trash_bytes, self._purge_for_budget),
        )

    def _trash_bytes(self) -> int:
        return trash.usage(self.mirror.place).bytes

    def _purge_for_budget(self, want: int) -> int:
        """Empty the trash oldest first, ``want`` bytes or more (ocrd.ops.purge.free)."""
        if self.config.retention.dry_run:
            return 0
        return purge.free(self.mirror.place, want, in_use=self.batcher.in_use()).bytes

    def _engine_lists(self) -> frozenset[bytes]:
        root = os.fsencode(self.config.model_dir.absolute())
        return frozenset(os.path.relpath(p, root) for p in self.engine.listed())

    def _after_clock_jump(self) -> None:
        """Nothing planned under the old clock is deleted; a fresh scan under the new one
        plans again, with no file ageing from before the jump (ocrd.daemon.timejump)."""
        self.clock_guard.pending = False
        self.rules = self.rules.not_before(self.clock_guard.not_before)
        self.batcher.drop_due()
        self._rescan_all("clock_jumped")

    def _catch_up(self) -> None:
        """Bring the mirror up to date with what changed, and plan what changed (all of it,
        when the watch can no longer be trusted or the rescan period is up)."""
        self.mirror.watching.check_probe()
        root = self._check_root()
        if root in (Root.MISSING, Root.VANISHED):
            return
        if self.mirror.check_coverage():
            root = Root.REARMED
        changes = self.mirror.take_changes()
        if root in (Root.RETURNED, Root.REARMED):
            self._rescan_all("rearmed")
        elif changes.lost or b"" in changes.dirs:
            self._rescan_all("events_lost")
        elif self.scheduler.rescan_due():
            # After a fallback, the watch the config asks for is tried again each period.
            if self.mirror.retry_wanted():
                self._rescan_all("rearmed")
            else:
                self.mirror.watching.probe()
                self._rescan_all("rescan")
        elif changes.poll:
            self._rescan_all("poll")  # no observer could be had: rescans stand in for one
        else:
            # Events only name a path; a revisit or a deletion skipped as "changed" may hold an
            # entry the file has since outgrown (writes raise no event we listen to). All of
            # them are looked at again on disk before planning: the disk is the truth.
            self.batcher.lift(changes.files)
            changes.files |= self.scheduler.due_revisits() | self.mirror.take_pending()
            refreshed = self.mirror.refresh(changes)
            for path in refreshed.gone:
                self.batcher.forget(path)
                self.scheduler.gone()
            self.scheduler.gone(refreshed.forgotten)
            entries = self.mirror.entries(refreshed.touched)
            if entries:
                # With families, what changed is planned with everything it may rank or be
                # ranked by: all of it, part by part (ocrd.rules.parts).
                now = self.clock.time()
                pieces = (
                    chunks(entries, self._step) if self.rules.per_file else self._parts(self.rules)
                )
                deletions: list[Decision] = []
                if not self.rules.per_file:
                    # Every kept file's revisit is noted again below. A stop halfway (SIGTERM,
                    # a reload, a clock jump) is followed by a full scan, or by the exit.
                    self.scheduler.clear_coarse()
                try:
                    for piece in pieces:
                        deletions.extend(self._note_revisits(plan(piece, self.rules, now)))
                except Stopped:
                    return  # the loop stops or reloads; a reload plans everything again
                self.batcher.submit(Plan(tuple(deletions), now), self.rules)

    def _check_root(self) -> Root:
        root = self.mirror.check_root()
        if root is Root.VANISHED:
            self.scheduler.clear_revisits()
            self._send_status()
        elif root is Root.RETURNED:
            self.engine.start()
        return root

    def _compact(self) -> None:
        """Revisits and notes held for paths since gone are dropped in bulk, once they are a
        quarter of all entries: memory follows the files, not the churn."""
        if self.scheduler.compact_due():
            present = self.mirror.index.__contains__
            self.scheduler.compact(present)
            self.batcher.keep_only(present)

    def _rescan_all(self, trigger: str) -> None:
        """Scan everything and apply the rules to everything. With per-file rules the walk is
        planned as it goes, a few thousand files at a time; with families, the index the walk
        built is planned afterwards in parts that hold whole families (ocrd.rules.parts).
        Either way only packed records are kept for the whole tree, and the heartbeat runs
        (the watchdog, SIGTERM) every few thousand files (docs/big-trees.md)."""
        scan = self.mirror.scan()
        self.scheduler.rescanned()
        self.scheduler.clear_revisits()
        started = time.perf_counter()
        now = self.clock.time()
        census = self.totals.census
        census.begin()
        allow_delete_all = self.config.retention.allow_delete_all
        deletions: list[Decision] = []
        try:
            for batch in scan:
                if self.rules.per_file:
                    batch_plan = census.add(plan(batch, self.rules, now))
                    census.foresee(batch_plan, self.rules, allow_delete_all=allow_delete_all)
                    deletions.extend(self._note_revisits(batch_plan))
        except (ModelDirMissing, OSError):
            self.mirror.abandon(scan)
            self._check_root()
            return
        except Stopped:
            # SIGTERM mid-scan: the loop exits at once, nothing half-planned is applied; a
            # reload plans everything again.
            self.mirror.abandon(scan)
            return
        self.mirror.adopt(scan)
        index = self.mirror.index
        self.future.keep_only(index)
        # Nothing is kept for a path that is gone.
        self.batcher.keep_only(lambda p: index.get(p) is not None)
        self.log.info(
            "scan_completed",
            files=index.files,
            bytes=index.bytes,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            trigger=trigger,
        )
        self.mirror.report(scan)
        if not self.rules.per_file:
            try:
                for part in self._parts(self.rules):
                    part_plan = census.add(plan(part, self.rules, now))
                    census.foresee(part_plan, self.rules, allow_delete_all=allow_delete_all)
                    deletions.extend(self._note_revisits(part_plan))
            except Stopped:
                return  # the loop stops, or reloads and plans everything again
        if self.config.retention.dry_run:
            self.batcher.keep_reports(deletions)
        self.batcher.submit(Plan(tuple(deletions), now), self.rules, at_once=True)
        self.totals.full_pass(trigger, now, time.perf_counter() - started)

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

    # -- reload ----------------------------------------------------------------------------

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
        try:
            held = self._widening(new)
        except Stopped:
            # SIGTERM, or another SIGHUP, while the new rules were weighed: the rules in force
            # stay; the loop stops, or reloads again.
            return
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
        # Deletions waiting for their batch were planned under the old rules: the reload's
        # full pass plans them again under the new ones.
        self.batcher.reconfigure(new)
        self.keeper.reconfigure(new)
        self.engine.follow(old, new)
        self.config = new
        self.metrics.reconfigure(new.metrics.textfile)
        self.rules = Rules.from_config(
            new.retention, new.watch.settle, model_dir_owner(new.model_dir)
        ).not_before(self.clock_guard.not_before)
        self._hold()
        self.purger.next_at = 0.0  # a new grace may purge sooner
        self.scheduler.reconfigure(new.watch.rescan, self.rules.due_slack)
        self.mirror.reconfigure(new.model_dir, new.watch)
        if self.batcher.restart_at is None:
            self.engine.start()
        self.log.info(
            "config_reloaded",
            config=str(new.path),
            changed=changed_keys(old, new),
            values=changed_values(old, new),
        )
        log_warnings(new)
        self.totals.reloaded()
        self._rescan_all("reload")
        self._publish()
        self.notifier.ready(self._status())

    def _widening(self, new: Config) -> dict[str, Any] | None:
        """Why a reload must wait for the operator, or None (ocrd.rules.reload.widening)."""
        index = self.mirror.index
        if new.retention.reload_guard >= 1 or new.retention.dry_run or not index.files:
            return None
        rules = Rules.from_config(
            new.retention, new.watch.settle, model_dir_owner(new.model_dir)
        ).not_before(self.clock_guard.not_before)
        if rules == self.rules and not self.config.retention.dry_run:
            return None  # a plan depends on the files, the rules and the time alone
        cache: dict[bytes, float] = {}
        return widening(
            self.config,
            new,
            self._parts(rules),
            self.rules,
            rules,
            kin=lambda going: kin(
                going,
                index.entries,
                self.rules,
                get=index.get,
                finish=lambda part: self.mirror.arrivals.apply(part, cache),
                tick=self._step,
            ),
            files=index.files,
            size=index.bytes,
            now=self.clock.time(),
        )

    # -- status ----------------------------------------------------------------------------

    def _status(self) -> str:
        missing = str(self.config.model_dir) if self.mirror.missing else None
        index = self.mirror.index
        status = self.totals.status(index.files, index.bytes, missing, len(self.batcher.due))
        budget = self.keeper.status()
        return status if budget is None else f"{status}; {budget}"

    def _publish(self) -> None:
        """The engine's and the watch's own state into the totals; the metrics file if
        anything moved."""
        self.totals.engine(self.engine.cycles, self.engine.downtime_s)
        self.totals.watch(self.mirror.watching.degraded)
        self.metrics.publish()

    def _send_status(self) -> None:
        """STATUS= when its text changed, and the metrics file when the totals did."""
        self._publish()
        status = self._status()
        if status != self.status_sent:
            self.status_sent = status
            self.notifier.status(status)
