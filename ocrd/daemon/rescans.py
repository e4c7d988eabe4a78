"""What a turn of the loop plans: a full pass (a rescan of model_dir, planned as it is walked
or part by part) or a catch-up on what the watch saw change; the deletions go to the batcher,
the second looks to the scheduler. It owns the files already reported with a future mtime."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from ocrd.base import log
from ocrd.base.clock import Clock
from ocrd.base.errors import ModelDirMissing, Stopped
from ocrd.config.schema import Config
from ocrd.daemon.batcher import Batcher
from ocrd.daemon.scheduler import Scheduler
from ocrd.daemon.skew import FutureMtimes
from ocrd.fs.inventory import FileEntry
from ocrd.ops.stats import Totals
from ocrd.rules.decision import Decision, Plan, Verdict
from ocrd.rules.parts import chunks, kin, parts
from ocrd.rules.retention import Rules, plan, revisit_at
from ocrd.watch.mirror import Mirror, Root
from ocrd.watch.observer import Changes


class Rescans:
    """Full passes and catch-ups under the rules the loop hands in. ``step`` is the loop's
    heartbeat between parts (raises Stopped); ``check_root`` looks at model_dir itself."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock,
        mirror: Mirror,
        scheduler: Scheduler,
        batcher: Batcher,
        totals: Totals,
        step: Callable[[], None],
        check_root: Callable[[], Root],
    ) -> None:
        self.config = config
        self.clock = clock
        self.mirror = mirror
        self.scheduler = scheduler
        self.batcher = batcher
        self.totals = totals
        self._step = step
        self._check_root = check_root
        self.future = FutureMtimes()  # files already reported with an mtime in the future
        self.looked_at = 0  # paths looked at again on disk between full passes
        self.planned = 0  # files planned between full passes
        self.carried: Changes | None = None  # marks before_reload kept for the next turn
        self.log: Any = log.get()

    def reconfigure(self, new: Config) -> None:
        self.config = new
        self.log = log.get()

    def parts(self, rules: Rules) -> Iterator[list[FileEntry]]:
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

    def kin(self, rules: Rules) -> Callable[[list[FileEntry]], list[FileEntry]]:
        """The files ``rules`` plan together with those going (ocrd.rules.parts.kin)."""
        index = self.mirror.index
        cache: dict[bytes, float] = {}
        return lambda going: kin(
            going,
            index.entries,
            rules,
            get=index.get,
            finish=lambda part: self.mirror.arrivals.apply(part, cache),
            tick=self._step,
        )

    def catch_up(self, held: Callable[[], Rules]) -> None:
        """Bring the mirror up to date with what changed, and plan what changed (all of it,
        when the watch can no longer be trusted or the rescan period is up), under the rules
        ``held()`` gives. They are asked for after the watch's marks are taken: ``ocrd
        restore`` writes a file's hold before the file comes back, so a restored file that
        this turn plans is held under them, however the turn and the restore interleave."""
        self.mirror.watching.check_probe()
        root = self._check_root()
        if root in (Root.MISSING, Root.VANISHED):
            return
        if self.mirror.check_coverage():
            root = Root.REARMED
        changes = self.mirror.take_changes()
        if self.carried is not None:  # kept by before_reload for this turn
            changes = self.carried.merged(changes)
            self.carried = None
        rules = held()
        if root in (Root.RETURNED, Root.REARMED):
            self.rescan_all("rearmed", rules)
        elif changes.lost or b"" in changes.dirs:
            self.rescan_all("events_lost", rules)
        elif self.scheduler.rescan_due():
            # After a fallback, the watch the config asks for is tried again each period.
            if self.mirror.retry_wanted():
                self.rescan_all("rearmed", rules)
            else:
                self.mirror.watching.probe()
                self.rescan_all("rescan", rules)
        elif changes.poll:
            self.rescan_all("poll", rules)  # no observer could be had: rescans stand in for one
        else:
            self._look_at(changes, rules)

    def before_reload(self, held: Callable[[], Rules]) -> None:
        """What the watch marked since the last turn, looked at and planned under the rules
        in force, deleting nothing (deletions wait for their batch, which the reload plans
        again): a reload's guard then weighs the tree as it is now. Marks that need a full
        pass (lost events, a directory, no observer) are kept for the next turn: the reload's
        own full pass covers them, or, if the reload is held, the next turn takes them."""
        changes = self.mirror.take_changes()
        if changes.lost or changes.dirs or changes.poll:
            self.carried = changes
            return
        self.batcher.holding = True
        try:
            self._look_at(changes, held())
        finally:
            self.batcher.holding = False

    def _look_at(self, changes: Changes, rules: Rules) -> None:
        # Events only name a path; a revisit or a deletion skipped as "changed" may hold an
        # entry the file has since outgrown (writes raise no event we listen to). All of
        # them are looked at again on disk before planning: the disk is the truth.
        self.batcher.lift(changes.files)
        changes.files |= self.scheduler.due_revisits() | self.mirror.take_pending()
        self.looked_at += len(changes.files) + len(changes.dirs)
        refreshed = self.mirror.refresh(changes)
        for path in refreshed.gone:
            self.batcher.forget(path)
            self.scheduler.gone()
        self.scheduler.gone(refreshed.forgotten)
        entries = self.mirror.entries(refreshed.touched)
        if entries:
            self._plan_changed(entries, rules)
            self.scheduler.replanned(len(entries))

    def _plan_changed(self, entries: list[FileEntry], rules: Rules) -> None:
        self.planned += len(entries)
        # With families, what changed is planned with everything it may rank or be ranked by:
        # all of it, part by part (ocrd.rules.parts).
        now = self.clock.time()
        pieces = chunks(entries, self._step) if rules.per_file else self.parts(rules)
        deletions: list[Decision] = []
        if not rules.per_file:
            # Every kept file's revisit is noted again below. A stop halfway (SIGTERM, a
            # reload, a clock jump) is followed by a full scan, or by the exit.
            self.scheduler.clear_coarse()
        try:
            for piece in pieces:
                deletions.extend(self._note_revisits(plan(piece, rules, now), rules))
        except Stopped:
            return  # the loop stops or reloads; a reload plans everything again
        self.batcher.submit(Plan(tuple(deletions), now), rules)

    def rescan_all(self, trigger: str, rules: Rules) -> None:
        """Scan everything and apply the rules to everything. With per-file rules the walk is
        planned as it goes, a few thousand files at a time; with families, the index the walk
        built is planned afterwards in parts that hold whole families (ocrd.rules.parts).
        Either way only packed records are kept for the whole tree, and the heartbeat runs
        (the watchdog, SIGTERM) every few thousand files (docs/big-trees.md)."""
        self.carried = None  # marks before_reload kept: this pass looks at everything
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
                if rules.per_file:
                    batch_plan = census.add(plan(batch, rules, now))
                    census.foresee(batch_plan, rules, allow_delete_all=allow_delete_all)
                    deletions.extend(self._note_revisits(batch_plan, rules))
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
        if not rules.per_file:
            try:
                for part in self.parts(rules):
                    part_plan = census.add(plan(part, rules, now))
                    census.foresee(part_plan, rules, allow_delete_all=allow_delete_all)
                    deletions.extend(self._note_revisits(part_plan, rules))
            except Stopped:
                return  # the loop stops, or reloads and plans everything again
        if self.config.retention.dry_run:
            self.batcher.keep_reports(deletions)
        self.batcher.submit(Plan(tuple(deletions), now), rules, at_once=True)
        self.totals.full_pass(trigger, now, time.perf_counter() - started)

    def _note_revisits(self, the_plan: Plan, rules: Rules) -> list[Decision]:
        """Schedule a second look where time alone may change a verdict; the deletions."""
        self.future.check(the_plan.decisions, the_plan.now)
        deletions = []
        for d in the_plan.decisions:
            if d.verdict is Verdict.DELETE:
                deletions.append(d)
            elif (at := revisit_at(d, rules, the_plan.now)) is not None:
                self.scheduler.revisit(d.entry.path, at, coarse=d.verdict is Verdict.KEEP)
        return deletions
