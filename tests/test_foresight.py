"""Foresight (docs/foresight.md): ``ocrd list --at``, ``due_at`` and ``ocrd_due_bytes``.

The planner's part (ocrd/rules/retention.py: coming_due, due_at) on plain values, with Hypothesis
against plan() itself; the command on real files under tmp_path; the daemon in process on a
FakeClock set ahead (as tests/test_clock_jump.py does) and as a real ``ocrd run``."""

from __future__ import annotations

import calendar
import io
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ocrd.base import log
from ocrd.base.clock import FakeClock
from ocrd.config.load import load
from ocrd.daemon.loop import Daemon
from ocrd.fs.inventory import FileEntry
from ocrd.ops.stats import Totals
from ocrd.rules.decision import Plan, Verdict
from ocrd.rules.families import Families
from ocrd.rules.foresight import coming_due, due_at
from ocrd.rules.leftovers import InterruptedRule
from ocrd.rules.refusal import refuse_all, refused, staying
from ocrd.rules.retention import Rules, plan
from ocrd.rules.selectors import KeepNewestRule, MaxAgeRule, PrefixRule, Selector
from tests import configs, test_cli
from tests.conftest import OcrdRunner, StartOcrd, make_file

NOW = 1_700_000_000.0
DAY = 86400.0
INF = math.inf


def entry(
    path: bytes, *, age: float = 0.0, ctime_age: float | None = None, size: int = 10
) -> FileEntry:
    """A file whose mtime and atime are ``age`` seconds before NOW, its ctime (arrival)
    ``ctime_age`` (default: the same)."""
    ctime = NOW - (age if ctime_age is None else ctime_age)
    return FileEntry(path, size, NOW - age, NOW - age, ctime, 2049, hash(path), False)


def max_age(days: float, age_from: Literal["arrival", "timestamp"] = "arrival") -> MaxAgeRule:
    return MaxAgeRule(days * DAY, "mtime", age_from)


def passed(files: Sequence[FileEntry], r: Rules, t: float, *, allow: bool) -> Plan:
    """What a pass at ``t`` decides (ocrd list's plan): plan(), then the refusal to delete
    every model file unless ``allow``."""
    p = plan(files, r, t)
    model_files = sum(1 for f in files if not f.is_link)
    stays = staying(p.decisions, r, t)
    if (refusal := refuse_all(p.deletions, model_files, r, allow=allow, stays=stays)) is not None:
        p = refused(p, refusal)
    return p


def deleted(files: Sequence[FileEntry], r: Rules, t: float, *, allow: bool = True) -> set[bytes]:
    return {d.entry.path for d in passed(files, r, t, allow=allow).deletions}


# --- the planner's part ----------------------------------------------------------------------


def test_max_age_by_timestamp_is_due_max_age_after_it_to_the_last_bit() -> None:
    f = entry(b"ten.bin", age=10 * DAY, ctime_age=0.0)
    r = Rules((max_age(30, "timestamp"),))
    (at,) = due_at([f], r, NOW, allow_delete_all=True)
    assert at is not None
    assert at == pytest.approx(f.mtime + 30 * DAY, abs=1e-6)
    assert deleted([f], r, at) == {b"ten.bin"}
    assert deleted([f], r, math.nextafter(at, -INF)) == set()


def test_max_age_by_arrival_is_due_max_age_after_it_arrived() -> None:
    """A file with a 20-day-old mtime that arrived 1 day ago is due in 29 days, not 10."""
    f = entry(b"copied.bin", age=20 * DAY, ctime_age=DAY)
    (at,) = due_at([f], Rules((max_age(30),)), NOW, allow_delete_all=True)
    assert at == pytest.approx(f.ctime + 30 * DAY, abs=1e-6)


def test_a_file_due_now_says_when_it_became_due() -> None:
    """By age: when it crossed max_age. By name: when it arrived (or settled after)."""
    old = entry(b"old.bin", age=40 * DAY)
    named = entry(b"old_x.bin", age=3 * DAY)
    r = Rules((PrefixRule(("old_",)), max_age(30)))
    assert due_at([old, named], r, NOW, allow_delete_all=True) == [
        pytest.approx(old.mtime + 30 * DAY, abs=1e-6),
        named.ctime,
    ]
    fresh = entry(b"old_y.bin", age=600.0)  # changed 10 minutes ago, settle is an hour
    settling = Rules((PrefixRule(("old_",)),), settle=3600.0)
    (at,) = due_at([fresh], settling, NOW, allow_delete_all=True)
    assert at is not None
    assert at == pytest.approx(fresh.mtime + 3600.0, abs=1e-6)
    assert at > NOW


