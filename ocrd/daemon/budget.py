"""The budget in ``ocrd run``: last use recorded and kept, the cheap look after each pass, and,
while a limit is crossed, the eviction batches, budget_met and budget_unmet, and the numbers
STATUS= and the metrics show (docs/budget.md)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from ocrd.base import log
from ocrd.base.clock import Clock
from ocrd.config.schema import Config
from ocrd.config.sizes import format_size
from ocrd.fs.inventory import FileEntry
from ocrd.fs.statefile import default_path
from ocrd.ops.stats import BudgetNumbers, Totals
from ocrd.rules.budget import Budget, Limits, Space, crossed, describe
from ocrd.rules.decision import Plan
from ocrd.rules.eviction import Inputs, over_plan
from ocrd.rules.retention import Rules, plan
from ocrd.watch.lastuse import LastUse

FLUSH_S = 1.0  # recorded uses are written at most this often: one transaction a second
UNMET_RETRY_S = 60.0  # an unmet budget is decided again this often, or when model_dir changes
ROUNDS = 4  # eviction batches one look may run (each after the last one's skips are known)


def limits_of(config: Config) -> Limits:
    b = config.budget
    return Limits(b.max_size, b.min_free, b.headroom)


class Keeper:
    """Owns the last-use store and the budget's episode (crossed, met, unmet said once). The
    loop gives it what it asks each time: the mirror's entries, the rules, and a way to submit
    an eviction batch; it never deletes itself."""

    def __init__(
        self, config: Config, clock: Clock, totals: Totals, wake: Callable[[], None]
    ) -> None:
        self.clock = clock
        self.wake = wake
        self.totals = totals
        self.limits = limits_of(config)
        self.path = config.state.path or default_path()
        # Last use is recorded (and the state file kept) with a budget or a [state] path: a
        # config with neither makes no file and asks the watch for no reads.
        self.recording = config.budget.active or config.state.path is not None
        self.uses: LastUse | None = None  # opened by start()
        self.identify: Callable[[bytes], FileEntry | None] | None = None  # the mirror's
        self.allow_delete_all = config.retention.allow_delete_all
        self.flushed_at = 0.0
        self.crossed = False
        self.unmet_said = False
        self.retry_at = 0.0
        self.seen: tuple[int, int] | None = None  # index (files, bytes) at the last decision
        self.numbers = BudgetNumbers()
        self._space_failed = False

    def reconfigure(self, config: Config) -> None:
        """A reload: new limits (the state file stays the one opened at start)."""
        self.limits = limits_of(config)
        self.allow_delete_all = config.retention.allow_delete_all
        self.retry_at = 0.0

    def start(self) -> None:
        """Open the state file (never fails: ocrd.watch.lastuse.LastUse.open)."""
        if self.uses is None and self.recording:
            self.uses = LastUse.open(self.path, clock=self.clock)

    def saw(self, rel: bytes, at: float) -> None:
        """The watch's word that another process read ``rel`` (any thread): the first use
        waiting for a flush wakes the loop, whose flush comes within FLUSH_S."""
        if self.uses is not None and self.uses.saw(rel, at):
            self.wake()

    def deadline(self) -> float | None:
        """When the loop must wake to write waiting uses (monotonic), if any wait."""
        if self.uses is None or not self.uses.pending:
            return None
        return self.flushed_at + FLUSH_S

    def own(self, rel: bytes) -> None:
        """ocrd is about to open ``rel`` itself (any thread)."""
        if self.uses is not None:
            self.uses.own(rel)

    def last_used(self, entry: FileEntry) -> float | None:
        return self.uses.last_used(entry) if self.uses is not None else None

    def flush(self, identify: Callable[[bytes], FileEntry | None], *, force: bool = False) -> None:
        now = self.clock.monotonic()
        self.identify = identify
        if self.uses is None or (not force and now - self.flushed_at < FLUSH_S):
            return
        self.flushed_at = now
        self.uses.flush(identify)

    def close(self) -> None:
        if self.uses is not None:
            self.uses.close()
            self.uses = None

    def space(self, where: bytes) -> Space | None:
        try:
            return Space.of(os.statvfs(where))
        except OSError as exc:
            if not self._space_failed:
                log.get().warning(
                    "budget_check_failed",
                    error=exc.strerror or str(exc),
                    detail="statvfs of model_dir failed: no eviction until it works",
                )
            self._space_failed = True
            return None

    def look(
        self,
        where: bytes,
        *,
        index: tuple[int, int],
        entries: Callable[[], list[FileEntry]],
        rules: Rules,
        evict: Callable[[Plan], None],
        engine_lists: Callable[[], frozenset[bytes]],
        in_use: Callable[[list[FileEntry]], frozenset[tuple[int, int]]],
        trash: tuple[Callable[[], int], Callable[[int], int]] = (lambda: 0, lambda want: 0),
    ) -> None:
        """After a pass: is a limit crossed (``index``: the model files and bytes the mirror
        counts)? If so, decide and submit eviction batches (``evict`` runs one at once) until
        the limits hold, nothing more may go, or ROUNDS batches ran. Its numbers go to the
        totals (STATUS=, the metrics)."""
        try:
            self._look(where, index, entries, rules, evict, engine_lists, in_use, trash)
        finally:
            if self.limits.active:
                self.totals.budget_seen(dataclasses.replace(self.numbers))

    def _look(  # noqa: PLR0917 — look()'s arguments, passed on as they came
        self,
        where: bytes,
        index: tuple[int, int],
        entries: Callable[[], list[FileEntry]],
        rules: Rules,
        evict: Callable[[Plan], None],
        engine_lists: Callable[[], frozenset[bytes]],
        in_use: Callable[[list[FileEntry]], frozenset[tuple[int, int]]],
        trash: tuple[Callable[[], int], Callable[[int], int]],
    ) -> None:
        index_files, index_bytes = index
        trash_bytes, purge = trash
        in_trash = trash_bytes() if self.limits.max_size is not None else 0
        if not self.limits.active:
            return
        space = self.space(where)
        if space is None:
            return
        self._space_failed = False
        self.numbers.max_size = (
            self.limits.max_size.of(space.total) if self.limits.max_size else None
        )
        self.numbers.min_free = (
            self.limits.min_free.of(space.total) if self.limits.min_free else None
        )
        self.numbers.model_bytes, self.numbers.free = index_bytes, space.free
        if not crossed(index_bytes, space, self.limits, trash_bytes=in_trash):
            self._met()
            return
        now = self.clock.monotonic()
        if self.unmet_said and self.seen == (index_files, index_bytes) and now < self.retry_at:
            return  # nothing changed since it was found unmet: no walk over every file again
        if self.uses is not None and self.identify is not None:
            self.uses.flush(self.identify)  # every use seen so far counts
        in_trash = trash_bytes()  # what the trash gives back first, whichever limit is crossed
        for _ in range(ROUNDS):
            files = entries()
            the_plan = plan(files, rules, self.clock.time())
            inputs = Inputs(
                self.limits,
                space,
                self.last_used,
                engine_lists(),
                in_use(files),
                trash_bytes=in_trash,
                allow_delete_all=self.allow_delete_all,
            )
            the_plan, budget = over_plan(the_plan, rules, inputs)
            evictions = tuple(d for d in the_plan.deletions if d.rule == "budget")
            log.get().debug(
                "budget_checked",
                crossed=budget.crossed,
                need=budget.need,
                evictions=len(evictions),
                model_bytes=budget.model_bytes,
                free=space.free,
            )
            if not budget.crossed:
                self._met()
                return
            self.crossed = True
            if budget.purge > 0:
                # The trash first, oldest first (docs/trash.md): then decide again.
                freed = purge(budget.purge)
                in_trash = trash_bytes()
                after = self.space(where)
                if freed > 0 and after is not None:
                    space = after
                    continue
            if not evictions:
                self._unmet(budget, index_files, index_bytes)
                return
            log.get().info(
                "budget_evicting",
                files=len(evictions),
                bytes=sum(d.entry.size for d in evictions),
                need=budget.need,
                detail=describe(budget),
            )
            evict(Plan(evictions, the_plan.now))
            after = self.space(where)
            if after is None or after == space:
                return  # nothing was freed (a dry run, or every one skipped): next look
            space = after
            self.numbers.free = space.free
            in_trash = trash_bytes() if self.limits.max_size is not None else 0
            if not crossed(
                sum(e.size for e in entries()), space, self.limits, trash_bytes=in_trash
            ):
                self._met()
                return

    def _met(self) -> None:
        if self.crossed:
            log.get().info(
                "budget_met",
                model_bytes=self.numbers.model_bytes,
                max_size=self.numbers.max_size,
                free=self.numbers.free,
                min_free=self.numbers.min_free,
            )
        self.crossed = False
        self.unmet_said = False
        self.numbers.short = None

    def _unmet(self, budget: Budget, files: int, nbytes: int) -> None:
        unmet = budget.unmet
        self.seen = (files, nbytes)
        self.retry_at = self.clock.monotonic() + UNMET_RETRY_S
        if unmet is None:
            return  # crossed, but within headroom of what may go: the next look goes on
        self.numbers.short = unmet.short
        if self.unmet_said:
            return
        self.unmet_said = True
        log.get().warning(
            "budget_unmet",
            model_bytes=unmet.model_bytes,
            max_size=unmet.max_size,
            free=unmet.free,
            min_free=unmet.min_free,
            short=unmet.short,
            blockers={k: {"files": n, "bytes": b} for k, (n, b) in unmet.blockers.items()},
            detail=describe(budget),
            action="every file that may go is gone: free space elsewhere, raise the limits, "
            "or see what holds the rest with 'ocrd list'",
        )

    def status(self) -> str | None:
        """STATUS='s word on the budget, while it is unmet."""
        if self.numbers.short is None:
            return None
        return f"budget unmet: short by {format_size(self.numbers.short)}"
