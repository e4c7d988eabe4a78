"""ocrd/rules/retention.py: the pure planner, on plain FileEntry values (no disk)."""

from __future__ import annotations

import fnmatch
import glob
import os
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ocrd.base.clock import FakeClock
from ocrd.config.schema import Retention
from ocrd.fs.inventory import FileEntry, Inventory
from ocrd.rules.decision import Plan, Verdict
from ocrd.rules.foresight import coming_due
from ocrd.rules.leftovers import InterruptedRule
from ocrd.rules.retention import Rules, plan, revisit_at
from ocrd.rules.selectors import MaxAgeRule, PrefixRule, Selector

NOW = 1_700_000_000.0
DAY = 86400.0

_inodes = iter(range(1000, 10**9))


def entry(
    path: bytes,
    *,
    age: float = 365 * DAY,
    atime_age: float | None = None,
    ctime_age: float | None = None,
    size: int = 10,
    is_link: bool = False,
) -> FileEntry:
    """A file whose mtime is ``age`` seconds before NOW (atime and ctime the same unless given)."""
    mtime = NOW - age
    atime = NOW - (age if atime_age is None else atime_age)
    ctime = NOW - (age if ctime_age is None else ctime_age)
    return FileEntry(path, size, mtime, atime, ctime, 2049, next(_inodes), is_link)


def rules(
    *,
    prefixes: Sequence[str] = (),
    max_age: float | None = None,
    age_by: Literal["mtime", "atime"] = "mtime",
    age_from: Literal["arrival", "timestamp"] = "arrival",
    not_before: float = float("-inf"),
    whitelist: Sequence[str] = (),
    settle: float = 0.0,
) -> Rules:
    selectors: list[PrefixRule | MaxAgeRule] = []
    if prefixes:
        selectors.append(PrefixRule(tuple(prefixes)))
    if max_age is not None:
        selectors.append(MaxAgeRule(max_age, age_by, age_from, not_before))
    return Rules(tuple(selectors), tuple(whitelist), settle)


def verdicts(p: Plan) -> dict[bytes, tuple[Verdict, str | None]]:
    return {d.entry.path: (d.verdict, d.rule) for d in p.decisions}


# --- unit tests ------------------------------------------------------------------------------


def test_prefix_matches_the_file_name_at_any_depth_not_the_directory() -> None:
    files = [entry(b"old_a.bin"), entry(b"sub/old_b.bin"), entry(b"old_dir/model.bin")]
    got = verdicts(plan(files, rules(prefixes=["old_"]), NOW))
    assert got == {
        b"old_a.bin": (Verdict.DELETE, "prefix"),
        b"sub/old_b.bin": (Verdict.DELETE, "prefix"),
        b"old_dir/model.bin": (Verdict.KEEP, None),
    }


def test_prefix_works_on_names_that_are_not_utf8() -> None:
    files = [entry(b"old_\xff\xfe.bin"), entry(b"\xffold_.bin")]
    got = verdicts(plan(files, rules(prefixes=["old_"]), NOW))
    assert got[b"old_\xff\xfe.bin"] == (Verdict.DELETE, "prefix")
    assert got[b"\xffold_.bin"] == (Verdict.KEEP, None)


@pytest.mark.parametrize(
    ("age_by", "mtime_age", "atime_age", "deleted"),
    [
        ("mtime", 40 * DAY, 1 * DAY, True),
        ("atime", 40 * DAY, 1 * DAY, False),
        ("mtime", 1 * DAY, 40 * DAY, False),
        ("atime", 1 * DAY, 40 * DAY, True),
    ],
)
def test_max_age_uses_the_configured_timestamp(
    age_by: Literal["mtime", "atime"], mtime_age: float, atime_age: float, deleted: bool
) -> None:
    f = entry(b"m.bin", age=mtime_age, atime_age=atime_age, ctime_age=mtime_age)
    r = rules(max_age=30 * DAY, age_by=age_by, age_from="timestamp")
    (d,) = plan([f], r, NOW).decisions
    assert (d.verdict, d.rule) == ((Verdict.DELETE, "max_age") if deleted else (Verdict.KEEP, None))
    if deleted:
        assert d.reason == f"{age_by} age 40d > 30d"