def test_never_due_whitelisted_symlinks_and_files_no_rule_names() -> None:
    keep = entry(b"en.keep", age=400 * DAY)
    link = entry(b"link", age=400 * DAY)._replace(is_link=True)
    plain = entry(b"model.bin", age=400 * DAY)
    r = Rules((PrefixRule(("old_",)),), whitelist=("*.keep",))
    assert due_at([keep, link, plain], r, NOW, allow_delete_all=True) == [None, None, None]
    r = Rules((max_age(30),), whitelist=("*.keep",))
    assert due_at([keep, link], r, NOW, allow_delete_all=True) == [None, None]


def test_keep_newest_ranks_do_not_change_with_time() -> None:
    """With no arrival, a version past keep_newest is due now (since it arrived), the others
    never by rank (m-3 is the newest version: the highest number)."""
    versions = [entry(f"m-{v}.bin".encode(), age=(4 - v) * DAY) for v in (1, 2, 3)]
    r = Rules((KeepNewestRule(2, Families()),))
    assert due_at(versions, r, NOW, allow_delete_all=True) == [versions[0].ctime, None, None]


def test_the_last_version_floor_keeps_the_newest_when_it_is_the_last_to_come_due() -> None:
    """m-2 (the newer version) comes due after m-1: once both are due the floor keeps m-2."""
    versions = [entry(b"m-1.bin", age=20 * DAY), entry(b"m-2.bin", age=10 * DAY)]
    r = Rules((max_age(30),), floor=Families())
    m1, m2 = due_at(versions, r, NOW, allow_delete_all=True)
    assert m1 == pytest.approx(NOW + 10 * DAY, abs=1e-6)
    assert m2 is None
    assert deleted(versions, r, NOW + 40 * DAY) == {b"m-1.bin"}


def test_the_newest_version_coming_due_first_is_due_then() -> None:
    """m-2 (newer by its number) has the older mtime: a pass between the two due times
    deletes it; a pass after both keeps it by the floor (docs/foresight.md: a daemon running
    all along deletes it, and then keeps m-1 as the last version)."""
    versions = [entry(b"m-1.bin", age=10 * DAY), entry(b"m-2.bin", age=20 * DAY)]
    r = Rules((max_age(30),), floor=Families())
    m1, m2 = due_at(versions, r, NOW, allow_delete_all=True)
    assert m1 == pytest.approx(NOW + 20 * DAY, abs=1e-6)
    assert m2 == pytest.approx(NOW + 10 * DAY, abs=1e-6)
    assert deleted(versions, r, NOW + 15 * DAY) == {b"m-2.bin"}
    assert deleted(versions, r, NOW + 40 * DAY) == {b"m-1.bin"}


def test_the_refusal_keeps_what_comes_due_last_by_age() -> None:
    """Two model files and nothing else: the second to come due would leave none."""
    files = [entry(b"ten.bin", age=10 * DAY), entry(b"twenty.bin", age=20 * DAY)]
    r = Rules((max_age(30),))
    ten, twenty = due_at(files, r, NOW, allow_delete_all=False)
    assert ten is None
    assert twenty == pytest.approx(NOW + 10 * DAY, abs=1e-6)
    both = due_at(files, r, NOW, allow_delete_all=True)
    assert both == [pytest.approx(NOW + 20 * DAY, abs=1e-6), twenty]


def test_a_rule_that_says_nothing_is_never_foreseen() -> None:
    class Largest(Selector):
        """Deletes the largest file: not driven by time, it answers nothing about it."""

        name = "largest"

        def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
            yield from ((f, "largest") for f in files[-1:])

    assert coming_due([entry(b"a")], Rules((Largest(),)), NOW) == [None]


# --- properties over generated inventories ---------------------------------------------------

