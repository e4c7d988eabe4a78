"""The disk budget as a pure decision: which model files to evict, least recently used first,
so that model_dir's files fit ``max_size`` and its filesystem keeps ``min_free`` (docs/budget.md).

No I/O here: the shell passes each model file with its last use and what protects it, and the
filesystem's numbers from statvfs; ``decide`` returns what to free, in order, and, when that
cannot be done, by how much it falls short and what holds the rest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ocrd.base.collector import collecting_paused
from ocrd.config.sizes import Amount, format_size
from ocrd.fs.inventory import FileEntry

DEFAULT_HEADROOM_SHARE = 0.05
"""Once a limit is crossed, evict 5 % of that limit past it: a store that sits at its limit
would otherwise evict one file for every file that arrives."""


@dataclass(frozen=True)
class Limits:
    """``[budget]``: at most ``max_size`` of model files (each inode once) and at least
    ``min_free`` free on model_dir's filesystem (a share is of its size); once either is
    crossed, evict ``headroom`` (of that limit) past it."""

    max_size: Amount | None = None
    min_free: Amount | None = None
    headroom: Amount = field(default_factory=lambda: Amount(share=DEFAULT_HEADROOM_SHARE))

    @property
    def active(self) -> bool:
        return self.max_size is not None or self.min_free is not None


class Space(NamedTuple):
    """model_dir's filesystem, from statvfs: its size, and what is free to unprivileged users
    (``f_bavail``: root's reserved blocks are no room for ocrd's user or the model's readers)."""

    total: int
    free: int

    @classmethod
    def of(cls, st: os.statvfs_result) -> Space:
        return cls(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


class Model(NamedTuple):
    """One model file as the budget sees it. ``last_used``: its recorded last use, else its
    arrival. ``protected``: why no rule may delete it now (the planner's word: "whitelist",
    "settling", "in_use", "mount", ...), None if the budget may. ``family``: its family's key
    while keep_last_version holds, with ``rank`` 0 for the family's newest."""

    entry: FileEntry
    last_used: float
    engine_lists: bool = False
    protected: str | None = None
    family: str | None = None
    rank: int = 0


class Slot(NamedTuple):
    """One inode: every path to it under model_dir goes together, its bytes count once."""

    entries: tuple[FileEntry, ...]
    size: int
    last_used: float
    engine_lists: bool
    protected: str | None

    @property
    def entry(self) -> FileEntry:
        return self.entries[0]


class Line(NamedTuple):
    """What ``ocrd list`` says of one file: its place in the budget's order (1 = goes first;
    None = never a candidate), whether this pass takes it, and why."""

    entry: FileEntry
    position: int | None
    taken: bool
    why: str


class Unmet(NamedTuple):
    """The budget cannot be met: the numbers after every possible eviction, how many bytes are
    still to free to meet the limits, and what keeps the rest (reason → files, bytes)."""

    model_bytes: int
    max_size: int | None
    free: int
    min_free: int | None
    short: int
    blockers: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class Budget:
    model_bytes: int  # model files under model_dir, each inode once
    trash_bytes: int  # the trash, which counts toward max_size and is emptied first
    space: Space
    max_size: int | None  # the limits in bytes
    min_free: int | None
    crossed: bool  # a limit is crossed: this pass evicts
    need: int  # bytes to free to get back within the limits and their headroom
    purge: int  # of which from the trash, oldest first
    evictions: tuple[Slot, ...]  # then these, in this order
    order: tuple[Slot, ...]  # every candidate, in the order the budget takes them
    kept: tuple[Slot, ...]  # every inode that is no candidate (Slot.protected says why)
    unmet: Unmet | None

    @property
    def evicted_bytes(self) -> int:
        return sum(s.size for s in self.evictions)

    @property
    def after_bytes(self) -> int:
        """Model bytes once the evictions are done (the trash not counted)."""
        return self.model_bytes - self.evicted_bytes

    @property
    def after_free(self) -> int:
        return self.space.free + self.purge + self.evicted_bytes

    @property
    def remaining_files(self) -> int:
        return sum(len(s.entries) for s in (*self.order, *self.kept)) - sum(
            len(s.entries) for s in self.evictions
        )

    def lines(self) -> Iterator[Line]:
        """Every model file, with its place in the order and why (ocrd list)."""
        taken = {id(s) for s in self.evictions}
        for i, slot in enumerate(self.order, 1):
            why = _candidate_why(slot, i, id(slot) in taken, self.crossed, self)
            for e in slot.entries:
                yield Line(e, i, id(slot) in taken, why)
        for slot in self.kept:
            for e in slot.entries:
                yield Line(e, None, False, f"not a budget candidate: {_protected_why(slot)}")

    def lines_of(self, slot: Slot) -> Iterator[Line]:
        """lines() of one of the evictions."""
        i = self.evictions.index(slot) + 1
        why = _candidate_why(slot, i, True, self.crossed, self)
        for e in slot.entries:
            yield Line(e, i, True, why)


_PROTECTED_WHY = {
    "whitelist": "whitelisted",
    "settling": "still settling",
    "in_use": "in use",
    "mount": "on another filesystem",
    "keep_last_version": "its family's last version (retention.keep_last_version)",
    "allow_delete_all": "the last model file (retention.allow_delete_all is off)",
}


def _protected_why(slot: Slot) -> str:
    reason = slot.protected or "protected"
    return _PROTECTED_WHY.get(reason, reason)


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _candidate_why(slot: Slot, position: int, taken: bool, crossed: bool, budget: Budget) -> str:
    used = f"last used {_utc(slot.last_used)}"
    if slot.engine_lists:
        used += "; the engine lists it (list_local), so it goes after every other file"
    if taken:
        return f"#{position} least recently used, {used}: {_limits_text(budget)}"
    if crossed:
        return f"budget candidate #{position}: {used}; the files before it free enough"
    return f"budget candidate #{position} when a limit is crossed: {used}"


def slots(models: Iterable[Model]) -> list[Slot]:
    """The models grouped by inode, in first-seen order."""
    return _group(models)[0]


def _group(models: Iterable[Model]) -> tuple[list[Slot], dict[tuple[int, int], int]]:
    """slots(), and where each inode's slot is. One pass; a file with one link (nearly every
    model file) makes its slot directly: this runs on every pass over every model file."""
    found: list[Slot] = []
    where: dict[tuple[int, int], int] = {}
    links: dict[int, list[Model]] = {}
    for m in models:
        e = m.entry
        if e.is_link:
            continue
        key = (e.dev, e.ino)
        i = where.get(key)
        if i is None:
            where[key] = len(found)
            found.append(Slot((e,), e.size, m.last_used, m.engine_lists, m.protected))
            links[len(found) - 1] = [m]
        else:
            links[i].append(m)
    for i, group in links.items():
        if len(group) == 1:
            continue
        group.sort(key=lambda m: m.entry.path)
        reasons = sorted(m.protected for m in group if m.protected is not None)
        found[i] = Slot(
            tuple(m.entry for m in group),
            max(m.entry.size for m in group),
            max(m.last_used for m in group),
            any(m.engine_lists for m in group),
            reasons[0] if reasons else None,
        )
    return found, where


def _last_versions(
    models: Sequence[Model], found: list[Slot], where: dict[tuple[int, int], int]
) -> None:
    """keep_last_version: in a family none of whose versions is protected, the newest (lowest
    rank, then the most recently used) is protected as its last version."""
    members: dict[str, list[tuple[int, float, bytes, int]]] = {}
    staying: set[str] = set()
    for m in models:
        if m.family is None or m.entry.is_link:
            continue
        i = where[(m.entry.dev, m.entry.ino)]
        if found[i].protected is not None:
            staying.add(m.family)
        members.setdefault(m.family, []).append((m.rank, -m.last_used, m.entry.path, i))
    for family, found_versions in members.items():
        if family not in staying:
            i = min(found_versions)[3]
            found[i] = found[i]._replace(protected="keep_last_version")


def crossed(model_bytes: int, space: Space, limits: Limits, *, trash_bytes: int = 0) -> bool:
    """Whether a limit is crossed: the cheap question a pass asks first (the sum of the model
    files' sizes, which the daemon keeps, and one statvfs); only then is ``decide`` worth its
    walk over every model file."""
    if limits.max_size is not None and model_bytes + trash_bytes > limits.max_size.of(space.total):
        return True
    return limits.min_free is not None and space.free < limits.min_free.of(space.total)


def decide(
    models: Sequence[Model],
    space: Space,
    limits: Limits,
    *,
    trash_bytes: int = 0,
    keep_last_version: bool = True,
    allow_delete_all: bool = False,
) -> Budget:
    """What the budget frees now: the trash first, then model inodes least recently used
    first (those the engine lists after all others), each whole, none protected, until the
    limits hold again with their headroom; nothing while no limit is crossed."""
    with collecting_paused():
        found, where = _group(models)
        if keep_last_version:
            _last_versions(models, found, where)
    order = sorted(
        (s for s in found if s.protected is None),
        key=lambda s: (s.engine_lists, s.last_used, s.entry.path),
    )
    kept = tuple(s for s in found if s.protected is not None)
    model_bytes = sum(s.size for s in found)

    max_size = limits.max_size.of(space.total) if limits.max_size is not None else None
    min_free = limits.min_free.of(space.total) if limits.min_free is not None else None
    is_crossed = crossed(model_bytes, space, limits, trash_bytes=trash_bytes)
    need = 0
    if is_crossed:
        if max_size is not None:
            target = max(0, max_size - limits.headroom.of(max_size))
            need = max(need, model_bytes + trash_bytes - target)
        if min_free is not None:
            need = max(need, min_free + limits.headroom.of(min_free) - space.free)
    purge = min(trash_bytes, need)
    left = need - purge
    evictions = []
    for slot in order:
        if left <= 0:
            break
        evictions.append(slot)
        left -= slot.size
    if evictions and not allow_delete_all and not kept and len(evictions) == len(order):
        # Never every model file: the one the budget would take last stays.
        last = order.pop()._replace(protected="allow_delete_all")
        evictions.pop()
        kept = (last,)
    freed = sum(s.size for s in evictions)

    unmet = None
    if is_crossed:
        after_total = model_bytes - freed + trash_bytes - purge
        after_free = space.free + purge + freed
        missing = max(
            after_total - max_size if max_size is not None else 0,
            min_free - after_free if min_free is not None else 0,
        )
        if missing > 0:
            blockers: dict[str, tuple[int, int]] = {}
            for slot in kept:
                reason = slot.protected or "protected"
                files, size = blockers.get(reason, (0, 0))
                blockers[reason] = (files + len(slot.entries), size + slot.size)
            unmet = Unmet(model_bytes - freed, max_size, after_free, min_free, missing, blockers)
    return Budget(
        model_bytes,
        trash_bytes,
        space,
        max_size,
        min_free,
        is_crossed,
        need,
        purge,
        tuple(evictions),
        tuple(order),
        kept,
        unmet,
    )


def _limits_text(budget: Budget) -> str:
    parts = []
    if budget.max_size is not None:
        parts.append(
            f"models {format_size(budget.model_bytes + budget.trash_bytes)} "
            f"> max_size {format_size(budget.max_size)}"
            if budget.model_bytes + budget.trash_bytes > budget.max_size
            else f"models {format_size(budget.model_bytes)} of {format_size(budget.max_size)}"
        )
    if budget.min_free is not None:
        parts.append(
            f"free {format_size(budget.space.free)} "
            f"{'<' if budget.space.free < budget.min_free else '>='} "
            f"min_free {format_size(budget.min_free)}"
        )
    return ", ".join(parts)


def describe(budget: Budget) -> str:
    """One line for STATUS= and the budget_unmet event's detail."""
    parts = [f"models {format_size(budget.model_bytes)}"]
    if budget.max_size is not None:
        parts[0] += f" of {format_size(budget.max_size)}"
    if budget.min_free is not None:
        parts.append(f"free {format_size(budget.space.free)} (min {format_size(budget.min_free)})")
    if budget.unmet is not None:
        held = ", ".join(
            f"{n} {reason} ({format_size(size)})"
            for reason, (n, size) in sorted(budget.unmet.blockers.items())
        )
        parts.append(f"short by {format_size(budget.unmet.short)}; held: {held or 'nothing'}")
    return "; ".join(parts)
