"""ocrd/watch/observer.py and the watch's lifecycle in ocrd/watch/mirror.py: a watch that works
deletes a new file by event, a watch that cannot be had gives way to one that works and says
so, and a watch that is blind is found out (by its probe, or by a rescan) and replaced.

The daemon tests run a real ``ocrd run`` with a rescan period of an hour: a deletion within the
test's wait can only come from the watch. The fresh-resolve smoke (.ci/fresh-resolve) runs this
module against the newest releases pyproject.toml allows."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ocrd.base.clock import FakeClock
from ocrd.config.schema import Watch
from ocrd.fs.place import open_root, pin
from ocrd.watch import mirror as mirror_module
from ocrd.watch.mirror import Mirror, Root
from ocrd.watch.observer import PROBE_PREFIX, Watcher
from tests.configs import config
from tests.conftest import StartOcrd
from tests.harness import OcrdProcess, user_limits_work, with_user_limit


def watch_config(tmp_path: Path, observer: str = "auto", *, engine: bool = False) -> Path:
    return config(
        tmp_path, watch={"rescan": "1h", "observer": observer}, engine={"enabled": engine}
    )


def armed(d: OcrdProcess) -> list[dict[str, Any]]:
    return [e for e in d.events if e["event"] == "watch_armed"]


def status_lines(d: OcrdProcess) -> list[str]:
    return [n for _, n in d.notes if n.startswith("STATUS=")]


@pytest.mark.parametrize("engine", [False, True], ids=["engine_off", "engine_on"])
@pytest.mark.parametrize("observer", ["auto", "polling"])
def test_a_new_file_is_deleted_by_event(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd, observer: str, engine: bool
) -> None:
    (models / "keep.bin").write_bytes(b"k")
    d = start_ocrd(watch_config(tmp_path, observer, engine=engine), ready=True)
    armed = d.event("watch_armed")
    assert armed["observer"] == ("inotify" if observer == "auto" else observer)
    assert armed["degraded"] is None
    (models / "old_top.bin").write_bytes(b"x")
    (models / "new" / "deeper").mkdir(parents=True)
    (models / "new" / "deeper" / "old_deep.bin").write_bytes(b"x")
    d.event("model_deleted", path="old_top.bin")
    d.event("model_deleted", path="new/deeper/old_deep.bin")
    # Emptied directories go once the batch is done; the probe is long gone.
    d.wait_for("only keep.bin left", lambda: sorted(os.listdir(models)) == ["keep.bin"])
    assert not [s for s in status_lines(d) if "degraded" in s]
    assert d.stop()[0] == 0


@pytest.mark.skipif(not user_limits_work(), reason="cannot set inotify limits in a userns")
def test_with_every_inotify_instance_taken_polling_takes_over_says_so_and_deletes(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    d = start_ocrd(
        watch_config(tmp_path), prefix=with_user_limit("max_inotify_instances", 0), ready=True
    )
    fallback = d.event("watch_fallback")
    assert (fallback["failed"], fallback["observer"]) == ("inotify", "polling")
    armed = d.event("watch_armed")
    assert armed["observer"] == "polling"
    assert "polling" in armed["degraded"]
    d.wait_for("STATUS says degraded", lambda: any("degraded" in s for s in status_lines(d)))
    (models / "sub").mkdir()
    (models / "sub" / "old_a.bin").write_bytes(b"x")
    d.event("model_deleted", path="sub/old_a.bin")
    assert d.stop()[0] == 0


# -- blind watches, in-process: the fault (events dropped inside the library) is injected ------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def woken() -> threading.Event:
    return threading.Event()


@pytest.fixture
def mirror(tmp_path: Path, clock: FakeClock, woken: threading.Event) -> Iterator[Mirror]:
    (tmp_path / "models").mkdir()
    m = Mirror(
        tmp_path / "models",
        Watch.model_validate({"settle": "0s", "observer": "inotify"}),
        clock,
        wake=woken.set,
        tick=lambda: False,
    )
    try:
        yield m
    finally:
        m.watching.stop()


def _events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_a_watch_that_drops_every_event_is_found_blind_and_replaced(
    mirror: Mirror, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a library change that silently drops events looks like from here: nothing reaches
    the handler. The probe is not reported; after a second miss the next watch down takes over,
    down to rescans, which cannot be blind."""
    monkeypatch.setattr(Watcher, "mark", lambda self, path, is_dir: None)
    with capture_logs() as logs:
        mirror.arm()
        for _ in range(6):
            if mirror.watching.watcher is not None and mirror.watching.watcher.kind == "rescan":
                break
            assert mirror.watching.probe_due is not None
            clock.advance(mirror.watching.probe_due - clock.monotonic())
            mirror.watching.check_probe()
            assert mirror.check_root() is Root.REARMED
    blind = _events(logs, "watch_blind")
    assert [(e["observer"], e["action"]) for e in blind] == [
        ("inotify", "arming anew"),
        ("inotify", "watching by polling"),
        ("polling", "arming anew"),
        ("polling", "watching by rescan"),
    ]
    assert mirror.watching.watcher is not None
    assert mirror.watching.watcher.kind == "rescan"
    assert _events(logs, "watch_armed")[-1]["observer"] == "rescan"
    assert mirror.watching.degraded is not None
    assert not [n for n in os.listdir(mirror.place.real) if n.startswith(PROBE_PREFIX)]


