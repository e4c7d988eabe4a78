"""The pure retention planner: (inventory, rules, now) → a Plan that explains every decision."""

from __future__ import annotations

import fnmatch
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import cast

from ocrd.config.schema import Retention
from ocrd.fs.inventory import FileEntry, Inventory
from ocrd.rules.decision import Decision, Plan, Verdict, changed_at, nfc
from ocrd.rules.families import Families, Ranking, Versions
from ocrd.rules.leftovers import InterruptedRule
from ocrd.rules.selectors import (
    KeepNewestRule,
    MaxAgeRule,
    PrefixRule,
    Selector,
    versions,
)
from ocrd.rules.trust import Trust


@dataclass(frozen=True)
class Rules:
    """Everything the planner needs, built once from config."""

    selectors: tuple[Selector, ...]
    whitelist: tuple[str, ...] = ()
    settle: float = 0.0
    # The last-version floor: None, or the families within which no rule deletes the last
    # version still present (retention.keep_last_version, when families are in use).
    floor: Families | None = None
    # Whose files rank or vouch for anyone's (ocrd.rules.trust): root, model_dir's owner and
    # retention.trusted_owners; anyone else's only for files of their own owner.
    owners: frozenset[int] = frozenset({0})
    # Files restored from the trash, held from every rule: (device, inode) → until when
    # (ocrd.fs.trash.Trash.holds; the operator asked for them back).
    held: Mapping[tuple[int, int], float] = field(default_factory=dict, compare=False)
    _patterns: tuple[tuple[str, str, bool], ...] = field(init=False, repr=False, compare=False)
    trust: Trust = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # (as written, in NFC, holds "/"): normalised once, not per file.
        patterns = tuple((p, nfc(p), "/" in p) for p in self.whitelist)
        object.__setattr__(self, "_patterns", patterns)
        object.__setattr__(self, "trust", Trust(self.owners, self.settle))

    @property
    def per_file(self) -> bool:
        """True when every rule judges each file alone, so planning a subset of the inventory
        gives the same verdicts as planning all of it (the daemon relies on this to plan only
        what changed; a whole-inventory rule, or the last-version floor, makes it plan
        everything)."""
        return self.floor is None and all(s.per_file for s in self.selectors)

    def holding(self, held: Mapping[tuple[int, int], float]) -> Rules:
        """These rules with ``held`` as the files held from every rule."""
        return self if not held and not self.held else replace(self, held=held)

    def hold_of(self, f: FileEntry) -> float:
        """Until when ``f`` is held from every rule (0.0: it is not)."""
        return self.held.get((f.dev, f.ino), 0.0) if self.held else 0.0

    def not_before(self, at: float) -> Rules:
        """These rules with no file ageing from before ``at`` (a clock jump,
        ocrd.daemon.timejump)."""
        return replace(self, selectors=tuple(s.after_clock_jump(at) for s in self.selectors))

    @property
    def due_slack(self) -> float:
        """How late a kept file may be looked at after a rule's due time: the finest of the
        rules' slacks, 1 s if no rule sets a time."""
        slacks = [x for s in self.selectors if (x := s.due_slack) is not None]
        return min(slacks) if slacks else 1.0

    @property
    def by_name(self) -> frozenset[str]:
        """The names of the rules whose deletions are marked by the file's name (by_name)."""
        return frozenset(s.name for s in self.selectors if s.by_name)

    @classmethod
    def from_config(cls, retention: Retention, settle: float, owner: int | None = None) -> Rules:
        """``owner``: model_dir's owner uid (model_dir_owner), None if unknown."""
        selectors: list[Selector] = [InterruptedRule()]
        if retention.prefixes:
            selectors.append(PrefixRule(retention.prefixes))
        if retention.max_age is not None:
            selectors.append(MaxAgeRule(retention.max_age, retention.age_by, retention.age_from))
        families = family_rules(retention)
        if retention.keep_newest and families is not None:
            selectors.append(KeepNewestRule(retention.keep_newest, families))
        floor = families if retention.keep_last_version else None
        owners = {0, *retention.trusted_owners}
        if owner is not None:
            owners.add(owner)
        return cls(tuple(selectors), retention.whitelist, settle, floor, frozenset(owners))

    def whitelisted(self, entry: FileEntry) -> str | None:
        """The first whitelist pattern matching ``entry``: by name, or by relative path if the
        pattern holds "/". fnmatch's ``*`` also crosses "/": on a whitelist, matching more is
        the safe side. Both sides are compared in NFC, so a pattern protects its name however
        the name's accents were stored (composed or decomposed)."""
        path = entry.text
        if not path.isascii():
            path = nfc(path)
        name = path.rpartition("/")[2]
        for pattern, normal, by_path in self._patterns:
            if fnmatch.fnmatchcase(path if by_path else name, normal):
                return pattern
        return None


