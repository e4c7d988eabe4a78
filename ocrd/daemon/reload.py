"""A reload (SIGHUP): the config file read again, the guard weighed (ocrd.rules.reload), and
the new settings handed to each part. The settings are one value: the validated Config and the
Rules built from it once; no part keeps a reference to another part's settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ocrd.base import log
from ocrd.base.clock import Clock
from ocrd.base.errors import ConfigError, Stopped
from ocrd.config.load import load
from ocrd.config.schema import Config
from ocrd.daemon.batcher import Batcher
from ocrd.daemon.budget import Keeper
from ocrd.daemon.engine import Supervisor
from ocrd.daemon.notify import Notifier
from ocrd.daemon.rescans import Rescans
from ocrd.daemon.scheduler import Scheduler
from ocrd.daemon.status import Publisher
from ocrd.daemon.timejump import ClockGuard
from ocrd.daemon.upkeep import Upkeep
from ocrd.ops.stats import Totals
from ocrd.rules.reload import widening
from ocrd.rules.retention import Rules
from ocrd.rules.trust import model_dir_owner
from ocrd.watch.mirror import Mirror


class Settings(NamedTuple):
    """What a reload hands out: the config and the rules built from it."""

    config: Config
    rules: Rules


class Reloader:
    """Reads, weighs and hands out a new config; the loop keeps the settings in force."""

    def __init__(
        self,
        *,
        clock: Clock,
        clock_guard: ClockGuard,
        notifier: Notifier,
        totals: Totals,
        publisher: Publisher,
        mirror: Mirror,
        scheduler: Scheduler,
        engine: Supervisor,
        batcher: Batcher,
        keeper: Keeper,
        upkeep: Upkeep,
        rescans: Rescans,
        on_log_closed: Callable[[], None],
    ) -> None:
        self.clock = clock
        self.clock_guard = clock_guard
        self.notifier = notifier
        self.totals = totals
        self.publisher = publisher
        self.mirror = mirror
        self.scheduler = scheduler
        self.engine = engine
        self.batcher = batcher
        self.keeper = keeper
        self.upkeep = upkeep
        self.rescans = rescans
        self.on_log_closed = on_log_closed

    def rules_for(self, config: Config) -> Rules:
        """The rules ``config`` asks for, under the clock guard's floor (ocrd.daemon.timejump)."""
        return Rules.from_config(
            config.retention, config.watch.settle, model_dir_owner(config.model_dir)
        ).not_before(self.clock_guard.not_before)

    def read(self, in_force: Settings) -> Settings | None:
        """The new settings, or None when the file is rejected, the guard holds them, or a
        signal came while they were weighed; each refusal is logged and published."""
        self.notifier.reloading()
        path = in_force.config.path
        try:
            new = load(path)
        except ConfigError as exc:
            log.get().error("config_rejected", config=str(path), errors=list(exc.problems))
            self.totals.rejected(exc.problems, self.clock.time(), str(path))
            self.publisher.ready()
            return None
        rules = self.rules_for(new)
        try:
            held = self.widening(new, rules, in_force)
        except Stopped:
            # SIGTERM, or another SIGHUP, while the new rules were weighed: the rules in force
            # stay; the loop stops, or reloads again.
            return None
        if held is not None:
            log.get().error("reload_held", config=str(new.path), **held)
            why = f"it would delete {held['would_delete']} of {held['of_files']} models more"
            self.totals.rejected([why], self.clock.time(), str(new.path), held=True)
            self.publisher.ready()
            return None
        return Settings(new, rules)

    def widening(self, new: Config, rules: Rules, in_force: Settings) -> dict[str, Any] | None:
        """Why a reload must wait for the operator, or None (ocrd.rules.reload.widening)."""
        index = self.mirror.index
        if new.retention.reload_guard >= 1 or new.retention.dry_run or not index.files:
            return None
        if rules == in_force.rules and not in_force.config.retention.dry_run:
            return None  # a plan depends on the files, the rules and the time alone
        return widening(
            in_force.config,
            new,
            self.rescans.parts(rules),
            in_force.rules,
            rules,
            kin=self.rescans.kin(in_force.rules),
            files=index.files,
            size=index.bytes,
            now=self.clock.time(),
        )

    def hand_out(self, old: Config, new: Settings) -> Rules:
        """Each part takes what it needs of the new settings; the rules in force from now on,
        holds included. Deletions waiting for their batch were planned under the old rules:
        the reload's full pass plans them again."""
        config = new.config
        log.configure(
            config.log.level, config.log.format, daemon=True, on_closed=self.on_log_closed
        )
        self.batcher.reconfigure(config)
        self.keeper.reconfigure(config)
        self.engine.follow(old, config)
        self.rescans.reconfigure(config)
        self.publisher.reconfigure(config.model_dir, config.metrics.textfile)
        rules = self.upkeep.hold(new.rules)
        self.upkeep.reconfigure(config)  # a new grace may purge sooner
        self.scheduler.reconfigure(config.watch.rescan, rules.due_slack)
        self.mirror.reconfigure(config.model_dir, config.watch)
        if self.batcher.restart_at is None:
            self.engine.start()
        return rules
