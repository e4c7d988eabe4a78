"""What an event costs ``ocrd run`` (docs/watching.md, "What an event costs"): many events on
one path are one look at it and one plan of it, a storm is taken a turn at a time and writes no
log line per event, the kernel is asked only for the events ocrd uses, and a file planned again
and again holds no pile of revisits.

Work is counted, not timed: ``daemon_stopped`` says how many events the watch delivered, how
many turns the loop took, how many paths it looked at again and how many files it planned
(ocrd/daemon/loop.py)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ocrd.config.load import load
from ocrd.daemon.loop import Daemon
from ocrd.daemon.scheduler import COMPACT_MIN
from ocrd.fs.place import pin
from ocrd.watch.observer import Watcher
from tests.configs import config
from tests.conftest import StartOcrd
from tests.harness import OcrdProcess, ocrd_argv

REOPENS = 300
PERIOD_S = 0.003  # one reopen every 3 ms: the storm of a process rewriting a state file

# inotify(7)'s bits
IN_ACCESS, IN_MODIFY, IN_ATTRIB = 0x1, 0x2, 0x4
IN_CLOSE_WRITE, IN_CLOSE_NOWRITE, IN_OPEN = 0x8, 0x10, 0x20


def reopen(path: Path, times: int, period: float) -> None:
    """Open ``path`` for writing, write a few bytes at its start, close it: ``times`` times,
    one every ``period`` seconds (paced from the start, so the rate holds)."""
    began = time.monotonic()
    for i in range(times):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"%04d" % (i % 10_000))
        finally:
            os.close(fd)
        time.sleep(max(0.0, began + (i + 1) * period - time.monotonic()))


def stopped_counts(d: OcrdProcess) -> dict[str, Any]:
    assert d.stop()[0] == 0
    line = d.event("daemon_stopped")
    counts = line["watch"]
    assert isinstance(counts, dict)
    return counts


def test_a_storm_on_one_path_is_planned_once_per_turn_not_once_per_event(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    (models / "d").mkdir()
    state = models / "d" / "state.bin"
    state.write_bytes(b"0000")
    d = start_ocrd(config(tmp_path, watch={"rescan": "1h"}), ready=True)
    d.event("watch_armed")
    reopen(state, REOPENS, PERIOD_S)
    # Deletions by event still happen in the storm's wake, promptly.
    (models / "d" / "old_x.bin").write_bytes(b"o")
    d.event("model_deleted", path="d/old_x.bin")
    counts = stopped_counts(d)
    # Each close is an event (watchdog's queue drops one equal to the one still waiting before
    # it, so a few may be merged on their way).
    assert counts["events"] >= REOPENS // 2, counts
    # One turn takes what came since the last: at most one look and one plan of the state file
    # per turn, and turns are far fewer than events.
    assert counts["planned"] <= counts["turns"] + 1  # old_x.bin may share a turn with it
    assert counts["planned"] <= REOPENS // 5, counts
    assert counts["looked_at"] <= REOPENS // 5, counts
    assert not (models / "d" / "old_x.bin").exists()


def test_a_storm_writes_no_log_line_per_event(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    state = models / "state.bin"
    state.write_bytes(b"0000")
    d = start_ocrd(config(tmp_path, watch={"rescan": "1h"}, log={"level": "debug"}), ready=True)
    d.event("watch_armed")
    with d.cond:
        before = len(d.lines)
    reopen(state, REOPENS, PERIOD_S)
    (models / "old_x.bin").write_bytes(b"o")
    d.event("model_deleted", path="old_x.bin")
    with d.cond:
        during = [e["event"] for e in d.events[before:]]
    assert len(during) < 20, during


def inotify_masks(pid: int) -> list[int]:
    """The event mask of every inotify watch ``pid`` holds (from /proc/PID/fdinfo)."""
    masks = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("inotify wd:"):
                field = next(f for f in line.split() if f.startswith("mask:"))
                masks.append(int(field.removeprefix("mask:"), 16))
    return masks


def test_the_kernel_is_asked_for_reads_only_when_last_use_is_recorded(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    (models / "sub").mkdir()
    plain = start_ocrd(config(tmp_path, watch={"rescan": "1h"}), ready=True)
    plain.event("watch_armed")
    masks = inotify_masks(plain.proc.pid)
    assert len(masks) >= 2  # model_dir and sub
    for mask in masks:
        assert mask & IN_CLOSE_WRITE
        assert not mask & (IN_ACCESS | IN_MODIFY | IN_ATTRIB | IN_OPEN | IN_CLOSE_NOWRITE)
    assert plain.stop()[0] == 0

    state = tmp_path / "state" / "state.db"
    recording = start_ocrd(
        config(tmp_path, "recording.toml", watch={"rescan": "1h"}, state={"path": str(state)}),
        ready=True,
    )
    recording.event("watch_armed")
    masks = inotify_masks(recording.proc.pid)
    assert masks
    for mask in masks:
        assert mask & IN_CLOSE_NOWRITE
        assert not mask & (IN_ACCESS | IN_MODIFY | IN_ATTRIB | IN_OPEN)
    assert recording.stop()[0] == 0


def test_a_burst_on_one_path_is_one_mark_and_one_wake(tmp_path: Path) -> None:
    """The handler only adds to a set: a burst on one path before the loop takes the marks is
    one path to look at, and the loop is woken once for it."""
    models = tmp_path / "models"
    models.mkdir()
    target = models / "state.bin"
    target.write_bytes(b"0000")
    woken = threading.Semaphore(0)
    wakes = []

    def wake() -> None:
        wakes.append(1)
        woken.release()

    watcher = Watcher(pin(models), "inotify", wake)
    watcher.start()
    try:
        reopen(target, 50, 0.002)
        assert woken.acquire(timeout=10)
        deadline = time.monotonic() + 10
        # watchdog's queue merges an event with an equal one still waiting: not all 50 need
        # come through, but many must (the observer's thread delivers them as they come).
        while watcher.counts.events < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watcher.counts.events >= 10
        changes = watcher.take()
    finally:
        watcher.stop()
    assert changes.files == {b"state.bin"}
    assert changes.dirs == set()
    assert len(wakes) == 1


def test_paths_outside_model_dir_are_not_marked(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    watcher = Watcher(pin(models), "inotify", lambda: None)
    root = watcher.root
    watcher.mark(root + b"-sibling/a.bin", False)  # shares the prefix, is not inside
    watcher.mark(os.path.dirname(root) + b"/elsewhere.bin", False)
    watcher.mark(root + b"/a/b.bin", False)
    watcher.mark(root, True)
    changes = watcher.take()
    assert changes.files == {b"a/b.bin"}
    assert changes.dirs == {b""}


def test_a_file_planned_again_and_again_holds_no_pile_of_revisits(tmp_path: Path) -> None:
    """A kept file is noted for a revisit when max_age will pass; a writer that keeps closing it
    has it planned every turn. The revisits noted before are stale, and are dropped in bulk:
    what the scheduler holds stays bounded, however long the storm goes on."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "state.bin").write_bytes(b"0")
    daemon = Daemon(load(config(tmp_path, retention={"max_age": "30d"}, watch={"rescan": None})))
    daemon.mirror.arm()
    try:
        daemon._rescan_all("startup")
        for _ in range(3 * COMPACT_MIN):
            daemon.mirror.look_again([b"state.bin"])
            daemon._after_wake()
        assert daemon.rescans.planned == 3 * COMPACT_MIN
        assert len(daemon.scheduler) <= COMPACT_MIN + 1
    finally:
        daemon.mirror.watching.stop()


def test_a_file_restored_while_a_turn_runs_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ocrd restore`` writes the hold, then puts the file back. A turn that takes the news of
    the file must know the hold, however the two interleave: here the restore runs inside the
    turn, after it began and before it takes the watch's marks."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "old_a.bin").write_bytes(b"a")
    cfg = config(tmp_path, watch={"rescan": None}, trash={"grace": "1d"})
    daemon = Daemon(load(cfg))
    daemon.mirror.arm()
    try:
        daemon._rescan_all("startup")
        assert not (models / "old_a.bin").exists()  # in the trash
        probe = daemon.mirror.watching.check_probe

        def restore_meanwhile() -> None:
            done = subprocess.run(
                [*ocrd_argv(), "restore", "-c", str(cfg), "old_a.bin"],
                capture_output=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            daemon.mirror.look_again([b"old_a.bin"])  # the watch's news, without its thread
            probe()

        monkeypatch.setattr(daemon.mirror.watching, "check_probe", restore_meanwhile)
        daemon._after_wake()
        assert (models / "old_a.bin").exists()
    finally:
        daemon.mirror.watching.stop()