# An interrupted deletion's private name in the format ocrd makes (ocrd.fs.private).
LEFTOVER = b".ocrd-deleting-0123456789ab-42-01234567-89abcdef"
# Names that fall into families (digits ignored), carry the prefix, the whitelist's suffix or
# an interrupted deletion's private name.
_names = st.sampled_from(
    [
        b"m-1.bin",
        b"m-2.bin",
        b"m-3.bin",
        b"old_m-4.bin",
        b"old_x",
        b"x.keep",
        b"a.bin",
        b"sub/m-1.bin",
        b".ocrd-deleting-1-2",
        b"sub/.ocrd-deleting-3-4",
        LEFTOVER,
    ]
)
_offset = st.floats(min_value=-2 * DAY, max_value=60 * DAY, allow_nan=False)


@st.composite
def inventories(draw: st.DrawFn) -> list[FileEntry]:
    paths = draw(st.lists(_names, max_size=8, unique=True))
    return [
        FileEntry(
            path=path,
            size=draw(st.integers(0, 100)),
            mtime=NOW - draw(_offset),
            atime=NOW - draw(_offset),
            ctime=NOW - draw(_offset),
            dev=2049,
            ino=ino,
            is_link=draw(st.integers(0, 3)) == 0,
            uid=draw(st.sampled_from([0, 0, 1001, 1002])),  # whose word a file is: ocrd.rules.trust
        )
        for ino, path in enumerate(paths)
    ]


@st.composite
def rule_sets(draw: st.DrawFn) -> Rules:
    """Every rule ocrd has, in any order, with or without the last-version floor."""
    selectors: list[Selector] = []
    if draw(st.booleans()):
        selectors.append(InterruptedRule(started=NOW + draw(st.sampled_from([-DAY, DAY]))))
    if draw(st.booleans()):
        selectors.append(PrefixRule(("old_",)))
    if draw(st.booleans()):
        selectors.append(
            MaxAgeRule(
                draw(st.sampled_from([60.0, DAY, 30 * DAY])),
                draw(st.sampled_from(["mtime", "atime"])),
                draw(st.sampled_from(["arrival", "timestamp"])),
                draw(st.sampled_from([-INF, NOW - 20 * DAY, NOW + DAY])),
            )
        )
    families = Families()
    if draw(st.booleans()):
        selectors.append(KeepNewestRule(draw(st.integers(1, 2)), families))
    return Rules(
        tuple(draw(st.permutations(selectors))),
        tuple(draw(st.lists(st.sampled_from(["*.keep", "a*"]), max_size=1))),
        draw(st.sampled_from([0.0, 5.0, 3600.0, 7 * DAY])),
        families if draw(st.booleans()) else None,
        draw(st.sampled_from([frozenset({0}), frozenset({0, 1001})])),
    )


