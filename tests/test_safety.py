"""Each promise of docs/safety.md, provoked for real against a running ``ocrd run``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.configs import config
from tests.conftest import StartOcrd
from tests.harness import OcrdProcess, user_limits_work, with_user_limit


def safety_config(
    tmp_path: Path, *, rescan: str = "10m", engine: bool = False, observer: str = "auto"
) -> Path:
    return config(
        tmp_path, watch={"rescan": rescan, "observer": observer}, engine={"enabled": engine}
    )


def create(directory: Path, names: list[str]) -> None:
    for name in names:
        os.close(os.open(directory / name, os.O_CREAT | os.O_WRONLY, 0o644))


def deleted_count(d: OcrdProcess) -> int:
    return d.deletions()


@pytest.mark.slow
def test_lost_events_from_a_queue_overflow_are_recovered(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    """20k creates while the daemon is stopped overflow the kernel queue (16384 here)."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    n = max(20_000, limit + 2_000)
    create(models, ["keep.bin"])
    d = start_ocrd(
        safety_config(tmp_path)
    )  # rescan "10m": recovery must not wait for the safety net
    d.note("READY=1")
    d.send(signal.SIGSTOP)
    try:
        create(models, [f"old_{i:05d}.bin" for i in range(n)])
    finally:
        d.send(signal.SIGCONT)
    lost = d.event("events_lost", timeout=60)
    assert "overflow" in lost["detail"].lower()
    d.wait_for(f"{n} deletions", lambda: deleted_count(d) >= n, timeout=240)
    assert sorted(os.listdir(models)) == ["keep.bin"]
    assert d.stop()[0] == 0


