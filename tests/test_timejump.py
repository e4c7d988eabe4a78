"""ocrd.daemon.timejump.ClockGuard: a step of the wall clock beyond the threshold is a jump, seen
once, logged, and marks the moment from which files age; running clocks and a suspend are not."""

from __future__ import annotations

import io
import time

import pytest

from ocrd.base.clock import FakeClock, SystemClock
from ocrd.daemon.timejump import JUMP_S, ClockGuard
from tests.conftest import logged


class SuspendableClock(FakeClock):
    """A FakeClock with CLOCK_BOOTTIME beside CLOCK_MONOTONIC: a suspend stops the monotonic
    clock while the wall clock and the boot-time clock go on."""

    def __init__(self) -> None:
        super().__init__()
        self.boot = 5000.0

    def boottime(self) -> float:
        return self.boot

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self.boot += seconds

    def suspend(self, seconds: float) -> None:
        self.wall += seconds
        self.boot += seconds


def test_clocks_running_together_are_no_jump(log_out: io.StringIO) -> None:
    clock = FakeClock()
    guard = ClockGuard(clock)
    for _ in range(10):
        clock.advance(3600)
        assert not guard.jumped()
    assert (guard.jumps, guard.pending, guard.not_before) == (0, False, float("-inf"))
    assert logged(log_out, "clock_jumped") == []


@pytest.mark.parametrize("step", [29 * 86400.0, -3 * 86400.0], ids=["forward", "backward"])
def test_a_step_of_the_wall_clock_is_one_jump_logged_and_marked(
    log_out: io.StringIO, step: float
) -> None:
    clock = FakeClock()
    woken: list[bool] = []
    guard = ClockGuard(clock, on_jump=lambda: woken.append(True))
    clock.advance(10)
    clock.jump(step)
    assert guard.jumped("max_age")
    assert (guard.jumps, guard.pending, guard.not_before) == (1, True, clock.wall)
    assert woken == [True]
    [event] = logged(log_out, "clock_jumped")
    assert event["level"] == "warning"
    assert event["jump_s"] == step
    assert event["suspended"] == "max_age"
    # Seen once: the next look measures from the new offset.
    clock.advance(10)
    assert not guard.jumped()
    assert guard.jumps == 1


def test_the_threshold_separates_slewing_from_a_step(log_out: io.StringIO) -> None:
    clock = FakeClock()
    guard = ClockGuard(clock)
    clock.jump(JUMP_S)  # at the threshold: still not a jump
    assert not guard.jumped()
    clock.jump(JUMP_S + 0.5)
    assert guard.jumped()
    assert len(logged(log_out, "clock_jumped")) == 1


def test_a_suspend_is_not_a_jump_when_the_clock_has_boottime(log_out: io.StringIO) -> None:
    clock = SuspendableClock()
    guard = ClockGuard(clock)
    clock.suspend(8 * 3600)  # a night asleep: wall and boottime move, monotonic does not
    assert not guard.jumped()
    clock.jump(86400)
    assert guard.jumped()
    assert len(logged(log_out, "clock_jumped")) == 1


def test_the_system_clock_does_not_jump_between_two_looks(log_out: io.StringIO) -> None:
    guard = ClockGuard(SystemClock())
    time.sleep(0.01)  # the real clocks move on together
    assert not guard.jumped()
    assert logged(log_out, "clock_jumped") == []