@given(
    inventories(),
    rule_sets(),
    st.floats(NOW - DAY, NOW + 30 * DAY),
    st.booleans(),
    st.lists(st.floats(0.0, 90 * DAY), max_size=4),
    st.floats(-2.0, 2.0),
)
@example(  # due exactly at a day's end, by atime, after a clock jump's mark
    [FileEntry(b"m-1.bin", 0, NOW, NOW - DAY, NOW - DAY, 2049, 0, False)],
    Rules((MaxAgeRule(DAY, "atime", "timestamp", NOW - 20 * DAY),)),
    NOW,
    True,
    [],
    0.0,
)
@example(  # due by name once settled, until its mtime came: settling again now, for a week
    [FileEntry(b"old_x", 0, NOW - 2 * DAY, NOW, NOW - 20 * DAY, 2049, 0, False)],
    Rules((PrefixRule(("old_",)),), settle=7 * DAY),
    NOW,
    True,
    [],
    0.0,
)
@example(  # m-2 due, then settling again from its mtime: a trusted version that stays, so the
    # floor lets m-3 go at its own due time
    [
        *(
            FileEntry(p, 0, NOW, NOW, NOW, 2049, i, True)
            for i, p in enumerate([b"m-1.bin", b"old_m-4.bin", b"old_x", b"x.keep"])
        ),
        FileEntry(b"m-3.bin", 0, NOW - 1, NOW, NOW - 1, 2049, 4, False),
        FileEntry(b"m-2.bin", 0, NOW, NOW - 61, NOW - 3601, 2049, 5, False),
        FileEntry(b"a.bin", 0, NOW, NOW, NOW, 2049, 6, True),
        FileEntry(b"sub/m-1.bin", 0, NOW, NOW, NOW, 2049, 7, True),
    ],
    Rules((MaxAgeRule(60.0, "atime", "arrival"),), (), 3600.0, Families(None, "arrival")),
    NOW - DAY,
    False,
    [],
    0.0,
)
@example(  # the refusal lets sub/m-1.bin go once a.bin counts: when it settles again
    [
        *(
            FileEntry(p, 0, NOW, NOW, NOW, 2049, i, True)
            for i, p in enumerate(
                [b"m-1.bin", b"m-2.bin", b"m-3.bin", b"old_m-4.bin", b"old_x", b"x.keep"]
            )
        ),
        FileEntry(b"a.bin", 0, NOW, NOW, NOW - 1, 2049, 6, False),
        FileEntry(b"sub/m-1.bin", 0, NOW, NOW - 61, NOW - 61, 2049, 7, False),
    ],
    Rules((MaxAgeRule(60.0, "atime", "arrival"),), settle=5.0),
    NOW - DAY,
    False,
    [],
    0.0,
)
@example(  # refused by age, the only model file, until the interrupted rule names it
    [FileEntry(LEFTOVER, 0, NOW - 2 * DAY, NOW - 2 * DAY, NOW, 2049, 0, False)],
    Rules((InterruptedRule(started=NOW - DAY), MaxAgeRule(60.0, "atime", "timestamp"))),
    NOW,
    False,
    [60.0],
    0.0,
)
def test_a_pass_deletes_a_file_from_its_due_at_on_and_never_before(  # noqa: PLR0917
    files: list[FileEntry],
    r: Rules,
    now: float,
    allow: bool,
    offsets: list[float],
    nudge: float,
) -> None:
    """For every time t from now on: a pass at t deletes a file only if t >= its due_at, and
    a pass at its due_at deletes it (it is the *first* time). From then on it is deleted,
    but for the two cases docs/foresight.md names: a future mtime the clock reaches makes it
    settle once more, and a floor judging every file together keeps it once the others are
    due too (the newest version, or what would leave no model file)."""
    dues = due_at(files, r, now, allow_delete_all=allow)
    times = {now + o for o in offsets}
    for due in dues:
        if due is not None:
            times |= {max(now, due), max(now, due + nudge), max(now, math.nextafter(due, -INF))}
    for t in sorted(times):
        for f, d, due in zip(files, passed(files, r, t, allow=allow).decisions, dues, strict=True):
            if d.verdict is Verdict.DELETE:
                assert due is not None, (f, d)
                assert t >= due, (f, d, due)
            elif due is not None and t >= due:
                again = d.verdict is Verdict.SETTLING and f.mtime > due
                assert again or d.rule in ("keep_last_version", "allow_delete_all"), (f, d, due)
    for f, due in zip(files, dues, strict=True):
        if due is not None:
            first = passed(files, r, max(now, due), allow=allow)
            assert next(d for d in first.decisions if d.entry is f).verdict is Verdict.DELETE


@given(inventories(), rule_sets(), st.floats(NOW - DAY, NOW + 30 * DAY), st.floats(0.0, 90 * DAY))
def test_per_file_rules_delete_exactly_from_due_at_on(
    files: list[FileEntry], r: Rules, now: float, offset: float
) -> None:
    """Without the floors (no family floor, deleting every file allowed) and with no mtime
    ahead of the clock, it is an iff: a pass at t >= now deletes a file iff t >= due_at."""
    r = Rules(r.selectors, r.whitelist, r.settle)
    files = [f._replace(mtime=min(f.mtime, now)) for f in files]
    t = now + offset
    for f, due in zip(files, due_at(files, r, now, allow_delete_all=True), strict=True):
        (d,) = [d for d in plan(files, r, t).decisions if d.entry is f]
        assert (d.verdict is Verdict.DELETE) == (due is not None and t >= due), (f, d, due)


# --- ocrd list --at, on real files -----------------------------------------------------------


