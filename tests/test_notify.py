"""ocrd.daemon.notify.Notifier against a real AF_UNIX datagram socket: what it sends, when it sends
nothing, the watchdog period it derives, and a broken socket that is logged, never fatal."""

from __future__ import annotations

import io
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocrd.daemon.notify import SEND_TIMEOUT_S, Notifier
from tests.conftest import logged

# A Notifier keeps its socket for the life of the process (it has no close()): the unclosed
# socket a test's Notifier leaves to the garbage collector is expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket named by $NOTIFY_SOCKET (sdnotify reads the environment)."""
    # AF_UNIX paths are limited to 108 bytes: a short private directory, not tmp_path.
    directory = tempfile.mkdtemp(prefix="ocrd-n")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        yield sock
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def test_ready_reloading_status_stopping_and_watchdog_are_the_protocol_messages(
    receiver: socket.socket,
) -> None:
    notifier = Notifier(dict(os.environ))
    assert notifier.enabled
    notifier.ready("3 files")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=3 files"
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    reloading, stamp = receiver.recv(4096).decode().split("\n")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading == "RELOADING=1"
    assert before <= int(stamp.removeprefix("MONOTONIC_USEC=")) <= after
    notifier.status("idle")
    notifier.stopping()
    notifier.watchdog()
    assert [receiver.recv(4096) for _ in range(3)] == [b"STATUS=idle", b"STOPPING=1", b"WATCHDOG=1"]


def test_without_notify_socket_nothing_is_sent_and_nothing_fails(
    receiver: socket.socket, log_out: io.StringIO
) -> None:
    notifier = Notifier({})  # the environment it is given has no NOTIFY_SOCKET
    assert not notifier.enabled
    notifier.ready("x")
    notifier.watchdog()
    receiver.settimeout(0.2)
    with pytest.raises(TimeoutError):
        receiver.recv(4096)
    assert logged(log_out) == []


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("2000000", None, 0.5),  # a quarter of WATCHDOG_USEC
        ("2000000", "self", 0.5),
        ("2000000", "1", None),  # meant for another process
        ("0", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_the_watchdog_interval_is_a_quarter_of_watchdog_usec_for_this_process_only(
    usec: str | None, pid: str | None, interval: float | None
) -> None:
    env = {}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if pid is not None:
        env["WATCHDOG_PID"] = str(os.getpid()) if pid == "self" else pid
    assert Notifier(env).watchdog_interval == interval


def test_a_socket_that_is_not_there_is_a_debug_event_and_sends_become_no_ops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_out: io.StringIO
) -> None:
    gone = str(tmp_path / "gone")
    monkeypatch.setenv("NOTIFY_SOCKET", gone)
    notifier = Notifier({"NOTIFY_SOCKET": gone})
    notifier.ready("x")  # must not raise
    assert [(e["event"], e["level"], e["message"]) for e in logged(log_out)] == [
        ("notify_failed", "debug", "connect")
    ]


def test_a_receiver_that_went_away_is_a_debug_event_per_message_never_fatal(
    receiver: socket.socket, log_out: io.StringIO
) -> None:
    notifier = Notifier(dict(os.environ))
    notifier.status("up")
    assert receiver.recv(4096) == b"STATUS=up"
    receiver.close()  # systemd went away: every later send fails
    notifier.ready("x")
    notifier.watchdog()
    failed = [(e["event"], e["level"], e["message"]) for e in logged(log_out)]
    assert failed == [
        ("notify_failed", "debug", "READY=1\nSTATUS=x"),
        ("notify_failed", "debug", "WATCHDOG=1"),
    ]


def test_a_receiver_that_stops_reading_costs_a_send_at_most_the_timeout(
    receiver: socket.socket, log_out: io.StringIO
) -> None:
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    notifier = Notifier(dict(os.environ))
    began = time.monotonic()
    while not any(e["event"] == "notify_failed" for e in logged(log_out)):
        notifier.watchdog()  # nobody reads: the queue fills, then a send times out
        assert time.monotonic() - began < 30, "the queue never filled"
    slowest = time.monotonic()
    notifier.watchdog()
    assert time.monotonic() - slowest < SEND_TIMEOUT_S + 0.5
