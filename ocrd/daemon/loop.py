"""``ocrd run``: one main loop that wakes on filesystem events, timers and signals and runs
retention passes (scan → plan → apply) while the supervisor keeps the engine out of the way.

The rooms it drives: the mirror of model_dir (ocrd.watch.mirror), when work is due
(ocrd.daemon.scheduler), what a turn plans (ocrd.daemon.rescans), the deletions in hand
(ocrd.daemon.batcher), the trash and the budget (ocrd.daemon.upkeep), a reload
(ocrd.daemon.reload) and STATUS= with the metrics file (ocrd.daemon.status). It keeps the
loop, the signals, the heartbeat and the settings in force (the config and its rules)."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from ocrd import __version__
from ocrd.base import log
from ocrd.base.clock import Clock, SystemClock
from ocrd.base.errors import ModelDirMissing, Stopped
from ocrd.config.lint import log_warnings
from ocrd.config.schema import Config
from ocrd.daemon import signals
from ocrd.daemon.batcher import Batcher
from ocrd.daemon.budget import Keeper
from ocrd.daemon.engine import Supervisor
from ocrd.daemon.notify import Notifier
from ocrd.daemon.reload import Reloader, Settings
from ocrd.daemon.rescans import Rescans
from ocrd.daemon.scheduler import Scheduler
from ocrd.daemon.status import Publisher
from ocrd.daemon.timejump import ClockGuard
from ocrd.daemon.upkeep import Upkeep
from ocrd.daemon.waker import Waker
from ocrd.ops.purge import Schedule
from ocrd.ops.stats import Totals
from ocrd.rules.reload import changed_keys, changed_values
from ocrd.rules.retention import Rules
from ocrd.rules.trust import model_dir_owner
from ocrd.watch.mirror import Mirror, Root

MISSING_POLL_S = 1.0  # how often a vanished model_dir is looked for
LOG_PUMP_S = 1.0  # how soon held log lines and summaries are written
HEALTH_S = 30.0  # the loop looks at model_dir and the watch at least this often, events or not
# Turns start at most this often. The first wake-up after a quiet spell is a turn at once; what
# wakes the loop within TURN_S of the last turn's start waits for the rest of it, so that a
# storm of events is taken a tick's worth at a time: many events on one path are one look at
# it, and the turn's fixed work (model_dir's identity, the trash's holds, STATUS=) is paid at
# most 1/TURN_S times a second, not once per event (docs/watching.md, "What an event costs").
# Signals are not held: a stop or a reload is acted on at once.
TURN_S = 0.05


class Daemon:
    """``ocrd run`` itself: the loop, its signals and the settings in force. What model_dir
    holds is the mirror's, when work is due the scheduler's, the deletions in hand the
    batcher's, when the trash is purged the upkeep's, the STATUS= last sent the publisher's."""

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
        self.turns = 0  # turns of the loop after start-up (daemon_stopped says how many)
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
        purger = Schedule()  # when the trash is purged next: the upkeep's (ocrd.ops.purge)
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
            trashed=purger.trashed,
        )
        self.upkeep = Upkeep(
            config,
            clock=self.clock,
            mirror=self.mirror,
            keeper=self.keeper,
            engine=self.engine,
            batcher=self.batcher,
            purger=purger,
        )
        self.rescans = Rescans(
            config,
            clock=self.clock,
            mirror=self.mirror,
            scheduler=self.scheduler,
            batcher=self.batcher,
            totals=self.totals,
            step=self._step,
            check_root=self._check_root,
        )
        self.publisher = Publisher(
            config.model_dir,
            config.metrics.textfile,
            totals=self.totals,
            notifier=self.notifier,
            mirror=self.mirror,
            engine=self.engine,
            batcher=self.batcher,
            keeper=self.keeper,
        )
        self.reloader = Reloader(
            clock=self.clock,
            clock_guard=self.clock_guard,
            notifier=self.notifier,
            totals=self.totals,
            publisher=self.publisher,
            mirror=self.mirror,
            scheduler=self.scheduler,
            engine=self.engine,
            batcher=self.batcher,
            keeper=self.keeper,
            upkeep=self.upkeep,
            rescans=self.rescans,
            on_log_closed=self.log_went_away,
        )
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
            self.upkeep.trash_at_start()
            self.mirror.arm()
            self.rules = self.upkeep.hold(self.rules)
            self._rescan_all("startup")
            self.upkeep.keep_budget(self.rules)
            self.publisher.publish()
            if self.stop_signal is None:  # a SIGTERM mid-scan: STOPPING=1 follows, never READY=1
                self.notifier.ready(self.publisher.status())
            owed = False  # woken within the last turn's tick: a turn is due when it is up
            next_turn = 0.0  # time.monotonic(): the tick is real time spent, whatever the clock
            while self.stop_signal is None and not self.log_closed:
                if self.reload_requested:
                    self.reload_requested = False
                    self._catch_up()
                    self._reload()
                    continue
                if owed:
                    self.waker.wait(max(0.0, next_turn - time.monotonic()))
                else:
                    self.waker.wait(self.scheduler.timeout(self._wait_cap()))
                self._ping()
                if self.stop_signal is not None or self.reload_requested or self.log_closed:
                    continue
                started = time.monotonic()
                owed = started < next_turn
                if owed:
                    continue
                self.turns += 1
                self._after_wake()
                next_turn = started + TURN_S
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
        self.log.info(
            "daemon_stopped", signal=name, engine_cycles=self.engine.cycles, watch=self._counts()
        )
        return 0

    def _counts(self) -> dict[str, int]:
        """What events cost the loop since start-up: the events the watch delivered, the turns
        taken, the paths looked at again and the files planned between full passes."""
        return {
            "events": self.mirror.watching.counts.events,
            "turns": self.turns,
            "looked_at": self.rescans.looked_at,
            "planned": self.rescans.planned,
        }

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
        if (purge_in := self.upkeep.purge_in()) is not None:
            caps.append(purge_in)
        return min(caps)

    def _after_wake(self) -> None:
        """One turn of the loop: whatever woke it (an event, a timer, a revisit) is looked at."""
        try:
            if self.clock_guard.jumped() or self.clock_guard.pending:
                self._after_clock_jump()
            self.rescans.catch_up(self._held)
            self.batcher.run_if_due()
            self.upkeep.purge()
            self.upkeep.keep_budget(self.rules)
        except ModelDirMissing:
            self._check_root()  # it went away under our feet: say so, stop, wait for it
        self.batcher.restart_engine_when_quiet()
        self._compact()
        self.publisher.send()
        log.pump()

    def _catch_up(self) -> None:
        """Before a reload is weighed: what the watch marked since the last turn (a turn may
        be owed, TURN_S) is looked at and planned under the rules in force, nothing deleted
        (Rescans.before_reload), so the reload guard weighs the tree as it is now: an ``ocrd
        clean`` just before the reload has emptied what it deleted from the index."""
        try:
            self.rescans.before_reload(self._held)
        except ModelDirMissing:
            self._check_root()

    def _held(self) -> Rules:
        """The rules in force, holding what ``ocrd restore`` brought back (its hold is on disk
        before the file is: read after the watch's news of the file, it is seen)."""
        self.rules = self.upkeep.hold(self.rules)
        return self.rules

    def _after_clock_jump(self) -> None:
        """Nothing planned under the old clock is deleted; a fresh scan under the new one
        plans again, with no file ageing from before the jump (ocrd.daemon.timejump)."""
        self.clock_guard.pending = False
        self.rules = self.rules.not_before(self.clock_guard.not_before)
        self.batcher.drop_due()
        self._rescan_all("clock_jumped")

    def _check_root(self) -> Root:
        root = self.mirror.check_root()
        if root is Root.VANISHED:
            self.scheduler.clear_revisits()
            self.publisher.send()
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
        """A full pass under the rules in force (ocrd.daemon.rescans)."""
        self.rescans.rescan_all(trigger, self.rules)

    # -- reload ----------------------------------------------------------------------------

    def _reload(self) -> None:
        """Read, weigh and hand out the config anew (ocrd.daemon.reload), then plan all."""
        new = self.reloader.read(Settings(self.config, self.rules))
        if new is None:
            return
        old = self.config
        self.rules = self.reloader.hand_out(old, new)
        self.config = new.config
        self.log = log.get()
        self.log.info(
            "config_reloaded",
            config=str(new.config.path),
            changed=changed_keys(old, new.config),
            values=changed_values(old, new.config),
        )
        log_warnings(new.config)
        self.totals.reloaded()
        self._rescan_all("reload")
        self.publisher.ready()

    def _widening(self, new: Config) -> dict[str, Any] | None:
        """Why ``new`` must wait for the operator, or None (ocrd.daemon.reload)."""
        rules = self.reloader.rules_for(new)
        return self.reloader.widening(new, rules, Settings(self.config, self.rules))