def tree(
    tmp_path: Path,
    *,
    age_from: str = "timestamp",
    keeper: bool = True,
    allow: bool = False,
    settle: str = "0s",
) -> Path:
    """Files aged 10 and 20 days (by mtime; arrived now) under max_age = "30d", and, with
    ``keeper``, a whitelisted file that stays (so the refusal to delete every model file
    does not come in)."""
    models = tmp_path / "models"
    make_file(models, b"ten.bin", b"1" * 10, age_s=10 * DAY)
    make_file(models, b"twenty.bin", b"2" * 20, age_s=20 * DAY)
    if keeper:
        make_file(models, b"en.keep", b"k")
    return configs.config(
        tmp_path,
        retention={
            "prefixes": None,
            "max_age": "30d",
            "age_from": age_from,
            "whitelist": ["*.keep"],
            "allow_delete_all": allow,
        },
        watch={"settle": settle, "rescan": None},
    )


def listed(run_ocrd: OcrdRunner, config: Path, *at: str) -> dict[str, dict[str, Any]]:
    args = ["--at", *at] if at else []
    result = run_ocrd("list", "-c", config, "--json", *args)
    assert result.returncode == 0, result.stderr
    return {row["path"]: row for row in json.loads(result.stdout)}


def going(rows: dict[str, dict[str, Any]]) -> set[str]:
    return {p for p, row in rows.items() if row["verdict"] == "delete"}


def epoch(iso: str) -> int:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(t)))


def test_list_at_says_which_goes_and_due_at_agrees(tmp_path: Path, run_ocrd: OcrdRunner) -> None:
    """Aged 10 and 20 days under max_age = "30d" (by timestamp): which goes when."""
    config = tree(tmp_path)
    models = tmp_path / "models"
    now = listed(run_ocrd, config)
    assert going(now) == set()
    assert now["en.keep"]["due_at"] is None
    for name in ("ten.bin", "twenty.bin"):
        assert now[name]["due_at"] == iso(os.stat(models / name).st_mtime + 30 * DAY)
    assert going(listed(run_ocrd, config, "+5d")) == set()
    assert going(listed(run_ocrd, config, "+15d")) == {"twenty.bin"}
    assert going(listed(run_ocrd, config, "+40d")) == {"ten.bin", "twenty.bin"}
    # Several --at against due_at: what goes at now + d is what is due by then. (The
    # boundaries are a day away from each --at: the command's own now is a moment later.)
    looked = time.time()
    for days in (1, 9, 11, 19, 21, 29, 31, 400):
        rows = listed(run_ocrd, config, f"+{days}d")
        due = {
            p
            for p, row in now.items()
            if row["due_at"] and epoch(row["due_at"]) <= looked + days * DAY
        }
        assert going(rows) == due, days
        assert rows["ten.bin"]["due_at"] == now["ten.bin"]["due_at"]  # it does not move


def test_list_at_due_at_itself_and_a_second_before(tmp_path: Path, run_ocrd: OcrdRunner) -> None:
    config = tree(tmp_path)
    due = listed(run_ocrd, config)["twenty.bin"]["due_at"]
    assert listed(run_ocrd, config, due)["twenty.bin"]["verdict"] == "delete"
    before = iso(epoch(due) - 1)
    assert listed(run_ocrd, config, before)["twenty.bin"]["verdict"] == "keep"
    # The same instant with a zone: +02:00 is two hours earlier in UTC.
    shifted = time.strftime("%Y-%m-%dT%H:%M:%S+02:00", time.gmtime(epoch(due) + 7200))
    assert listed(run_ocrd, config, shifted)["twenty.bin"]["verdict"] == "delete"


def test_by_arrival_both_are_due_30_days_after_they_arrived(
    tmp_path: Path, run_ocrd: OcrdRunner
) -> None:
    """The default (age_from = "arrival"): made now with old mtimes, both arrived now."""
    config = tree(tmp_path, age_from="arrival")
    models = tmp_path / "models"
    rows = listed(run_ocrd, config)
    for name in ("ten.bin", "twenty.bin"):
        assert rows[name]["due_at"] == iso(os.stat(models / name).st_ctime + 30 * DAY)
    assert going(listed(run_ocrd, config, "+29d")) == set()
    assert going(listed(run_ocrd, config, "+31d")) == {"ten.bin", "twenty.bin"}


def test_the_refusal_is_foreseen(tmp_path: Path, run_ocrd: OcrdRunner) -> None:
    """No file that stays: the last to come due would leave no model file, so it never is."""
    config = tree(tmp_path, keeper=False)
    rows = listed(run_ocrd, config)
    assert rows["ten.bin"]["due_at"] is None
    assert rows["twenty.bin"]["due_at"] is not None
    assert going(listed(run_ocrd, config, "+15d")) == {"twenty.bin"}
    at40 = listed(run_ocrd, config, "+40d")
    assert going(at40) == set()
    assert {row["rule"] for row in at40.values()} == {"allow_delete_all"}


