"""Big trees, in process: between two looks at the loop (the hook that feeds the watchdog and
notices SIGTERM) the daemon plans a bounded number of files, whatever the tree's shape, with
families off and on: at start-up, for one event, for the reload guard. The guard plans the
tree once. ``ocrd list --json`` streams. bench/bigtree.py measures the same at 2M files
(docs/big-trees.md)."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import ocrd.daemon.rescans
import ocrd.ops.passes
import ocrd.rules.reload
from ocrd.base import log
from ocrd.cli.main import main as cli
from ocrd.config.load import load
from ocrd.daemon.loop import Daemon
from ocrd.fs.inventory import FileEntry
from ocrd.fs.scan import walk_batches
from ocrd.rules.decision import Plan
from ocrd.rules.retention import Rules
from ocrd.rules.retention import plan as real_plan
from tests import configs

K = 8192  # files the daemon may plan between two looks at the loop
N = 5 * 4096 + 7  # files in the tree: several times K, not a multiple of anything
FAMILY = r"^(?:d[0-9]+/)?(?P<family>m[0-9]+)-v(?P<version>[0-9]+)\.gguf$"

FAMILIES = {"keep_newest": 4, "family": FAMILY}


def config(directory: Path, *, families: bool, name: str = "config.toml", **more: Any) -> Path:
    """The prefix rule old_ and max_age 30d (every file here is kept, and has a revisit), with
    keep_newest and a family pattern when ``families``."""
    retention = {"prefixes": ["old_"], "max_age": "30d", **(FAMILIES if families else {}), **more}
    return configs.config(directory, name, retention=retention)


def build(models: Path, n: int = N, dirs: int = 0) -> None:
    """``n`` empty files, 4 versions a family, in ``models`` or over ``dirs`` directories."""
    models.mkdir()
    places = [models] if dirs == 0 else [models / f"d{i}" for i in range(dirs)]
    for p in places:
        p.mkdir(exist_ok=True)
    for i in range(n):
        fam, ver = divmod(i, 4)
        os.mknod(places[fam % len(places)] / f"m{fam}-v{ver}.gguf", 0o644 | stat.S_IFREG)


class Looks:
    """Counts the files planned since the loop was last looked at (Daemon._tick), and
    the most seen between two looks; ``stop_at``: simulate SIGTERM once that many files
    were planned."""

    def __init__(self) -> None:
        self.since = 0
        self.most = 0
        self.biggest = 0  # the most files in one plan
        self.planned = 0
        self.looks = 0
        self.stop_at: int | None = None
        self.daemon: Daemon | None = None
        self.held: list[tuple[int, int]] = []  # (files planned, records the mirror holds)

    def look(self) -> None:
        self.looks += 1
        self.since = 0

    def planning(self, files: Sequence[FileEntry]) -> None:
        self.since += len(files)
        self.biggest = max(self.biggest, len(files))
        self.planned += len(files)
        self.most = max(self.most, self.since)
        daemon = self.daemon
        if daemon is not None:
            self.held.append((self.planned, len(daemon.mirror.index)))
        stop = self.stop_at is not None and self.planned >= self.stop_at
        if stop and daemon is not None and daemon.stop_signal is None:
            daemon._on_signal(signal.SIGTERM, None)


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Looks]:
    seen = Looks()
    real_tick = Daemon._tick

    def tick(self: Daemon) -> bool:
        seen.look()
        return real_tick(self)

    def plan(inventory: Any, rules: Rules, now: float) -> Plan:
        files = list(inventory)
        seen.planning(files)
        return real_plan(files, rules, now)

    monkeypatch.setattr(Daemon, "_tick", tick)
    monkeypatch.setattr(ocrd.daemon.rescans, "plan", plan)
    monkeypatch.setattr(ocrd.rules.reload, "plan", plan)
    out = io.StringIO()
    log.configure("info", "json", stream=out)
    try:
        yield seen
    finally:
        log.configure("info", "json")


def started(tmp_path: Path, families: bool, seen: Looks) -> Daemon:
    daemon = Daemon(load(config(tmp_path, families=families)))
    seen.daemon = daemon
    daemon.mirror.arm()
    return daemon


@pytest.mark.parametrize("families", [False, True], ids=["plain", "families"])
@pytest.mark.parametrize("dirs", [0, 3], ids=["one_dir", "spread"])
def test_start_up_looks_at_the_loop_every_few_thousand_files(
    tmp_path: Path, looks: Looks, families: bool, dirs: int
) -> None:
    build(tmp_path / "models", dirs=dirs)
    daemon = started(tmp_path, families, looks)
    try:
        daemon._rescan_all("startup")
        assert daemon.mirror.index.files == N
        assert looks.planned == N  # every file planned once
        assert looks.most <= K, f"{looks.most} files planned without a look at the loop"
    finally:
        daemon.mirror.watching.stop()


def test_one_event_with_families_looks_at_the_loop_while_it_plans_everything(
    tmp_path: Path, looks: Looks
) -> None:
    build(tmp_path / "models")
    daemon = started(tmp_path, True, looks)
    try:
        daemon._rescan_all("startup")
        looks.most = looks.planned = 0
        (tmp_path / "models" / "old_probe.bin").write_bytes(b"x")
        daemon.mirror.pending.add(b"old_probe.bin")
        daemon._after_wake()
        assert not (tmp_path / "models" / "old_probe.bin").exists()
        assert looks.planned == N + 1
        assert looks.most <= K, f"{looks.most} files planned without a look at the loop"
        # Each kept file has one revisit (max_age), not one more per event.
        assert daemon.scheduler._entries <= N
    finally:
        daemon.mirror.watching.stop()


@pytest.mark.parametrize("families", [False, True], ids=["plain", "families"])
def test_the_reload_guard_plans_the_tree_once_and_looks_at_the_loop(
    tmp_path: Path, looks: Looks, families: bool
) -> None:
    """New rules that delete nothing more (a prefix no file has): the guard plans every file
    once, under the new rules, not once more under the rules in force."""
    build(tmp_path / "models")
    daemon = started(tmp_path, families, looks)
    try:
        daemon._rescan_all("startup")
        looks.most = looks.planned = 0
        new = load(config(tmp_path, families=families, name="new.toml", prefixes=["old_", "zzz_"]))
        assert daemon._widening(new) is None
        assert looks.planned == N
        assert looks.most <= K, f"{looks.most} files planned without a look at the loop"
        # The same rules again: nothing to weigh, nothing planned.
        looks.planned = 0
        assert daemon._widening(daemon.config) is None
        assert looks.planned == 0
    finally:
        daemon.mirror.watching.stop()


@pytest.mark.parametrize("families", [False, True], ids=["plain", "families"])
def test_sigterm_during_a_long_start_up_stops_it_within_a_part(
    tmp_path: Path, looks: Looks, families: bool
) -> None:
    build(tmp_path / "models")
    daemon = started(tmp_path, families, looks)
    looks.stop_at = 1
    try:
        daemon._rescan_all("startup")
        assert daemon.stop_signal == signal.SIGTERM
        assert looks.planned <= K, f"{looks.planned} files planned after SIGTERM"
    finally:
        daemon.mirror.watching.stop()


def test_a_rescan_holds_one_record_per_file(tmp_path: Path, looks: Looks) -> None:
    """As a rescan finds each file anew, the index it replaces lets the file's record go:
    the two never hold more than one record per file between them."""
    build(tmp_path / "models")
    daemon = started(tmp_path, False, looks)
    try:
        daemon._rescan_all("startup")
        looks.planned = 0
        looks.held.clear()
        daemon._rescan_all("rescan")
        assert daemon.mirror.index.files == N
        assert looks.held
        worst = max(planned + old for planned, old in looks.held)
        assert worst <= N, f"{worst - N} records held twice"
    finally:
        daemon.mirror.watching.stop()


def test_a_walk_looks_at_the_loop_within_one_big_directory(tmp_path: Path) -> None:
    build(tmp_path / "models")
    ticks: list[int] = []
    seen = 0
    batches: list[int] = []
    fd = os.open(tmp_path / "models", os.O_RDONLY | os.O_DIRECTORY)

    def tick() -> bool:
        ticks.append(seen)
        return False

    for batch in walk_batches(fd, [], [], tick=tick, chunk=K):
        seen += len(batch)
        batches.append(len(batch))
    assert sum(batches) == N
    assert max(batches) <= K
    assert len(ticks) >= N // 4096


class Writes(io.StringIO):
    """stdout that counts its writes, and the files planned before each."""

    def __init__(self, seen: Looks) -> None:
        super().__init__()
        self.seen = seen
        self.planned_at: list[int] = []

    def write(self, text: str) -> int:
        self.planned_at.append(self.seen.planned)
        return super().write(text)


@pytest.mark.parametrize("families", [False, True], ids=["plain", "families"])
def test_list_json_writes_its_rows_part_by_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, families: bool
) -> None:
    """Rows are written as parts are planned: no plan of more than K files, and output
    written before the last file is planned, so no row per file of the whole tree is held."""
    build(tmp_path / "models")
    path = config(tmp_path, families=families)
    seen = Looks()

    def plan(inventory: Any, rules: Rules, now: float) -> Plan:
        files = list(inventory)
        seen.planning(files)
        return real_plan(files, rules, now)

    monkeypatch.setattr(ocrd.ops.passes, "plan", plan)
    out = Writes(seen)
    monkeypatch.setattr(sys, "stdout", out)
    assert cli(["list", "--json", "-c", str(path)]) == 0
    rows = json.loads(out.getvalue())
    assert len(rows) == N
    assert {r["verdict"] for r in rows} == {"keep"}
    if families:
        assert {r["rank"] for r in rows} == {1, 2, 3, 4}
    assert seen.biggest <= K, f"a plan of {seen.biggest} files"
    last = seen.planned
    assert any(0 < at < last for at in out.planned_at), "nothing written before the last plan"
