"""The bookkeeping behind STATUS= and the metrics file, with plain values."""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable

import pytest

from ocrd.base.human import count, size
from ocrd.ops.stats import Totals

AT = calendar.timegm((2026, 1, 2, 3, 4, 5))


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (2, "2 bytes"),
        (1023, "1023 bytes"),
        (1024, "1.0 KiB"),
        (1024 * 1024, "1.0 MiB"),
        (int(4.1 * 1024**3), "4.1 GiB"),
        (3 * 1024**5, "3072.0 TiB"),
    ],
)
def test_size_in_human_units(n: int, text: str) -> None:
    assert size(n) == text


def test_short_sizes_for_the_list_columns() -> None:
    assert [size(n, short=True) for n in (0, 1, 1023, 1024)] == ["0 B", "1 B", "1023 B", "1.0 KiB"]


def test_count_has_the_right_noun() -> None:
    assert [count(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]
    assert count(1, "engine cycle") == "1 engine cycle"


def test_fresh_status_says_what_is_there() -> None:
    assert Totals().status(1, 1) == (
        "1 file (1 byte) in model_dir; nothing to delete yet; since start: deleted 0 files "
        "(0 bytes)"
    )


def test_totals_add_up_over_passes_and_the_last_pass_is_its_own() -> None:
    t = Totals()
    for cycle, batch in enumerate(([300_000], [300_000, 300_000], [148_576]), 1):
        t.begin_pass(AT)
        for n in batch:
            t.deleted(n, "prefix")
        t.engine(cycle, cycle * 0.5)
    t.skipped("in_use")
    t.skipped("in_use")
    t.skipped("changed")
    assert t.status(2, 2048) == (
        "2 files (2.0 KiB) in model_dir; last pass 03:04:05Z: deleted 1 file (145.1 KiB), "
        "skipped 3 (changed 1, in_use 2); since start: deleted 4 files (1.0 MiB), "
        "skipped 3 (changed 1, in_use 2), 3 engine cycles"
    )
    assert t.deleted_by_rule == {"prefix": 4}
    assert t.freed_by_rule == {"prefix": 1_048_576}
    assert (t.engine_cycles, t.engine_downtime_s) == (3, 1.5)


def test_the_engine_numbers_move_the_generation_only_when_they_change() -> None:
    t = Totals()
    t.engine(0, 0.0)
    before = t.generation
    t.engine(0, 0.0)
    assert t.generation == before
    t.engine(1, 0.2)
    assert t.generation > before
    assert t.status(0, 0).endswith("since start: deleted 0 files (0 bytes), 1 engine cycle")


def test_rejected_reload_shows_until_a_good_one() -> None:
    t = Totals()
    errors = [
        "/etc/ocrd/config.toml: at 'retention.max_age': \"30 days\" is not a duration",
        "/etc/ocrd/config.toml: at 'bogus': unknown key",
    ]
    t.rejected(errors, AT, "/etc/ocrd/config.toml")
    assert t.status(0, 0).startswith(
        "reload REJECTED at 03:04:05Z, old rules in force: config.toml: at 'retention.max_age': "
        '"30 days" is not a duration (+1 more); 0 files (0 bytes) in model_dir'
    )
    before = t.generation
    t.reloaded()
    assert "REJECTED" not in t.status(0, 0)
    assert t.generation > before


def test_a_long_problem_is_shortened() -> None:
    t = Totals()
    t.rejected(["c.toml: at 'model_dir': " + "x" * 5000], AT, "c.toml")
    assert len(t.status(0, 0)) < 400


def test_dry_run_and_failures_are_told() -> None:
    t = Totals()
    t.begin_pass(AT)
    t.would_delete(10)
    t.failed()
    assert t.status(1, 10, missing=None).split("; ")[1] == (
        "last pass 03:04:05Z: dry run: would delete 1 file (10 bytes), failed 1"
    )
    assert t.status(0, 0, missing="/m").startswith("model_dir /m is missing; waiting for it; ")


def test_every_change_moves_the_generation() -> None:
    t = Totals()
    seen = {t.generation}
    changes: tuple[Callable[[], None], ...] = (
        lambda: t.begin_pass(time.time()),
        lambda: t.deleted(1, None),
        lambda: t.skipped("in_use"),
        t.failed,
        lambda: t.engine(1, 0.5),
        lambda: t.full_pass("rescan", time.time(), 0.1),
    )
    for change in changes:
        change()
        assert t.generation not in seen
        seen.add(t.generation)


def test_deletions_waiting_for_the_batch_window_are_told_as_due() -> None:
    t = Totals()
    t.begin_pass(AT)
    assert t.status(3, 3, due=2) == (
        "3 files (3 bytes) in model_dir; last pass 03:04:05Z: nothing done yet; "
        "2 deletions due (engine.batch); since start: deleted 0 files (0 bytes)"
    )


def test_a_held_reload_is_told_as_held() -> None:
    t = Totals()
    t.rejected(["it would delete 40 of 50 models more"], AT, "/etc/ocrd/config.toml", held=True)
    assert t.status(50, 50).startswith(
        "reload HELD at 03:04:05Z, old rules in force: config.toml: it would delete 40 of 50 "
        "models more; 50 files"
    )
    t.reloaded()
    assert "HELD" not in t.status(50, 50)