def test_arrival_age_counts_from_the_later_of_timestamp_and_ctime() -> None:
    """A model extracted or copied with its vendor's mtime (60 days) that arrived 3 days ago has
    been in model_dir 3 days: kept under age_from = "arrival", deleted under "timestamp"."""
    f = entry(b"m.bin", age=60 * DAY, ctime_age=3 * DAY)
    (d,) = plan([f], rules(max_age=30 * DAY), NOW).decisions
    assert (d.verdict, d.rule) == (Verdict.KEEP, None)
    assert d.reason.startswith("in model_dir 3d (arrived 2023-11-11T")
    assert d.reason.endswith(") <= 30d, mtime age 60d")
    (d,) = plan([f], rules(max_age=30 * DAY, age_from="timestamp"), NOW).decisions
    assert (d.verdict, d.rule, d.reason) == (Verdict.DELETE, "max_age", "mtime age 60d > 30d")
    # Once it has been there 31 days, it goes, and the reason says both ages.
    (d,) = plan([f], rules(max_age=30 * DAY), NOW + 28 * DAY).decisions
    assert (d.verdict, d.rule) == (Verdict.DELETE, "max_age")
    assert d.reason.startswith("in model_dir 31d (arrived ")
    assert d.reason.endswith(") > 30d, mtime age 88d")
    assert revisit_at(
        plan([f], rules(max_age=30 * DAY), NOW).decisions[0], rules(max_age=30 * DAY), NOW
    ) == (f.ctime + 30 * DAY + 0.001)


def test_a_file_that_has_really_been_there_ages_by_its_timestamp() -> None:
    f = entry(b"m.bin", age=40 * DAY)  # ctime 40 days ago too
    (d,) = plan([f], rules(max_age=30 * DAY), NOW).decisions
    assert (d.verdict, d.rule, d.reason) == (Verdict.DELETE, "max_age", "mtime age 40d > 30d")


def test_after_a_clock_jump_nothing_ages_from_before_it() -> None:
    """Rules.not_before: a file present at a jump is deleted by max_age only max_age after it."""
    f = entry(b"m.bin", age=40 * DAY)
    r = rules(max_age=30 * DAY).not_before(NOW - 2 * DAY)
    (d,) = plan([f], r, NOW).decisions
    assert (d.verdict, d.rule) == (Verdict.KEEP, None)
    assert "counted from its jump" in d.reason
    assert revisit_at(d, r, NOW) == NOW - 2 * DAY + 30 * DAY + 0.001
    (d,) = plan([f], r, NOW + 29 * DAY).decisions
    assert (d.verdict, d.rule) == (Verdict.DELETE, "max_age")
    # It only ever moves forward, and leaves other rules alone.
    r2 = rules(prefixes=["old_"], max_age=DAY).not_before(NOW).not_before(NOW - DAY)
    assert [s.not_before for s in r2.selectors if isinstance(s, MaxAgeRule)] == [NOW]
    assert verdicts(plan([entry(b"old_x", age=DAY / 2)], r2, NOW)) == {
        b"old_x": (Verdict.DELETE, "prefix")
    }


def _entry_at(path: bytes, mtime: float, ctime: float | None = None) -> FileEntry:
    return FileEntry(path, 1, mtime, mtime, mtime if ctime is None else ctime, 1, 1, False)


def test_settling_file_is_revisited_when_settle_ends_then_deleted() -> None:
    clock = FakeClock()
    rules = Rules.from_config(Retention(prefixes=["old_"]), settle=5)
    entry = _entry_at(b"old_x", clock.time() - 1)
    (d,) = plan([entry], rules, clock.time()).decisions
    assert d.verdict is Verdict.SETTLING
    at = revisit_at(d, rules, clock.time())
    assert at == entry.ctime + 5
    clock.advance(at - clock.time())
    (d,) = plan([entry], rules, clock.time()).decisions
    assert d.verdict is Verdict.DELETE


def test_kept_file_is_revisited_when_it_crosses_max_age() -> None:
    clock = FakeClock()
    rules = Rules.from_config(Retention.model_validate({"max_age": "1h"}), settle=0)
    entry = _entry_at(b"model.bin", clock.time() - 600)
    (d,) = plan([entry], rules, clock.time()).decisions
    assert d.verdict is Verdict.KEEP
    at = revisit_at(d, rules, clock.time())
    assert at is not None
    assert at == pytest.approx(entry.mtime + 3600, abs=0.01)
    clock.advance(at - clock.time() - 0.01)
    (d,) = plan([entry], rules, clock.time()).decisions
    assert d.verdict is Verdict.KEEP
    clock.advance(0.01)
    (d,) = plan([entry], rules, clock.time()).decisions
    assert (d.verdict, d.rule) == (Verdict.DELETE, "max_age")


@dataclass(frozen=True)
class LargestRule(Selector):
    """A rule the shell has never heard of: deletes the largest file once the total passes a
    budget (a whole-inventory rule), and says nothing else about itself."""

    budget: int
    name: str = "budget"

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        if sum(f.size for f in files) > self.budget:
            yield max(files, key=lambda f: f.size), "largest, over budget"


