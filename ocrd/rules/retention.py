"""The pure retention planner: (inventory, rules, now) → a Plan that explains every decision."""

from __future__ import annotations

import fnmatch
import math
import re
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal, NamedTuple, Protocol, cast

from ocrd.config.durations import approx_duration, format_duration
from ocrd.config.schema import Retention
from ocrd.fs import private
from ocrd.fs.inventory import FileEntry, Inventory
from ocrd.rules.families import DEFAULT_TRUST, Families, Ranking, Versions
from ocrd.rules.trust import Trust

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
        every model file whatever its verdict so far (ocrd.rules.retention.versions): a rule that
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

    def due_among(
        self, files: Sequence[FileEntry], present: Versions
    ) -> Iterator[tuple[FileEntry, float]]:
        """Foresight (docs/foresight.md): each of ``files`` that this rule selects at some
        time, with the earliest wall-clock time from which it does, to the planner's own
        comparison (-inf: at any time), when nothing changes but time: no file arrives or
        changes, no rule changes. Once a rule selects a file it selects it from then on. A
        file not yielded is one time alone never makes it select. ``present`` as in
        select_among. A rule that answers nothing here is never foreseen to delete: the
        safe default only for a rule that time alone does not drive."""
        return iter(())

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

    def hold_among(
        self, files: Iterable[FileEntry], now: float, present: Versions
    ) -> Iterator[tuple[FileEntry, str]]:
        """What the planner asks: ``held`` among the kept ``files``, ``present`` as for
        select_among."""
        return self.held(files, now)

    def after_clock_jump(self, at: float) -> Selector:
        """This rule with no file ageing from before ``at``, the moment the wall clock jumped
        (ocrd.daemon.timejump): timestamps read against the old clock are not trusted."""
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

    def due_among(
        self, files: Sequence[FileEntry], present: Versions
    ) -> Iterator[tuple[FileEntry, float]]:
        for f, _ in self.select(files, 0.0):  # a name selects at any time
            yield f, -math.inf

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
      create, rename, link and chmod, and no copy tool can set it back (ocrd.fs.arrival raises it
      further for the files of a directory that was moved in).
    - ``not_before``: after a wall-clock jump (ocrd.daemon.timejump) no file ages from before the
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

    def due_among(
        self, files: Sequence[FileEntry], present: Versions
    ) -> Iterator[tuple[FileEntry, float]]:
        max_age, not_before = self.max_age, self.not_before
        by_mtime, arrival = self.age_by == "mtime", self.age_from == "arrival"
        for f in files:  # since(), inlined as in select()
            stamp = f.mtime if by_mtime else f.atime
            since = f.ctime if arrival and f.ctime > stamp else stamp
            yield f, first_after(max(since, not_before), max_age, strictly=True)

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


INTERRUPTED = "interrupted"  # the rule's name, which ocrd.ops.delete asks for its owner check
PROCESS_STARTED = time.time()  # private names older than this process are no live ocrd's own


