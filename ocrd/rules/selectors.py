"""The rules that select files for deletion: by name (prefix), by age (max_age), by rank in a
family (keep_newest); each answers for its own timing."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Literal, Protocol

from ocrd.config.durations import approx_duration, format_duration
from ocrd.fs import private
from ocrd.fs.inventory import FileEntry
from ocrd.rules.decision import DAY, nfc
from ocrd.rules.families import DEFAULT_TRUST, Families, Ranking, Versions


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
        every model file whatever its verdict so far (versions, below): a rule that
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


class ByName(Selector):
    """A rule that selects a file by its name alone: each file judged alone, marked by name."""

    @property
    def per_file(self) -> bool:
        return True

    @property
    def by_name(self) -> bool:
        return True


@dataclass(frozen=True)
class PrefixRule(ByName):
    prefixes: tuple[str, ...]
    name: str = "prefix"

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
                for p in encoded:
                    if name.startswith(p):
                        yield f, reasons[p]
                        break


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

    def _ranked(self, present: Versions) -> Ranking | None:
        """The families ranked, or None when the rule is off (``keep`` 0, as in the config:
        never "keep none")."""
        return present.ranked(self.families) if self.keep > 0 else None

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        """Alone, ``files`` are all the versions there are, and root's files the trusted ones."""
        return self.select_among(files, now, Versions(versions(files), DEFAULT_TRUST, now))

    def select_among(
        self, files: Sequence[FileEntry], now: float, present: Versions
    ) -> Iterator[tuple[FileEntry, str]]:
        if (ranked := self._ranked(present)) is None:
            return
        keep = self.keep
        for f in files:
            member = ranked.get(id(f))
            if member is not None and member.rank > keep:
                yield f, f"version {member.rank} of family '{member.family}', keep_newest is {keep}"

    def hold_among(
        self, files: Iterable[FileEntry], now: float, present: Versions
    ) -> Iterator[tuple[FileEntry, str]]:
        """The versions that are not among the newest ``keep`` by name and date, kept because
        some newer ones do not count against them (ocrd.rules.trust), each with which."""
        if (ranked := self._ranked(present)) is None:
            return
        keep = self.keep
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
        if (ranked := self._ranked(present)) is None:
            return
        keep = self.keep
        for f in files:
            member = ranked.get(id(f))
            if member is None:
                continue
            if member.rank > keep:
                yield f, -math.inf
            elif member.newer >= keep and (at := ranked.counted_from(f, keep)) is not None:
                yield f, at


def versions(files: Iterable[FileEntry]) -> list[FileEntry]:
    """What a ranking rule and the floor count as versions: the model files, not symlinks and
    not the leftovers of an interrupted deletion, nor anything named like them (a private name
    is no model's, ocrd.fs.private)."""
    files = files if isinstance(files, Sequence) else list(files)
    if not _may_be_private(files):
        return [f for f in files if not f.is_link]
    return [f for f in files if not f.is_link and not private.looks_private(f.name)]


def named_private(files: Iterable[FileEntry]) -> list[FileEntry]:
    """The files among ``files`` whose name looks private (ocrd.fs.private.looks_private).
    The planner asks this of every file of every pass, and there are almost never any."""
    files = files if isinstance(files, Sequence) else list(files)
    if not _may_be_private(files):
        return []
    return [f for f in files if private.looks_private(f.name)]


_path = attrgetter("path")


def _may_be_private(files: Sequence[FileEntry]) -> bool:
    """False only if no name among ``files`` looks private: a name that starts with the
    private prefix puts it in its path, and every path is in their join. One search in C over
    the join costs a tenth of cutting each name out of its path in Python (100k files: 9 against
    40 ms); a match anywhere (a file named so, or a prefix split across two paths) sends the
    caller to the exact test of each name."""
    return private.PREFIX in b"/".join(map(_path, files))


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
