"""The pure retention planner: (inventory, rules, now) → a Plan that explains every decision."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, NamedTuple, Protocol, cast

from ocrd.config import Retention, approx_duration, format_duration
from ocrd.inventory import FileEntry, Inventory

DAY = 86_400.0


class Verdict(StrEnum):
    KEEP = "keep"
    DELETE = "delete"
    PROTECTED = "protected"
    SETTLING = "settling"


class Decision(NamedTuple):
    entry: FileEntry
    verdict: Verdict
    rule: str | None  # "prefix", "max_age", "whitelist" or None
    reason: str


class Selector(Protocol):
    """A deleting rule. It sees every file still undecided at once, so rules that need the whole
    inventory (keep the newest N of a family, a total size budget evicting LRU first) fit as well
    as per-file ones. It yields the files it would delete, each with a human reason."""

    @property
    def name(self) -> str: ...

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]: ...


@dataclass(frozen=True)
class PrefixRule:
    prefixes: tuple[str, ...]
    name: str = "prefix"

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        encoded = tuple(p.encode("utf-8", "surrogateescape") for p in self.prefixes)
        reasons = {
            p: f"name starts with {q!r}" for p, q in zip(encoded, self.prefixes, strict=True)
        }
        for f in files:
            name = f.path.rpartition(b"/")[2]
            if name.startswith(encoded):
                yield f, reasons[next(p for p in encoded if name.startswith(p))]


@dataclass(frozen=True)
class MaxAgeRule:
    max_age: float
    age_by: Literal["mtime", "atime"]
    name: str = "max_age"

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        limit = format_duration(self.max_age)
        by_mtime = self.age_by == "mtime"
        max_age = self.max_age
        # From two days on, the age reads in whole days: one text per day, made once.
        by_day: dict[int, str] = {}
        for f in files:
            age = now - (f.mtime if by_mtime else f.atime)
            if age > max_age:
                if age < 2 * DAY:
                    yield f, f"{self.age_by} age {approx_duration(age)} > {limit}"
                    continue
                text = by_day.get(days := int(age // DAY))
                if text is None:
                    text = by_day[days] = f"{self.age_by} age {approx_duration(age)} > {limit}"
                yield f, text


@dataclass(frozen=True)
class Rules:
    """Everything the planner needs, built once from config."""

    selectors: tuple[Selector, ...]
    whitelist: tuple[str, ...] = ()
    settle: float = 0.0

    @property
    def per_file(self) -> bool:
        """True when every rule judges each file alone, so planning a subset of the inventory
        gives the same verdicts as planning all of it (the daemon relies on this to plan only
        what changed; a whole-inventory rule makes it plan everything)."""
        return all(isinstance(s, PrefixRule | MaxAgeRule) for s in self.selectors)

    @classmethod
    def from_config(cls, retention: Retention, settle: float) -> Rules:
        selectors: list[Selector] = []
        if retention.prefixes:
            selectors.append(PrefixRule(retention.prefixes))
        if retention.max_age is not None:
            selectors.append(MaxAgeRule(retention.max_age, retention.age_by))
        return cls(tuple(selectors), retention.whitelist, settle)

    def whitelisted(self, entry: FileEntry) -> str | None:
        """The first whitelist pattern matching ``entry``: by name, or by relative path if the
        pattern holds "/". fnmatch's ``*`` also crosses "/": on a whitelist, matching more is
        the safe side."""
        for pattern in self.whitelist:
            subject = entry.text if "/" in pattern else entry.text.rpartition("/")[2]
            if fnmatch.fnmatchcase(subject, pattern):
                return pattern
        return None


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...]
    now: float

    @property
    def deletions(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.verdict is Verdict.DELETE)


def plan(inventory: Inventory | Iterable[FileEntry], rules: Rules, now: float) -> Plan:
    """Decide each file's fate. Order of precedence: a symlink is kept (never followed, never
    deleted); the whitelist protects; a file changed within ``settle`` waits; then each rule
    in turn may select among what is still undecided; whatever is left is kept."""
    files = inventory.files if isinstance(inventory, Inventory) else tuple(inventory)
    decided: list[Decision | None] = [None] * len(files)
    undecided: list[int] = []
    whitelisted, settle = rules.whitelisted, rules.settle
    for i, f in enumerate(files):
        if f.is_link:
            decided[i] = Decision(f, Verdict.KEEP, None, "symbolic link: never followed or deleted")
        elif rules.whitelist and (pattern := whitelisted(f)) is not None:
            decided[i] = Decision(f, Verdict.PROTECTED, "whitelist", f"matches {pattern!r}")
        elif settle > 0 and (changed := now - max(f.mtime, f.ctime)) < settle:
            # ctime too: a file copied with its old mtime kept (cp -p, rsync -t) is still new here.
            # With settle = 0 nothing settles, not even a file whose clock runs ahead of ours.
            why = f"changed {changed:.1f}s ago, settle is {settle:g}s"
            decided[i] = Decision(f, Verdict.SETTLING, None, why)
        else:
            undecided.append(i)
    # A selected entry is found again by identity, not by value: hashing a whole FileEntry
    # per file costs more than the rule itself.
    position = {id(files[i]): i for i in undecided}
    for selector in rules.selectors:
        chosen = False
        for f, reason in selector.select([files[i] for i in undecided], now):
            decided[position[id(f)]] = Decision(f, Verdict.DELETE, selector.name, reason)
            chosen = True
        if chosen:
            undecided = [i for i in undecided if decided[i] is None]
    for i in undecided:
        decided[i] = Decision(files[i], Verdict.KEEP, None, "no rule applies")
    return Plan(cast(tuple[Decision, ...], tuple(decided)), now)


def revisit_at(decision: Decision, rules: Rules) -> float | None:
    """The wall-clock time at which this decision could turn out differently with no change to
    the file: a settling file stops settling, a kept file crosses ``max_age``. None if never."""
    entry = decision.entry
    if decision.verdict is Verdict.SETTLING:
        return max(entry.mtime, entry.ctime) + rules.settle
    if decision.verdict is Verdict.KEEP and not entry.is_link:
        times = [
            (entry.mtime if s.age_by == "mtime" else entry.atime) + s.max_age
            for s in rules.selectors
            if isinstance(s, MaxAgeRule)
        ]
        # max_age deletes what is strictly older: look again just after the boundary.
        return min(times) + 0.001 if times else None
    return None