def test_a_directory_swapped_for_a_symlink_never_leads_outside(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = [f"old_victim_{i}.bin" for i in range(50)]
    create(outside, victims)
    real = models / "sub"
    real.mkdir()
    create(real, ["keep.bin"])  # so the daemon never removes sub as emptied
    d = start_ocrd(safety_config(tmp_path))
    d.note("READY=1")
    stop = threading.Event()
    swaps = 0

    def swap_loop() -> None:
        nonlocal swaps
        parked = models / "sub.parked"
        while not stop.is_set():
            create(real, [f"old_{swaps}_{i}.bin" for i in range(5)])
            os.rename(real, parked)
            os.symlink(outside, real)
            os.unlink(real)
            os.rename(parked, real)
            swaps += 1

    racer = threading.Thread(target=swap_loop)
    racer.start()
    try:
        d.wait_for("deletions while racing", lambda: deleted_count(d) >= 200, timeout=120)
    finally:
        stop.set()
        racer.join()
    assert swaps > 20
    assert sorted(os.listdir(outside)) == sorted(victims)
    assert d.stop()[0] == 0
    for e in d.events:
        if e.get("event") == "model_deleted":
            assert e["path"].startswith(("sub/old_", "sub.parked/old_")), e


def test_a_mapped_model_is_skipped_in_use_and_deleted_once_released(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    model = models / "old_mapped.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 8192)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import mmap, sys\n"
            "f = open(sys.argv[1], 'rb')\n"
            "m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
            "f.close()  # only the mapping holds it now, as llama.cpp does\n"
            "print('mapped', flush=True)\n"
            "sys.stdin.read()\n",
            str(model),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "mapped\n"
        d = start_ocrd(safety_config(tmp_path, engine=True))
        d.note("READY=1")
        skipped = d.event("deletion_skipped", path="old_mapped.gguf")
        assert skipped["reason"] == "in_use"
        assert model.exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    d.send(signal.SIGHUP)  # a later pass: the reload's full rescan
    d.event("model_deleted", path="old_mapped.gguf")
    assert not model.exists()
    assert d.stop()[0] == 0


def test_model_dir_vanishing_and_returning(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    create(models, ["keep.bin"])
    (models / "sub").mkdir()
    d = start_ocrd(safety_config(tmp_path, engine=True))
    d.note("READY=1")
    shutil.rmtree(models)
    d.event("model_dir_missing")
    d.note("STATUS=model_dir")
    models.mkdir()
    create(models, ["old_back.bin", "kept_back.bin"])
    d.event("model_dir_returned")
    d.event("model_deleted", path="old_back.bin")
    # The watch is armed again: a new file is seen without waiting for the 10 min rescan.
    create(models, ["old_after.bin"])
    d.event("model_deleted", path="old_after.bin")
    assert sorted(os.listdir(models)) == ["kept_back.bin"]
    assert d.stop()[0] == 0


def test_hostile_names_are_deleted_and_logged_on_one_line(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    root = os.fsencode(models)
    hostile = [b"old_new\nline.bin", b"old_\xff\xfe.bin", b"old_back\\x41.bin", b"old_tab\t.bin"]
    d = start_ocrd(safety_config(tmp_path))
    d.note("READY=1")
    for name in [*hostile, b"keep_\xff.bin"]:
        os.close(os.open(os.path.join(root, name), os.O_CREAT | os.O_WRONLY))
    d.wait_for("4 deletions", lambda: deleted_count(d) >= 4)
    assert os.listdir(root) == [b"keep_\xff.bin"]
    paths = {e["path"] for e in d.events if e.get("event") == "model_deleted"}
    assert paths == {
        "old_new\\nline.bin",
        "old_\\xff\\xfe.bin",
        "old_back\\\\x41.bin",
        "old_tab\\t.bin",
    }
    assert d.stop()[0] == 0
    assert all(line.count("\n") == 1 for line in d.lines)


@pytest.mark.slow
def test_sigterm_mid_batch_exits_0_fast_and_sigkill_restart_completes(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    n = 30_000
    for i in range(100):
        (models / f"d{i:02d}").mkdir()
    create(models, [f"d{i % 100:02d}/old_{i:05d}.bin" for i in range(n)])
    create(models, [f"d{i:02d}/keep.bin" for i in range(100)])
    first = start_ocrd(safety_config(tmp_path, engine=True))
    first.wait_for("a batch under way", lambda: deleted_count(first) >= 100, timeout=120)
    code, took = first.stop(signal.SIGTERM)
    assert (code, took < 5.0) == (0, True), took
    assert first.names()[-1] == "daemon_stopped"
    left = sum(len(files) for _, _, files in os.walk(models))
    assert 100 < left < n + 100  # it stopped mid-batch, keeping what it had not reached

    second = start_ocrd(safety_config(tmp_path, engine=True))
    second.wait_for("a batch under way", lambda: deleted_count(second) >= 100, timeout=120)
    second.proc.kill()
    second.wait()

    third = start_ocrd(safety_config(tmp_path, engine=True))
    third.note("READY=1", timeout=240)
    remaining = sorted(
        os.path.relpath(os.path.join(p, f), models)
        for p, _, files in os.walk(models)
        for f in files
    )
    assert remaining == [f"d{i:02d}/keep.bin" for i in range(100)]
    assert third.stop()[0] == 0


needs_userns = pytest.mark.skipif(
    not user_limits_work(), reason="cannot set a watch limit in a private user namespace"
)


@needs_userns
@pytest.mark.parametrize("observer", ["auto", "inotify"])
def test_hitting_the_watch_limit_is_noticed_and_nothing_is_missed(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd, observer: str
) -> None:
    """40 directories, 20 watches allowed: watchdog drops the ENOSPC for the rest silently."""
    for i in range(40):
        (models / f"d{i:02d}").mkdir()
    rescan = "10m" if observer == "auto" else "2s"
    d = start_ocrd(
        safety_config(tmp_path, rescan=rescan, observer=observer),
        prefix=with_user_limit("max_inotify_watches", 20),
    )
    d.note("READY=1")
    warning = d.event("watch_limit")
    assert warning["unwatched"] >= 20
    assert warning["directories"] == 41
    # watchdog refuses to start a watch it cannot complete: polling takes over, also where
    # inotify was asked for, and says so.
    assert warning["action"].startswith("watching by polling")
    assert d.event("watch_armed")["observer"] == "polling"
    # Files in directories inotify could not watch are still found, by polling.
    # Made elsewhere and renamed in, closed: a file still open by its creator when a pass
    # comes is rightly in use (and under polling no close event lifts its backoff).
    stage = tmp_path / "stage"
    stage.mkdir()
    for i in range(40):
        create(stage, [f"old_{i}.bin"])
        (stage / f"old_{i}.bin").rename(models / f"d{i:02d}" / f"old_{i}.bin")
    d.wait_for("40 deletions", lambda: deleted_count(d) >= 40, timeout=60)
    # Each directory emptied by deleting is removed too, once its batch is done.
    d.wait_for("emptied directories removed", lambda: os.listdir(models) == [])
    assert d.stop()[0] == 0


@pytest.mark.slow
def test_a_reload_to_dry_run_stops_a_pass_between_two_files(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    """Nothing the new rules keep is deleted after config_reloaded: the batch in progress is
    stopped between two files by the SIGHUP, and the reload plans anew."""
    n = 30_000
    for i in range(100):
        (models / f"d{i:02d}").mkdir()
    create(models, [f"d{i % 100:02d}/old_{i:05d}.bin" for i in range(n)])
    d = start_ocrd(safety_config(tmp_path))
    d.wait_for("a batch under way", lambda: deleted_count(d) >= 1, timeout=120)
    config(tmp_path, retention={"dry_run": True})
    d.send(signal.SIGHUP)
    d.event("config_reloaded", timeout=60)
    d.event("scan_completed", trigger="reload", timeout=60)
    names = d.names()
    assert "model_deleted" not in names[names.index("config_reloaded") :]
    left = sum(len(files) for _, _, files in os.walk(models))
    assert left > 0
    assert left + deleted_count(d) == n
    assert d.stop()[0] == 0
