"""ocrd/rules/families.py and what the planner builds on it: keep_newest, the last-version floor and
the refusal to delete every model file — on plain FileEntry values, against an oracle."""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Sequence
from typing import Literal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ocrd.config.schema import Retention
from ocrd.fs.inventory import FileEntry
from ocrd.rules.decision import Plan, Verdict
from ocrd.rules.families import DEFAULT_TRUST, Families, Member
from ocrd.rules.leftovers import InterruptedRule
from ocrd.rules.refusal import Refusal, left_after, refuse_all, refused, staying
from ocrd.rules.retention import Rules, plan, revisit_at
from ocrd.rules.selectors import KeepNewestRule, MaxAgeRule, PrefixRule, Selector
from ocrd.rules.trust import SKEW_S, Trust
from tests.test_retention import (
    DAY,
    NOW,
    entry,
    rule_applies,
    settling,
    verdicts,
    whitelisted,
)


def ranks(
    files: Sequence[FileEntry], families: Families | None = None, trust: Trust = DEFAULT_TRUST
) -> dict[bytes, Member]:
    """path → (family, rank) of each ranked file, judged at NOW."""
    ranked = (families or Families()).rank(files, trust, NOW)
    return {f.path: Member(m.family, m.rank) for f in files if (m := ranked.get(id(f))) is not None}


def newest_rules(
    keep: int,
    *,
    family: str | None = None,
    floor: bool = True,
    prefixes: Sequence[str] = (),
    max_age: float | None = None,
    whitelist: Sequence[str] = (),
    settle: float = 0.0,
    age_from: Literal["arrival", "timestamp"] = "arrival",
    rule: bool = False,
    owners: frozenset[int] = frozenset({0}),
) -> Rules:
    """As Rules.from_config builds them; ``rule``: a KeepNewestRule even for keep = 0 (off),
    for the oracle to read the families from."""
    families = Families(re.compile(family) if family else None, age_from)
    selectors: list[Selector] = [InterruptedRule()]
    if prefixes:
        selectors.append(PrefixRule(tuple(prefixes)))
    if max_age is not None:
        selectors.append(MaxAgeRule(max_age, "mtime", age_from))
    if keep or rule:
        selectors.append(KeepNewestRule(keep, families))
    return Rules(tuple(selectors), tuple(whitelist), settle, families if floor else None, owners)


# --- families and ranks ------------------------------------------------------------------------


def test_versions_in_the_name_are_one_family_newest_by_number() -> None:
    files = [
        entry(b"llama-3.2-3b-q4-v3.gguf", age=DAY),
        entry(b"llama-3.2-3b-q4-v4.gguf", age=2 * DAY),  # older file, newer version
        entry(b"llama-3.2-3b-q4-v10.gguf", age=3 * DAY),  # 10 > 4: compared as numbers
        entry(b"other.bin"),
    ]
    got = ranks(files)
    family = "llama-#.#-#b-q#-v#.gguf"
    assert got == {
        b"llama-3.2-3b-q4-v10.gguf": Member(family, 1),
        b"llama-3.2-3b-q4-v4.gguf": Member(family, 2),
        b"llama-3.2-3b-q4-v3.gguf": Member(family, 3),
        b"other.bin": Member("other.bin", 1),
    }


def test_one_subdirectory_per_snapshot_is_one_family_by_default() -> None:
    files = [
        entry(b"snap-2026-01/model.gguf"),
        entry(b"snap-2026-02/model.gguf"),
        entry(b"snap-2025-12/model.gguf"),
        entry(b"snap-2026-02/tokenizer.json"),
        entry(b"elsewhere/model.gguf"),
    ]
    got = ranks(files)
    assert got[b"snap-2026-02/model.gguf"] == Member("snap-#-#/model.gguf", 1)
    assert got[b"snap-2026-01/model.gguf"] == Member("snap-#-#/model.gguf", 2)
    assert got[b"snap-2025-12/model.gguf"] == Member("snap-#-#/model.gguf", 3)
    assert got[b"snap-2026-02/tokenizer.json"] == Member("snap-#-#/tokenizer.json", 1)
    assert got[b"elsewhere/model.gguf"] == Member("elsewhere/model.gguf", 1)