@dataclass(frozen=True)
class ExpiresRule(Selector):
    """A per-file rule that sets a time: a file goes at ``at``, whatever its age."""

    at: float
    name: str = "expires"

    @property
    def per_file(self) -> bool:
        return True

    def due(self, entry: FileEntry) -> float | None:
        return self.at

    @property
    def due_slack(self) -> float | None:
        return 7.0

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        for f in files:
            if now >= self.at:
                yield f, "expired"


@dataclass(frozen=True)
class ShuffledRule(Selector):
    """Selects the files named in ``picks``, in the order of ``picks``, not the order given."""

    picks: tuple[bytes, ...]
    name: str = "shuffled"

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        by_path = {f.path: f for f in files}
        for path in self.picks:
            if path in by_path:
                yield by_path[path], f"picked {path!r}"


@given(st.permutations([b"a", b"b", b"c", b"d", b"e", b"f"]), st.integers(0, 6))
def test_a_rule_may_yield_its_files_in_any_order(picks: list[bytes], n: int) -> None:
    """The planner finds a selected file again by walking on in the order given, and by
    identity where a rule yields out of that order: each decision lands on its own file."""
    files = [entry(p) for p in (b"a", b"b", b"c", b"d", b"e", b"f")]
    chosen = tuple(picks[:n])
    p = plan(files, Rules((PrefixRule(("c",)), ShuffledRule(chosen))), NOW)
    assert [d.entry for d in p.decisions] == files
    for d in p.decisions:
        path = d.entry.path
        if path == b"c":
            assert (d.verdict, d.rule) == (Verdict.DELETE, "prefix")
        elif path in chosen:
            assert (d.verdict, d.rule, d.reason) == (Verdict.DELETE, "shuffled", f"picked {path!r}")
        else:
            assert (d.verdict, d.rule) == (Verdict.KEEP, None)


def test_a_rule_answers_for_itself_what_the_shell_asks() -> None:
    """The rule protocol: per_file, due, due_slack and after_clock_jump come from the
    rules themselves, so a new rule class is all a new rule needs; what a rule leaves unsaid
    is the safe side (planned with the whole inventory, never due by time alone)."""
    big, small = entry(b"big.bin", size=100), entry(b"small.bin", size=10)
    budget = Rules((PrefixRule(("old_",)), LargestRule(50)))
    assert not budget.per_file  # the daemon plans the whole index for it
    assert budget.due_slack == 1.0
    assert budget.not_before(NOW).selectors == budget.selectors
    decided = {d.entry.path: d for d in plan([big, small], budget, NOW).decisions}
    assert (decided[b"big.bin"].verdict, decided[b"big.bin"].rule) == (Verdict.DELETE, "budget")
    assert revisit_at(decided[b"small.bin"], budget, NOW) is None

    expires = Rules((ExpiresRule(NOW + 60), MaxAgeRule(30 * DAY, "mtime")))
    assert expires.per_file
    assert expires.due_slack == min(7.0, 30 * DAY / 10_000)
    (d,) = plan([entry(b"m.bin", age=DAY)], expires, NOW).decisions
    assert d.verdict is Verdict.KEEP
    assert revisit_at(d, expires, NOW) == NOW + 60  # the earliest rule's time
    (d,) = plan([entry(b"m.bin", age=DAY)], expires, NOW + 60).decisions
    assert (d.verdict, d.rule) == (Verdict.DELETE, "expires")
    assert [rules(prefixes=["x"]).per_file, Rules(()).per_file] == [True, True]


def test_max_age_is_strictly_older_than() -> None:
    files = [entry(b"exact.bin", age=30 * DAY), entry(b"older.bin", age=30 * DAY + 1)]
    got = verdicts(plan(files, rules(max_age=30 * DAY), NOW))
    assert got == {b"exact.bin": (Verdict.KEEP, None), b"older.bin": (Verdict.DELETE, "max_age")}


