"""What the daemon did since it started: the bookkeeping behind STATUS= and the metrics file.

The daemon calls one method per thing that happened (a file deleted, a deletion skipped, an
engine free/start cycle, a reload rejected, a full pass done); nothing here touches the disk or
the engine, so the counting is tested with plain values and reused by ``ocrd/daemon/metrics.py``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ocrd.base.human import count, size
from ocrd.rules.decision import DAY, Plan
from ocrd.rules.foresight import LastToGo, coming_due
from ocrd.rules.retention import Rules

PROBLEM_CHARS = 160  # a rejected reload's first problem, as STATUS= shows it
# ocrd_due_bytes{within=...}: how far ahead of a full pass it counts what comes due then
# (docs/foresight.md); what is due at the pass itself is its "delete" verdict.
HORIZONS = (("1d", DAY), ("7d", 7 * DAY), ("30d", 30 * DAY))


@dataclass
class Tally:
    """The outcomes of deletions, for one pass or since start."""

    deleted: int = 0
    freed: int = 0
    would_delete: int = 0
    would_free: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    failed: int = 0

    def text(self) -> str:
        if not (self.deleted or self.would_delete or self.skipped or self.failed):
            return "nothing done yet"
        parts = []
        if self.deleted:
            parts.append(f"deleted {count(self.deleted, 'file')} ({size(self.freed)})")
        if self.would_delete:
            parts.append(
                f"dry run: would delete {count(self.would_delete, 'file')} "
                f"({size(self.would_free)})"
            )
        if self.skipped:
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items()))
            parts.append(f"skipped {sum(self.skipped.values())} ({reasons})")
        if self.failed:
            parts.append(f"failed {self.failed}")
        return ", ".join(parts)


class Census:
    """Files and bytes by verdict over one full pass (the metrics' gauges); counted only when
    someone reads it, so a daemon without metrics pays nothing per file."""

    def __init__(self) -> None:
        self.active = False
        self._building: dict[str, list[int]] = {}
        self.last: dict[str, tuple[int, int]] | None = None
        # Bytes coming due within each of HORIZONS, at the last full pass.
        self.due_bytes: dict[str, int] | None = None
        self._due = [0] * len(HORIZONS)
        self._going: LastToGo | None = None
        self._allow_delete_all = False

    def begin(self) -> None:
        self._building = {}
        self._due = [0] * len(HORIZONS)
        self._going = None

    def foresee(self, the_plan: Plan, rules: Rules, *, allow_delete_all: bool) -> None:
        """Count the files of ``the_plan`` (one full pass's, in one plan or several) by when
        they come due after it (ocrd.rules.foresight.coming_due), when active. The refusal to delete
        every model file needs every file: it is weighed in commit()."""
        if not self.active:
            return
        now = the_plan.now
        if self._going is None:
            self._going = LastToGo(rules.by_name, now, rules.trust)
            self._allow_delete_all = allow_delete_all
        going, due = self._going, self._due
        dues = coming_due(the_plan, rules, now)
        for f, d in zip((d.entry for d in the_plan.decisions), dues, strict=True):
            going.add(f, d)
            if d is not None and d.at > now:
                for i, (_, span) in enumerate(HORIZONS):
                    if d.at <= now + span:
                        due[i] += f.size

    def add(self, the_plan: Plan) -> Plan:
        """Count the plan's verdicts (when active) and return the plan as given."""
        if self.active:
            building = self._building
            for d in the_plan.decisions:
                slot = building.get(d.verdict)
                if slot is None:
                    slot = building[d.verdict] = [0, 0]
                slot[0] += 1
                slot[1] += d.entry.size
        return the_plan

    def commit(self) -> None:
        if self.active:
            self.last = {v: (c[0], c[1]) for v, c in self._building.items()}
            due, going = list(self._due), self._going
            if going is not None and not self._allow_delete_all and not going.never:
                # Every model file comes due: the last to, by age or rank, are kept for good.
                for i, (_, span) in enumerate(HORIZONS):
                    if going.now < going.at <= going.now + span:
                        due[i] -= going.refused_bytes
            self.due_bytes = {within: n for (within, _), n in zip(HORIZONS, due, strict=True)}
        self._building = {}
        self._going = None


@dataclass
class BudgetNumbers:
    """The budget at its last look (docs/budget.md): the limits in bytes, the model files'
    bytes, the free bytes of model_dir's filesystem, and by how much it is unmet, if it is."""

    max_size: int | None = None
    min_free: int | None = None
    model_bytes: int = 0
    free: int | None = None
    short: int | None = None


class Totals:
    """Counters since start, the last pass, the last rejected reload, the last full pass."""

    def __init__(self) -> None:
        self.since_start = Tally()
        self.last: Tally | None = None  # the last pass that planned a deletion
        self.last_at: float | None = None  # its wall time
        self.deleted_by_rule: Counter[str] = Counter()
        self.freed_by_rule: Counter[str] = Counter()
        self.engine_cycles = 0
        self.engine_downtime_s = 0.0
        self.full_passes: Counter[str] = Counter()  # by trigger: startup, rescan, events_lost ...
        self.full_pass_at: float | None = None
        self.full_pass_s: float | None = None
        self.rejected_at: float | None = None
        self.rejected_errors: list[str] = []
        self.rejected_config = ""
        self.rejected_held = False
        self.census = Census()
        self.degraded: str | None = None  # why the watch is not the one asked for, or unproven
        self.budget: BudgetNumbers | None = None  # with a [budget]: at its last look
        self.generation = 0  # changes whenever anything above does

    # -- what happened -------------------------------------------------------------------

    def budget_seen(self, numbers: BudgetNumbers) -> None:
        if numbers != self.budget:
            self.budget = numbers
            self.generation += 1

    def begin_pass(self, at: float) -> None:
        """A pass that plans deletions starts: it becomes "the last pass"."""
        self.last = Tally()
        self.last_at = at
        self.generation += 1

    def _tallies(self) -> Iterator[Tally]:
        self.generation += 1
        yield self.since_start
        if self.last is not None:
            yield self.last

    def deleted(self, nbytes: int, rule: str | None) -> None:
        # The one counted per deleted file: written out rather than through _tallies().
        self.generation += 1
        t = self.since_start
        t.deleted += 1
        t.freed += nbytes
        if (last := self.last) is not None:
            last.deleted += 1
            last.freed += nbytes
        self.deleted_by_rule[rule or "none"] += 1
        self.freed_by_rule[rule or "none"] += nbytes

    def would_delete(self, nbytes: int) -> None:
        for t in self._tallies():
            t.would_delete += 1
            t.would_free += nbytes

    def skipped(self, reason: str | None) -> None:
        for t in self._tallies():
            t.skipped[reason or "unknown"] += 1

    def failed(self) -> None:
        for t in self._tallies():
            t.failed += 1

    def engine(self, cycles: int, downtime_s: float) -> None:
        """The supervisor's own count of engine frees for deletions, and the time it spent
        freed (it owns the engine; these are read from it, not counted twice)."""
        if (cycles, downtime_s) != (self.engine_cycles, self.engine_downtime_s):
            self.engine_cycles = cycles
            self.engine_downtime_s = downtime_s
            self.generation += 1

    def watch(self, degraded: str | None) -> None:
        if degraded != self.degraded:
            self.degraded = degraded
            self.generation += 1

    def rejected(
        self, errors: Iterable[str], at: float, config: str = "", *, held: bool = False
    ) -> None:
        """A reload found ``config`` invalid (or ``held`` it: valid, but it would delete too
        much); its problems lose the file name STATUS= gives."""
        self.rejected_held = held
        self.rejected_errors = [e.removeprefix(f"{config}: ") for e in errors]
        self.rejected_config = os.path.basename(config)
        self.rejected_at = at
        self.generation += 1

    def reloaded(self) -> None:
        self.rejected_errors = []
        self.rejected_at = None
        self.generation += 1

    def full_pass(self, trigger: str, at: float, duration_s: float) -> None:
        """A full pass (scan, plan, apply) finished; its census becomes the current one."""
        self.full_passes[trigger] += 1
        self.full_pass_at = at
        self.full_pass_s = duration_s
        self.census.commit()
        self.generation += 1

    # -- STATUS= -------------------------------------------------------------------------

    def status(self, files: int, nbytes: int, missing: str | None = None, due: int = 0) -> str:
        """One line for ``systemctl status``: what is there, what the last pass did, what
        waits for the engine's batch window, totals since start, and a rejected reload until
        a good one replaces it."""
        parts = []
        if self.rejected_at is not None:
            first = self.rejected_errors[0] if self.rejected_errors else "invalid"
            if len(first) > PROBLEM_CHARS:
                first = first[: PROBLEM_CHARS - 1] + "…"
            more = len(self.rejected_errors) - 1
            parts.append(
                f"reload {'HELD' if self.rejected_held else 'REJECTED'} at "
                f"{_clock(self.rejected_at)}, old rules in force: "
                f"{self.rejected_config or 'config'}: {first}"
                + (f" (+{more} more)" if more > 0 else "")
            )
        if missing is not None:
            parts.append(f"model_dir {missing} is missing; waiting for it")
        elif self.degraded is not None:
            parts.append(f"watch degraded ({self.degraded})")
        else:
            parts.append(f"{count(files, 'file')} ({size(nbytes)}) in model_dir")
        if self.last is not None and self.last_at is not None:
            parts.append(f"last pass {_clock(self.last_at)}: {self.last.text()}")
        else:
            parts.append("nothing to delete yet")
        if due:
            parts.append(f"{count(due, 'deletion')} due (engine.batch)")
        deleted = self.since_start
        total = (
            f"since start: deleted {count(deleted.deleted, 'file')} ({size(deleted.freed)})"
            if deleted.text() == "nothing done yet"
            else f"since start: {deleted.text()}"
        )
        if self.engine_cycles:
            total += f", {count(self.engine_cycles, 'engine cycle')}"
        parts.append(total)
        return "; ".join(parts)


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(at))
