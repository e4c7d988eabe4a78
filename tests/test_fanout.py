"""ocrd.ops.fanout.FanOut deleting real files: every item once, threads only when the kernel's share
says so, a directory never split between threads, stop honoured between items, and errors
raised only after every result already produced."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocrd.fs.dirfds import DirFds
from ocrd.fs.place import pin
from ocrd.ops.fanout import FanOut, Timer
from tests.conftest import make_file

Done = tuple[bytes, str]  # (path deleted, name of the thread that deleted it)


def unlink_all(
    dirs: DirFds, items: list[bytes], timer: Timer | None, pause: Callable[[], bool]
) -> Iterator[Done]:
    """The Work: unlink each file of one directory, timing the unlink when asked."""
    for rel in items:
        if pause():
            return
        parent, _, name = rel.rpartition(b"/")
        fd = dirs.open(parent)
        began = time.perf_counter()
        os.unlink(name, dir_fd=fd)
        if timer is not None:
            timer.since(began)
        yield rel, threading.current_thread().name


def drain(results: Iterator[Done], into: list[Done]) -> None:
    into.extend(results)  # item by item: what came before an error is kept


def groups_of(models: Path, ndirs: int, per_dir: int) -> list[list[bytes]]:
    groups = []
    for d in range(ndirs):
        group = [b"d%03d/f%03d.bin" % (d, i) for i in range(per_dir)]
        for rel in group:
            make_file(models, rel)
        groups.append(group)
    return groups


def left(models: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(models))


# share=0.0 (with no least wait): the kernel's share always pays for threads; 2.0: it never can.
WIDE: FanOut[bytes, Done] = FanOut(threads=3, sample=8, share=0.0, handful=4, min_wait_s=0.0)
NARROW: FanOut[bytes, Done] = FanOut(threads=3, sample=8, share=2.0)


@pytest.mark.parametrize("fan", [WIDE, NARROW], ids=["threads", "one_thread"])
def test_every_file_is_deleted_once_and_reported_once(
    models: Path, fan: FanOut[bytes, Done]
) -> None:
    groups = groups_of(models, 20, 10)
    interval = sys.getswitchinterval()
    with DirFds(pin(models)) as dirs:
        done = list(fan.run(groups, dirs, unlink_all))
    paths = Counter(rel for rel, _ in done)
    assert set(paths) == {rel for g in groups for rel in g}
    assert set(paths.values()) == {1}
    assert left(models) == 0
    assert sys.getswitchinterval() == interval  # restored once the threads are done
    threads = {name for _, name in done}
    if fan is WIDE:
        assert any(name.startswith("ocrd-delete-") for name in threads), threads
    else:
        assert threads == {threading.current_thread().name}


def test_a_directory_is_never_shared_between_threads(models: Path) -> None:
    groups = groups_of(models, 30, 12)
    with DirFds(pin(models)) as dirs:
        done = list(WIDE.run(groups, dirs, unlink_all))
    by_dir: dict[bytes, set[str]] = {}
    for rel, name in done:
        by_dir.setdefault(rel.rpartition(b"/")[0], set()).add(name)
    # The calling thread may start a directory and a worker finish it (the sample ends
    # mid-directory); two workers never share one.
    for d, names in by_dir.items():
        workers = {n for n in names if n.startswith("ocrd-delete-")}
        assert len(workers) <= 1, (d, names)


@pytest.mark.parametrize("fan", [WIDE, NARROW], ids=["threads", "one_thread"])
def test_stop_leaves_the_rest_alone_and_reports_exactly_what_was_deleted(
    models: Path, fan: FanOut[bytes, Done]
) -> None:
    groups = groups_of(models, 20, 10)
    yielded: list[Done] = []
    with DirFds(pin(models)) as dirs:
        for result in fan.run(groups, dirs, unlink_all, stop=lambda: len(yielded) >= 55):
            yielded.append(result)
    if fan is NARROW:
        assert len(yielded) == 55  # asked before each item, mid-directory: not one more
    else:
        # Workers go on with what they hold until they hear of the stop: what they deleted
        # meanwhile is yielded all the same.
        assert len(yielded) >= 55
    gone = {rel for g in groups for rel in g if not os.path.exists(models / os.fsdecode(rel))}
    assert gone == {rel for rel, _ in yielded}  # nothing deleted goes unreported


def test_an_error_in_a_worker_comes_after_every_result_produced(models: Path) -> None:
    groups = groups_of(models, 20, 10)
    os.unlink(models / "d015" / "f005.bin")  # a worker's unlink fails on it
    yielded: list[Done] = []
    with DirFds(pin(models)) as dirs, pytest.raises(FileNotFoundError):
        drain(WIDE.run(groups, dirs, unlink_all), yielded)
    gone = {rel for g in groups for rel in g if not os.path.exists(models / os.fsdecode(rel))}
    assert gone - {b"d015/f005.bin"} == {rel for rel, _ in yielded}


def test_an_error_making_the_groups_comes_after_the_groups_taken(models: Path) -> None:
    groups = groups_of(models, 10, 10)

    def planned() -> Iterator[list[bytes]]:
        yield from groups[:6]
        raise RuntimeError("the walk failed")

    yielded: list[Done] = []
    with DirFds(pin(models)) as dirs, pytest.raises(RuntimeError, match="walk failed"):
        drain(WIDE.run(planned(), dirs, unlink_all), yielded)
    assert {rel for rel, _ in yielded} == {rel for g in groups[:6] for rel in g}
    assert left(models) == 40  # the four groups never made are untouched


def _waiting_work(
    wait_s: float,
) -> Callable[[DirFds, list[bytes], Timer | None, Callable[[], bool]], Iterator[Done]]:
    """A Work whose every item is timed as ``wait_s`` spent without the GIL (no file touched)."""

    def work(
        dirs: DirFds, items: list[bytes], timer: Timer | None, pause: Callable[[], bool]
    ) -> Iterator[Done]:
        for rel in items:
            if pause():
                return
            if timer is not None:
                timer.waited += wait_s
            yield rel, threading.current_thread().name

    return work


@pytest.mark.parametrize(("wait_s", "wide"), [(5e-6, False), (200e-6, True)])
def test_threads_only_for_long_stretches_without_the_gil(
    tmp_path: Path, wait_s: float, wide: bool
) -> None:
    """However large the kernel's share, a short stretch without the GIL per item (the
    compiled step on tmpfs) is taken back by handing the GIL around: no threads for it."""
    fan: FanOut[bytes, Done] = FanOut(threads=3, sample=8, share=0.0, handful=4)
    groups = [[b"d%03d/f%03d" % (d, i) for i in range(20)] for d in range(6)]
    with DirFds(os.fsencode(tmp_path)) as dirs:
        done = list(fan.run(groups, dirs, _waiting_work(wait_s)))
    assert len(done) == 120
    threads = {name for _, name in done}
    assert any(n.startswith("ocrd-delete-") for n in threads) is wide, threads