@pytest.mark.parametrize(
    ("pattern", "protected", "unprotected"),
    [
        # without "/": the file name, at any depth
        ("a.bin", [b"a.bin", b"x/y/a.bin"], [b"b.bin", b"a.bin/c.bin"]),
        ("*.keep", [b"m.keep", b"d/m.keep"], [b"m.keep.bin", b"keep"]),
        ("old_?.bin", [b"old_1.bin", b"d/old_2.bin"], [b"old_12.bin"]),
        # with "/": the path relative to model_dir
        ("keep/*.bin", [b"keep/a.bin"], [b"other/a.bin", b"a.bin", b"x/keep/a.bin"]),
        ("sub/a.bin", [b"sub/a.bin"], [b"a.bin", b"other/sub/a.bin"]),
        ("*/a.bin", [b"d/a.bin", b"d/e/a.bin"], [b"a.bin"]),
        # non-UTF-8 bytes still match through the wildcard
        ("*.bin", [b"\xff.bin", b"d\xfe/\n.bin"], [b"\xff.bi"]),
    ],
)
def test_whitelist_by_name_or_by_relative_path(
    pattern: str, protected: list[bytes], unprotected: list[bytes]
) -> None:
    files = [entry(p) for p in protected + unprotected]
    got = verdicts(plan(files, rules(max_age=DAY, whitelist=[pattern]), NOW))
    for p in protected:
        assert got[p] == (Verdict.PROTECTED, "whitelist"), p
    for p in unprotected:
        assert got[p] == (Verdict.DELETE, "max_age"), p


def test_whitelist_wins_over_every_rule() -> None:
    f = entry(b"old_en.bin", age=400 * DAY)
    (d,) = plan([f], rules(prefixes=["old_"], max_age=DAY, whitelist=["old_en.bin"]), NOW).decisions
    assert (d.verdict, d.rule, d.reason) == (Verdict.PROTECTED, "whitelist", "matches 'old_en.bin'")


def test_symlinks_are_kept_with_no_rule() -> None:
    link = entry(b"old_link", age=400 * DAY, is_link=True)
    (d,) = plan([link], rules(prefixes=["old_"], max_age=DAY, whitelist=["old_*"]), NOW).decisions
    assert (d.verdict, d.rule) == (Verdict.KEEP, None)


@pytest.mark.parametrize(
    ("mtime_age", "ctime_age", "verdict"),
    [
        (2.0, 2.0, Verdict.SETTLING),  # just written
        (400 * DAY, 2.0, Verdict.SETTLING),  # copied keeping its old mtime (cp -p, rsync -t)
        (5.0, 5.0, Verdict.DELETE),  # unchanged for exactly settle: rules apply
        (-60.0, -60.0, Verdict.SETTLING),  # mtime and ctime in the future: our clock is behind
        (-100 * 365 * DAY, 2.0, Verdict.SETTLING),  # mtime set to 2100 just now (touch -d)
        (-100 * 365 * DAY, 5.0, Verdict.DELETE),  # ... and left alone for settle: ctime counts
    ],
)
def test_settling(mtime_age: float, ctime_age: float, verdict: Verdict) -> None:
    """A file changed within settle waits; one whose clock runs ahead waits until it is due."""
    f = entry(b"old_x.bin", age=mtime_age, ctime_age=ctime_age)
    (d,) = plan([f], rules(prefixes=["old_"], settle=5.0), NOW).decisions
    assert d.verdict is verdict
    assert d.rule == ("prefix" if verdict is Verdict.DELETE else None)


def test_settle_zero_never_settles_even_a_file_from_the_future() -> None:
    f = entry(b"old_x.bin", age=-60.0, ctime_age=-60.0)
    (d,) = plan([f], rules(prefixes=["old_"], settle=0.0), NOW).decisions
    assert (d.verdict, d.rule) == (Verdict.DELETE, "prefix")


def test_a_future_mtime_settles_from_ctime_says_so_and_is_revisited_then() -> None:
    year_2100 = 4_102_444_800.0
    f = entry(b"old_x.bin", age=NOW - year_2100, ctime_age=2.0)
    r = rules(prefixes=["old_"], settle=5.0)
    (d,) = plan([f], r, NOW).decisions
    assert d.verdict is Verdict.SETTLING
    assert d.reason == "mtime in the future; status changed 2.0s ago, settle is 5s"
    assert revisit_at(d, r, NOW) == NOW + 3.0
    (later,) = plan([f], r, NOW + 3.0).decisions
    assert (later.verdict, later.rule) == (Verdict.DELETE, "prefix")


def test_a_kept_file_with_a_future_mtime_is_revisited_when_the_clock_gets_there() -> None:
    f = entry(b"model.bin", age=-DAY, ctime_age=DAY)
    r = rules(max_age=30 * DAY, settle=5.0)
    (d,) = plan([f], r, NOW).decisions
    assert d.verdict is Verdict.KEEP  # age -1d is not over 30d: a future age never counts
    assert revisit_at(d, r, NOW) == f.mtime
    (then,) = plan([f], r, f.mtime).decisions
    assert then.verdict is Verdict.SETTLING  # reaching the mtime is the change it announced