def test_a_rescan_that_finds_files_the_watch_never_reported_says_the_watch_is_blind(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe at the top is reported, but nothing below it: the rescan finds the file."""
    real_mark = Watcher.mark

    def top_only(self: Watcher, path: bytes, is_dir: bool) -> None:
        if b"/sub" not in path:
            real_mark(self, path, is_dir)

    monkeypatch.setattr(Watcher, "mark", top_only)
    monkeypatch.setattr(mirror_module, "MISSED_GRACE_S", 0.0)
    top = Path(os.fsdecode(mirror.place.real))
    (top / "sub").mkdir()
    with capture_logs() as logs:
        mirror.arm()
        assert _events(logs, "watch_armed"), logs  # the probe came through
        assert mirror.watching.watcher is not None
        mirror.watching.watcher.armed_at -= 1.0  # ctime has a coarser clock than time.time()
        scan = mirror.scan()
        for _ in scan:
            pass
        mirror.adopt(scan)
        (top / "sub" / "old_unseen.bin").write_bytes(b"x")
        scan = mirror.scan()
        for _ in scan:
            pass
        mirror.adopt(scan)
    blind = _events(logs, "watch_blind")
    assert len(blind) == 1, logs
    assert (blind[0]["files"], blind[0]["example"]) == (1, "sub/old_unseen.bin")
    assert mirror.check_root() is Root.REARMED


def test_a_file_the_watch_reported_is_not_counted_as_missed(
    mirror: Mirror, woken: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mirror_module, "MISSED_GRACE_S", 0.0)
    top = Path(os.fsdecode(mirror.place.real))
    with capture_logs() as logs:
        mirror.arm()
        assert mirror.watching.watcher is not None
        mirror.watching.watcher.armed_at -= 1.0
        woken.clear()
        (top / "old_seen.bin").write_bytes(b"x")
        # Reported (marked, not yet taken): the scan takes it with the rest.
        deadline = time.monotonic() + 10
        while b"old_seen.bin" not in mirror.watching.watcher._changes.files:
            assert woken.wait(deadline - time.monotonic()), "the watch reported nothing"
            woken.clear()
        scan = mirror.scan()
        for _ in scan:
            pass
        mirror.adopt(scan)
    assert not _events(logs, "watch_blind"), logs


# -- directory churn: the watch survives it, and never cries wolf ----------------------------


def test_directories_swapped_under_each_others_names_never_kill_the_watch(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    """P and Q leave model_dir and come back under each other's names, again and again:
    watchdog's tree of watches is left with stale entries (it warns, and its thread may die).
    The daemon says so, rescans, re-arms, and goes on deleting by event in both."""
    for name in ("P", "Q"):
        (models / name / "inner").mkdir(parents=True)
        (models / name / "keep.bin").write_bytes(b"k")
    stage = tmp_path / "stage"
    stage.mkdir()
    d = start_ocrd(watch_config(tmp_path), ready=True)
    for _ in range(20):
        (models / "P").rename(stage / "P")
        (models / "Q").rename(stage / "Q")
        (stage / "Q").rename(models / "P")
        (stage / "P").rename(models / "Q")
    for rel in ("P", "P/inner", "Q", "Q/inner"):
        (models / rel / "old_x.bin").write_bytes(b"x")
        d.event("model_deleted", path=f"{rel}/old_x.bin")
    assert "daemon_failed" not in d.names()
    assert "watch_limit" not in d.names()
    assert d.stop()[0] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")
def test_a_former_mount_point_is_watched_again_without_a_false_watch_limit(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    """A tmpfs mounted inside model_dir, then unmounted and the config reloaded: the directory
    it covered is a plain directory of model_dir again, watched by inotify, with no
    watch_limit, and a file there goes by event."""
    point = models / "scratch"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], check=True)
    try:
        d = start_ocrd(watch_config(tmp_path), ready=True)
        assert d.event("watch_armed")["observer"] == "polling"  # one filesystem first
    finally:
        subprocess.run(["umount", str(point)], check=True)
    d.send(signal.SIGHUP)  # the reload's full scan finds no mount any more
    d.event("config_reloaded")
    d.wait_for("inotify again", lambda: armed(d)[-1]["observer"] == "inotify")
    (point / "old_after.bin").write_bytes(b"x")
    d.event("model_deleted", path="scratch/old_after.bin")
    assert "watch_limit" not in d.names()
    assert d.stop()[0] == 0


def test_only_the_probe_itself_goes_unmarked(tmp_path: Path) -> None:
    """Someone may move a package into the probe while it is out (polling leaves it out for
    seconds): what is inside it is a change like any other, and so is any other probe-like
    name; only the probe's own entry is the watch's business."""
    models = tmp_path / "models"
    models.mkdir()
    watcher = Watcher(pin(models), "inotify", lambda: None)
    fd = open_root(watcher.place)
    try:
        assert watcher.send_probe(fd) is None
        probe = watcher.probe
        assert probe is not None
        top = watcher.root + b"/"
        watcher.mark(top + probe, True)
        watcher.mark(top + probe + b"/pkg/a.bin", False)
        watcher.mark(top + PROBE_PREFIX + b"1-squatted", True)
        changes = watcher.take()
        assert changes.dirs == {PROBE_PREFIX + b"1-squatted"}
        assert changes.files == {probe + b"/pkg/a.bin"}
        assert watcher.probe_seen.is_set()
        watcher.take_probe(fd)
    finally:
        os.close(fd)
    assert os.listdir(models) == []