def test_numbers_compare_as_numbers_at_any_length_and_with_leading_zeros() -> None:
    huge = b"9" * 5000  # int() refuses more than 4300 digits; the order must not
    files = [entry(b"m-v" + huge + b".bin"), entry(b"m-v0010.bin"), entry(b"m-v9.bin")]
    assert [m.rank for m in ranks(files).values()] == [1, 2, 3]


def test_equal_versions_rank_by_arrival_then_by_path() -> None:
    """No numbers to tell them apart (a regex family): the one that arrived last is newest,
    as the age rules count arrival; mtime alone under age_from = "timestamp"; then the path."""
    family = r"^(?P<family>model)-[a-z]+\.bin$"
    a = entry(b"model-a.bin", age=10 * DAY, ctime_age=DAY)  # old mtime, arrived yesterday
    b = entry(b"model-b.bin", age=5 * DAY)
    c = entry(b"model-c.bin", age=5 * DAY, ctime_age=5 * DAY)
    arrival = ranks([a, b, c], Families(re.compile(family)))
    assert [arrival[p.path].rank for p in (a, b, c)] == [1, 2, 3]
    timestamp = ranks([a, b, c], Families(re.compile(family), "timestamp"))
    assert [timestamp[p.path].rank for p in (a, b, c)] == [3, 1, 2]


def test_a_regex_names_the_family_and_leaves_unmatched_files_out() -> None:
    families = Families(re.compile(r"^(?:[^/]+/)*(?P<family>[a-z]+)-\d+b-"))
    files = [
        entry(b"llama-3b-2026.gguf"),
        entry(b"llama-8b-2025.gguf"),
        entry(b"sub/llama-1b-2024.gguf"),
        entry(b"notes.txt"),
    ]
    got = ranks(files, families)
    assert got == {
        b"llama-8b-2025.gguf": Member("llama", 1),  # 8 > 3: the first number decides
        b"llama-3b-2026.gguf": Member("llama", 2),
        b"sub/llama-1b-2024.gguf": Member("llama", 3),
    }
    # A group named version says which numbers are the version.
    families = Families(re.compile(r"(?P<family>[a-z]+)-\d+b-(?P<version>\d+)"))
    got = ranks(files, families)
    assert [got[f.path].rank for f in files[:3]] == [1, 2, 3]


def test_symlinks_and_names_differing_only_in_how_accents_are_stored() -> None:
    nfc = "caf\u00e9-v1.bin".encode()
    nfd = unicodedata.normalize("NFD", "caf\u00e9-v2.bin").encode()
    link = entry(b"caf\xc3\xa9-v3.bin", is_link=True)
    got = ranks([entry(nfc), entry(nfd), link])
    assert got == {nfd: Member("caf\u00e9-v#.bin", 1), nfc: Member("caf\u00e9-v#.bin", 2)}


def test_only_versions_that_count_for_a_file_rank_it() -> None:
    """A newer-looking version ranks a file lower only if settled, not dated ahead, and its
    owner's or a trusted owner's (root, model_dir's owner, retention.trusted_owners)."""
    victim = [entry(b"m-v2.bin")._replace(uid=1001), entry(b"m-v3.bin")._replace(uid=1001)]
    planted = [
        entry(b"m-v98.bin", age=0)._replace(uid=1002),
        entry(b"m-v99.bin")._replace(uid=1002),
    ]
    trust = Trust(frozenset({0, 10}), settle=5.0)
    got = ranks([*victim, *planted], trust=trust)
    assert {p: m.rank for p, m in got.items()} == {
        b"m-v99.bin": 1,
        b"m-v98.bin": 2,  # settling, but its owner's m-v99 counts for it...
        b"m-v3.bin": 1,  # ...and neither of the stranger's counts for the victim's versions
        b"m-v2.bin": 2,
    }
    trusted = [entry(b"m-v99.bin")._replace(uid=10), entry(b"m-v98.bin", age=-DAY, ctime_age=DAY)]
    got = ranks([*victim, *trusted], trust=trust)
    assert got[b"m-v3.bin"].rank == 2  # a trusted owner's counts; one dated ahead does not
    ranking = Families().rank([*victim, *planted], trust, NOW)
    assert ranking.why(victim[0]) == (
        "1 newer version(s) count; 2 newer not counted: m-v98.bin (untrusted: settling), "
        "m-v99.bin (untrusted: owner uid 1002); ranks only versions of its own owner (uid 1001)"
    )
    assert (
        ranking.why(planted[1]) == "newest version; ranks only versions of its own owner (uid 1002)"
    )