@dataclass(frozen=True)
class InterruptedRule(Selector):
    """A file ocrd had checked and was deleting when it was killed. To delete exactly the
    checked file, ocrd renames it to a private name first (ocrd.fs.private), and deletes it
    under that name (ocrd.ops.delete); a SIGKILL leaves the private name behind. Such a file had
    passed every check already; it is planned again, and checked again, under this rule.

    Only a regular file whose name is in ocrd's own format is one: a link, or anything else
    named ``.ocrd-deleting-*``, is someone's imitation, kept and listed as such (directories
    are no file of the plan at all). That the file is ocrd's own uid's is asked where the
    file is opened (ocrd.ops.delete), as the planner sees no owners.

    A name given before this process started (by ctime, which the rename set) is a leftover;
    a younger one only once it is GRACE_S old: it may belong to an ocrd that is deleting right
    now (``ocrd clean`` beside the daemon), whose file waits under that name for microseconds,
    leased. Opening it to check would break that lease, and the other ocrd would rightly put
    it back."""

    started: float = PROCESS_STARTED
    name: str = INTERRUPTED

    GRACE_S = 60.0

    @staticmethod
    def _private(f: FileEntry) -> bool:
        return not f.is_link and private.parse(f.name) is not None

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

    def due_among(
        self, files: Sequence[FileEntry], present: Versions
    ) -> Iterator[tuple[FileEntry, float]]:
        for f in files:
            if self._private(f):
                if f.ctime < self.started:
                    yield f, -math.inf
                else:
                    yield f, first_after(f.ctime, self.GRACE_S, strictly=False)

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        for f in files:
            if self._private(f) and self._leftover(f, now):
                yield f, "ocrd was stopped while deleting it"

    def held(self, files: Iterable[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        for f in files:
            if self._private(f):
                if not self._leftover(f, now):
                    yield f, f"an ocrd is deleting it right now; a leftover after {self.GRACE_S:g}s"
            elif private.looks_private(f.name):
                yield f, "named like ocrd's private names, but not a name ocrd made: left alone"


@dataclass(frozen=True)
class KeepNewestRule(Selector):
    """Keeps the newest ``keep`` versions of each family (ocrd.rules.families) and deletes the rest.
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
        """Alone, ``files`` are all the versions there are, and root's files the trusted ones."""
        return self.select_among(files, now, Versions(versions(files), DEFAULT_TRUST, now))

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
                yield f, f"version {member.rank} of family '{member.family}', keep_newest is {keep}"

    def hold_among(
        self, files: Iterable[FileEntry], now: float, present: Versions
    ) -> Iterator[tuple[FileEntry, str]]:
        """The versions that are not among the newest ``keep`` by name and date, kept because
        some newer ones do not count against them (ocrd.rules.trust), each with which."""
        keep = self.keep
        if keep <= 0:
            return
        ranked = present.ranked(self.families)
        for f in files:
            member = ranked.get(id(f))
            if member is not None and member.rank <= keep <= member.newer:
                yield (
                    f,
                    (
                        f"version {member.rank} of family '{member.family}' as counted, "
                        f"keep_newest is {keep}: {ranked.why(f)}"
                    ),
                )

    def due_among(
        self, files: Sequence[FileEntry], present: Versions
    ) -> Iterator[tuple[FileEntry, float]]:
        """A file past ``keep`` is due at any time (with no arrival its rank can only fall
        as older versions go); any other once enough of the newer versions that do not count
        against it yet come to count (ocrd.rules.trust: they settle, their date comes), or never."""
        keep = self.keep
        if keep <= 0:
            return
        ranked = present.ranked(self.families)
        for f in files:
            member = ranked.get(id(f))
            if member is None:
                continue
            if member.rank > keep:
                yield f, -math.inf
            elif member.newer >= keep and (at := ranked.counted_from(f, keep)) is not None:
                yield f, at


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
    present = Versions(versions(files) if not rules.per_file else [], rules.trust, now)
    for selector in rules.selectors:
        chosen = False
        for f, reason in selector.select_among([files[i] for i in undecided], now, present):
            decided[position[id(f)]] = Decision(f, Verdict.DELETE, selector.name, reason)
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
    for i in undecided:
        f = files[i]
        decided[i] = Decision(f, Verdict.KEEP, None, held.get(id(f), "no rule applies"))
    return Plan(cast(tuple[Decision, ...], tuple(decided)), now)


def versions(files: Iterable[FileEntry]) -> list[FileEntry]:
    """What a ranking rule and the floor count as versions: the model files, not symlinks and
    not the leftovers of an interrupted deletion, nor anything named like them (a private name
    is no model's, ocrd.fs.private)."""
    return [f for f in files if not f.is_link and not private.looks_private(f.name)]


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


@dataclass(frozen=True)
class Refusal:
    """Deletions by age or rank that were refused: with them, no model file that counts for
    them (ocrd.rules.trust) would be left under model_dir. ``paths``: those deletions."""

    would_delete: int
    would_free: int
    of_files: int
    paths: frozenset[bytes] = field(default=frozenset(), repr=False, compare=False)

    def fields(self) -> dict[str, object]:
        return {
            "reason": "every_model_file",
            "would_delete": self.would_delete,
            "would_free": self.would_free,
            "of_files": self.of_files,
            "detail": f"the plan would leave no model file under model_dir that counts for "
            f"{self.would_delete} of its deletions by age or rank (of {self.of_files} model "
            "file(s)): they are kept; a file counts if it is settled and owned by root, "
            "model_dir's owner, a retention.trusted_owners user or the deleted file's owner",
            "action": "check the rules with 'ocrd list'; to allow it, set "
            "retention.allow_delete_all = true",
        }


def refuse_all(
    deletions: Sequence[Decision],
    model_files: int,
    rules: Rules,
    *,
    allow: bool,
    stays: Mapping[int, int],
) -> Refusal | None:
    """A Refusal of the deletions by age or rank among ``deletions`` for which no model file
    that stays counts: ``stays`` holds, per owner uid, the model files under model_dir that
    neither these deletions nor any already due remove and that may vouch (Trust.doubt:
    settled, not dated ahead; staying() counts them). A file of a trusted owner counts for
    every deletion, any other file for its own owner's. ``model_files`` counts the regular
    files under model_dir, all of them, also when only a batch of them was planned (the
    daemon plans what changed). A file marked for deletion by its name (Selector.by_name: a
    prefix, an interrupted deletion) is never refused: whoever named it so asked for exactly
    that file's deletion; and without one deletion by age or rank there is nothing to
    refuse."""
    named = rules.by_name
    chosen = [d for d in deletions if d.rule not in named]
    if allow or not chosen:
        return None
    if any(stays.get(uid, 0) > 0 for uid in rules.trust.owners):
        return None
    lone = [d for d in chosen if stays.get(d.entry.uid, 0) <= 0]
    if not lone:
        return None
    return Refusal(
        len(lone),
        sum(d.entry.size for d in lone),
        model_files,
        frozenset(d.entry.path for d in lone),
    )


def staying(decisions: Iterable[Decision], rules: Rules, now: float) -> dict[int, int]:
    """Per owner uid, the model files a plan leaves that may vouch for a deletion: what
    refuse_all takes as ``stays`` for a plan of every model file."""
    doubt = rules.trust.doubt
    stays: dict[int, int] = {}
    for d in decisions:
        f = d.entry
        if d.verdict is not Verdict.DELETE and not f.is_link and doubt(f, now) is None:
            stays[f.uid] = stays.get(f.uid, 0) + 1
    return stays


def left_after(owners: Mapping[int, int], gone: Iterable[FileEntry]) -> dict[int, int]:
    """``owners`` (model files per uid, as the daemon's index counts them) less ``gone``."""
    left = dict(owners)
    for f in gone:
        if not f.is_link and f.uid in left:
            left[f.uid] -= 1
    return left


def guarded(
    the_plan: Plan, model_files: int, rules: Rules, *, allow: bool, stays: Mapping[int, int]
) -> tuple[Plan, Refusal | None]:
    """``the_plan`` with the delete-all refusal applied (refuse_all, then refused), and the
    refusal, if any: how every whole plan, the command line's and the daemon's, is guarded."""
    refusal = refuse_all(the_plan.deletions, model_files, rules, allow=allow, stays=stays)
    return (the_plan if refusal is None else refused(the_plan, refusal)), refusal


def refused(the_plan: Plan, refusal: Refusal) -> Plan:
    """``the_plan`` with the refused deletions kept instead, naming the refusal: what
    ``ocrd list`` shows and what nothing deletes. Deletions by name still go."""
    why = "no model file that counts for it would be left (retention.allow_delete_all)"
    paths = refusal.paths
    return replace(
        the_plan,
        decisions=tuple(
            Decision(d.entry, Verdict.KEEP, "allow_delete_all", f"{d.rule}: {d.reason}; {why}")
            if d.verdict is Verdict.DELETE and d.entry.path in paths
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


# -- foresight: when each file first comes due (docs/foresight.md) ----------------------------


def first_after(start: float, span: float, *, strictly: bool) -> float:
    """The earliest wall-clock time ``t`` with ``t - start > span`` (``strictly``) or
    ``t - start >= span``, to the last bit of the float, as the planner compares: a pass at
    that time decides as foreseen, and a pass a moment earlier does not."""
    t = start + span  # within a step or two of the answer: the sum rounds
    if not math.isfinite(t):
        return t
    up, down = math.inf, -math.inf
    if strictly:
        while t - start <= span:
            t = math.nextafter(t, up)
        while (below := math.nextafter(t, down)) - start > span:
            t = below
    else:
        while t - start < span:
            t = math.nextafter(t, up)
        while (below := math.nextafter(t, down)) - start >= span:
            t = below
    return t


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