def test_the_text_view_says_which_time_it_is_for(tmp_path: Path, run_ocrd: OcrdRunner) -> None:
    config = tree(tmp_path)
    before = time.time()
    result = run_ocrd("list", "-c", config, "--at", "+15d")
    assert result.returncode == 0, result.stderr
    first, header, *rows = result.stdout.splitlines()
    at = first.split()[1]
    assert first.startswith("at ")
    assert "(+15d)" in first
    assert before + 15 * DAY <= epoch(at) <= time.time() + 15 * DAY + 1
    assert header.startswith("VERDICT")
    assert any(r.startswith("DELETE") and "twenty.bin" in r for r in rows)
    # Without --at the view is as it always was.
    plain = run_ocrd("list", "-c", config).stdout.splitlines()
    assert plain[0].startswith("VERDICT")


@pytest.mark.parametrize(
    ("at", "says"),
    [
        ("2001-01-01T00:00:00Z", "is in the past"),
        ("+7x", "is not a duration"),
        ("+-7d", "is not a duration"),
        ("7d", "neither +DURATION"),
        ("tomorrow", "neither +DURATION"),
    ],
)
def test_a_bad_time_exits_2_and_says_why(
    tmp_path: Path, run_ocrd: OcrdRunner, at: str, says: str
) -> None:
    config = tree(tmp_path)
    result = run_ocrd("list", "-c", config, "--at", at)
    assert result.returncode == 2
    assert result.stdout == ""
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_in_use_is_now_and_settling_is_by_the_timestamps(
    tmp_path: Path, run_ocrd: OcrdRunner
) -> None:
    """Under settle = "1h" every file, just made, settles now; a day on none does. A file
    held open now is in_use at any --at: who will hold it then, ocrd cannot know."""
    config = tree(tmp_path, settle="1h")
    models = tmp_path / "models"
    os.utime(models / "twenty.bin", (time.time() - 40 * DAY, time.time() - 40 * DAY))
    now = listed(run_ocrd, config)
    assert {row["verdict"] for p, row in now.items() if p != "en.keep"} == {"settling"}
    settled = listed(run_ocrd, config, "+1d")
    assert settled["twenty.bin"]["verdict"] == "delete"
    assert settled["ten.bin"]["verdict"] == "keep"
    with open(models / "twenty.bin", "rb"):
        held = listed(run_ocrd, config, "+1d")
    assert held["twenty.bin"]["verdict"] == "in_use"
    assert "a process holds it" in held["twenty.bin"]["reason"]
    # Settling pushes due_at to its end: an hour after the file was made.
    made = os.stat(models / "twenty.bin").st_ctime
    assert now["twenty.bin"]["due_at"] == iso(made + 3600)


def test_the_json_rows_keep_their_shape(tmp_path: Path, run_ocrd: OcrdRunner) -> None:
    config = tree(tmp_path)
    result = run_ocrd("list", "-c", config, "--json", "--at", "+40d")
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    keys = set(json.loads(run_ocrd("list", "-c", config, "--json").stdout)[0])
    assert all(set(row) == keys for row in rows)
    assert "due_at" in keys


# --- the daemon, in process, with its clock set ahead ----------------------------------------