def test_the_same_version_written_otherwise_ranks_neither_below_the_other() -> None:
    """v04 and v4: the name does not say which is newer; neither displaces the other."""
    files = [entry(b"m-v04.bin", age=0), entry(b"m-v4.bin", age=DAY), entry(b"m-v3.bin")]
    got = ranks(files)
    assert {p: m.rank for p, m in got.items()} == {b"m-v04.bin": 1, b"m-v4.bin": 1, b"m-v3.bin": 3}
    p = plan(files, newest_rules(1), NOW)
    assert verdicts(p) == {
        b"m-v04.bin": (Verdict.KEEP, None),
        b"m-v4.bin": (Verdict.KEEP, None),
        b"m-v3.bin": (Verdict.DELETE, "keep_newest"),
    }
    assert p.decisions[1].reason.endswith(
        "0 newer version(s) count; 1 newer not counted: m-v04.bin (the same version, written "
        "otherwise)"
    )


# --- keep_newest -------------------------------------------------------------------------------


def test_keep_newest_deletes_the_older_versions_and_says_which() -> None:
    files = [entry(b"m-v1.bin"), entry(b"m-v2.bin"), entry(b"m-v3.bin"), entry(b"solo.bin")]
    p = plan(files, newest_rules(2), NOW)
    assert verdicts(p) == {
        b"m-v1.bin": (Verdict.DELETE, "keep_newest"),
        b"m-v2.bin": (Verdict.KEEP, None),
        b"m-v3.bin": (Verdict.KEEP, None),
        b"solo.bin": (Verdict.KEEP, None),
    }
    assert p.deletions[0].reason == "version 3 of family 'm-v#.bin', keep_newest is 2"


def test_a_whitelisted_version_takes_its_rank_and_a_settling_one_none_yet() -> None:
    files = [
        entry(b"m-v5.bin"),  # whitelisted: protected, and the newest
        entry(b"m-v4.bin", age=1.0),  # settling: it is being written, and ranks nothing yet
        entry(b"m-v3.bin"),  # version 2 as counted: kept with keep_newest = 2
        entry(b"m-v2.keep"),  # not one family with the .bin ones
        entry(b"m-v1.bin"),  # version 3: deleted
    ]
    r = newest_rules(2, whitelist=["m-v5.bin"], settle=5.0)
    p = plan(files, r, NOW)
    assert verdicts(p) == {
        b"m-v5.bin": (Verdict.PROTECTED, "whitelist"),
        b"m-v4.bin": (Verdict.SETTLING, None),
        b"m-v3.bin": (Verdict.KEEP, None),
        b"m-v2.keep": (Verdict.KEEP, None),
        b"m-v1.bin": (Verdict.DELETE, "keep_newest"),
    }
    assert p.decisions[2].reason == (
        "version 2 of family 'm-v#.bin' as counted, keep_newest is 2: 1 newer version(s) "
        "count; 1 newer not counted: m-v4.bin (untrusted: settling)"
    )
    # Settled, it ranks: m-v3.bin is version 3 from then on.
    later = plan(files, r, NOW + 5.0)
    assert verdicts(later)[b"m-v3.bin"] == (Verdict.DELETE, "keep_newest")


def test_keep_newest_makes_the_daemon_plan_everything_and_never_revisits_by_time() -> None:
    r = newest_rules(1)
    assert not r.per_file
    assert not newest_rules(0).per_file  # the floor alone needs the whole family too
    assert newest_rules(0, floor=False).per_file
    (kept, gone) = plan([entry(b"m-v2"), entry(b"m-v1")], r, NOW).decisions
    assert revisit_at(kept, r, NOW) is None
    assert revisit_at(gone, r, NOW) is None


