"""Time as an interface: one clock object, so tests drive rules and schedules without sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch: what file ages are measured against."""
        ...

    def monotonic(self) -> float:
        """Seconds that never jump: what schedules are measured against."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def boottime(self) -> float:
        """Like monotonic, but it goes on during a system suspend: what a jump of the wall
        clock is measured against (ocrd.daemon.timejump)."""
        return time.clock_gettime(time.CLOCK_BOOTTIME)


class FakeClock:
    """A clock that moves only when told to; for tests."""

    def __init__(self, wall: float = 1_700_000_000.0, mono: float = 1000.0) -> None:
        self.wall = wall
        self.mono = mono

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def jump(self, seconds: float) -> None:
        """Step the wall clock alone, as ``date -s`` or an NTP step does."""
        self.wall += seconds
