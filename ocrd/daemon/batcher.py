"""The daemon's planned deletions until they are done: pre-checked, gathered so that deletions
close together share one engine free/start cycle, carried out, and backed off when skipped."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ocrd.base import log
from ocrd.base.clock import Clock
from ocrd.base.errors import EngineBusy
from ocrd.config.schema import Config
from ocrd.daemon.backoff import Backoff
from ocrd.daemon.engine import Supervisor
from ocrd.daemon.scheduler import Scheduler
from ocrd.daemon.timejump import ClockGuard
from ocrd.fs.holders import Holders, View
from ocrd.fs.inventory import FileEntry
from ocrd.ops.check import probe
from ocrd.ops.delete import apply
from ocrd.ops.inuse import InUse, limited_check
from ocrd.ops.outcomes import Outcome, Recorder, Status, say_refused
from ocrd.ops.stats import Totals
from ocrd.ops.totrash import ToTrash
from ocrd.rules.decision import Decision, Plan
from ocrd.rules.refusal import Refusal, guarded, left_after
from ocrd.rules.retention import Rules
from ocrd.watch.mirror import Mirror

CHANGED_RECHECK_S = 1.0  # a file that changed under a deletion is looked at again after this


class Batcher:
    """Deletions that passed every check that does not depend on the engine wait in ``due``
    for the batch window to close (engine.batch), then the engine is freed once for all of
    them; it starts again after a quiet engine.restart_after. A file skipped or failed is
    tried again later (ocrd.daemon.backoff), and under dry_run each would-be deletion is said once
    per file version. ``stop`` is asked between files."""

    def __init__(
        self,
        config: Config,
        *,
        mirror: Mirror,
        scheduler: Scheduler,
        engine: Supervisor,
        totals: Totals,
        clock: Clock,
        clock_guard: ClockGuard,
        stop: Callable[[], bool],
        wake: Callable[[], None],
        trashed: Callable[[float], None] = lambda purge_at: None,
        before_open: Callable[[bytes], None] | None = None,
    ) -> None:
        self.config = config
        self.trashed = trashed  # told each trashed file's purge time (ocrd.ops.purge.Schedule)
        self.mirror = mirror
        self.scheduler = scheduler
        self.engine = engine
        self.totals = totals
        self.recorder = Recorder(totals)  # each outcome's log line and count
        self.clock = clock
        self.clock_guard = clock_guard
        self.stop = stop
        self.wake = wake
        self.before_open = before_open  # told of each file the checks open (its last use)
        # While set (Rescans.before_reload), what is submitted waits for a turn: nothing is
        # deleted, and the engine is not freed, before a reload has been weighed.
        self.holding = False
        self.holders = Holders()
        self.due: dict[bytes, Decision] = {}
        self.flush_at: float | None = None  # monotonic: when the due deletions are done
        self.restart_at: float | None = None  # monotonic: when a freed engine starts again
        self.backoff = Backoff()  # when files skipped or failed are tried again
        # Dry-run decisions already logged: path → the (inode, mtime) they were about.
        self.reported: dict[bytes, tuple[int, float]] = {}
        self.refusal: Refusal | None = None  # the last deletion_refused, said once

    # -- what the loop asks ----------------------------------------------------------------

    def deadlines(self) -> list[float]:
        """Monotonic times at which the loop must wake for this room."""
        return [at for at in (self.flush_at, self.restart_at) if at is not None]

    def reconfigure(self, config: Config) -> None:
        """A reload: what waits was planned under the old rules (the reload's full pass plans
        it again), every skipped file gets a fresh try (the operator acted), and each planned
        deletion under dry_run is reported anew."""
        self.config = config
        self.drop_due()
        self.backoff.clear()
        self.reported.clear()

    def drop_due(self) -> None:
        self.due.clear()
        self.flush_at = None

    def lift(self, paths: Iterable[bytes]) -> None:
        """An event on a file that is backing off (a writer closed it, it was renamed in)
        makes it worth a look now: its next attempt is not held to its backoff."""
        for p in paths:
            self.backoff.lift(p)

    def forget(self, path: bytes) -> None:
        """``path`` is no model any more: nothing is kept for it here."""
        self.backoff.forget(path)
        self.reported.pop(path, None)

    def keep_only(self, present: Callable[[bytes], bool]) -> None:
        self.reported = {p: v for p, v in self.reported.items() if present(p)}
        self.backoff.keep_only(present)

    def keep_reports(self, deletions: Iterable[Decision]) -> None:
        """Under dry_run, after a full pass: what it no longer plans to delete (gone, renamed,
        rules changed) is forgotten, so the notes stay as many as the would-be deletions."""
        planned = {d.entry.path: (d.entry.ino, d.entry.mtime) for d in deletions}
        self.reported = {p: v for p, v in self.reported.items() if planned.get(p) == v}

    # -- deletions -------------------------------------------------------------------------

    def submit(self, the_plan: Plan, rules: Rules, *, at_once: bool = False) -> None:
        """Deletions become due. Each is first checked for everything that does not depend on
        the engine (identity, other holders, a writable directory, no immutable flag), so that
        the engine is freed only for deletions that will happen; those wait up to
        engine.batch for others (unless ``at_once``: a full pass is a batch already).
        ``rules``: those that made the plan (which of them delete by name)."""
        deletions = the_plan.deletions
        if not deletions:
            return
        the_plan = self._unless_the_last(the_plan, rules)
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
        if ready and self.engine.running:
            ready = tuple(self._precheck(the_plan))
        for d in ready:
            self.due[d.entry.path] = d
        if not self.due:
            return
        if self.holding:  # planned ahead of a reload: due at the next turn, not now
            if self.flush_at is None:
                self.flush_at = self.clock.monotonic()
        elif at_once or not self.engine.running or self.config.engine.batch <= 0:
            self.run_due()
        elif self.flush_at is None:
            self.flush_at = self.clock.monotonic() + self.config.engine.batch

    def _unless_the_last(self, the_plan: Plan, rules: Rules) -> Plan:
        """The plan, or, if it would leave no model file under model_dir, the plan without
        its deletions by age or rank (ocrd.rules.refusal.refuse_all), said once in
        deletion_refused. Weighed against the whole index and what is due already, not
        against the batch just planned: the daemon plans what changed. What stays is planned
        again at the next rescan, or when a file changes. The index counts files per owner,
        not whether each is settled: a file outside the batch counts as settled here (a
        settling one is planned again when it settles)."""
        retention = self.config.retention
        index = self.mirror.index
        gone = {d.entry.path: d.entry for d in (*self.due.values(), *the_plan.deletions)}
        the_plan, refusal = guarded(
            the_plan,
            index.files,
            rules,
            allow=retention.allow_delete_all,
            stays=left_after(index.owners, gone.values()),
        )
        if refusal is not None and refusal != self.refusal:
            say_refused(refusal, dry_run=retention.dry_run)
        self.refusal = refusal
        return the_plan

    def run_if_due(self) -> None:
        if self.flush_at is not None and self.clock.monotonic() >= self.flush_at:
            self.run_due()

    def run_due(self) -> None:
        """Free the engine once for every due deletion, and do them."""
        due = tuple(self.due.values())
        self.drop_due()
        if not due:
            return
        if self.clock_guard.jumped():
            return  # the next step plans them again under the new clock
        the_plan = Plan(due, self.clock.time())
        try:
            self.engine.free("deletion", deletions=len(due))
        except EngineBusy:
            for d in due:
                self._not_done(Outcome(d, Status.SKIPPED, "engine_busy"))
            self.restart_at = None
            return
        left = {d.entry.path for d in due}
        try:
            grace = self.config.trash.grace
            to_trash = ToTrash(grace, self.clock.time) if grace > 0 else None
            for o in apply(
                the_plan,
                str(self.mirror.place),
                stop=self.stop,
                in_use=self.in_use(),
                to_trash=to_trash,
            ):
                path = o.decision.entry.path
                left.discard(path)
                if o.status is Status.DELETED:
                    self.gone(path)
                    self.recorder.record(o)
                    if o.trashed is not None:
                        self.trashed(o.trashed.purge_at)
                else:
                    self._not_done(o)
        finally:
            # Not reached (a stop or a reload came first): looked at again, under whatever
            # rules are in force by then, at the next step.
            self.mirror.look_again(left)
            # The engine stays freed while deletions keep coming; it starts again after a
            # quiet engine.restart_after (a free with nothing left to wait for restarts now).
            self.restart_at = self.clock.monotonic() + self.config.engine.restart_after
            if self.config.engine.restart_after <= 0:
                self.restart_engine_when_quiet()
        if self.mirror.pending:
            self.wake()

    def restart_engine_when_quiet(self) -> None:
        if self.restart_at is None or self.due or self.mirror.missing:
            return
        if self.clock.monotonic() >= self.restart_at:
            self.restart_at = None
            self.engine.start()

    def gone(self, path: bytes) -> None:
        """``path`` is no model any more (deleted, vanished): nothing is kept for it."""
        self.mirror.gone(path)
        self.forget(path)
        self.scheduler.gone()

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
        for o in probe(the_plan, str(self.mirror.place), self.in_use()):
            if o.status is Status.WOULD_DELETE:
                yield o.decision
            else:
                self._not_done(o)

    def _not_done(self, o: Outcome) -> None:
        """Log a deletion that was not done, and when it will be tried again."""
        e = o.decision.entry
        if o.detail == "vanished":
            self.gone(e.path)
            self.recorder.record(o)
            return
        if o.detail == "changed":
            # Looked at again soon, never in a busy loop: a file that keeps changing is seen
            # at most once per CHANGED_RECHECK_S (and settle keeps it from being planned).
            self.scheduler.revisit(e.path, self.clock.time() + CHANGED_RECHECK_S)
            self.recorder.record(o)
            return
        now = self.clock.time()
        attempts, delay = self.backoff.failed(e.path, (e.ino, e.size, e.mtime), now)
        self.scheduler.revisit(e.path, now + delay)
        self.recorder.record(o, retry=(attempts, delay))

    def in_use(self) -> InUse:
        return InUse(
            self.holders,
            self.config.retention.unknown_holders,
            on_limited=self._limited,
            before_open=self.before_open,
        )

    def backing_off(self, entries: Iterable[FileEntry]) -> frozenset[tuple[int, int]]:
        """The (device, inode) of each of ``entries`` whose deletion was skipped (in use, of
        unknown holders, failed) and waits for its next try: the budget passes over them."""
        if not len(self.backoff):
            return frozenset()
        now = self.clock.time()
        return frozenset(
            (e.dev, e.ino)
            for e in entries
            if self.backoff.waiting_until(e.path, (e.ino, e.size, e.mtime), now) is not None
        )

    def _limited(self, view: View) -> None:
        limited_check(log.get(), view, self.config.retention.unknown_holders)

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
            self.recorder.record(Outcome(d, Status.WOULD_DELETE))