def test_rules_from_config() -> None:
    assert Rules.from_config(Retention(), 0.0).floor is None  # no families: the old contract
    r = Rules.from_config(Retention(keep_newest=3, family=r"(?P<family>\w+)-v"), 0.0)
    (rule,) = [s for s in r.selectors if isinstance(s, KeepNewestRule)]
    assert rule.keep == 3
    assert rule.families.pattern is not None
    assert r.floor == rule.families
    r = Rules.from_config(Retention(keep_newest=3, keep_last_version=False), 0.0)
    assert r.floor is None
    r = Rules.from_config(Retention(family=r"(?P<family>\w+)-v"), 0.0)
    assert not [s for s in r.selectors if isinstance(s, KeepNewestRule)]
    assert r.floor is not None
    # Whose files rank anyone's: root, model_dir's owner, and the configured owners.
    assert r.trust.owners == {0}
    r = Rules.from_config(Retention.model_validate({"trusted_owners": ["root", 77]}), 5.0, 42)
    assert r.trust == Trust(frozenset({0, 42, 77}), 5.0)


# --- the floor ---------------------------------------------------------------------------------


def test_no_rule_deletes_the_last_version_of_a_family() -> None:
    files = [entry(b"m-v1.bin", age=40 * DAY), entry(b"m-v2.bin", age=35 * DAY)]
    p = plan(files, newest_rules(0, max_age=30 * DAY), NOW)
    assert verdicts(p) == {
        b"m-v1.bin": (Verdict.DELETE, "max_age"),
        b"m-v2.bin": (Verdict.KEEP, "keep_last_version"),
    }
    kept = p.decisions[1]
    assert kept.reason == (
        "last version of family 'm-v#.bin': max_age would delete it (mtime age 35d > 30d)"
    )
    assert revisit_at(kept, newest_rules(0, max_age=30 * DAY), NOW) is None
    # Allowed: every rule acts alone again.
    p = plan(files, newest_rules(0, max_age=30 * DAY, floor=False), NOW)
    assert {v for v, _ in verdicts(p).values()} == {Verdict.DELETE}


def test_without_families_a_lone_file_goes_as_before() -> None:
    r = Rules.from_config(
        Retention.model_validate({"max_age": "30d", "age_from": "timestamp"}), 0.0
    )
    assert verdicts(plan([entry(b"m-v1.bin", age=40 * DAY)], r, NOW)) == {
        b"m-v1.bin": (Verdict.DELETE, "max_age")
    }


def test_a_protected_version_is_a_version_left_a_settling_or_strangers_one_is_not() -> None:
    aged = newest_rules(0, max_age=30 * DAY, settle=5.0, owners=frozenset({0, 10}))
    victim = entry(b"m-v1.bin", age=40 * DAY)._replace(uid=1001)
    protected = newest_rules(0, max_age=30 * DAY, whitelist=["m-v2*"])
    p = plan([victim, entry(b"m-v2.bin", age=40 * DAY)], protected, NOW)
    assert verdicts(p)[b"m-v1.bin"] == (Verdict.DELETE, "max_age")
    for newest, counts in [
        (entry(b"m-v2.bin", age=1.0), False),  # settling: it may never finish
        (entry(b"m-v2.bin", age=-DAY, ctime_age=DAY), False),  # dated a day ahead
        (entry(b"m-v2.bin", age=DAY)._replace(uid=1002), False),  # a stranger's
        (entry(b"m-v2.bin", age=DAY)._replace(uid=1001), True),  # its owner's
        (entry(b"m-v2.bin", age=DAY)._replace(uid=10), True),  # a trusted owner's
    ]:
        p = plan([victim, newest], aged, NOW)
        expected = (Verdict.DELETE, "max_age") if counts else (Verdict.KEEP, "keep_last_version")
        assert verdicts(p)[b"m-v1.bin"] == expected, newest
        if not counts:
            why = p.decisions[0].reason
            assert why.startswith("last version of family 'm-v#.bin' that counts for it")


# --- deleting every model file -----------------------------------------------------------------


def refusal_of(p: Plan, r: Rules, *, allow: bool = False) -> Refusal | None:
    """refuse_all as ``ocrd clean`` asks it of a plan of every model file."""
    models = sum(1 for d in p.decisions if not d.entry.is_link)
    return refuse_all(p.deletions, models, r, allow=allow, stays=staying(p.decisions, r, p.now))