def test_timestamps_all_in_the_future_settle_until_our_clock_catches_up() -> None:
    f = entry(b"old_x.bin", age=-60.0, ctime_age=-60.0)
    (d,) = plan([f], rules(prefixes=["old_"], settle=5.0), NOW).decisions
    assert d.reason == "changed 60.0s in the future by our clock, settle is 5s"
    assert revisit_at(d, rules(settle=5.0), NOW) == NOW + 65.0


NFC_NAME = "caf\u00e9.bin"  # é as one code point
NFD_NAME = "cafe\u0301.bin"  # e and a combining acute accent, as macOS and some archives store it


@pytest.mark.parametrize("pattern_form", ["NFC", "NFD"])
@pytest.mark.parametrize("name_form", ["NFC", "NFD"])
@pytest.mark.parametrize("template", ["{}", "sub/{}", "*{}", "caf?.bin"])
def test_whitelist_matches_a_name_in_either_normal_form(
    pattern_form: Literal["NFC", "NFD"], name_form: Literal["NFC", "NFD"], template: str
) -> None:
    name = unicodedata.normalize(name_form, NFC_NAME)
    pattern = unicodedata.normalize(pattern_form, template.format(NFC_NAME))
    f = entry(("sub/" + name).encode() if "/" in template else name.encode())
    (d,) = plan([f], rules(max_age=DAY, whitelist=[pattern]), NOW).decisions
    assert (d.verdict, d.reason) == (Verdict.PROTECTED, f"matches {pattern!r}")


@pytest.mark.parametrize("prefix", ["old_caf\u00e9", "old_cafe\u0301"])
def test_prefix_matches_a_name_in_either_normal_form(prefix: str) -> None:
    files = [entry(b"old_" + NFC_NAME.encode()), entry(b"old_" + NFD_NAME.encode())]
    files.append(entry(b"old_cafe.bin"))  # not the same name in any form
    got = verdicts(plan(files, rules(prefixes=[prefix]), NOW))
    assert list(got.values()) == [(Verdict.DELETE, "prefix")] * 2 + [(Verdict.KEEP, None)]


def test_prefix_and_whitelist_compare_characters_not_bytes() -> None:
    """ "cafe" is a byte prefix of the decomposed "café", but not the same letters: kept."""
    f = entry(b"sub/" + NFD_NAME.encode())
    (d,) = plan([f], rules(prefixes=["cafe"], whitelist=["sub/cafe*"]), NOW).decisions
    assert (d.verdict, d.rule) == (Verdict.KEEP, None)


def test_prefix_is_named_before_max_age_when_both_apply() -> None:
    f = entry(b"old_x.bin", age=400 * DAY)
    (d,) = plan([f], rules(prefixes=["old_"], max_age=DAY), NOW).decisions
    assert (d.verdict, d.rule, d.reason) == (Verdict.DELETE, "prefix", "name starts with 'old_'")


def test_no_rules_keeps_everything_in_input_order() -> None:
    files = [entry(b"z"), entry(b"a"), entry(b"m/old_x")]
    p = plan(Inventory(tuple(files)), rules(), NOW)
    assert [d.entry for d in p.decisions] == files
    assert all((d.verdict, d.rule) == (Verdict.KEEP, None) for d in p.decisions)
    assert p.deletions == ()
    assert p.now == NOW


def test_rules_from_config() -> None:
    retention = Retention.model_validate(
        {"prefixes": ["old_"], "max_age": "30d", "age_by": "atime", "whitelist": ["*.keep"]}
    )
    r = Rules.from_config(retention, settle=5.0)
    assert r.selectors == (
        InterruptedRule(),
        PrefixRule(("old_",)),
        MaxAgeRule(30 * DAY, "atime"),
    )
    assert (r.whitelist, r.settle) == (("*.keep",), 5.0)
    assert Rules.from_config(Retention(), settle=0.0).selectors == (InterruptedRule(),)


# Private names as ocrd.fs.private makes them: boot id, PID, this process's token, a fresh token.
OURS = b".ocrd-deleting-cce882604d4f-%d-0a1b2c3d-%08x"


def test_a_deletion_interrupted_between_rename_and_unlink_is_finished_later() -> None:
    grace = InterruptedRule.GRACE_S
    files = [
        entry(OURS % (123, 4), ctime_age=grace),
        entry(b"sub/" + OURS % (9, 0), ctime_age=DAY),
        entry(b"a" + OURS % (1, 2)),
        entry(OURS % (77, 1), ctime_age=5),  # another ocrd's, in hand now
        entry(OURS % (78, 1), ctime_age=20),  # from before we started: a leftover
    ]
    rules = Rules((InterruptedRule(started=NOW - 10),))
    p = plan(files, rules, NOW)
    assert {d.entry.path: d.rule for d in p.deletions} == {
        OURS % (123, 4): "interrupted",
        b"sub/" + OURS % (9, 0): "interrupted",
        OURS % (78, 1): "interrupted",
    }
    young = next(d for d in p.decisions if d.entry.path == OURS % (77, 1))
    assert "deleting it right now" in young.reason
    assert revisit_at(young, rules, NOW) == NOW - 5 + grace  # due once the grace is over


