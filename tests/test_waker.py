"""The self-pipe the main loop sleeps on."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from ocrd.daemon.waker import Waker


@pytest.fixture
def waker() -> Iterator[Waker]:
    w = Waker()
    yield w
    w.close()


def test_wait_times_out_when_nobody_wakes(waker: Waker) -> None:
    assert waker.wait(0.01) is False


def test_a_wake_from_another_thread_ends_the_wait(waker: Waker) -> None:
    t = threading.Thread(target=waker.wake)
    t.start()
    assert waker.wait(30) is True
    t.join()
    assert waker.wait(0) is False  # drained: one wake-up, one return


def test_many_wakes_never_block_and_collapse_into_one(waker: Waker) -> None:
    for _ in range(100_000):  # far more than a pipe buffer holds
        waker.wake()
    assert waker.wait(0) is True
    assert waker.wait(0) is False


def test_a_signal_wakes_the_wait(waker: Waker) -> None:
    got: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    old_fd = signal.set_wakeup_fd(-1)
    try:
        waker.wake_on_signals()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert waker.wait(30) is True
        assert got == [signal.SIGUSR1]
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGUSR1, old)