def test_a_plan_deleting_every_model_file_by_age_or_rank_is_refused() -> None:
    files = [entry(b"a", age=40 * DAY), entry(b"b", size=5), entry(b"l", is_link=True)]
    r = newest_rules(0, max_age=DAY, floor=False)
    p = plan(files, r, NOW)
    refusal = refusal_of(p, r)
    assert refusal is not None
    assert (refusal.would_delete, refusal.would_free, refusal.of_files) == (2, 15, 2)
    assert refusal.fields()["reason"] == "every_model_file"
    kept = refused(p, refusal)
    assert kept.deletions == ()
    assert {d.rule for d in kept.decisions if not d.entry.is_link} == {"allow_delete_all"}
    assert kept.decisions[0].reason.startswith("max_age: mtime age 40d > 1d; no model file ")
    assert refusal_of(p, r, allow=True) is None
    assert refusal_of(plan([*files, entry(b"c", age=0)], r, NOW), r) is None  # c is left


def test_files_named_for_deletion_are_never_refused() -> None:
    """A prefix (or an interrupted deletion's private name) marks that very file: deleting
    every model file by name is what the operator asked for; mixed with age, the named go."""
    r = newest_rules(0, prefixes=["old_"], max_age=30 * DAY, floor=False)
    named = plan([entry(b"old_a", age=0), entry(b"sub/" + PRIVATE % 3, age=0)], r, NOW)
    assert refusal_of(named, r) is None
    p = plan([entry(b"old_a", age=0), entry(b"m.bin", age=40 * DAY)], r, NOW)
    refusal = refusal_of(p, r)
    assert refusal is not None
    assert refusal.would_delete == 1
    assert verdicts(refused(p, refusal)) == {
        b"old_a": (Verdict.DELETE, "prefix"),
        b"m.bin": (Verdict.KEEP, "allow_delete_all"),
    }


def test_the_refusal_weighs_a_batch_with_what_is_due_against_every_model_file() -> None:
    r = newest_rules(0, max_age=DAY, floor=False)
    (a,) = plan([entry(b"a")], r, NOW).deletions
    b = entry(b"b")
    index = {0: 2}  # the daemon's index: two model files, root's
    # the daemon planned a batch of one: b stays
    assert refuse_all([a], 2, r, allow=False, stays=left_after(index, [a.entry])) is None
    # b is due already: nothing stays
    assert refuse_all([a], 2, r, allow=False, stays=left_after(index, [a.entry, b])) is not None


def test_only_a_file_that_counts_for_a_deletion_lets_it_go() -> None:
    """A stranger's file, or one settling or dated ahead, does not stand in for the last of
    another owner's models: the deletion by age is refused, the stranger's own old file goes."""
    r = newest_rules(0, max_age=DAY, floor=False, settle=60.0, owners=frozenset({0, 10}))
    old_victim = entry(b"victim.bin", age=40 * DAY)._replace(uid=1001)
    stranger = entry(b"planted.bin", age=3600)._replace(uid=1002)
    settling_own = entry(b"victim-new.bin", age=1)._replace(uid=1001)
    ahead = entry(b"victim-ahead.bin", age=-DAY, ctime_age=DAY)._replace(uid=1001)
    p = plan([old_victim, stranger, settling_own, ahead], r, NOW)
    refusal = refusal_of(p, r)
    assert refusal is not None
    assert refusal.paths == {b"victim.bin"}
    # Its owner's own settled file counts for it; so does one of a trusted owner (uid 10).
    for stays in (
        entry(b"own.bin", age=3600)._replace(uid=1001),
        entry(b"t.bin", age=3600)._replace(uid=10),
    ):
        assert refusal_of(plan([old_victim, stranger, stays], r, NOW), r) is None
    # The stranger's own old file goes: its owner's planted file counts for it.
    theirs = entry(b"theirs.bin", age=40 * DAY)._replace(uid=1002)
    refusal = refusal_of(plan([old_victim, stranger, theirs], r, NOW), r)
    assert refusal is not None
    assert refusal.paths == {b"victim.bin"}