def family_rules(retention: Retention) -> Families | None:
    """The families in use, or None: families exist once keep_newest or family is set. Without
    either, ocrd knows no families and every rule acts as it did before they existed."""
    if not retention.keep_newest and retention.family is None:
        return None
    pattern = re.compile(retention.family) if retention.family is not None else None
    return Families(pattern, retention.age_from)


RESTORED = "restored"  # the rule of a file held after ``ocrd restore`` (ocrd.fs.trash)


def _held(until: float) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(until)))
    return f"restored from the trash: held from every rule until {when}"


def plan(inventory: Inventory | Iterable[FileEntry], rules: Rules, now: float) -> Plan:
    """Decide each file's fate. Order of precedence: a symlink is kept (never followed, never
    deleted); the whitelist protects; a file changed within ``settle`` waits; then each rule
    in turn may select among what is still undecided; whatever is left is kept."""
    files = inventory.files if isinstance(inventory, Inventory) else tuple(inventory)
    decided: list[Decision | None] = [None] * len(files)
    undecided: list[int] = []
    whitelisted, settle, restored = rules.whitelisted, rules.settle, rules.held
    # Decisions are made by the hundred thousand: built as ocrd.fs.scan builds FileEntry, without
    # NamedTuple's keyword-parsing __new__, the verdicts looked up once.
    new, keep, delete = tuple.__new__, Verdict.KEEP, Verdict.DELETE
    listing = bool(rules.whitelist)
    for i, f in enumerate(files):
        if f.is_link:
            decided[i] = Decision(f, keep, None, "symbolic link: never followed or deleted")
        elif listing and (pattern := whitelisted(f)) is not None:
            decided[i] = Decision(f, Verdict.PROTECTED, "whitelist", f"matches {pattern!r}")
        elif restored and (until := restored.get((f.dev, f.ino), 0.0)) > now:
            decided[i] = Decision(f, Verdict.PROTECTED, RESTORED, _held(until))
        elif settle > 0 and (changed := now - changed_at(f, now)) < settle:
            # With settle = 0 nothing settles, not even a file whose clock runs ahead of ours.
            decided[i] = Decision(f, Verdict.SETTLING, None, _settling(f, changed, settle, now))
        else:
            undecided.append(i)
    present = Versions(versions(files) if not rules.per_file else [], rules.trust, now)
    for selector in rules.selectors:
        chosen = False
        name = selector.name
        given = [files[i] for i in undecided]
        for f, reason, i in _positions(
            selector.select_among(given, now, present), given, undecided
        ):
            decided[i] = new(Decision, (f, delete, name, reason))
            chosen = True
        if chosen:
            undecided = [i for i in undecided if decided[i] is None]
    if rules.floor is not None:
        _keep_last_versions(decided, files, present.ranked(rules.floor))
    # A file kept only because it arrived late (or the clock jumped, or newer versions do not
    # count against it) says so.
    held: dict[int, str] = {}
    kept = [files[i] for i in undecided]
    for s in rules.selectors:
        for f, why in s.hold_among(kept, now, present):
            held.setdefault(id(f), why)
    if held:
        for i in undecided:
            f = files[i]
            decided[i] = new(Decision, (f, keep, None, held.get(id(f), "no rule applies")))
    else:
        for i in undecided:
            decided[i] = new(Decision, (files[i], keep, None, "no rule applies"))
    return Plan(cast(tuple[Decision, ...], tuple(decided)), now)


