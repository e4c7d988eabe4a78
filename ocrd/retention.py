"""The pure retention planner: (inventory, rules, now) → a Plan that explains every decision."""

from __future__ import annotations

import fnmatch
import re
import time
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal, NamedTuple, Protocol, cast

from ocrd.config import Retention, approx_duration, format_duration
from ocrd.families import Families, Member, Versions
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
    # "prefix", "max_age", "keep_newest", "interrupted", "whitelist" or None; a file kept by
    # the floor names the key that keeps it: "keep_last_version" or "allow_delete_all".
    rule: str | None
    reason: str


class Selector(Protocol):
    """A deleting rule. It sees every file still undecided at once, so rules that need the whole
    inventory (keep the newest N of a family, a total size budget evicting LRU first) fit as well
    as per-file ones. It yields the files it would delete, each with a human reason.

    Besides choosing, a rule answers what the daemon asks of it, so that the shell never needs
    to know which rules it holds: adding a rule touches the planner and the config schema only.
    A rule class that subclasses Selector inherits the answers below, each the safe side for a
    rule that does not say otherwise (planned with the whole inventory, never due by time)."""

    @property
    def name(self) -> str: ...

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]: ...

    def select_among(
        self, files: Sequence[FileEntry], now: float, present: Versions
    ) -> Iterator[tuple[FileEntry, str]]:
        """What the planner asks: ``select`` among the undecided ``files``. ``present`` is
        every model file whatever its verdict so far (ocrd.retention.versions): a rule that
        ranks files against each other ranks those (a whitelisted or settling version still
        takes its place among the newest), and yields only files from ``files``."""
        return self.select(files, now)

    @property
    def per_file(self) -> bool:
        """True when this rule judges each file alone, so that planning a subset of the
        inventory gives it the same verdicts as planning all of it."""
        return False

    def due(self, entry: FileEntry) -> float | None:
        """The wall-clock time from which this rule would select ``entry``, kept now, with
        nothing changing but time; None if time alone never makes it select the file."""
        return None

    @property
    def due_slack(self) -> float | None:
        """How late the daemon may look at a file after its due() time (revisits are grouped
        in buckets of this many seconds, so that they stay few however many files wait);
        None: this rule sets no time."""
        return None

    def held(self, files: Iterable[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        """Files this rule keeps although a reader would expect it to delete them, each with
        why: the planner gives that as the reason of their "keep"."""
        return iter(())

    def after_clock_jump(self, at: float) -> Selector:
        """This rule with no file ageing from before ``at``, the moment the wall clock jumped
        (ocrd.timejump): timestamps read against the old clock are not trusted."""
        return self

    @property
    def by_name(self) -> bool:
        """True when a file this rule selects was marked for deletion by its name (a prefix
        the operator renames files to, an interrupted deletion's private name). The refusal
        to delete every model file (refuse_all) never overrides a name: it guards against
        rules that can reach every file without any being named, by age or by rank."""
        return False


@dataclass(frozen=True)
class PrefixRule(Selector):
    prefixes: tuple[str, ...]
    name: str = "prefix"

    @property
    def per_file(self) -> bool:
        return True

    @property
    def by_name(self) -> bool:
        return True

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        # Names and prefixes are compared in NFC: "é" typed on one system and stored decomposed
        # by another (macOS, some archivers) is the same name to whoever wrote the rule.
        encoded = tuple(nfc(p).encode("utf-8", "surrogateescape") for p in self.prefixes)
        reasons = {
            p: f"name starts with {q!r}" for p, q in zip(encoded, self.prefixes, strict=True)
        }
        for f in files:
            name = f.path.rpartition(b"/")[2]
            if not name.isascii():  # ASCII is its own NFC: the common case stays a bytes compare
                name = nfc(name.decode("utf-8", "surrogateescape")).encode(
                    "utf-8", "surrogateescape"
                )
            if name.startswith(encoded):
                yield f, reasons[next(p for p in encoded if name.startswith(p))]


@dataclass(frozen=True)
class MaxAgeRule(Selector):
    """Deletes what is older than ``max_age``. How old a file is (``since``):

    - ``age_from = "timestamp"``: since its ``age_by`` timestamp (mtime or atime), which the
      file carries with it: ``tar -x``, ``cp -p`` and ``rsync -t`` bring a vendor's old mtime.
    - ``age_from = "arrival"`` (the default): since the later of that timestamp and its
      arrival in model_dir. Arrival is the entry's ``ctime``: the kernel sets it on every
      create, rename, link and chmod, and no copy tool can set it back (ocrd.arrival raises it
      further for the files of a directory that was moved in).
    - ``not_before``: after a wall-clock jump (ocrd.timejump) no file ages from before the
      jump, whatever its timestamps say: they were read against the clock that jumped.
    """

    max_age: float
    age_by: Literal["mtime", "atime"]
    age_from: Literal["arrival", "timestamp"] = "arrival"
    not_before: float = float("-inf")
    name: str = "max_age"

    def since(self, f: FileEntry) -> float:
        stamp = f.mtime if self.age_by == "mtime" else f.atime
        if self.age_from == "arrival" and f.ctime > stamp:
            stamp = f.ctime
        return stamp if stamp > self.not_before else self.not_before

    @property
    def per_file(self) -> bool:
        return True

    def due(self, entry: FileEntry) -> float | None:
        # max_age deletes what is strictly older: look again just after the boundary.
        return self.since(entry) + self.max_age + 0.001

    @property
    def due_slack(self) -> float | None:
        """1/10000 of max_age, between 1 s and 5 min (30d: ~4 min): a kept file is looked at
        that much late at most after it crosses max_age."""
        return min(300.0, max(1.0, self.max_age / 10_000))

    def after_clock_jump(self, at: float) -> MaxAgeRule:
        return replace(self, not_before=max(self.not_before, at))

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        limit = format_duration(self.max_age)
        max_age, not_before = self.max_age, self.not_before
        by_mtime, arrival = self.age_by == "mtime", self.age_from == "arrival"
        # From two days on, a timestamp's age reads in whole days: one text per day, made once.
        by_day: dict[int, str] = {}
        for f in files:  # since(), inlined: this runs once per file of every scan
            stamp = f.mtime if by_mtime else f.atime
            since = f.ctime if arrival and f.ctime > stamp else stamp
            age = now - (since if since > not_before else not_before)
            if age > max_age:
                if since != stamp or not_before > stamp or age < 2 * DAY:
                    yield f, self._why(f, age, now, f"> {limit}")
                    continue
                text = by_day.get(days := int(age // DAY))
                if text is None:
                    text = by_day[days] = self._why(f, age, now, f"> {limit}")
                yield f, text

    def held(self, files: Iterable[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        """The files this rule keeps although their timestamp alone is past max_age (they have
        not been in model_dir that long, or the clock jumped), each with why."""
        if self.age_from == "timestamp" and self.not_before == float("-inf"):
            return
        oldest = now - self.max_age  # a timestamp before this is past max_age
        limit = format_duration(self.max_age)
        by_mtime = self.age_by == "mtime"
        for f in files:
            if (f.mtime if by_mtime else f.atime) < oldest and not f.is_link:
                age = now - self.since(f)
                if age <= self.max_age:
                    yield f, self._why(f, age, now, f"<= {limit}")

    def _held_by(self, f: FileEntry) -> str | None:
        """What holds a file's age below its timestamp's: "arrival", "clock" or None."""
        stamp = f.mtime if self.age_by == "mtime" else f.atime
        since = self.since(f)
        if since <= stamp:
            return None
        return "clock" if since == self.not_before else "arrival"

    def _why(self, f: FileEntry, age: float, now: float, versus: str) -> str:
        """The reason text; ``versus`` ("> 30d", "<= 30d") follows the age that decided."""
        stamp_age = now - (f.mtime if self.age_by == "mtime" else f.atime)
        held = self._held_by(f)
        if held is None:
            return f"{self.age_by} age {approx_duration(age)} {versus}"
        when = _utc(self.since(f))
        if held == "clock":
            since = f"by our clock, counted from its jump at {when}"
        else:
            since = f"arrived {when}"
        return (
            f"in model_dir {approx_duration(age)} ({since}) {versus}, "
            f"{self.age_by} age {approx_duration(stamp_age)}"
        )


def _utc(t: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return f"{t:.0f}"


INTERRUPTED = re.compile(rb"\.ocrd-deleting-\d+-\d+")
PROCESS_STARTED = time.time()  # private names older than this process are no live ocrd's own


@dataclass(frozen=True)
class InterruptedRule(Selector):
    """A file ocrd had checked and was deleting when it was killed. To delete exactly the
    checked file, ocrd renames it to ``.ocrd-deleting-PID-N`` first, and deletes it under that
    name (ocrd.apply); a SIGKILL leaves the private name behind. Such a file had passed every
    check already; it is planned again, and checked again, under this rule.

    A name given before this process started (by ctime, which the rename set) is a leftover;
    a younger one only once it is GRACE_S old: it may belong to an ocrd that is deleting right
    now (``ocrd clean`` beside the daemon), whose file waits under that name for microseconds,
    leased. Opening it to check would break that lease, and the other ocrd would rightly put
    it back."""

    started: float = PROCESS_STARTED
    name: str = "interrupted"

    GRACE_S = 60.0

    @staticmethod
    def _private(f: FileEntry) -> bool:
        return INTERRUPTED.fullmatch(f.path.rpartition(b"/")[2]) is not None

    def _leftover(self, f: FileEntry, now: float) -> bool:
        return f.ctime < self.started or now - f.ctime >= self.GRACE_S

    @property
    def per_file(self) -> bool:
        return True

    @property
    def by_name(self) -> bool:
        return True

    def due(self, entry: FileEntry) -> float | None:
        if not self._private(entry):
            return None
        return entry.ctime if entry.ctime < self.started else entry.ctime + self.GRACE_S

    @property
    def due_slack(self) -> float | None:
        return 1.0

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        for f in files:
            if self._private(f) and self._leftover(f, now):
                yield f, "ocrd was stopped while deleting it"

    def held(self, files: Iterable[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        for f in files:
            if self._private(f) and not self._leftover(f, now):
                yield f, f"an ocrd is deleting it right now; a leftover after {self.GRACE_S:g}s"


@dataclass(frozen=True)
class KeepNewestRule(Selector):
    """Keeps the newest ``keep`` versions of each family (ocrd.families) and deletes the rest.
    Every version present takes its rank, also one the whitelist protects or one still
    settling; only undecided ones are deleted. A file in no family is left alone.

    What the shell asks of a rule, it answers with Selector's defaults: it judges a family
    as a whole (not per file: the daemon plans everything when it is on), and its verdicts
    change only when a family does (a version arrives or goes), never with time alone, so it
    is never due and is untouched by a clock jump."""

    keep: int
    families: Families = field(default_factory=Families)
    name: str = "keep_newest"

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        """Alone, ``files`` are all the versions there are."""
        return self.select_among(files, now, Versions(versions(files)))

    def select_among(
        self, files: Sequence[FileEntry], now: float, present: Versions
    ) -> Iterator[tuple[FileEntry, str]]:
        keep = self.keep
        if keep <= 0:
            return  # off, as in the config: never "keep none"
        ranked = present.ranked(self.families)
        for f in files:
            member = ranked.get(id(f))
            if member is not None and member.rank > keep:
                yield f, f"version {member.rank} of family {member.family!r}, keep_newest is {keep}"


@dataclass(frozen=True)
class Rules:
    """Everything the planner needs, built once from config."""

    selectors: tuple[Selector, ...]
    whitelist: tuple[str, ...] = ()
    settle: float = 0.0
    # The last-version floor: None, or the families within which no rule deletes the last
    # version still present (retention.keep_last_version, when families are in use).
    floor: Families | None = None
    _patterns: tuple[tuple[str, str, bool], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # (as written, in NFC, holds "/"): normalised once, not per file.
        patterns = tuple((p, nfc(p), "/" in p) for p in self.whitelist)
        object.__setattr__(self, "_patterns", patterns)

    @property
    def per_file(self) -> bool:
        """True when every rule judges each file alone, so planning a subset of the inventory
        gives the same verdicts as planning all of it (the daemon relies on this to plan only
        what changed; a whole-inventory rule, or the last-version floor, makes it plan
        everything)."""
        return self.floor is None and all(s.per_file for s in self.selectors)

    def not_before(self, at: float) -> Rules:
        """These rules with no file ageing from before ``at`` (a clock jump, ocrd.timejump)."""
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
    def from_config(cls, retention: Retention, settle: float) -> Rules:
        selectors: list[Selector] = [InterruptedRule()]
        if retention.prefixes:
            selectors.append(PrefixRule(retention.prefixes))
        if retention.max_age is not None:
            selectors.append(MaxAgeRule(retention.max_age, retention.age_by, retention.age_from))
        families = family_rules(retention)
        if retention.keep_newest and families is not None:
            selectors.append(KeepNewestRule(retention.keep_newest, families))
        floor = families if retention.keep_last_version else None
        return cls(tuple(selectors), retention.whitelist, settle, floor)

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
        elif settle > 0 and (changed := now - changed_at(f, now)) < settle:
            # With settle = 0 nothing settles, not even a file whose clock runs ahead of ours.
            decided[i] = Decision(f, Verdict.SETTLING, None, _settling(f, changed, settle, now))
        else:
            undecided.append(i)
    # A selected entry is found again by identity, not by value: hashing a whole FileEntry
    # per file costs more than the rule itself.
    position = {id(files[i]): i for i in undecided}
    present = Versions(versions(files) if not rules.per_file else [])
    for selector in rules.selectors:
        chosen = False
        for f, reason in selector.select_among([files[i] for i in undecided], now, present):
            decided[position[id(f)]] = Decision(f, Verdict.DELETE, selector.name, reason)
            chosen = True
        if chosen:
            undecided = [i for i in undecided if decided[i] is None]
    if rules.floor is not None:
        _keep_last_versions(decided, files, present.ranked(rules.floor))
    # A file kept only because it arrived late (or the clock jumped) says so.
    held: dict[int, str] = {}
    kept = [files[i] for i in undecided]
    for s in rules.selectors:
        for f, why in s.held(kept, now):
            held.setdefault(id(f), why)
    for i in undecided:
        f = files[i]
        decided[i] = Decision(f, Verdict.KEEP, None, held.get(id(f), "no rule applies"))
    return Plan(cast(tuple[Decision, ...], tuple(decided)), now)


def versions(files: Iterable[FileEntry]) -> list[FileEntry]:
    """What a ranking rule and the floor count as versions: the model files, not symlinks and
    not the leftovers of an interrupted deletion (their private names are no model's)."""
    return [
        f for f in files if not f.is_link and not INTERRUPTED.fullmatch(f.path.rpartition(b"/")[2])
    ]


def _keep_last_versions(
    decided: list[Decision | None],
    files: Sequence[FileEntry],
    ranked: dict[int, Member],
) -> None:
    """The floor: in a family whose every version present is to be deleted, the newest of
    them stays (retention.keep_last_version)."""
    spared: dict[str, tuple[int, int]] = {}  # family → (rank, index) of its newest deletion
    survives: set[str] = set()
    for i, f in enumerate(files):
        member = ranked.get(id(f))
        if member is None:
            continue
        d = decided[i]
        if d is not None and d.verdict is Verdict.DELETE:
            best = spared.get(member.family)
            if best is None or member.rank < best[0]:
                spared[member.family] = (member.rank, i)
        else:
            survives.add(member.family)
    for family, (_, i) in spared.items():
        if family in survives:
            continue
        d = decided[i]
        assert d is not None
        decided[i] = Decision(
            d.entry,
            Verdict.KEEP,
            "keep_last_version",
            f"last version of family {family!r}: {d.rule} would delete it ({d.reason})",
        )


@dataclass(frozen=True)
class Refusal:
    """Why a plan's deletions by age or rank were refused: with them, no model file would be
    left under model_dir."""

    would_delete: int
    would_free: int
    of_files: int

    def fields(self) -> dict[str, object]:
        return {
            "reason": "every_model_file",
            "would_delete": self.would_delete,
            "would_free": self.would_free,
            "of_files": self.of_files,
            "detail": f"the plan would delete all {self.of_files} model file(s) under "
            f"model_dir: the {self.would_delete} it would delete by age or rank are kept",
            "action": "check the rules with 'ocrd list'; to allow it, set "
            "retention.allow_delete_all = true",
        }


def refuse_all(
    deletions: Sequence[Decision],
    model_files: int,
    rules: Rules,
    *,
    allow: bool,
    due: Iterable[bytes] = (),
) -> Refusal | None:
    """A Refusal if ``deletions`` (with the paths already ``due`` for deletion) would leave no
    model file under model_dir and some of them are by a rule that judges by age or rank.
    ``model_files`` counts the regular files there, all of them, also when only a batch of
    them was planned (the daemon plans what changed). A file marked for deletion by its name
    (Selector.by_name: a prefix, an interrupted deletion) is never refused: whoever named it
    so asked for exactly that file's deletion; and without one deletion by age or rank there
    is nothing to refuse."""
    named = rules.by_name
    chosen = [d for d in deletions if d.rule not in named]
    if allow or not chosen:
        return None
    paths = {d.entry.path for d in deletions}
    paths.update(due)
    if len(paths) < model_files:
        return None
    return Refusal(len(chosen), sum(d.entry.size for d in chosen), model_files)


def refused(the_plan: Plan, rules: Rules) -> Plan:
    """``the_plan`` with its deletions by age or rank kept instead, naming the refusal: what
    ``ocrd list`` shows and what nothing deletes. Deletions by name still go."""
    named = rules.by_name
    why = "it would leave no model file under model_dir (retention.allow_delete_all)"
    return replace(
        the_plan,
        decisions=tuple(
            Decision(d.entry, Verdict.KEEP, "allow_delete_all", f"{d.rule}: {d.reason}; {why}")
            if d.verdict is Verdict.DELETE and d.rule not in named
            else d
            for d in the_plan.decisions
        ),
    )


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def changed_at(f: FileEntry, now: float) -> float:
    """When the file last changed, as far as settling goes: the later of mtime and ctime (ctime
    too: a file copied with its old mtime kept, by cp -p or rsync -t, is still new here). An
    mtime in the future was set, not written (touch -d, an archive, a skewed clock), and would
    keep the file settling until then: it is ignored for ctime, which only the kernel sets."""
    return f.ctime if f.mtime > now else max(f.mtime, f.ctime)


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
    if decision.verdict is Verdict.KEEP and not entry.is_link:
        times = [at for s in rules.selectors if (at := s.due(entry)) is not None]
        if rules.settle > 0 and entry.mtime > now:
            times.append(entry.mtime)
        return min(times) if times else None
    return None
