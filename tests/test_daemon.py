"""``ocrd run`` as a real subprocess, with real inotify, the real AsposeAI, and the test itself
listening on NOTIFY_SOCKET for the systemd protocol."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path

from tests.configs import config
from tests.conftest import StartOcrd
from tests.harness import OcrdProcess


def write_config(
    tmp_path: Path,
    *,
    settle: str = "0s",
    engine: bool = True,
    level: str = "info",
    batch: str = "0s",
    restart_after: str = "0s",
    **retention: object,
) -> Path:
    """By default the engine is freed per pass and started again at once (no batching): the
    tests of coalescing (tests/test_engine_cycles.py) set the windows."""
    return config(
        tmp_path,
        retention={"whitelist": ["old_but_kept.bin"], **retention},
        watch={"settle": settle},
        engine={"enabled": engine, "batch": batch, "restart_after": restart_after},
        log={"level": level},
    )


def test_ready_comes_after_the_startup_pass(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    (models / "old_a.bin").write_bytes(b"a" * 10)
    (models / "current.bin").write_bytes(b"c")
    d = start_ocrd(write_config(tmp_path, settle="0s"))
    d.note("READY=1")
    # READY means the startup pass is done: the old file is already gone.
    assert not (models / "old_a.bin").exists()
    assert (models / "current.bin").exists()
    names = d.names()
    assert names.index("scan_completed") < names.index("model_deleted")
    assert d.event("scan_completed")["trigger"] == "startup"
    assert d.stop()[0] == 0


def test_new_old_file_removed_after_settling_while_others_stay(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    (models / "current.bin").write_bytes(b"c")
    (models / "old_but_kept.bin").write_bytes(b"k")
    d = start_ocrd(write_config(tmp_path, settle="1s"))
    d.note("READY=1")
    created = time.time()
    (models / "old_new.bin").write_bytes(b"n")
    deleted = d.event("model_deleted", path="old_new.bin")
    assert deleted["rule"] == "prefix"
    assert deleted["size"] == 1
    assert not (models / "old_new.bin").exists()
    # It waited out settle ("1s") before the rule applied.
    stamp = datetime.fromisoformat(deleted["timestamp"].replace("Z", "+00:00")).timestamp()
    assert stamp - created >= 0.95
    assert (models / "current.bin").exists()
    assert (models / "old_but_kept.bin").exists()
    assert d.names().count("model_deleted") == 1
    assert d.stop()[0] == 0


def test_engine_freed_before_first_deletion_and_started_after_last(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    for i in range(5):
        (models / f"old_{i}.bin").write_bytes(b"x")
    d = start_ocrd(write_config(tmp_path))
    d.note("READY=1")
    code, _ = d.stop()
    assert code == 0
    names = d.names()
    first_delete = names.index("model_deleted")
    last_delete = len(names) - 1 - names[::-1].index("model_deleted")
    assert names.count("model_deleted") == 5
    freed = [i for i, e in enumerate(d.events) if e.get("event") == "engine_freed"]
    deletion_frees = [i for i in freed if d.events[i]["reason"] == "deletion"]
    assert deletion_frees
    assert deletion_frees[0] < first_delete
    assert not any(deletion_frees[0] < i < last_delete for i in freed if i != deletion_frees[0])
    started_after = [i for i, n in enumerate(names) if n == "engine_started" and i > last_delete]
    assert started_after, names
    assert names[0] == "daemon_started"
    assert d.events[0]["pid"] == d.proc.pid
    assert d.events[names.index("engine_started")]["model_dir"] == str(models)


def test_watchdog_pings_at_half_the_interval(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    d = start_ocrd(write_config(tmp_path, engine=False), {"WATCHDOG_USEC": "400000"})
    d.note("READY=1")
    times = d.note("WATCHDOG=1", count=6)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Half of 0.4 s is 0.2 s; pings must come at least that often (with scheduling slack).
    assert max(gaps) < 0.35, gaps
    assert d.stop()[0] == 0


def test_no_watchdog_pings_without_watchdog_usec(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    d = start_ocrd(write_config(tmp_path, engine=False))
    d.note("READY=1")
    (models / "old_x").write_bytes(b"x")
    d.event("model_deleted", path="old_x")
    assert d.stop()[0] == 0
    assert not [n for _, n in d.notes if n == "WATCHDOG=1"]


def test_sighup_applies_a_changed_rule(tmp_path: Path, models: Path, start_ocrd: StartOcrd) -> None:
    config = write_config(tmp_path)
    (models / "tmp_model.bin").write_bytes(b"t")
    d = start_ocrd(config)
    d.note("READY=1")
    assert (models / "tmp_model.bin").exists()
    write_config(tmp_path, prefixes=["tmp_"])
    d.send(signal.SIGHUP)
    reloading = d.note("RELOADING=1")
    monotonic = [n for _, n in d.notes if n.startswith("MONOTONIC_USEC=")]
    assert monotonic
    assert int(monotonic[0].split("=")[1]) > 0
    reloaded = d.event("config_reloaded")
    assert reloaded["changed"] == ["retention.prefixes"]
    d.event("model_deleted", path="tmp_model.bin")
    # Only the rules changed: the engine was not freed for the reload (a model reload costs).
    assert not [e for e in d.events if e.get("event") == "engine_freed" and e["reason"] == "reload"]
    ready = d.note("READY=1", count=2)
    assert ready[1] > reloading[0]
    (models / "old_now_kept.bin").write_bytes(b"o")
    (models / "tmp_two").write_bytes(b"t")
    d.event("model_deleted", path="tmp_two")
    assert (models / "old_now_kept.bin").exists()
    assert d.stop()[0] == 0


def test_sighup_with_a_broken_file_keeps_the_old_rules(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    config = write_config(tmp_path)
    d = start_ocrd(config)
    d.note("READY=1")
    write_config(tmp_path, settle="soon")
    d.send(signal.SIGHUP)
    rejected = d.event("config_rejected")
    assert rejected["level"] == "error"
    assert any("at 'watch.settle'" in e for e in rejected["errors"]), rejected
    d.note("READY=1", count=2)
    (models / "old_after.bin").write_bytes(b"x")
    d.event("model_deleted", path="old_after.bin")
    assert "config_reloaded" not in d.names()
    assert d.stop()[0] == 0


def test_sigterm_stops_cleanly_and_fast(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    (models / "keep.bin").write_bytes(b"k")
    d = start_ocrd(write_config(tmp_path, level="debug"))
    d.note("READY=1")
    code, took = d.stop(signal.SIGTERM)
    assert code == 0
    assert took < 5.0
    assert d.note("STOPPING=1")
    names = d.names()
    assert names[-1] == "daemon_stopped"
    assert d.events[-1]["signal"] == "SIGTERM"
    assert names[-2] == "engine_freed"
    assert d.events[-2]["reason"] == "shutdown"
    for line in d.lines:
        record = json.loads(line)
        assert {"timestamp", "level", "event"} <= record.keys()
        assert record["timestamp"].endswith("Z")


def test_sigint_stops_with_exit_0(tmp_path: Path, models: Path, start_ocrd: StartOcrd) -> None:
    d = start_ocrd(write_config(tmp_path, engine=False))
    d.note("READY=1")
    code, took = d.stop(signal.SIGINT)
    assert (code, d.events[-1]["signal"]) == (0, "SIGINT")
    assert took < 5.0


def test_invalid_config_at_start_exits_78(tmp_path: Path, start_ocrd: StartOcrd) -> None:
    d = start_ocrd(write_config(tmp_path))  # models/ was never created
    assert d.wait() == 78
    # One JSON line naming every problem, on stdout like every other line of `ocrd run`.
    invalid = d.event("config_invalid")
    assert invalid["level"] == "error"
    assert invalid["config"] == str(tmp_path / "config.toml")
    assert any("at 'model_dir'" in e for e in invalid["errors"]), invalid
    assert d.names() == ["config_invalid"]
    assert d.stderr == ""
    assert not [n for _, n in d.notes if n.startswith("READY")]


def test_engine_disabled_runs_without_an_engine(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    (models / "old_a").write_bytes(b"x")
    d = start_ocrd(write_config(tmp_path, engine=False))
    d.note("READY=1")
    assert d.stop()[0] == 0
    names = d.names()
    assert "model_deleted" in names
    assert "engine_started" not in names
    assert "engine_freed" not in names


def _drop(tmp_path: Path, models: Path, name: str, data: bytes) -> None:
    """A model renamed into place whole, as a downloader does."""
    part = tmp_path / f".{name}.part"
    part.write_bytes(data)
    os.rename(part, models / name)


def _status(d: OcrdProcess) -> str:
    return [n for _, n in d.notes if n.startswith("STATUS=")][-1].removeprefix("STATUS=")


def test_status_tells_totals_last_pass_and_a_rejected_reload(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    """4 files of 256 KiB deleted over three passes: STATUS= keeps the totals since start (not
    only the last batch), in human units with the right singulars, counts the engine cycles,
    and shows a rejected reload until a good one replaces it."""
    quarter = b"q" * 256 * 1024
    (models / "keep.bin").write_bytes(b"12345")
    (models / "old_1.bin").write_bytes(quarter)
    config = write_config(tmp_path)
    d = start_ocrd(config)
    d.note("READY=1")
    first = _status(d)
    assert first.startswith("1 file (5 bytes) in model_dir; last pass "), first
    assert first.endswith(
        ": deleted 1 file (256.0 KiB); since start: deleted 1 file (256.0 KiB), 1 engine cycle"
    ), first

    _drop(tmp_path, models, "old_2.bin", quarter)
    d.event("model_deleted", path="old_2.bin")
    _drop(tmp_path, models, "old_3.bin", quarter)
    _drop(tmp_path, models, "old_4.bin", quarter)
    d.event("model_deleted", path="old_4.bin")
    d.event("model_deleted", path="old_3.bin")
    cycles = sum(1 for e in d.events if e.get("event") == "engine_freed")
    totals = f"since start: deleted 4 files (1.0 MiB), {cycles} engine cycles"
    d.wait_for("STATUS= with the totals", lambda: _status(d).endswith(totals))
    assert _status(d).startswith("1 file (5 bytes) in model_dir; last pass "), _status(d)

    good = config.read_text()
    config.write_text(good + "bogus = 1\n")
    d.send(signal.SIGHUP)
    d.event("config_rejected")
    rejected = d.wait_for("STATUS= naming the rejection", lambda: "REJECTED" in _status(d))
    assert rejected
    status = _status(d)
    assert status.startswith("reload REJECTED at "), status
    told = "old rules in force: config.toml: at 'log.bogus': unknown key; 1 file (5 bytes)"
    assert told in status, status
    assert status.endswith(totals), status

    config.write_text(good)
    d.send(signal.SIGHUP)
    d.event("config_reloaded")
    d.wait_for("STATUS= without the rejection", lambda: "REJECTED" not in _status(d))
    assert _status(d).endswith(totals), _status(d)
    assert d.stop()[0] == 0


def test_dry_run_logs_would_be_deleted_once_and_deletes_nothing(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    (models / "old_a").write_bytes(b"x")
    d = start_ocrd(write_config(tmp_path, engine=False, whitelist=None, dry_run=True))
    d.note("READY=1")
    would = d.event("model_would_be_deleted", path="old_a")
    assert would["rule"] == "prefix"
    d.send(signal.SIGHUP)  # a reload rescans; the same decision is logged again, once
    d.note("READY=1", count=2)
    assert d.stop()[0] == 0
    assert (models / "old_a").exists()
    assert "model_deleted" not in d.names()
    assert os.path.exists(models / "old_a")


def test_a_signal_storm_never_wedges_the_loop(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    """Signals landing while the main loop holds a lock must not deadlock it (a handler that
    took threading.Event's lock did, now and then, and SIGTERM was then ignored)."""
    d = start_ocrd(write_config(tmp_path, engine=False), {"WATCHDOG_USEC": "20000"})
    d.note("READY=1")
    for _ in range(300):
        d.send(signal.SIGHUP)
    code, took = d.stop(signal.SIGTERM)
    assert code == 0
    assert took < 5.0
    assert d.names()[-1] == "daemon_stopped"


def test_a_file_written_after_its_create_event_is_deleted_once_not_spun_on(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    """The create event shows an empty file; the write that follows raises no event we
    listen to. When settle ends, the daemon must look at the file again, not plan its stale
    entry into an endless deletion_skipped "changed" loop (each freeing and restarting the
    engine)."""
    d = start_ocrd(write_config(tmp_path, settle="1s"))
    d.note("READY=1")
    target = models / "old_x.bin"
    target.touch()
    d.note("STATUS=1 file (0 bytes) in model_dir")  # indexed, empty, settling
    target.write_bytes(b"x" * 4096)
    deleted = d.event("model_deleted", path="old_x.bin")
    assert deleted["size"] == 4096
    assert d.stop()[0] == 0
    assert "deletion_skipped" not in d.names()
    assert d.names().count("engine_freed") == 2  # one deletion pass, then shutdown


def test_a_notify_socket_nobody_reads_never_wedges_the_daemon(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    """A receiver that stops reading fills the datagram queue; a blocking send would then
    hang the loop for good and SIGTERM with it."""
    config = write_config(tmp_path, engine=False, level="debug")
    d = start_ocrd(config, {"WATCHDOG_USEC": "20000"}, notify_buffer=1024)
    d.note("READY=1")
    d.reading.clear()  # from here on nobody reads: the queue fills with WATCHDOG=1
    d.event("notify_failed")
    code, took = d.stop(signal.SIGTERM)
    assert code == 0
    assert took < 5.0
    assert d.names()[-1] == "daemon_stopped"


def test_signals_that_mean_nothing_to_ocrd_are_ignored(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    d = start_ocrd(write_config(tmp_path))
    d.note("READY=1")
    for _ in range(3):
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGPWR, signal.SIGTTIN):
            d.send(sig)
    (models / "old_after.bin").write_bytes(b"x")  # still at work
    d.event("model_deleted", path="old_after.bin")
    assert d.proc.poll() is None
    code, _ = d.stop()
    assert code == 0
    assert d.names()[-1] == "daemon_stopped"


def _blocked(pid: int, sig: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            mask = next(line for line in fh if line.startswith("SigBlk:")).split()[1]
    except (OSError, StopIteration):
        return False
    return bool(int(mask, 16) >> (sig - 1) & 1)


def test_a_sighup_during_start_up_is_a_reload_after_it_not_death(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    """Signals are held back from ocrd's first line of Python on; one that arrives before the
    handlers exist (here: while the .NET runtime is still being imported) waits for them."""
    d = start_ocrd(write_config(tmp_path))
    deadline = time.monotonic() + 10
    while not _blocked(d.proc.pid, signal.SIGHUP):  # polled: the harness waits on log lines
        assert time.monotonic() < deadline, "SIGHUP was never held back"
        time.sleep(0.001)
    assert "READY=1" not in [n for _, n in d.notes]
    d.send(signal.SIGHUP)
    d.event("config_reloaded")
    assert d.proc.poll() is None
    assert d.stop()[0] == 0