def _positions(
    selected: Iterable[tuple[FileEntry, str]], given: list[FileEntry], at: list[int]
) -> Iterator[tuple[FileEntry, str, int]]:
    """Each selected file, its reason, and its position in the plan (``at[k]`` for
    ``given[k]``). A file is found again by identity, not by value: hashing a whole FileEntry
    per file costs more than the rule itself, and so does a map of every file by identity
    (50 ms per 100k). The rules yield their files in the order given, so each is found by
    walking on from the one before; a file that is not ahead is looked up in such a map, made
    only then."""
    k, n = 0, len(given)
    lookup: dict[int, int] | None = None
    for f, reason in selected:
        while k < n and given[k] is not f:
            k += 1
        if k < n:
            yield f, reason, at[k]
            k += 1
            continue
        if lookup is None:
            lookup = {id(g): i for g, i in zip(given, at, strict=True)}
        yield f, reason, lookup[id(f)]


def _keep_last_versions(
    decided: list[Decision | None],
    files: Sequence[FileEntry],
    ranked: Ranking,
) -> None:
    """The floor (retention.keep_last_version): no rule deletes a family's last version. A
    version that stays counts only for those it may vouch for (ocrd.rules.trust: settled, not dated
    ahead, owned by a trusted owner or by theirs): of the versions to be deleted that no
    staying one vouches for, the newest stays, and vouches in turn for its owner's."""
    trust, now = ranked.trust, ranked.now
    going: dict[str, list[tuple[int, int]]] = {}  # family key → (position, index) to delete
    vouched_all: set[str] = set()  # families where a trusted owner's version stays
    vouched: dict[str, set[int]] = {}  # family key → other owners with a version that stays
    staying: set[str] = set()  # families with any version that stays, trusted or not
    for i, f in enumerate(files):
        member = ranked.get(id(f))
        if member is None:
            continue
        d = decided[i]
        if d is not None and d.verdict is Verdict.DELETE:
            going.setdefault(member.key, []).append((member.newer, i))
            continue
        staying.add(member.key)
        if trust.doubt(f, now) is None:
            if f.uid in trust.owners:
                vouched_all.add(member.key)
            else:
                vouched.setdefault(member.key, set()).add(f.uid)
    for key, deletions in going.items():
        if key in vouched_all:
            continue
        owners = set(vouched.get(key, ()))
        for _, i in sorted(deletions):
            d = decided[i]
            assert d is not None
            f = d.entry
            if f.uid in owners:
                continue
            member = ranked.get(id(f))
            assert member is not None
            why = f"last version of family '{member.family}'"
            if key in staying:
                why += " that counts for it (the versions that stay do not: ocrd list says why)"
            decided[i] = Decision(
                f,
                Verdict.KEEP,
                "keep_last_version",
                f"{why}: {d.rule} would delete it ({d.reason})",
            )
            if trust.doubt(f, now) is None:
                if f.uid in trust.owners:
                    break
                owners.add(f.uid)


def _settling(f: FileEntry, changed: float, settle: float, now: float) -> str:
    if changed < 0:
        return f"changed {-changed:.1f}s in the future by our clock, settle is {settle:g}s"
    if f.mtime > now:
        return f"mtime in the future; status changed {changed:.1f}s ago, settle is {settle:g}s"
    return f"changed {changed:.1f}s ago, settle is {settle:g}s"


def revisit_at(decision: Decision, rules: Rules, now: float) -> float | None:
    """The wall-clock time at which this decision, made at ``now``, could turn out differently
    with no change to the file: a settling file stops settling, a kept file comes due under a
    rule (crosses ``max_age``), or the clock reaches its future mtime (which then counts as a
    change). None if never."""
    entry = decision.entry
    if decision.verdict is Verdict.SETTLING:
        if entry.mtime > now and (end := entry.ctime + rules.settle) < entry.mtime:
            return end
        # Still settling when the clock reaches a future mtime: from then on it is the change.
        return max(entry.mtime, entry.ctime) + rules.settle
    if decision.rule in ("keep_last_version", "allow_delete_all"):
        return None  # what the floor keeps stays until the family, or model_dir, changes
    if decision.rule == RESTORED:
        return rules.hold_of(entry) or None  # its hold ends: the rules judge it again
    if decision.verdict is Verdict.KEEP and not entry.is_link:
        times = [at for s in rules.selectors if (at := s.due(entry)) is not None]
        if rules.settle > 0 and entry.mtime > now:
            times.append(entry.mtime)
        return min(times) if times else None
    return None


# -- foresight: when each file first comes due (docs/foresight.md) ----------------------------