class World:
    """A Daemon on the tree, its clock a FakeClock that starts ``ahead`` seconds from now."""

    def __init__(self, config: Path, ahead: float) -> None:
        self.models = config.parent / "models"
        self.out = io.StringIO()
        log.configure("info", "json", stream=self.out)
        self.clock = FakeClock(wall=time.time() + ahead, mono=1000.0)
        self.daemon = Daemon(load(config), clock=self.clock)
        self.daemon.mirror.arm()
        self.daemon._rescan_all("startup")

    def step(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.daemon._after_wake()

    @property
    def deleted(self) -> set[str]:
        rows = [json.loads(line) for line in self.out.getvalue().splitlines()]
        return {e["path"] for e in rows if e["event"] == "model_deleted"}


@pytest.fixture
def worlds() -> Iterator[list[World]]:
    made: list[World] = []
    yield made
    for w in made:
        w.daemon.mirror.watching.stop()
    log.configure("info", "json")


@pytest.mark.parametrize("keeper", [True, False])
def test_a_daemon_40_days_on_deletes_what_list_at_40d_says(
    tmp_path: Path, run_ocrd: OcrdRunner, worlds: list[World], keeper: bool
) -> None:
    config = tree(tmp_path, keeper=keeper)
    foreseen = going(listed(run_ocrd, config, "+40d"))
    assert foreseen == ({"ten.bin", "twenty.bin"} if keeper else set())
    worlds.append(World(config, 40 * DAY))
    assert worlds[0].deleted == foreseen
    assert {p.name for p in (tmp_path / "models").iterdir()} == (
        {"en.keep"} if keeper else {"ten.bin", "twenty.bin"}
    )


@pytest.mark.parametrize("keeper", [True, False])
def test_a_daemon_running_all_along_deletes_each_file_at_its_due_at(
    tmp_path: Path, run_ocrd: OcrdRunner, worlds: list[World], keeper: bool
) -> None:
    """From now on, a FakeClock that runs: each file goes within the revisit slack
    (max_age / 10000) after its due_at, none before it, and one due_at says never stays."""
    config = tree(tmp_path, keeper=keeper)
    dues = {p: row["due_at"] for p, row in listed(run_ocrd, config).items()}
    w = World(config, 0.0)
    worlds.append(w)
    slack = 30 * DAY / 10_000
    for name in ("twenty.bin", "ten.bin"):
        due = dues[name]
        if due is None:
            continue
        w.step(epoch(due) - 2 - w.clock.time())
        assert name not in w.deleted
        w.step(2 + slack + 1)
        assert name in w.deleted
    w.step(400 * DAY)
    assert w.deleted == {p for p, due in dues.items() if due is not None}
    assert w.deleted == ({"ten.bin", "twenty.bin"} if keeper else {"twenty.bin"})


# --- ocrd_due_bytes ------------------------------------------------------------------------


def test_due_bytes_counts_what_comes_due_within_each_horizon(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    """A real ``ocrd run``: by mtime, due in 12 hours (1 byte), 5 days (10), 20 days (100);
    one due now (deleted by the pass: its verdict counts it, not this) and one never."""
    make_file(models, b"half_day.bin", b"a", age_s=29.5 * DAY)
    make_file(models, b"five_days.bin", b"b" * 10, age_s=25 * DAY)
    make_file(models, b"twenty_days.bin", b"c" * 100, age_s=10 * DAY)
    make_file(models, b"old_now.bin", b"d" * 1000)
    make_file(models, b"en.keep", b"e" * 10000, age_s=400 * DAY)
    d = start_ocrd(
        configs.config(tmp_path, retention=test_cli.RULES, metrics={"textfile": "ocrd.prom"})
    )
    d.note("READY=1")
    samples = {
        (s.name, tuple(s.labels.items())): s.value
        for family in text_string_to_metric_families((tmp_path / "ocrd.prom").read_text())
        for s in family.samples
    }
    assert samples[("ocrd_due_bytes", (("within", "1d"),))] == 1
    assert samples[("ocrd_due_bytes", (("within", "7d"),))] == 11
    assert samples[("ocrd_due_bytes", (("within", "30d"),))] == 111


def test_due_bytes_leaves_out_what_the_refusal_keeps() -> None:
    """Two model files only: the one coming due last would leave none, so it never goes."""
    totals = Totals()
    census = totals.census
    census.active = True
    files = [entry(b"ten.bin", age=25 * DAY, size=1), entry(b"twenty.bin", age=28 * DAY, size=10)]
    r = Rules((max_age(30),))
    census.begin()
    census.foresee(plan(files[:1], r, NOW), r, allow_delete_all=False)  # batches, as a walk
    census.foresee(plan(files[1:], r, NOW), r, allow_delete_all=False)
    totals.full_pass("startup", NOW, 0.1)
    assert census.due_bytes == {"1d": 0, "7d": 10, "30d": 10}
    census.begin()
    census.foresee(plan(files, r, NOW), r, allow_delete_all=True)
    census.commit()
    assert census.due_bytes == {"1d": 0, "7d": 11, "30d": 11}
