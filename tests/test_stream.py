"""ocrd/ops/stream.py and FanOut.run over groups made as they are taken: ``ocrd clean`` deletes
each directory as soon as its walk has planned it, with the verdicts of the whole plan."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocrd.base.errors import ModelDirMissing
from ocrd.fs.dirfds import DirFds
from ocrd.fs.place import pin
from ocrd.fs.scan import scan
from ocrd.ops.fanout import FanOut, Timer
from ocrd.ops.stream import Walked, planned
from ocrd.rules.retention import Rules
from ocrd.rules.selectors import MaxAgeRule, PrefixRule
from tests.conftest import OcrdRunner, make_file
from tests.test_cli import (
    cli_config,  # prefix old_, 30 days by mtime, whitelist *.keep
)

DAY = 86400


def varied_tree(models: Path, seed: int) -> None:
    """Nested directories with every kind of verdict: by name, by age, whitelisted, kept,
    symlinks, and the private name of an interrupted deletion."""
    rng = random.Random(seed)
    dirs = [b""] + [b"d%d" % i for i in range(8)] + [b"d%d/s%d" % (i, i) for i in range(0, 8, 2)]
    dirs.append(b"d1/s1/deep/er")
    for n in range(240):
        where = rng.choice(dirs)
        kind = rng.random()
        name = (
            b"old_%d.bin" % n
            if kind < 0.15
            else b"m_%d.keep" % n
            if kind < 0.22
            else b".ocrd-deleting-cce882604d4f-1-0a1b2c3d-%08x" % n
            if kind < 0.24
            else b"m_%d.bin" % n
        )
        make_file(models, os.path.join(where, name), b"x" * n, age_s=rng.uniform(0, 60) * DAY)
    for n, where in enumerate(dirs[:6]):
        os.symlink(b"old_0.bin", os.path.join(os.fsencode(models), where, b"link%d" % n))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_clean_deletes_exactly_what_the_whole_plan_deletes(
    tmp_path: Path, run_ocrd: OcrdRunner, seed: int
) -> None:
    models = tmp_path / "models"
    varied_tree(models, seed)
    path = cli_config(tmp_path)
    rows = json.loads(run_ocrd("list", "--json", "-c", path).stdout)
    due = {r["path"] for r in rows if r["verdict"] == "delete"}
    stays = {r["path"] for r in rows if r["verdict"] != "delete"}
    assert due  # and some stay: else the test could not tell a streamed pass from a whole one
    assert stays
    assert {r["rule"] for r in rows if r["verdict"] == "delete"} == {
        "prefix",
        "max_age",
        "interrupted",
    }
    result = json.loads(run_ocrd("clean", "--json", "-c", path).stdout)
    assert sorted(result["deleted"]) == sorted(due)
    assert result["refused"] is None
    assert (result["skipped"], result["failed"]) == ([], [])
    assert set(files_under(models)) == stays


def files_under(models: Path) -> list[str]:
    """Every file left under ``models``, relative to it."""
    return [os.path.relpath(os.path.join(d, f), models) for d, _, fs in os.walk(models) for f in fs]


def walk_order(models: Path) -> list[bytes]:
    """The directories as the walk meets them (those holding files)."""
    seen: list[bytes] = []
    for f in scan(models).files:
        parent = f.path.rpartition(b"/")[0]
        if parent not in seen:
            seen.append(parent)
    return seen


def aged_and_named(models: Path) -> list[bytes]:
    """Six directories of a file past max_age, and one file named for deletion (in d3); the
    directories in walk order."""
    for d in range(6):
        make_file(models, b"d%d/aged.bin" % d, b"aa", age_s=40 * DAY)
    make_file(models, b"d3/old_named.bin")
    return walk_order(models)


def test_deletions_by_age_wait_for_a_file_that_stays_even_in_the_last_directory(
    tmp_path: Path, run_ocrd: OcrdRunner
) -> None:
    models = tmp_path / "models"
    last = aged_and_named(models)[-1]
    make_file(models, os.path.join(last, b"fresh.bin"))
    assert walk_order(models)[-1] == last  # a new file does not move its directory
    path = cli_config(tmp_path)
    result = json.loads(run_ocrd("clean", "--json", "-c", path).stdout)
    assert result["refused"] is None
    assert sorted(result["deleted"]) == sorted(
        ["d3/old_named.bin", *(f"d{d}/aged.bin" for d in range(6))]
    )
    assert files_under(models) == [os.fsdecode(os.path.join(last, b"fresh.bin"))]


def test_without_a_file_that_stays_only_the_named_ones_go(
    tmp_path: Path, run_ocrd: OcrdRunner
) -> None:
    models = tmp_path / "models"
    aged_and_named(models)
    path = cli_config(tmp_path)
    result = json.loads(run_ocrd("clean", "--json", "-c", path).stdout)
    assert result["deleted"] == ["d3/old_named.bin"]
    assert result["refused"]["would_delete"] == 6
    assert result["refused"]["of_files"] == 7
    assert all((models / f"d{d}" / "aged.bin").exists() for d in range(6))


AGE_OR_PREFIX = Rules(
    (PrefixRule(("old_",)), MaxAgeRule(30 * DAY, "mtime", "timestamp")), settle=0.0
)


@pytest.mark.parametrize("fresh_in", [0, 2, 5])
def test_planned_holds_deletions_by_age_until_a_file_that_stays_was_walked(
    tmp_path: Path, fresh_in: int
) -> None:
    models = tmp_path / "models"
    order = aged_and_named(models)
    make_file(models, os.path.join(order[fresh_in], b"fresh.bin"))
    walked = Walked()
    yielded: list[tuple[int, list[bytes]]] = []  # (directories walked by then, paths)
    for group in planned(
        pin(models), AGE_OR_PREFIX, time.time(), allow_delete_all=False, walked=walked, plan_at=1
    ):
        yielded.append((len(walked.directories), [d.entry.path for d in group]))
    assert walked.refusal is None
    assert sorted(p for _, paths in yielded for p in paths) == sorted(
        [b"d3/old_named.bin", *(b"d%d/aged.bin" % d for d in range(6))]
    )
    # Nothing aged went before the walk had passed the directory of the file that stays (the
    # walk lists model_dir itself first).
    for walked_then, paths in yielded:
        if any(p.endswith(b"aged.bin") for p in paths):
            assert walked_then >= 1 + fresh_in + 1


def test_planned_without_a_file_that_stays_yields_only_the_named_and_refuses(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    aged_and_named(models)
    walked = Walked()
    groups = list(
        planned(
            pin(models),
            AGE_OR_PREFIX,
            time.time(),
            allow_delete_all=False,
            walked=walked,
            plan_at=1,
        )
    )
    assert [[d.entry.path for d in g] for g in groups] == [[b"d3/old_named.bin"]]
    assert walked.refusal is not None
    assert (walked.refusal.would_delete, walked.refusal.of_files) == (6, 7)


def test_a_model_dir_swapped_during_the_walk_stops_it(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for d in range(4):
        make_file(models, b"d%d/old_a.bin" % d)
    place = pin(models)
    rules = Rules((PrefixRule(("old_",)),), settle=0.0)
    walked = Walked()
    groups = planned(
        place, rules, 0.0, allow_delete_all=False, walked=walked, recheck_s=0.0, plan_at=1
    )
    first = next(groups)
    assert [d.entry.path.rpartition(b"/")[2] for d in first] == [b"old_a.bin"]
    os.rename(models, tmp_path / "elsewhere")
    models.mkdir()
    with pytest.raises(ModelDirMissing, match="replaced during the scan"):
        list(groups)


# --- FanOut.run over groups made as they are taken ------------------------------------------


def echo(
    dirs: DirFds, group: list[int], timer: Timer | None, pause: Callable[[], bool]
) -> Iterator[int]:
    for item in group:
        if pause():
            return
        yield item


class Broken(Exception):
    pass


@pytest.mark.parametrize("threads", [False, True], ids=["calling thread", "threads"])
def test_an_error_making_groups_comes_after_every_result_of_the_groups_taken(
    tmp_path: Path, threads: bool
) -> None:
    def groups() -> Iterator[list[int]]:
        yield [1, 2, 3]
        yield [4, 5, 6]
        yield [7, 8, 9]
        raise Broken

    fan: FanOut[int, int] = FanOut(
        sample=2 if threads else 1000, share=0.0, handful=1, min_wait_s=0.0
    )
    got: list[int] = []

    def take_all(dirs: DirFds) -> None:
        got.extend(fan.run(groups(), dirs, echo))

    with DirFds(os.fsencode(tmp_path)) as dirs, pytest.raises(Broken):
        take_all(dirs)
    assert sorted(got) == list(range(1, 10))
    assert not any(t.name.startswith("ocrd-delete-") for t in threading.enumerate())


def test_threads_work_while_the_groups_are_still_being_made(tmp_path: Path) -> None:
    worked = threading.Event()

    def work(
        dirs: DirFds, group: list[int], timer: Timer | None, pause: Callable[[], bool]
    ) -> Iterator[int]:
        for item in group:
            if pause():
                return
            if threading.current_thread().name.startswith("ocrd-delete-"):
                worked.set()
            yield item

    seen_before_last: list[bool] = []

    def groups() -> Iterator[list[int]]:
        for g in range(5):
            yield [g * 10 + i for i in range(3)]
        # A worker has worked a group before the last one is even made (or this waits out).
        seen_before_last.append(worked.wait(timeout=30))
        yield [99]

    fan: FanOut[int, int] = FanOut(sample=2, share=0.0, handful=1, min_wait_s=0.0)
    with DirFds(os.fsencode(tmp_path)) as dirs:
        got = sorted(fan.run(groups(), dirs, work))
    assert seen_before_last == [True]
    assert got == sorted([g * 10 + i for g in range(5) for i in range(3)] + [99])


def busy(seconds: float) -> float:
    """Spend ``seconds`` of wall time (a stand-in for time in the kernel, or a slow walk);
    returns when it began."""
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        pass
    return began


def test_time_spent_making_groups_does_not_count_against_threads(tmp_path: Path) -> None:
    """The sample that decides on threads times deletions, not the walk that plans them."""

    def work(
        dirs: DirFds, group: list[int], timer: Timer | None, pause: Callable[[], bool]
    ) -> Iterator[str]:
        for _ in group:
            if pause():
                return
            began = busy(0.001)  # all of it "waiting in the kernel"
            if timer is not None:
                timer.since(began)
            yield threading.current_thread().name

    def groups() -> Iterator[list[int]]:
        for _ in range(6):
            busy(0.05)  # a slow walk: fifty times a deletion
            yield list(range(10))

    fan: FanOut[int, str] = FanOut(sample=4, share=0.6, handful=1)
    with DirFds(os.fsencode(tmp_path)) as dirs:
        names = list(fan.run(groups(), dirs, work))
    assert len(names) == 60
    assert any(n.startswith("ocrd-delete-") for n in names)