# --- properties against an oracle --------------------------------------------------------------

PRIVATE = b".ocrd-deleting-cce882604d4f-1-0a1b2c3d-%08x"  # as ocrd.fs.private makes them
_PIECES = [
    b"m-v", b"m-", b"x", b".bin", b".keep", b"old_", b"\xff", b"1", b"01", b"2", b"10", b"007",
    b"7",
]  # fmt: skip
_name = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=4).map(b"".join)
_dir = st.sampled_from([b"snap-1", b"snap-2", b"snap-10", b"d"])
_path = st.one_of(
    _name,
    st.tuples(_dir, _name).map(b"/".join),
    st.sampled_from(
        [PRIVATE % 2, b"d/" + PRIVATE % 4, b".ocrd-deleting-1-2", b"d/.ocrd-deleting-x"]
    ),
)
_offset = st.floats(min_value=-DAY, max_value=60 * DAY, allow_nan=False)
_nows = st.floats(min_value=NOW - DAY, max_value=NOW + 2 * DAY, allow_nan=False)
_uids = st.sampled_from([0, 0, 1001, 1002])


@st.composite
def versioned(draw: st.DrawFn) -> list[FileEntry]:
    paths = draw(st.lists(_path, max_size=16, unique=True))
    return [
        FileEntry(
            path,
            draw(st.integers(0, 100)),
            NOW - draw(_offset),
            NOW - draw(_offset),
            NOW - draw(st.sampled_from([DAY, 60 * DAY, 2.0]) | _offset),
            2049,
            ino,
            draw(st.integers(0, 9)) == 0,
            draw(_uids),
        )
        for ino, path in enumerate(paths)
    ]


@st.composite
def newest_rule_sets(draw: st.DrawFn) -> Rules:
    return newest_rules(
        draw(st.integers(0, 3)),
        rule=True,
        family=draw(st.sampled_from([None, r"(?P<family>m)-v?\d", r"^(?P<family>[^/]*)/"])),
        floor=draw(st.booleans()),
        prefixes=draw(st.lists(st.sampled_from(["old_", "x"]), max_size=1)),
        max_age=draw(st.none() | st.sampled_from([DAY, 30 * DAY])),
        whitelist=draw(st.lists(st.sampled_from(["*.keep", "snap-2/*", "x*"]), max_size=2)),
        settle=draw(st.sampled_from([0.0, 5.0, 3600.0])),
        age_from=draw(st.sampled_from(["arrival", "timestamp"])),
        owners=draw(st.sampled_from([frozenset({0}), frozenset({0, 1001})])),
    )


def interrupted(f: FileEntry) -> bool:
    """A private name in ocrd's format (see PRIVATE); an imitation is only not a version."""
    name = f.path.rsplit(b"/", 1)[-1]
    return (
        re.fullmatch(rb"\.ocrd-deleting-[0-9a-f]{12}-[0-9]+-[0-9a-f]{8}-[0-9a-f]{8}", name)
        is not None
    )


def named_privately(f: FileEntry) -> bool:
    return f.path.rsplit(b"/", 1)[-1].startswith(b".ocrd-deleting-")


def oracle_family(f: FileEntry, r: Rules) -> tuple[object, ...] | None:
    """Independently of ocrd.rules.families: the default family is the tuple of what lies between
    the numbers of the (NFC) path; a pattern's is its group named family."""
    if f.is_link or named_privately(f):
        return None
    text = unicodedata.normalize("NFC", os.fsdecode(f.path))
    families = next(s.families for s in r.selectors if isinstance(s, KeepNewestRule))
    if families.pattern is None:
        return tuple(re.split(r"[0-9]+", text))
    found = re.search(families.pattern.pattern, text)
    return None if found is None else (found["family"],)