@pytest.mark.parametrize(
    "name",
    [
        b".ocrd-deleting-123-4",  # the PID alone: any container's PID 1 has it too
        b".ocrd-deleting-x",
        b".ocrd-deleting-cce882604d4f-1-0a1b2c3d",
        b".ocrd-deleting-cce882604d4f-1-0a1b2c3d-0000000g",
        (OURS % (1, 2)) + b"-3",
        b".ocrd-deleting-CCE882604D4F-1-0A1B2C3D-00000002",
    ],
)
def test_a_name_like_a_private_one_but_not_in_its_format_is_left_alone(name: bytes) -> None:
    """Only a name in ocrd's own format is an interrupted deletion: anything else named
    ``.ocrd-deleting-*`` is someone's squat, kept and listed as such, and ranks as no version."""
    files = [entry(name, ctime_age=DAY), entry(b"sub/" + name, ctime_age=DAY)]
    p = plan(files, Rules((InterruptedRule(started=NOW - 10),)), NOW)
    assert p.deletions == ()
    assert all("not a name ocrd made" in d.reason for d in p.decisions)


def test_plan_deletions_lists_only_deletes() -> None:
    files = [entry(b"old_a"), entry(b"b"), entry(b"old_c.keep"), entry(b"old_d")]
    p = plan(files, rules(prefixes=["old_"], whitelist=["*.keep"]), NOW)
    assert [d.entry.path for d in p.deletions] == [b"old_a", b"old_d"]


# --- properties over generated inventories ---------------------------------------------------

# Accents in both normal forms: "\u00e9" (é composed) and "e\u0301" (e, combining acute).
PREFIXES = ["old_", "a", "x\n", "\u00e9", "e\u0301x"]
PATTERNS = ["*.keep", "a*", "sub/*", "d/*.bin", "x?", "[ab]*.bin", "*\u00e9", "e\u0301*", "?x*"]
_PIECES = [b"old_", b"a", b"b", b"x", b".keep", b".bin", b"\xff", b"\n", b"*", b"?"]
_ACCENTS = [b"e", "\u00e9".encode(), "\u0301".encode()]

_name = st.lists(
    st.sampled_from(_PIECES + _ACCENTS),
    min_size=1,
    max_size=4,
).map(b"".join)
_path = st.lists(st.one_of(st.sampled_from([b"sub", b"d"]), _name), min_size=1, max_size=3).map(
    b"/".join
)
_offset = st.floats(min_value=-2 * DAY, max_value=400 * DAY, allow_nan=False)


@st.composite
def inventories(draw: st.DrawFn) -> list[FileEntry]:
    paths = draw(st.lists(_path, max_size=25, unique=True))
    files = []
    for ino, path in enumerate(paths):
        files.append(
            FileEntry(
                path=path,
                size=draw(st.integers(0, 10**12)),
                mtime=NOW - draw(_offset),
                atime=NOW - draw(_offset),
                ctime=NOW - draw(_offset),
                dev=2049,
                ino=ino,
                is_link=draw(st.booleans()),
            )
        )
    return files


@st.composite
def rule_sets(draw: st.DrawFn) -> Rules:
    """Rules drawn from a small vocabulary, so they hit the generated names often."""
    patterns = draw(st.lists(st.sampled_from(PATTERNS), max_size=3, unique=True))
    return rules(
        prefixes=draw(st.lists(st.sampled_from(PREFIXES), max_size=2, unique=True)),
        max_age=draw(st.none() | st.sampled_from([60.0, DAY, 30 * DAY])),
        age_by=draw(st.sampled_from(["mtime", "atime"])),
        age_from=draw(st.sampled_from(["arrival", "timestamp"])),
        not_before=draw(st.sampled_from([float("-inf"), NOW - 20 * DAY, NOW + DAY])),
        whitelist=patterns,
        settle=draw(st.sampled_from([0.0, 5.0, 3600.0, 7 * DAY])),
    )


_nows = st.floats(min_value=NOW - DAY, max_value=NOW + 30 * DAY, allow_nan=False)


def composed(text: str | bytes) -> str:
    """Text as the rules compare it: decoded as the OS does, accents composed (NFC)."""
    return unicodedata.normalize("NFC", os.fsdecode(text))


