"""Wall-clock jumps, in process: the daemon on real files, its clock a FakeClock that the test
steps (``jump``: the wall clock alone, as ``date -s`` or an NTP step) or lets run (``advance``:
both clocks, as time passing). The files are real and made now; the fake wall clock starts two
days ahead, so to the daemon they have been in model_dir for two days (ctime included)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ocrd.base import log
from ocrd.base.clock import FakeClock
from ocrd.config.load import load
from ocrd.daemon.loop import Daemon
from ocrd.rules.decision import Decision, Verdict
from tests.configs import config
from tests.conftest import make_file

DAY = 86400.0


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.models = tmp_path / "models"
        self.models.mkdir()
        make_file(self.models, b"two_days.bin", b"GGUF")
        self.config = load(
            # The file is the only model: these tests are about when it ages out.
            config(
                tmp_path,
                retention={"prefixes": None, "max_age": "30d", "allow_delete_all": True},
                watch={"rescan": None},
            )
        )
        self.out = io.StringIO()
        log.configure("info", "json", stream=self.out)
        self.clock = FakeClock(wall=time.time() + 2 * DAY, mono=1000.0)
        self.daemon = Daemon(self.config, clock=self.clock)
        self.daemon.mirror.arm()
        self.daemon._rescan_all("startup")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in self.out.getvalue().splitlines()]
        return [e for e in rows if name is None or e["event"] == name]

    @property
    def present(self) -> bool:
        return (self.models / "two_days.bin").exists()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.daemon.mirror.watching.stop()
        log.configure("info", "json")


def test_without_a_jump_the_file_goes_once_it_is_30_days_old(world: World) -> None:
    """The control: the same 29 days, passing on both clocks, delete the file."""
    assert world.present
    world.clock.advance(29 * DAY)
    world.daemon._after_wake()
    assert not world.present
    assert world.events("clock_jumped") == []
    assert [e["path"] for e in world.events("model_deleted")] == ["two_days.bin"]


def test_a_forward_jump_suspends_max_age_and_files_age_from_the_jump(world: World) -> None:
    """The issue's case: +29 days under max_age = "30d". The two-day-old file is kept; it has
    been in model_dir under the new clock for no time at all."""
    world.clock.jump(29 * DAY)
    world.daemon._after_wake()
    assert world.present
    (jumped,) = world.events("clock_jumped")
    assert jumped["level"] == "warning"
    assert jumped["jump_s"] == pytest.approx(29 * DAY, abs=1)
    assert jumped["suspended"] == "max_age"
    scans = [e["trigger"] for e in world.events("scan_completed")]
    assert scans == ["startup", "clock_jumped"]
    # Time passes under the new clock: 29 days after the jump it is still there...
    world.clock.advance(29 * DAY)
    world.daemon._after_wake()
    assert world.present
    # ...and once it has been there max_age under the new clock (plus the revisit bucket's
    # slack, max_age / 10000), it goes like any other file.
    world.clock.advance(DAY + 300)
    world.daemon._after_wake()
    assert not world.present
    assert len(world.events("clock_jumped")) == 1


def test_a_backward_jump_is_reported_too(world: World) -> None:
    world.clock.jump(-29 * DAY)
    world.daemon._after_wake()
    (jumped,) = world.events("clock_jumped")
    assert jumped["jump_s"] == pytest.approx(-29 * DAY, abs=1)
    assert world.present


def test_a_step_within_the_threshold_is_not_a_jump(world: World) -> None:
    world.clock.jump(30.0)
    world.daemon._after_wake()
    assert world.events("clock_jumped") == []


def test_deletions_planned_before_a_jump_are_dropped_and_planned_again(world: World) -> None:
    """A jump noticed just before a flush: nothing planned under the old clock is deleted; the
    next step scans under the new one."""
    d = world.daemon
    entry = d.mirror.index.get(b"two_days.bin")
    assert entry is not None
    d.batcher.due[entry.path] = Decision(
        entry, Verdict.DELETE, "max_age", "planned before the jump"
    )
    world.clock.jump(40 * DAY)
    d.batcher.run_due()
    assert world.present
    assert d.batcher.due == {}
    assert len(world.events("clock_jumped")) == 1
    d._after_wake()  # the fresh scan, with the file ageing from the jump: kept
    assert world.present
    assert [e["trigger"] for e in world.events("scan_completed")][-1] == "clock_jumped"
    assert world.events("model_deleted") == []


def test_a_jump_stops_a_batch_between_two_files(world: World) -> None:
    """The deleter asks _should_stop between files: a jump noticed there ends the batch, and
    the next step scans under the new clock."""
    d = world.daemon
    assert not d._should_stop()
    world.clock.jump(-DAY)
    assert d._should_stop()
    assert d.clock_guard.pending
    d._after_wake()
    assert not d.clock_guard.pending
    assert [e["trigger"] for e in world.events("scan_completed")] == ["startup", "clock_jumped"]