def oracle_families(files: Sequence[FileEntry], r: Rules) -> list[list[FileEntry]]:
    """Each family, newest first: numbers in the path (as numbers, left to right), then the
    later of mtime and ctime ("arrival") or mtime alone, then the path — each by a separate
    stable sort."""
    age_from = next(s.families.age_from for s in r.selectors if isinstance(s, KeepNewestRule))
    groups: dict[tuple[object, ...], list[FileEntry]] = {}
    for f in files:
        if (key := oracle_family(f, r)) is not None:
            groups.setdefault(key, []).append(f)
    out = []
    for members in groups.values():
        order = sorted(members, key=lambda f: f.path)
        stamp = (lambda f: max(f.mtime, f.ctime)) if age_from == "arrival" else lambda f: f.mtime
        order.sort(key=stamp, reverse=True)
        order.sort(key=lambda f: [int(n) for n in re.findall(rb"[0-9]+", f.path)], reverse=True)
        out.append(order)
    return out


def counts_for(g: FileEntry, f: FileEntry, r: Rules, now: float) -> bool:
    """Whether ``g`` may rank ``f`` or vouch for it: settle has passed since its ctime and its
    mtime (less the skew allowed), and it is owned by a trusted owner or by ``f``'s."""
    if now - max(g.ctime, g.mtime - SKEW_S) < r.settle or g.mtime - SKEW_S > now:
        return False
    return g.uid in r.owners or g.uid == f.uid


def written_otherwise(g: FileEntry, f: FileEntry) -> bool:
    """The same numbers, in other digits (``v07`` and ``v7``)."""
    a, b = re.findall(rb"[0-9]+", g.path), re.findall(rb"[0-9]+", f.path)
    return a != b and [int(n) for n in a] == [int(n) for n in b]


def oracle_ranks(files: Sequence[FileEntry], r: Rules, now: float) -> dict[bytes, int]:
    """1 + the versions before a file in its family's order that count for it."""
    out: dict[bytes, int] = {}
    for order in oracle_families(files, r):
        for i, f in enumerate(order):
            out[f.path] = 1 + sum(
                1 for g in order[:i] if counts_for(g, f, r, now) and not written_otherwise(g, f)
            )
    return out


def expected_verdicts(
    files: Sequence[FileEntry], r: Rules, now: float
) -> dict[bytes, tuple[Verdict, str | None]]:
    keep = max([s.keep for s in r.selectors if isinstance(s, KeepNewestRule)], default=0)
    rank = oracle_ranks(files, r, now)
    out: dict[bytes, tuple[Verdict, str | None]] = {}
    for f in files:
        if f.is_link:
            out[f.path] = (Verdict.KEEP, None)
        elif whitelisted(f, r.whitelist):
            out[f.path] = (Verdict.PROTECTED, "whitelist")
        elif settling(f, r, now):
            out[f.path] = (Verdict.SETTLING, None)
        elif interrupted(f):
            out[f.path] = (Verdict.DELETE, "interrupted")
        elif (rule := rule_applies(f, r, now)) is not None:
            out[f.path] = (Verdict.DELETE, rule)
        elif keep and f.path in rank and rank[f.path] > keep:
            out[f.path] = (Verdict.DELETE, "keep_newest")
        else:
            out[f.path] = (Verdict.KEEP, None)
    if r.floor is not None:
        # Newest first, a version to be deleted that no version staying counts for stays.
        for order in oracle_families(files, r):
            left = [f for f in order if out[f.path][0] is not Verdict.DELETE]
            for f in order:
                if out[f.path][0] is Verdict.DELETE and not any(
                    counts_for(g, f, r, now) for g in left
                ):
                    out[f.path] = (Verdict.KEEP, "keep_last_version")
                    left.append(f)
    return out


@given(versioned(), newest_rule_sets(), _nows)
def test_each_verdict_follows_the_oracle(files: list[FileEntry], r: Rules, now: float) -> None:
    p = plan(files, r, now)
    assert [d.entry for d in p.decisions] == files
    assert verdicts(p) == expected_verdicts(files, r, now)


@given(versioned(), newest_rule_sets(), _nows)
def test_keep_newest_keeps_the_newest_n_and_deletes_the_rest(
    files: list[FileEntry], r: Rules, now: float
) -> None:
    (rule,) = [s for s in r.selectors if isinstance(s, KeepNewestRule)]
    rank = oracle_ranks(files, r, now)
    got = verdicts(plan(files, r, now))
    for f in files:
        verdict, by = got[f.path]
        if by == "keep_newest":
            assert rank[f.path] > rule.keep > 0
            assert not whitelisted(f, r.whitelist)
            assert not settling(f, r, now)
        if rule.keep and f.path in rank and rank[f.path] <= rule.keep:
            assert by != "keep_newest"
        if (
            rule.keep
            and rank.get(f.path, 0) > rule.keep
            and not whitelisted(f, r.whitelist)
            and not settling(f, r, now)
        ):
            assert verdict is Verdict.DELETE or by == "keep_last_version"