def whitelisted(f: FileEntry, patterns: Sequence[str]) -> bool:
    """The contract, written out independently: "/" in the pattern → relative path, else name;
    names and patterns alike in NFC."""
    name = f.path.split(b"/")[-1]
    return any(
        fnmatch.fnmatchcase(composed(f.path if "/" in p else name), composed(p)) for p in patterns
    )


def settling(f: FileEntry, r: Rules, now: float) -> bool:
    """Settle counts from the last change: ctime, or mtime if later, but only an mtime that has
    already happened (one in the future was set, not written)."""
    happened = [f.ctime] + ([f.mtime] if f.mtime <= now else [])
    return r.settle > 0 and now - max(happened) < r.settle


def aged_since(f: FileEntry, s: MaxAgeRule) -> float:
    """Where a file's age counts from: its age_by timestamp, or its arrival (ctime: the kernel's
    record of the rename, link or create that put it here) if that is later and age_from says
    so; never from before a clock jump (not_before)."""
    stamps: list[float] = [f.mtime if s.age_by == "mtime" else f.atime, s.not_before]
    if s.age_from == "arrival":
        stamps.append(f.ctime)
    return max(stamps)


def rule_applies(f: FileEntry, r: Rules, now: float) -> str | None:
    name = f.path.split(b"/")[-1]
    for s in r.selectors:
        if isinstance(s, PrefixRule) and any(
            composed(name).startswith(composed(p)) for p in s.prefixes
        ):
            return "prefix"
        if isinstance(s, MaxAgeRule) and now - aged_since(f, s) > s.max_age:
            return "max_age"
    return None


@given(inventories(), rule_sets(), _nows)
def test_each_verdict_follows_the_contract(files: list[FileEntry], r: Rules, now: float) -> None:
    p = plan(files, r, now)
    assert [d.entry for d in p.decisions] == files
    for d in p.decisions:
        f = d.entry
        if f.is_link:
            expected: tuple[Verdict, str | None] = (Verdict.KEEP, None)
        elif whitelisted(f, r.whitelist):
            expected = (Verdict.PROTECTED, "whitelist")
        elif settling(f, r, now):
            expected = (Verdict.SETTLING, None)
        elif (rule := rule_applies(f, r, now)) is not None:
            expected = (Verdict.DELETE, rule)
        else:
            expected = (Verdict.KEEP, None)
        assert (d.verdict, d.rule) == expected, f


@given(inventories(), rule_sets(), _nows)
def test_whitelisted_settling_and_symlinks_are_never_deleted(
    files: list[FileEntry], r: Rules, now: float
) -> None:
    for d in plan(files, r, now).deletions:
        assert not d.entry.is_link
        assert not whitelisted(d.entry, r.whitelist)
        assert not settling(d.entry, r, now)


@given(inventories(), rule_sets(), _nows)
def test_planning_again_after_applying_deletes_nothing_more(
    files: list[FileEntry], r: Rules, now: float
) -> None:
    first = plan(files, r, now)
    gone = {d.entry.path for d in first.deletions}
    remaining = [f for f in files if f.path not in gone]
    second = plan(remaining, r, now)
    assert second.deletions == ()
    before = verdicts(first)
    assert all(before[path] == v for path, v in verdicts(second).items())


@given(inventories(), rule_sets(), _nows, st.data())
def test_verdict_depends_only_on_inventory_rules_and_now(
    files: list[FileEntry], r: Rules, now: float, data: st.DataObject
) -> None:
    p = plan(files, r, now)
    assert plan(list(files), r, now) == p
    assert plan(Inventory(tuple(files)), r, now) == p
    shuffled = data.draw(st.permutations(files))
    assert verdicts(plan(shuffled, r, now)) == verdicts(p)
    # and each file alone gets the verdict it got among the others
    for d in p.decisions:
        (alone,) = plan([d.entry], r, now).decisions
        assert alone == d


@given(inventories(), st.lists(st.sampled_from(range(25)), unique=True), _nows)
def test_escaped_names_on_the_whitelist_protect_exactly_those_files(
    files: list[FileEntry], chosen: list[int], now: float
) -> None:
    """Names full of glob characters, escaped with glob.escape, protect just their own file."""
    names = {composed(f.path.split(b"/")[-1]) for i, f in enumerate(files) if i in chosen}
    patterns = [glob.escape(n) for n in names]
    r = rules(
        prefixes=["old_", "a", "b", "x", "\n", "*", "?", "."], max_age=60.0, whitelist=patterns
    )
    for d in plan(files, r, now).decisions:
        if d.entry.is_link:
            continue
        if composed(d.entry.path.split(b"/")[-1]) in names:
            assert d.verdict is Verdict.PROTECTED
        else:
            assert d.verdict is not Verdict.PROTECTED


