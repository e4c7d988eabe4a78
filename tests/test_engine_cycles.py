"""One engine cycle per burst of deletions: ``ocrd run`` as a real subprocess with the real
AsposeAI, counting ``engine_freed`` (reason ``deletion``) for trickles, bursts, files that can't
go, a writer that never stops, and reloads that change only the rules."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.configs import config
from tests.conftest import StartOcrd
from tests.harness import OcrdProcess
from tests.worlds import held


def engine_config(
    tmp_path: Path, settle: str = "0s", batch: str = "2s", restart_after: str = "10s"
) -> Path:
    """The real engine (enabled is its default) with the shipped windows unless told."""
    return config(
        tmp_path,
        watch={"settle": settle},
        engine={"enabled": None, "batch": batch, "restart_after": restart_after},
    )


def cycles(d: OcrdProcess) -> list[dict[str, object]]:
    return [e for e in d.events if e.get("event") == "engine_freed" and e["reason"] == "deletion"]


def failures(d: OcrdProcess, n: int) -> Callable[[], bool]:
    return lambda: d.names().count("deletion_failed") >= n


def deleted(d: OcrdProcess) -> int:
    return d.names().count("model_deleted")


def test_a_trickle_of_twenty_files_shares_at_most_two_cycles(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    d = start_ocrd(engine_config(tmp_path, settle="1s"))
    d.note("READY=1")
    for i in range(20):
        (models / f"old_{i:02d}.bin").write_bytes(b"x" * 100)
        time.sleep(0.3)  # the trickle itself: files arriving 0.3 s apart, as in the issue
    d.wait_for("20 deletions", lambda: deleted(d) >= 20)
    assert 1 <= len(cycles(d)) <= 2, cycles(d)
    names = d.names()
    assert names.index("engine_freed") < names.index("model_deleted")
    started = d.wait_for(  # after the quiet period, once the trickle is over
        "the engine started again",
        lambda: [e for e in d.events if e.get("event") == "engine_started" and "downtime_ms" in e],
        timeout=30,
    )
    assert float(started[-1]["downtime_ms"]) >= 10_000
    names = d.names()
    last_delete = len(names) - 1 - names[::-1].index("model_deleted")
    assert "engine_started" in names[last_delete:]
    code, _ = d.stop()
    assert code == 0
    assert d.events[-1]["engine_cycles"] == len(cycles(d))


def test_a_burst_of_a_thousand_files_is_one_cycle(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    d = start_ocrd(engine_config(tmp_path))
    d.note("READY=1")
    staging = tmp_path / "staging"
    staging.mkdir()
    for i in range(1000):
        (staging / f"old_{i:04d}.bin").write_bytes(b"x")
    for name in os.listdir(staging):
        os.rename(staging / name, models / name)
    d.wait_for("1000 deletions", lambda: deleted(d) >= 1000, timeout=60)
    assert len(cycles(d)) == 1, [c.get("deletions") for c in cycles(d)]
    assert cycles(d)[0]["deletions"] == 1000
    status = d.wait_for(
        "a status naming the cycle",
        lambda: [
            n for _, n in d.notes if n.startswith("STATUS=") and n.endswith(", 1 engine cycle")
        ],
    )
    assert status
    assert d.stop()[0] == 0


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr (e2fsprogs)")
def test_an_immutable_file_never_costs_an_engine_cycle(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    target = models / "old_stuck.bin"
    target.write_bytes(b"x")
    made = subprocess.run(["chattr", "+i", str(target)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i refused here: {made.stderr!r}")
    try:
        d = start_ocrd(engine_config(tmp_path))
        d.note("READY=1")
        first = d.event("deletion_failed", path="old_stuck.bin")
        assert "immutable" in str(first["error"])
        assert first["retry_in_s"] == 60
        for n in range(2, 5):  # each reload retries at once (the operator acted)
            d.send(signal.SIGHUP)
            d.note("READY=1", count=n)
            d.wait_for(f"attempt {n}", failures(d, n))
        assert cycles(d) == []
        assert target.exists()
        assert d.stop()[0] == 0
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=False)


def test_a_file_another_process_holds_never_costs_an_engine_cycle(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    target = models / "old_held.gguf"
    target.write_bytes(b"GGUF" + b"\0" * 4096)
    with held(target, "open"):
        d = start_ocrd(engine_config(tmp_path))
        d.note("READY=1")
        skipped = d.event("deletion_skipped", path="old_held.gguf")
        assert skipped["reason"] == "in_use"
        (models / "old_free.bin").write_bytes(b"x")  # a file that can go still gets its cycle
        d.event("model_deleted", path="old_free.bin")
        assert [c["deletions"] for c in cycles(d)] == [1]
    assert target.exists()
    assert d.stop()[0] == 0


def test_a_writer_appending_every_2ms_makes_no_busy_loop(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    d = start_ocrd(engine_config(tmp_path, settle="0s"))
    d.note("READY=1")
    stop = threading.Event()

    def write() -> None:
        with open(models / "old_stream.log", "ab") as fh:
            while not stop.is_set():
                fh.write(b"line\n")
                fh.flush()
                stop.wait(0.002)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        d.event("deletion_skipped", path="old_stream.log")
        before, lines_before = d.cpu_seconds(), len(d.lines)
        stop.wait(10)
        cpu = (d.cpu_seconds() - before) / 10
        lines = len(d.lines) - lines_before
    finally:
        stop.set()
        writer.join()
    assert cpu < 0.05, f"{cpu:.1%} CPU"
    assert lines <= 5, d.lines[-10:]
    assert cycles(d) == []
    assert d.stop()[0] == 0
