"""The loop's upkeep of the trash and the budget (docs/trash.md, docs/budget.md): the trash as
the disk has it at start, the holds ``ocrd restore`` leaves, the purge when it is due, and last
use and the budget's look each turn. It owns when the trash is purged next."""

from __future__ import annotations

import math
import os
from typing import Any

from ocrd.base import log
from ocrd.base.clock import Clock
from ocrd.base.errors import ModelDirMissing
from ocrd.config.schema import Config
from ocrd.daemon.batcher import Batcher
from ocrd.daemon.budget import Keeper
from ocrd.daemon.engine import Supervisor
from ocrd.fs import trash
from ocrd.fs.holds import holds
from ocrd.ops import purge
from ocrd.ops.purge import Schedule
from ocrd.rules.retention import Rules
from ocrd.watch.mirror import Mirror


class Upkeep:
    """The trash and the budget, looked after between passes. ``purger`` is told each trashed
    file's purge time by the batcher (``Schedule.trashed``) and is read here alone."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock,
        mirror: Mirror,
        keeper: Keeper,
        engine: Supervisor,
        batcher: Batcher,
        purger: Schedule,
    ) -> None:
        self.config = config
        self.clock = clock
        self.mirror = mirror
        self.keeper = keeper
        self.engine = engine
        self.batcher = batcher
        self.purger = purger
        self.log: Any = log.get()

    def reconfigure(self, new: Config) -> None:
        self.config = new
        self.log = log.get()
        self.purger.next_at = 0.0  # a new grace may purge sooner

    def purge_in(self) -> float | None:
        """Seconds until the next purge is due, or None when none is planned."""
        if self.purger.next_at < math.inf:
            return self.purger.next_at - self.clock.time()
        return None

    def trash_at_start(self) -> None:
        """The trash as the disk has it: what a killed ocrd left half done is cleared. Under
        dry_run nothing is deleted, in the trash neither."""
        if self.mirror.missing or self.config.retention.dry_run:
            return
        try:
            purge.recover(self.mirror.place, in_use=self.batcher.in_use())
        except (ModelDirMissing, OSError) as exc:
            self.log.warning("trash_recovery_failed", error=str(exc))

    def hold(self, rules: Rules) -> Rules:
        """``rules`` holding the files restored from the trash from every rule (``ocrd restore``
        may have run since the last turn: the hold is on disk before the file is back)."""
        held = {} if self.mirror.missing else holds(self.mirror.place, self.clock.time())
        return rules.holding(held)

    def purge(self) -> None:
        """Purge what is due in the trash; the engine need not be freed: it never sees the
        trash, and the lease tells whether anything holds a file there."""
        if self.mirror.missing or self.config.retention.dry_run:
            return
        now = self.clock.time()
        if now < self.purger.next_at:
            return  # not due: no holders looked up (the loop turns many times a second)
        self.purger.run_if_due(
            self.mirror.place,
            now=now,
            grace=self.config.trash.grace,
            in_use=self.batcher.in_use(),
        )

    def keep_budget(self, rules: Rules) -> None:
        """Last use to the state file, then the budget's look (ocrd.daemon.budget)."""
        self.keeper.flush(self.mirror.index.get)
        if self.mirror.missing:
            return
        index = self.mirror.index
        self.keeper.look(
            self.mirror.place.real,
            index=(index.files, index.bytes),
            entries=self.mirror.entries,
            rules=rules,
            evict=lambda evictions: self.batcher.submit(evictions, rules, at_once=True),
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
