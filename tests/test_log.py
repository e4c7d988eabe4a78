"""Log lines journald and jq both understand: JSON always under ``ocrd run``, the key order,
and the sd-daemon priority prefix only when stdout is the journal's stream."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocrd.base import log
from tests import configs
from tests.harness import ocrd_argv

LINE = re.compile(r"^(?:<(\d)>)?(\{.*\})$")
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OCRD_CONFIG", "NOTIFY_SOCKET")}
    env.pop("JOURNAL_STREAM", None)
    env.update(extra)
    return env


def _identity(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def _parsed(text: str) -> list[tuple[int | None, dict[str, object]]]:
    out = []
    for line in text.splitlines():
        match = LINE.match(line)
        assert match, f"not a JSON line: {line!r}"
        record = json.loads(match.group(2))
        assert list(record)[:3] == ["timestamp", "level", "event"], record
        out.append((int(match.group(1)) if match.group(1) else None, record))
    return out


def _run_until(config: Path, out: Path, *names: str, **env: str) -> str:
    """``ocrd run`` with stdout on a real file (as journald's stream is a real socket): until
    every event in ``names`` was written, then SIGTERM."""
    with out.open("w") as fh:
        proc = subprocess.Popen(
            [*ocrd_argv(), "run", "-c", str(config)],
            stdout=fh,
            stderr=subprocess.PIPE,
            env=_env(**env),
        )
        try:
            deadline = time.monotonic() + 30
            while not all(f'"event": "{n}"' in out.read_text() for n in names):
                assert proc.poll() is None, out.read_text()
                assert time.monotonic() < deadline, out.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            stderr = proc.stderr.read().decode()
            proc.stderr.close()
    assert stderr == "", stderr
    return out.read_text()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "old_a.bin").write_bytes(b"a")
    return configs.config(tmp_path, watch={"rescan": None}, engine={"enabled": True})


def test_each_line_carries_its_priority_when_stdout_is_the_journal(
    config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "stdout"
    out.touch()
    text = _run_until(
        config,
        out,
        "daemon_started",
        "model_deleted",
        "engine_started",
        JOURNAL_STREAM=_identity(out),
    )
    records = _parsed(text)
    levels = {str(r["level"]) for _, r in records}
    assert {"info", "warning"} <= levels, records  # engine_model_not_loaded is a warning
    for priority, record in records:
        assert priority == PRIORITY[str(record["level"])], (priority, record)
    names = [r["event"] for _, r in records]
    assert names[0] == "daemon_started"
    assert names[-1] == "daemon_stopped"


def test_no_prefix_when_stdout_is_not_the_journal(config: Path, tmp_path: Path) -> None:
    """$JOURNAL_STREAM inherited by a process whose stdout went elsewhere (a pipe, a file):
    plain JSON, or jq would choke on "<6>"."""
    other = tmp_path / "other"
    other.touch()
    text = _run_until(config, tmp_path / "stdout", "model_deleted", JOURNAL_STREAM=_identity(other))
    assert all(p is None for p, _ in _parsed(text))


def test_invalid_config_at_start_is_one_json_error_line(tmp_path: Path) -> None:
    path = configs.config(tmp_path, watch={"rescan": None}, log={"bogus": 1})  # no models/ either
    out = tmp_path / "stdout"
    with out.open("w") as fh:
        result = subprocess.run(
            [*ocrd_argv(), "run", "-c", str(path)],
            stdout=fh,
            stderr=subprocess.PIPE,
            env=_env(JOURNAL_STREAM=_identity(out)),
            timeout=30,
            check=False,
        )
    assert result.returncode == 78
    assert result.stderr == b""
    [(priority, record)] = _parsed(out.read_text())
    assert priority == 3
    assert record["event"] == "config_invalid"
    assert record["config"] == str(path)
    errors = record["errors"]
    assert isinstance(errors, list)
    assert any("at 'model_dir'" in e for e in errors), errors
    assert any("at 'log.bogus': unknown key" in e for e in errors), errors


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    log.configure("info", "json", stream=stream)
    try:
        yield stream
    finally:
        log.configure("info", "json")


def test_a_library_warning_is_a_json_line_too(captured: io.StringIO) -> None:
    logging.getLogger("watchdog.observers.inotify_c").warning("queue %s", "overflowed")
    logging.getLogger("some.library").info("below warning: dropped")
    [(priority, record)] = _parsed(captured.getvalue())
    assert priority is None
    assert record["event"] == "library_log"
    assert record["level"] == "warning"
    assert record["logger"] == "watchdog.observers.inotify_c"
    assert record["message"] == "queue overflowed"


def test_key_order_and_utc_timestamps(captured: io.StringIO) -> None:
    log.get().warning("something_happened", b=1, a=2)
    [(_, record)] = _parsed(captured.getvalue())
    assert list(record) == ["timestamp", "level", "event", "b", "a"]
    assert str(record["timestamp"]).endswith("Z")


@pytest.fixture
def deferred() -> Iterator[io.StringIO]:
    """The one-shot commands' set-up: warnings and up, structlog configured at the first line."""
    stream = io.StringIO()
    log.configure("warning", "json", stream=stream, deferred=True)
    try:
        yield stream
    finally:
        log.configure("info", "json")


def test_a_deferred_log_drops_below_its_level_and_writes_the_rest_as_configured(
    deferred: io.StringIO,
) -> None:
    logger = log.bound()
    assert not logger.is_enabled_for(logging.INFO)
    assert logger.is_enabled_for(logging.WARNING)
    log.get().debug("below", a=1)
    logger.info("below_too")
    assert deferred.getvalue() == ""
    log.get().warning("something_happened", b=1, a=2)
    log.get().info("still_below")
    log.bound().error("went_wrong", path="x")
    records = [record for _, record in _parsed(deferred.getvalue())]
    assert [(r["event"], r["level"]) for r in records] == [
        ("something_happened", "warning"),
        ("went_wrong", "error"),
    ]
    assert list(records[0]) == ["timestamp", "level", "event", "b", "a"]
    assert not log.bound().is_enabled_for(logging.INFO)


def test_a_library_record_configures_a_deferred_log_and_is_written_once(
    deferred: io.StringIO,
) -> None:
    handlers = list(logging.getLogger().handlers)
    logging.getLogger("some.library").info("below warning: dropped")
    logging.getLogger("some.library").warning("disk %s", "full")
    logging.getLogger("some.library").warning("again")
    records = [record for _, record in _parsed(deferred.getvalue())]
    assert [(r["event"], r["message"]) for r in records] == [
        ("library_log", "disk full"),
        ("library_log", "again"),
    ]
    assert logging.getLogger().handlers == handlers


def test_threads_writing_their_first_lines_at_once_configure_a_deferred_log_once(
    deferred: io.StringIO,
) -> None:
    handlers = list(logging.getLogger().handlers)
    start = threading.Barrier(8)

    def write(n: int) -> None:
        start.wait()
        log.bound().warning("deletion_failed", n=n)
        logging.getLogger("lib").warning("from %d", n)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = [str(record["event"]) for _, record in _parsed(deferred.getvalue())]
    assert sorted(events) == ["deletion_failed"] * 8 + ["library_log"] * 8
    assert logging.getLogger().handlers == handlers


def test_a_line_for_a_signal_handler_needs_no_logger() -> None:
    line = log.line_now("warning", "daemon_killed", signal="SIGINT").decode()
    assert line.endswith("\n")
    [(_, record)] = _parsed(line)
    assert record["event"] == "daemon_killed"
    assert str(record["timestamp"]).endswith("Z")


def test_a_thread_that_dies_is_a_json_line(
    captured: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ocrd.daemon.run import _thread_failed

    monkeypatch.setattr(threading, "excepthook", _thread_failed)

    def boom() -> None:
        raise RuntimeError("observer died")

    t = threading.Thread(target=boom, name="observer")
    t.start()
    t.join()
    [(_, record)] = _parsed(captured.getvalue())
    assert record["event"] == "thread_failed"
    assert record["thread"] == "observer"
    assert record["error"] == "RuntimeError('observer died')"
    assert "Traceback" in str(record["exception"])


def test_a_stalled_reader_costs_lines_counted_never_half_a_line() -> None:
    """A pipe nobody reads: writes never block, what does not fit is held up to a bound and
    then dropped and counted; once the reader is back, the held lines come out whole, then
    log_lines_dropped with the count."""
    from ocrd.base.log import PENDING_MAX, LineWriter

    read_end, write_end = os.pipe()
    try:
        writer = LineWriter(write_end)
        line = b'{"event": "model_deleted", "path": "' + b"x" * 900 + b'"}\n'
        total = 1000  # ~0.9 MB: far more than the pipe (64 KiB) and the bound take
        began = time.monotonic()
        for _ in range(total):
            writer.write(line)
        assert time.monotonic() - began < 2  # never waited for the reader
        assert writer.held <= PENDING_MAX
        assert writer.dropped > 0
        dropped = writer.dropped
        received = b""
        os.set_blocking(read_end, False)
        for _ in range(1000):
            try:
                received += os.read(read_end, 1 << 20)
            except BlockingIOError:
                writer.pump()
                if not writer.pending and not writer.dropped:
                    try:
                        received += os.read(read_end, 1 << 20)
                    except BlockingIOError:
                        break
    finally:
        os.close(read_end)
        os.close(write_end)
    lines = received.splitlines()
    assert all(json.loads(x) for x in lines)  # whole lines, every one
    tail = json.loads(lines[-1])
    assert tail["event"] == "log_lines_dropped"
    assert tail["count"] == dropped
    assert len(lines) - 1 + dropped == total
