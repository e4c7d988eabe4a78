"""The budget over a retention plan: the plan's files as the budget sees them (what protects
each, its last use, its family), and the plan with the budget's evictions in it, rule "budget"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ocrd.base.collector import collecting_paused
from ocrd.fs.inventory import FileEntry
from ocrd.fs.private import looks_private
from ocrd.rules.budget import Budget, Limits, Model, Space, decide
from ocrd.rules.decision import Decision, Plan, Verdict
from ocrd.rules.families import Versions
from ocrd.rules.retention import Rules
from ocrd.rules.selectors import versions


@dataclass(frozen=True)
class Inputs:
    """What the budget needs beside a plan, read by the shell just before: the limits, the
    filesystem's numbers (statvfs), each file's recorded last use (None: never seen used, its
    arrival stands for it), the paths the engine lists (list_local), the inodes a deletion was
    just skipped for as in use, those the trash holds after a restore, and the trash's bytes."""

    limits: Limits
    space: Space
    last_used: Callable[[FileEntry], float | None]
    engine_lists: frozenset[bytes] = frozenset()
    in_use: frozenset[tuple[int, int]] = frozenset()
    held: frozenset[tuple[int, int]] = frozenset()
    trash_bytes: int = 0
    allow_delete_all: bool = False


_FLOOR_RULES = frozenset({"keep_last_version", "allow_delete_all"})


def models_of(the_plan: Plan, rules: Rules, inputs: Inputs) -> tuple[list[Model], int]:
    """The plan's files as the budget sees them, and the bytes its own deletions free (each
    inode once): a file a rule deletes is no candidate, and its bytes count as freed."""
    entries = [d.entry for d in the_plan.decisions]
    ranking = (
        Versions(versions(entries), rules.trust, the_plan.now).ranked(rules.floor)
        if rules.floor is not None
        else None
    )
    models: list[Model] = []
    freed: dict[tuple[int, int], int] = {}
    last_used, engine, in_use, held = (
        inputs.last_used,
        inputs.engine_lists,
        inputs.in_use,
        inputs.held,
    )
    for d in the_plan.decisions:
        e = d.entry
        if e.is_link or looks_private(e.name):
            continue  # not a model: never the budget's
        key = (e.dev, e.ino)
        if d.verdict is Verdict.DELETE:
            freed[key] = e.size
            continue
        protected: str | None = None
        if d.verdict is Verdict.PROTECTED:
            protected = d.rule or "protected"
        elif d.verdict is Verdict.SETTLING:
            protected = "settling"
        elif d.rule in _FLOOR_RULES:
            protected = d.rule
        elif key in in_use:
            protected = "in_use"
        elif key in held:
            protected = "trash_hold"
        member = ranking.get(id(e)) if ranking is not None else None
        used = last_used(e)
        models.append(
            Model(
                e,
                e.ctime if used is None else used,
                e.path in engine,
                protected,
                member.key if member is not None else None,
                member.newer if member is not None else 0,
            )
        )
    return models, sum(freed.values())


def over_plan(the_plan: Plan, rules: Rules, inputs: Inputs) -> tuple[Plan, Budget]:
    """``the_plan`` with the budget's evictions in it (verdict delete, rule "budget"), and the
    Budget that explains them: what the other rules delete counts as freed first."""
    with collecting_paused():
        models, freed = models_of(the_plan, rules, inputs)
    space = Space(inputs.space.total, inputs.space.free + freed)
    budget = decide(
        models,
        space,
        inputs.limits,
        trash_bytes=inputs.trash_bytes,
        keep_last_version=rules.floor is not None,
        allow_delete_all=inputs.allow_delete_all,
    )
    if not budget.evictions:
        return the_plan, budget
    why = {id(line.entry): line.why for slot in budget.evictions for line in budget.lines_of(slot)}
    decisions = tuple(
        Decision(d.entry, Verdict.DELETE, "budget", why[id(d.entry)]) if id(d.entry) in why else d
        for d in the_plan.decisions
    )
    return Plan(decisions, the_plan.now), budget
