"""Everyday operations must not hurt: an unreadable directory, a name storm in the logs, a log
reader that stalls or goes away — each provoked against a real ``ocrd run``."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.configs import config
from tests.conftest import StartOcrd
from tests.harness import OcrdProcess, ocrd_argv
from tests.worlds import OCRD_UID, World, as_user, make_world, root_only


@pytest.fixture
def world() -> Iterator[World]:
    with make_world() as w:
        yield w


def config_in(directory: Path) -> Path:
    path = config(directory, watch={"rescan": None})
    path.chmod(0o644)
    return path


@root_only
def test_an_unreadable_directory_is_reported_and_the_rest_goes_on(
    world: World, start_ocrd: StartOcrd
) -> None:
    """ocrd runs unprivileged, as the unit runs it; another user (root here) makes a directory
    ocrd may not enter, after ocrd started watching it. Each event inside it used to crash the
    daemon (PermissionError from the directory fds)."""
    models = world.models
    sub = models / "d"
    sub.mkdir()
    sub.chmod(0o755)
    d = start_ocrd(
        config_in(world.base),
        env=world.env,
        prefix=as_user(OCRD_UID),
        command=[*world.python, "-m", "ocrd"],
    )
    d.event("scan_completed", trigger="startup")  # (uid 4242 may not reach our notify socket)
    sub.chmod(0o700)  # ocrd (uid 4242) may no longer enter it; its watch stays
    (sub / "old_inside.bin").write_bytes(b"x")
    unreadable = d.event("scan_unreadable")
    assert "Permission denied" in unreadable["error"]
    assert (sub / "old_inside.bin").exists()
    (models / "old_after.bin").write_bytes(b"x")
    os.chown(models / "old_after.bin", OCRD_UID, OCRD_UID)
    d.event("model_deleted", path="old_after.bin")
    assert d.proc.poll() is None
    assert "daemon_failed" not in d.names()
    assert d.stop()[0] == 0


def _storm(models: Path, count: int) -> None:
    """Files with 255-byte names of control bytes: each model_deleted line is ~1 KB."""
    for i in range(count):
        name = b"old_" + b"%06d" % i + bytes([1 + (j % 30) for j in range(245)])
        os.close(os.open(os.path.join(os.fsencode(models), name), os.O_CREAT | os.O_WRONLY))


def test_a_name_storm_is_summarised_not_flooded(tmp_path: Path, start_ocrd: StartOcrd) -> None:
    (tmp_path / "models").mkdir()
    d = start_ocrd(config_in(tmp_path))
    d.note("READY=1")
    count = 6000
    _storm(tmp_path / "models", count)
    d.wait_for("every file gone", lambda: not os.listdir(tmp_path / "models"), timeout=120)
    d.wait_for(  # nothing unaccounted for: each deletion a line, or counted in a summary
        "every deletion logged or summarised",
        lambda: _deletions_told(d) == count,
        timeout=30,
    )
    summaries = [e for e in d.events if e.get("event") == "log_summary"]
    assert summaries
    assert d.names().count("model_deleted") < count  # bounded
    assert all(s["sample"] for s in summaries)
    assert d.stop()[0] == 0


def _deletions_told(d: OcrdProcess) -> int:
    return d.deletions()


def _notify_socket() -> tuple[socket.socket, str, str]:
    directory = tempfile.mkdtemp(prefix="ocrd-n")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    return sock, path, directory


def test_a_stalled_log_reader_costs_lines_not_the_watchdog(tmp_path: Path) -> None:
    """Nobody reads ocrd's stdout (a pipe of 64 KiB): writing must never block the loop. The
    work goes on, the watchdog keeps being fed, SIGTERM is honoured, and the lines dropped are
    counted once the reader is back."""
    models = tmp_path / "models"
    models.mkdir()
    sock, path, directory = _notify_socket()
    pings: list[float] = []
    ready = threading.Event()
    done = threading.Event()

    def collect() -> None:  # systemd's side: it always reads the notify socket
        sock.settimeout(0.2)
        while not done.is_set():
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" in data:
                ready.set()
            if b"WATCHDOG=1" in data:
                pings.append(time.monotonic())

    collector = threading.Thread(target=collect)
    collector.start()
    env = {k: v for k, v in os.environ.items() if k != "OCRD_CONFIG"}
    env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    proc = subprocess.Popen(
        [*ocrd_argv(), "run", "-c", str(config_in(tmp_path))],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert ready.wait(30)
        _storm(models, 3000)  # some 3 MB of log lines into a pipe nobody drains
        deadline = time.monotonic() + 60
        while os.listdir(models) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.listdir(models)  # the work went on
        since = time.monotonic()
        while time.monotonic() - since < 3:
            time.sleep(0.1)
        recent = [p for p in pings if p >= since]
        assert len(recent) >= 4, recent  # WATCHDOG_USEC=1s: at least every half second
        proc.send_signal(signal.SIGTERM)
        # Still nobody reads: the exit must not wait for the reader either.
        assert proc.wait(timeout=5) == 0, "SIGTERM not honoured within 5 s, reader stalled"
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert events  # whole lines only: each one parsed above
        assert len(out) < 300_000  # what was held for the reader is bounded
    finally:
        done.set()
        collector.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def test_a_closed_stdout_is_an_event_and_a_clean_exit(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    sock, path, directory = _notify_socket()
    env = {k: v for k, v in os.environ.items() if k != "OCRD_CONFIG"}
    env["NOTIFY_SOCKET"] = path
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [*ocrd_argv(), "run", "-c", str(config_in(tmp_path))],
        stdout=write_end,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(write_end)
    try:
        sock.settimeout(30)
        while b"READY=1" not in sock.recv(4096):
            pass
        os.close(read_end)  # the reader goes away
        (tmp_path / "models" / "old_x.bin").write_bytes(b"x")  # something to log
        _, raw = proc.communicate(timeout=10)
        assert proc.returncode == 1  # an error, so that systemd restarts it
        err = raw.decode()
        assert "Traceback" not in err, err
        names = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
        assert "log_closed" in names, err
        assert names[-1] == "daemon_stopped", err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


@pytest.mark.slow
def test_a_mkdir_storm_on_a_large_index_keeps_the_watchdog_fed(
    tmp_path: Path, start_ocrd: StartOcrd
) -> None:
    """Each new directory used to cost a scan of every indexed path (500 mkdirs on 1M files:
    88 s without WATCHDOG=1). With 100k files indexed, 2000 mkdirs: from the last ping before
    them to the deletion of a file in the last one, no gap of half WATCHDOG_USEC or more."""
    models = tmp_path / "models"
    for n in range(100):
        sub = models / f"d{n:02d}"
        sub.mkdir(parents=True)
        for i in range(1000):
            os.close(os.open(sub / f"m{i}.bin", os.O_CREAT | os.O_WRONLY, 0o644))
    d = start_ocrd(config_in(tmp_path), env={"WATCHDOG_USEC": "2000000"})
    d.note("READY=1", timeout=120)
    began = d.note("WATCHDOG=1", count=1)[-1]
    for i in range(2000):
        (models / f"new{i:04d}").mkdir()
    (models / "new1999" / "old_last.bin").write_bytes(b"x")
    d.event("model_deleted", path="new1999/old_last.bin", timeout=120)
    ended = time.monotonic()
    pings = [t for t, n in d.notes if n == "WATCHDOG=1" and began <= t <= ended]
    times = [*pings, ended]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps, default=0.0) < 1.0, gaps  # at least every half WATCHDOG_USEC
    assert d.stop()[0] == 0
