"""When each file comes due under the rules in force, if no file arrives or changes: what
``list --at``, ``due_at`` and the metrics' coming deletions tell."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ocrd.fs.inventory import FileEntry, Inventory
from ocrd.rules.decision import Plan, Verdict, changed_at
from ocrd.rules.families import Ranking, Versions
from ocrd.rules.retention import Rules
from ocrd.rules.selectors import (
    first_after,
    versions,
)
from ocrd.rules.trust import Trust


class Due(NamedTuple):
    """When a pass over today's files would first delete one, and by which rule. For a file
    due at the time asked about, ``at`` is when it became due as far as its timestamps tell,
    never before its arrival."""

    at: float
    rule: str


def coming_due(
    inventory: Inventory | Iterable[FileEntry] | Plan, rules: Rules, now: float
) -> list[Due | None]:
    """For each file, in order, when it first comes due at or after ``now`` under ``rules``
    with nothing changing but time, or None if never: what plan() at that time decides, and
    at no earlier time. Asks each rule (Selector.due_among), then settle, the whitelist and
    the last-version floor; not the refusal to delete every model file, which needs every
    file (LastToGo, due_at). Given the Plan of these files under ``rules`` at ``now``, it
    reuses its whitelist verdicts (they do not change with time) instead of matching again."""
    if isinstance(inventory, Plan):
        files = tuple(d.entry for d in inventory.decisions)
        candidates = [
            d.entry
            for d in inventory.decisions
            if not d.entry.is_link and d.verdict is not Verdict.PROTECTED
        ]
    else:
        files = inventory.files if isinstance(inventory, Inventory) else tuple(inventory)
        whitelisted = rules.whitelisted if rules.whitelist else None
        candidates = [
            f for f in files if not f.is_link and (whitelisted is None or whitelisted(f) is None)
        ]
    present = Versions(versions(files) if not rules.per_file else [], rules.trust, now)
    # Each file's rules in the planner's order: from when each selects it, and its name.
    by: dict[int, list[tuple[float, str]]] = {}
    for s in rules.selectors:
        for f, at in s.due_among(candidates, present):
            by.setdefault(id(f), []).append((at, s.name))
    settle = rules.settle
    dues: list[Due | None] = []
    for f in files:
        times = by.get(id(f))
        if times is None:
            dues.append(None)
            continue
        start = min(at for at, _ in times) if len(times) > 1 else times[0][0]
        # Not before its arrival (or now, if its arrival is ahead of our clock): a rule that
        # selects at any time (a prefix) made it due when it came.
        at = _settled_from(f, max(start, min(f.ctime, now)), settle)
        if at <= now and settle > 0 and now - changed_at(f, now) < settle:
            # Due before, settling again now (its future mtime came): due when that settles.
            at = _settled_from(f, max(start, now), settle)
        when = max(at, now)
        for t, name in times:  # the first rule in order that selects it then decides
            if t <= when:
                dues.append(Due(at, name))
                break
    if rules.floor is not None:
        _spare_last_versions(dues, files, present.ranked(rules.floor), now)
    return dues


def _settled_from(f: FileEntry, lo: float, settle: float) -> float:
    """The first time from ``lo`` on at which ``f`` is not settling, as plan() judges it:
    before a future mtime it settles from its ctime, from that mtime on from the later of
    the two (changed_at)."""
    if settle <= 0 or lo - changed_at(f, lo) >= settle:
        return lo
    first = max(lo, first_after(f.ctime, settle, strictly=False))
    if first < f.mtime:
        return first
    return max(lo, f.mtime, first_after(max(f.mtime, f.ctime), settle, strictly=False))


FORESEEN_FAMILY = 512  # versions of one family beyond which the floor is not foreseen


def _spare_last_versions(
    dues: list[Due | None], files: Sequence[FileEntry], ranked: Ranking, now: float
) -> None:
    """The last-version floor foreseen: a version due at D is first deleted at the first
    time from D on at which the floor (_keep_last_versions) would not keep it, judged at
    every time anything changes: another version comes due (leaves the staying ones) or
    comes to count (ocrd.rules.trust). None if the floor keeps it for good. A family of more than
    FORESEEN_FAMILY versions is left as the rules alone would have it (a cost of versions
    squared)."""
    trust = ranked.trust
    families: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        member = ranked.get(id(f))
        if member is not None:
            families.setdefault(member.key, []).append(i)
    for members in families.values():
        if len(members) > FORESEEN_FAMILY or all(dues[i] is None for i in members):
            continue
        members.sort(key=lambda i: ranked.position(files[i]))  # newest first
        before = {i: dues[i] for i in members}
        times = sorted(
            {max(d.at, now) for d in before.values() if d is not None}
            | {at for i in members if (at := trust.trusted_from(files[i])) > now}
        )
        kept_at = [_floor_keeps(members, files, before, trust, t) for t in times]
        for i in members:
            due = before[i]
            if due is None:
                continue
            start = max(due.at, now)
            first = next(
                (t for t, kept in zip(times, kept_at, strict=True) if t >= start and i not in kept),
                None,
            )
            dues[i] = None if first is None else due if first == start else Due(first, due.rule)


def _floor_keeps(
    members: list[int],
    files: Sequence[FileEntry],
    dues: dict[int, Due | None],
    trust: Trust,
    t: float,
) -> set[int]:
    """The versions (of ``members``, newest first) the floor keeps at ``t`` when the rules
    delete those due by then: as _keep_last_versions judges a plan."""
    going = [i for i in members if (d := dues[i]) is not None and d.at <= t]
    if not going:
        return set()
    gone = set(going)
    trusted, everyone = trust.owners, False
    owners: set[int] = set()
    for i in members:
        f = files[i]
        if i not in gone and trust.doubt(f, t) is None:
            if f.uid in trusted:
                everyone = True
                break
            owners.add(f.uid)
    kept: set[int] = set()
    if everyone:
        return kept
    for i in going:
        f = files[i]
        if f.uid in owners:
            continue
        kept.add(i)
        if trust.doubt(f, t) is None:
            if f.uid in trusted:
                break
            owners.add(f.uid)
    return kept


_ANYONE = -1  # LastToGo's class of the files that count for anyone's (trusted owners')


@dataclass
class LastToGo:
    """The refusal (refuse_all), foreseen: a deletion by age or rank goes at the first time,
    from when it is due on, at which a model file that counts for it stays (ocrd.rules.trust): one
    not due by then, trusted by then, of a trusted owner or of the deleted file's owner; if
    there is no such time, never. Fed one file at a time (add), so that a pass that holds no
    list of its files (the daemon's) can foresee it too: per owner it keeps one time, and a
    pair of times only for the files that do not count yet (settling, dated ahead: few).

    ``at``, ``never`` and ``refused_bytes`` (for the metrics, ocrd.ops.stats) tell the refusal
    as one owner sees it: once every model file is due, the last to come due by age or rank
    are kept for good."""

    named: frozenset[str]  # Rules.by_name: rules whose deletions are never refused
    now: float
    trust: Trust = field(default_factory=Trust)
    at: float = -math.inf  # when the last model file seen so far comes due
    never: bool = False  # a model file never comes due: nothing is ever refused
    refused_bytes: int = 0  # of the files coming due at ``at`` by age or rank
    # per class (_ANYONE, or another owner's uid): the latest time until which a file that
    # counts already stays (inf: it never comes due)
    _until: dict[int, float] = field(default_factory=dict)
    # per class: (from, until) of the files that stay and come to count only later
    _pending: dict[int, list[tuple[float, float]]] = field(default_factory=dict)

    def add(self, f: FileEntry, due: Due | None) -> None:
        if f.is_link:
            return  # no model file
        until = math.inf if due is None else max(due.at, self.now)
        group = _ANYONE if f.uid in self.trust.owners else f.uid
        start = self.trust.trusted_from(f)
        if start <= self.now:
            if until > self._until.get(group, -math.inf):
                self._until[group] = until
        elif start < until:
            self._pending.setdefault(group, []).append((start, until))
        if due is None:
            self.never = True
            return
        at = max(due.at, self.now)
        if at > self.at:
            self.at, self.refused_bytes = at, 0
        if at == self.at and due.rule not in self.named:
            self.refused_bytes += f.size

    def when(self, f: FileEntry, due: Due) -> float | None:
        """When a pass first deletes ``f`` (added, due ``due`` by the rules and the floor),
        the refusal considered; None if it keeps it for good."""
        if due.rule in self.named:
            return due.at
        start = max(due.at, self.now)
        first: float | None = None
        for group in {_ANYONE, f.uid if f.uid not in self.trust.owners else _ANYONE}:
            if self._until.get(group, -math.inf) > start:
                return due.at
            for since, until in self._pending.get(group, ()):
                t = max(since, start)
                if t < until and (first is None or t < first):
                    first = t
        return None if first is None else due.at if first == start else first


def due_at(
    inventory: Inventory | Iterable[FileEntry],
    rules: Rules,
    now: float,
    *,
    allow_delete_all: bool,
) -> list[float | None]:
    """For each file, in order, the first time at or after ``now`` at which a pass over
    these files would delete it (for one due at ``now``, when it became due), or None if
    never: coming_due, and the refusal unless ``allow_delete_all``."""
    files = inventory.files if isinstance(inventory, Inventory) else tuple(inventory)
    dues = coming_due(files, rules, now)
    if allow_delete_all:
        return [d.at if d is not None else None for d in dues]
    last = LastToGo(rules.by_name, now, rules.trust)
    for f, d in zip(files, dues, strict=True):
        last.add(f, d)
    return [None if d is None else last.when(f, d) for f, d in zip(files, dues, strict=True)]
