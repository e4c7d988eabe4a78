"""ocrd/daemon/batcher.py: the daemon's planned deletions until they are done, in process, on real
files, with a held file held by a real process; only the clock is fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ocrd.base.clock import FakeClock
from ocrd.config.load import validate
from ocrd.daemon.batcher import Batcher
from ocrd.daemon.engine import Supervisor
from ocrd.daemon.scheduler import Scheduler
from ocrd.daemon.timejump import ClockGuard
from ocrd.ops.stats import Totals
from ocrd.rules.retention import Rules, plan
from ocrd.watch.mirror import Mirror
from tests.conftest import make_file
from tests.worlds import held


class Room:
    def __init__(self, tmp_path: Path, dry_run: bool = False) -> None:
        self.models = tmp_path / "models"
        self.models.mkdir()
        self.config = validate(
            {
                "model_dir": "models",
                "engine": {"enabled": False},
                "watch": {"settle": "0s", "observer": "polling"},
                "retention": {"prefixes": ["old_"], "dry_run": dry_run},
            },
            tmp_path / "config.toml",
        )
        self.clock = FakeClock()
        self.mirror = Mirror(
            self.config.model_dir,
            self.config.watch,
            self.clock,
            wake=lambda: None,
            tick=lambda: False,
        )
        self.scheduler = Scheduler(self.clock, 600.0, None)
        self.totals = Totals()
        self.batcher = Batcher(
            self.config,
            mirror=self.mirror,
            scheduler=self.scheduler,
            engine=Supervisor(self.config.engine, self.config.model_dir),
            totals=self.totals,
            clock=self.clock,
            clock_guard=ClockGuard(self.clock, on_jump=lambda: None),
            stop=lambda: False,
            wake=lambda: None,
        )
        self.rules = Rules.from_config(self.config.retention, 0.0)

    def scan_and_submit(self) -> None:
        scan = self.mirror.scan()
        entries = [e for batch in scan for e in batch]
        self.mirror.adopt(scan)
        self.batcher.submit(plan(entries, self.rules, self.clock.time()), self.rules, at_once=True)


@pytest.fixture
def room(tmp_path: Path) -> Iterator[Room]:
    r = Room(tmp_path)
    yield r
    r.mirror.watching.stop()


def test_a_held_file_backs_off_and_is_tried_again_once_its_time_comes(room: Room) -> None:
    make_file(room.models, b"old_held.bin")
    make_file(room.models, b"old_free.bin")
    with held(room.models / "old_held.bin", "open"), capture_logs() as logs:
        room.scan_and_submit()
        skipped = [e for e in logs if e["event"] == "deletion_skipped"]
        assert [(e["path"], e["reason"], e["attempt"]) for e in skipped] == [
            ("old_held.bin", "in_use", 1)
        ]
        delay = skipped[0]["retry_in_s"]
        assert delay > 0
        assert [e["path"] for e in logs if e["event"] == "model_deleted"] == ["old_free.bin"]
        assert b"old_free.bin" not in room.mirror.index  # a deleted file leaves the mirror
        # A full pass plans it again before its time: its backoff holds, nothing is tried.
        logs.clear()
        room.scan_and_submit()
        assert [e["event"] for e in logs if e["event"].startswith("deletion")] == []
        assert room.scheduler.timeout() == pytest.approx(delay)
    # Its time comes, and its holder has let go: it goes.
    room.clock.advance(delay)
    assert room.scheduler.due_revisits() == {b"old_held.bin"}
    with capture_logs() as logs:
        room.scan_and_submit()
    assert [e["path"] for e in logs if e["event"] == "model_deleted"] == ["old_held.bin"]
    t = room.totals.since_start
    assert (t.deleted, dict(t.skipped)) == (2, {"in_use": 1})
    assert sorted(p.name for p in room.models.iterdir()) == []


def test_under_dry_run_each_file_version_is_said_once(tmp_path: Path) -> None:
    room = Room(tmp_path, dry_run=True)
    try:
        path = make_file(room.models, b"old_a.bin")
        with capture_logs() as logs:
            room.scan_and_submit()
            room.scan_and_submit()
        assert [e["event"] for e in logs] == ["model_would_be_deleted"]
        with open(path, "ab") as fh:  # a new version of it: said again
            fh.write(b"more")
        room.clock.advance(1)
        with capture_logs() as logs:
            room.scan_and_submit()
        assert [(e["event"], e["size"]) for e in logs] == [("model_would_be_deleted", 5)]
        assert (room.models / "old_a.bin").exists()
        assert room.totals.since_start.would_delete == 2
    finally:
        room.mirror.watching.stop()