@given(inventories(), rule_sets(), _nows, st.data())
def test_verdicts_do_not_depend_on_how_accents_are_stored(
    files: list[FileEntry], r: Rules, now: float, data: st.DataObject
) -> None:
    """Each name stored composed or decomposed, at random: every verdict stays the same."""

    forms: list[Literal["NFC", "NFD"]] = ["NFC", "NFD"]

    def stored(path: bytes) -> bytes:
        form = data.draw(st.sampled_from(forms))
        return os.fsencode(unicodedata.normalize(form, os.fsdecode(path)))

    restored = [f._replace(path=stored(f.path)) for f in files]
    before = [(d.verdict, d.rule) for d in plan(files, r, now).decisions]
    assert [(d.verdict, d.rule) for d in plan(restored, r, now).decisions] == before


@given(inventories(), rule_sets(), _nows, st.floats(0.0, 1.0))
@example(  # kept exactly at max_age: revisited 1 ms later, when it is strictly older
    [FileEntry(b"m", 0, NOW, NOW - DAY, NOW, 2049, 0, False)],
    rules(max_age=DAY, age_by="atime"),
    NOW,
    1.0,
)
def test_revisit_at_is_when_a_verdict_can_first_change(
    files: list[FileEntry], r: Rules, now: float, fraction: float
) -> None:
    """Until revisit_at the verdict holds with the file untouched; just after, it has changed.
    None means it holds for good."""
    for d in plan(files, r, now).decisions:
        at = revisit_at(d, r, now)
        if at is None:
            (later,) = plan([d.entry], r, now + 10_000 * DAY).decisions
            assert later.verdict is d.verdict
            continue
        assert at >= now
        # A kept file is looked at again 1 ms after it crosses max_age (strictly older): the
        # verdict holds up to the boundary itself (less a float's rounding), not across it.
        boundary = max(now, at - 0.0011)
        (before,) = plan([d.entry], r, now + (boundary - now) * fraction).decisions
        assert before.verdict is d.verdict
        (after,) = plan([d.entry], r, at + 1.0).decisions
        assert after.verdict is not d.verdict


@given(inventories(), rule_sets(), _nows)
def test_arrival_deletes_nothing_that_timestamp_keeps(
    files: list[FileEntry], r: Rules, now: float
) -> None:
    """age_from = "arrival" only ever holds files back: what it deletes, the old rule deletes."""
    as_timestamp = Rules(
        tuple(
            MaxAgeRule(s.max_age, s.age_by, "timestamp", s.not_before)
            if isinstance(s, MaxAgeRule)
            else s
            for s in r.selectors
        ),
        r.whitelist,
        r.settle,
    )
    old = {d.entry.path for d in plan(files, as_timestamp, now).deletions}
    assert {d.entry.path for d in plan(files, r, now).deletions} <= old


@given(inventories(), rule_sets(), _nows)
def test_nothing_present_at_a_clock_jump_is_deleted_by_age_within_max_age_of_it(
    files: list[FileEntry], r: Rules, now: float
) -> None:
    jumped = r.not_before(now - 60.0)
    # Every max_age drawn is at least 60 s: none may delete a file 60 s after a jump.
    assert all(d.rule != "max_age" for d in plan(files, jumped, now).deletions)


def test_a_restored_file_is_held_from_every_rule_until_its_hold_ends() -> None:
    f = entry(b"old_a", age=40 * DAY)
    other = entry(b"old_b", age=40 * DAY)
    held = rules(prefixes=["old_"], max_age=30 * DAY).holding({(f.dev, f.ino): NOW + DAY})
    [d, e] = plan([f, other], held, NOW).decisions
    assert (d.verdict, d.rule) == (Verdict.PROTECTED, "restored")
    assert "until 2023-11-15T22:13:20Z" in d.reason
    assert e.verdict is Verdict.DELETE
    [after, _] = plan([f, other], held, NOW + DAY).decisions
    assert after.verdict is Verdict.DELETE


def test_a_held_file_comes_due_when_its_hold_ends() -> None:
    f = entry(b"old_a", age=40 * DAY)
    held = rules(prefixes=["old_"]).holding({(f.dev, f.ino): NOW + DAY})
    [due] = coming_due(plan([f], held, NOW), held, NOW)
    assert due is not None
    assert due.at == NOW + DAY


def test_a_held_file_is_looked_at_again_when_its_hold_ends() -> None:
    f = entry(b"old_a")
    held = rules(prefixes=["old_"]).holding({(f.dev, f.ino): NOW + DAY})
    [d] = plan([f], held, NOW).decisions
    assert revisit_at(d, held, NOW) == NOW + DAY