@given(versioned(), newest_rule_sets(), _nows)
def test_with_the_floor_every_family_keeps_a_version(
    files: list[FileEntry], r: Rules, now: float
) -> None:
    p = plan(files, r, now)
    if r.floor is None:
        return
    deleted = {d.entry.path for d in p.deletions}
    families: dict[tuple[object, ...], list[bytes]] = {}
    for f in files:
        if (key := oracle_family(f, r)) is not None:
            families.setdefault(key, []).append(f.path)
    for members in families.values():
        assert not set(members) <= deleted, members
    # and planning again what is left deletes nothing more
    left = [f for f in files if f.path not in deleted]
    assert plan(left, r, now).deletions == ()


@given(versioned(), newest_rule_sets(), _nows, st.booleans())
def test_no_plan_deletes_every_model_file_unless_allowed(
    files: list[FileEntry], r: Rules, now: float, allow: bool
) -> None:
    """What `ocrd clean` does with a plan: what it deletes by age or rank goes only if a model
    file that counts for it stays; what is named for deletion (prefix, interrupted) goes."""
    p = plan(files, r, now)
    refusal = refusal_of(p, r, allow=allow)
    final = refused(p, refusal) if refusal is not None else p
    by_name = {"prefix", "interrupted"}
    left = [d.entry for d in final.decisions if d.verdict is not Verdict.DELETE]
    if allow:
        assert final == p
    else:
        for d in final.deletions:
            if d.rule not in by_name:
                assert any(not g.is_link and counts_for(g, d.entry, r, now) for g in left)
    assert {d.entry.path for d in final.deletions} <= {d.entry.path for d in p.deletions}
    if refusal is not None:
        assert refusal.paths
        assert all(
            verdicts(final)[path] == (Verdict.KEEP, "allow_delete_all") for path in refusal.paths
        )


@pytest.mark.parametrize("keep", [1, 2])
def test_plan_is_the_same_whatever_the_order(keep: int) -> None:
    files = [entry(b"m-v%d.bin" % i, age=i * DAY) for i in range(5)]
    p: Plan = plan(files, newest_rules(keep), NOW)
    assert verdicts(plan(files[::-1], newest_rules(keep), NOW)) == verdicts(p)


@given(
    st.lists(st.sampled_from([0.0, 2 * DAY, 40 * DAY]), min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(1, 8), st.booleans()), max_size=8),
)
@example([2 * DAY, 2 * DAY], [(1, False)])  # the first still due when the second is planned
@settings(max_examples=300)
def test_batch_by_batch_the_daemon_never_empties_model_dir_by_age(
    ages: list[float], batches: list[tuple[int, bool]]
) -> None:
    """As the daemon plans what changed: the index in batches (each of ``size`` files), the
    deletions of each left due for a later batch's window unless ``closes``; each batch
    weighed against the whole index with what is due. What age deletes never empties it."""
    models = [entry(b"m%d" % i, age=age) for i, age in enumerate(ages)]
    r = newest_rules(0, max_age=DAY, floor=False, age_from="timestamp")
    index = {f.path: f for f in models}
    due: dict[bytes, FileEntry] = {}
    rest = list(models)
    for size, closes in [*batches, (len(models), True)]:
        batch, rest = rest[:size], rest[size:]
        p = plan(batch, r, NOW)
        owners = {0: len(index)}
        stays = left_after(owners, {**due, **{d.entry.path: d.entry for d in p.deletions}}.values())
        if (
            refusal := refuse_all(p.deletions, len(index), r, allow=False, stays=stays)
        ) is not None:
            p = refused(p, refusal)
        due |= {d.entry.path: d.entry for d in p.deletions}
        if closes:  # the batch window closes: what is due is deleted
            for path in due:
                del index[path]
            due = {}
    assert index
