"""ocrd/families.py and what the planner builds on it: keep_newest, the last-version floor and
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

from ocrd.config import Retention
from ocrd.families import Families, Member
from ocrd.inventory import FileEntry
from ocrd.retention import (
    InterruptedRule,
    KeepNewestRule,
    MaxAgeRule,
    Plan,
    PrefixRule,
    Rules,
    Selector,
    Verdict,
    plan,
    refuse_all,
    refused,
    revisit_at,
)
from tests.test_retention import (
    DAY,
    NOW,
    entry,
    rule_applies,
    settling,
    verdicts,
    whitelisted,
)


def ranks(files: Sequence[FileEntry], families: Families | None = None) -> dict[bytes, Member]:
    ranked = (families or Families()).rank(files)
    return {f.path: ranked[id(f)] for f in files if id(f) in ranked}


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
    return Rules(tuple(selectors), tuple(whitelist), settle, families if floor else None)


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


def test_whitelisted_and_settling_versions_take_their_rank_and_stay() -> None:
    files = [
        entry(b"m-v4.bin", age=1.0),  # settling: newest, takes rank 1
        entry(b"m-v3.bin"),  # rank 2: kept with keep_newest = 2
        entry(b"m-v2.keep"),  # not one family with the .bin ones
        entry(b"m-v1.bin"),  # rank 3: deleted
        entry(b"m-v0.bin"),  # rank 4, whitelisted: protected
    ]
    r = newest_rules(2, whitelist=["m-v0.bin"], settle=5.0)
    assert verdicts(plan(files, r, NOW)) == {
        b"m-v4.bin": (Verdict.SETTLING, None),
        b"m-v3.bin": (Verdict.KEEP, None),
        b"m-v2.keep": (Verdict.KEEP, None),
        b"m-v1.bin": (Verdict.DELETE, "keep_newest"),
        b"m-v0.bin": (Verdict.PROTECTED, "whitelist"),
    }


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


def test_a_settling_or_protected_version_is_a_version_left() -> None:
    for r, newest in [
        (newest_rules(0, max_age=30 * DAY, settle=5.0), entry(b"m-v2.bin", age=1.0)),
        (newest_rules(0, max_age=30 * DAY, whitelist=["m-v2*"]), entry(b"m-v2.bin", age=40 * DAY)),
    ]:
        p = plan([entry(b"m-v1.bin", age=40 * DAY), newest], r, NOW)
        assert verdicts(p)[b"m-v1.bin"] == (Verdict.DELETE, "max_age")


# --- deleting every model file -----------------------------------------------------------------


def test_a_plan_deleting_every_model_file_by_age_or_rank_is_refused() -> None:
    files = [entry(b"a", age=40 * DAY), entry(b"b", size=5), entry(b"l", is_link=True)]
    r = newest_rules(0, max_age=DAY, floor=False)
    p = plan(files, r, NOW)
    refusal = refuse_all(p.deletions, 2, r, allow=False)
    assert refusal is not None
    assert (refusal.would_delete, refusal.would_free, refusal.of_files) == (2, 15, 2)
    assert refusal.fields()["reason"] == "every_model_file"
    kept = refused(p, r)
    assert kept.deletions == ()
    assert {d.rule for d in kept.decisions if not d.entry.is_link} == {"allow_delete_all"}
    assert kept.decisions[0].reason.startswith("max_age: mtime age 40d > 1d; it would leave no ")
    assert refuse_all(p.deletions, 2, r, allow=True) is None
    assert refuse_all(p.deletions, 3, r, allow=False) is None  # one file is left


def test_files_named_for_deletion_are_never_refused() -> None:
    """A prefix (or an interrupted deletion's private name) marks that very file: deleting
    every model file by name is what the operator asked for; mixed with age, the named go."""
    r = newest_rules(0, prefixes=["old_"], max_age=30 * DAY, floor=False)
    named = plan([entry(b"old_a", age=0), entry(b"sub/" + PRIVATE % 3, age=0)], r, NOW)
    assert refuse_all(named.deletions, 2, r, allow=False) is None
    p = plan([entry(b"old_a", age=0), entry(b"m.bin", age=40 * DAY)], r, NOW)
    refusal = refuse_all(p.deletions, 2, r, allow=False)
    assert refusal is not None
    assert refusal.would_delete == 1
    assert verdicts(refused(p, r)) == {
        b"old_a": (Verdict.DELETE, "prefix"),
        b"m.bin": (Verdict.KEEP, "allow_delete_all"),
    }


def test_the_refusal_weighs_a_batch_with_what_is_due_against_every_model_file() -> None:
    r = newest_rules(0, max_age=DAY, floor=False)
    (a,) = plan([entry(b"a")], r, NOW).deletions
    assert refuse_all([a], 2, r, allow=False) is None  # the daemon planned a batch of one
    assert refuse_all([a], 2, r, allow=False, due=[b"b"]) is not None


# --- properties against an oracle --------------------------------------------------------------

PRIVATE = b".ocrd-deleting-cce882604d4f-1-0a1b2c3d-%08x"  # as ocrd.private makes them
_PIECES = [b"m-v", b"m-", b"x", b".bin", b".keep", b"old_", b"\xff", b"1", b"2", b"10", b"007"]
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
    """Independently of ocrd.families: the default family is the tuple of what lies between
    the numbers of the (NFC) path; a pattern's is its group named family."""
    if f.is_link or named_privately(f):
        return None
    text = unicodedata.normalize("NFC", os.fsdecode(f.path))
    families = next(s.families for s in r.selectors if isinstance(s, KeepNewestRule))
    if families.pattern is None:
        return tuple(re.split(r"[0-9]+", text))
    found = re.search(families.pattern.pattern, text)
    return None if found is None else (found["family"],)


def oracle_ranks(files: Sequence[FileEntry], r: Rules) -> dict[bytes, int]:
    """Newest first: numbers in the path (as numbers, left to right), then the later of mtime
    and ctime ("arrival") or mtime alone, then the path — each by a separate stable sort."""
    age_from = next(s.families.age_from for s in r.selectors if isinstance(s, KeepNewestRule))
    out: dict[bytes, int] = {}
    groups: dict[tuple[object, ...], list[FileEntry]] = {}
    for f in files:
        if (key := oracle_family(f, r)) is not None:
            groups.setdefault(key, []).append(f)
    for members in groups.values():
        order = sorted(members, key=lambda f: f.path)
        stamp = (lambda f: max(f.mtime, f.ctime)) if age_from == "arrival" else lambda f: f.mtime
        order.sort(key=stamp, reverse=True)
        order.sort(key=lambda f: [int(n) for n in re.findall(rb"[0-9]+", f.path)], reverse=True)
        out.update((f.path, i) for i, f in enumerate(order, 1))
    return out


def expected_verdicts(
    files: Sequence[FileEntry], r: Rules, now: float
) -> dict[bytes, tuple[Verdict, str | None]]:
    keep = max([s.keep for s in r.selectors if isinstance(s, KeepNewestRule)], default=0)
    rank = oracle_ranks(files, r)
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
        by_family: dict[tuple[object, ...], list[FileEntry]] = {}
        for f in files:
            if (key := oracle_family(f, r)) is not None:
                by_family.setdefault(key, []).append(f)
        for members in by_family.values():
            if all(out[f.path][0] is Verdict.DELETE for f in members):
                newest = min(members, key=lambda f: rank[f.path])
                out[newest.path] = (Verdict.KEEP, "keep_last_version")
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
    rank = oracle_ranks(files, r)
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
    """What `ocrd clean` does with a plan: if it would leave no model file, what it deletes by
    age or rank stays; only what is named for deletion (prefix, interrupted) goes."""
    p = plan(files, r, now)
    models = [f for f in files if not f.is_link]
    refusal = refuse_all(p.deletions, len(models), r, allow=allow)
    final = refused(p, r) if refusal is not None else p
    gone = {d.entry.path for d in final.deletions}
    by_name = {"prefix", "interrupted"}
    if not allow and any(d.rule not in by_name for d in final.deletions):
        assert {f.path for f in models} - gone  # some model file is left
    if allow:
        assert final == p
    assert gone <= {d.entry.path for d in p.deletions}
    if refusal is not None:
        assert {d.rule for d in final.deletions} <= by_name
        assert {f.path for f in models} - gone


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
    index = {f.path for f in models}
    due: set[bytes] = set()
    rest = list(models)
    for size, closes in [*batches, (len(models), True)]:
        batch, rest = rest[:size], rest[size:]
        p = plan(batch, r, NOW)
        if refuse_all(p.deletions, len(index), r, allow=False, due=due) is not None:
            p = refused(p, r)
        due |= {d.entry.path for d in p.deletions}
        if closes:  # the batch window closes: what is due is deleted
            index -= due
            due = set()
    assert index
