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
    as per-file ones. It yields the files it would delete, each with a human reason.

    Besides choosing, a rule answers what the daemon asks of it, so that the shell never needs
    to know which rules it holds: adding a rule touches the planner and the config schema only.
    A rule class that subclasses Selector inherits the answers below, each the safe side for a
    rule that does not say otherwise (planned with the whole inventory, never due by time)."""

    @property
    def name(self) -> str: ...

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]: ...

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

    @property
    def horizon(self) -> float:
        """How long after its arrival a file's verdict under this rule can still depend on
        when it arrived (ocrd.arrival keeps sightings of directories moved in that long)."""
        return 0.0

    def held(self, files: Iterable[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        """Files this rule keeps although a reader would expect it to delete them, each with
        why: the planner gives that as the reason of their "keep"."""
        return iter(())

    def after_clock_jump(self, at: float) -> Selector:
        """This rule with no file ageing from before ``at``, the moment the wall clock jumped
        (ocrd.timejump): timestamps read against the old clock are not trusted."""
        return self


@dataclass(frozen=True)
class PrefixRule(Selector):
    prefixes: tuple[str, ...]
    name: str = "prefix"

    @property
    def per_file(self) -> bool:
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

    @property
    def horizon(self) -> float:
        return self.max_age

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

    def _leftover(self, f: FileEntry, now: float) -> bool:
        return f.ctime < self.started or now - f.ctime >= self.GRACE_S

    @property
    def per_file(self) -> bool:
        return True

    def due(self, entry: FileEntry) -> float | None:
        if not INTERRUPTED.fullmatch(entry.path.rpartition(b"/")[2]):
            return None
        return entry.ctime if entry.ctime < self.started else entry.ctime + self.GRACE_S

    @property
    def due_slack(self) -> float | None:
        return 1.0

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        for f in files:
            if INTERRUPTED.fullmatch(f.path.rpartition(b"/")[2]) and self._leftover(f, now):
                yield f, "ocrd was stopped while deleting it"

    def held(self, files: Iterable[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        for f in files:
            if INTERRUPTED.fullmatch(f.path.rpartition(b"/")[2]) and (now - f.ctime < self.GRACE_S):
                yield f, (f"an ocrd is deleting it right now; a leftover after {self.GRACE_S:g}s")


@dataclass(frozen=True)
class Rules:
    """Everything the planner needs, built once from config."""

    selectors: tuple[Selector, ...]
    whitelist: tuple[str, ...] = ()
    settle: float = 0.0
    _patterns: tuple[tuple[str, str, bool], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # (as written, in NFC, holds "/"): normalised once, not per file.
        patterns = tuple((p, nfc(p), "/" in p) for p in self.whitelist)
        object.__setattr__(self, "_patterns", patterns)

    @property
    def per_file(self) -> bool:
        """True when every rule judges each file alone, so planning a subset of the inventory
        gives the same verdicts as planning all of it (the daemon relies on this to plan only
        what changed; a whole-inventory rule makes it plan everything)."""
        return all(s.per_file for s in self.selectors)

    @property
    def horizon(self) -> float:
        """How long after its arrival a file's verdict can still depend on when it arrived:
        the longest of the rules' horizons (max_age), or settle if longer."""
        return max([self.settle, *(s.horizon for s in self.selectors)])

    def not_before(self, at: float) -> Rules:
        """These rules with no file ageing from before ``at`` (a clock jump, ocrd.timejump)."""
        return replace(self, selectors=tuple(s.after_clock_jump(at) for s in self.selectors))

    @property
    def due_slack(self) -> float:
        """How late a kept file may be looked at after a rule's due time: the finest of the
        rules' slacks, 1 s if no rule sets a time."""
        slacks = [x for s in self.selectors if (x := s.due_slack) is not None]
        return min(slacks) if slacks else 1.0

    @classmethod
    def from_config(cls, retention: Retention, settle: float) -> Rules:
        selectors: list[Selector] = [InterruptedRule()]
        if retention.prefixes:
            selectors.append(PrefixRule(retention.prefixes))
        if retention.max_age is not None:
            selectors.append(MaxAgeRule(retention.max_age, retention.age_by, retention.age_from))
        return cls(tuple(selectors), retention.whitelist, settle)

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
    for selector in rules.selectors:
        chosen = False
        for f, reason in selector.select([files[i] for i in undecided], now):
            decided[position[id(f)]] = Decision(f, Verdict.DELETE, selector.name, reason)
            chosen = True
        if chosen:
            undecided = [i for i in undecided if decided[i] is None]
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
    if decision.verdict is Verdict.KEEP and not entry.is_link:
        times = [at for s in rules.selectors if (at := s.due(entry)) is not None]
        if rules.settle > 0 and entry.mtime > now:
            times.append(entry.mtime)
        return min(times) if times else None
    return None
