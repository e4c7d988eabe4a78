"""Notices the wall clock jumping, by watching its offset from a clock that cannot jump.

``wall - boottime`` stays constant while both clocks run (NTP slewing moves it by at most
0.5 ms/s); a step of the wall clock (``date -s``, an NTP step, a VM restored from a snapshot, an
RTC that was wrong until time sync) moves it at once. CLOCK_BOOTTIME, not CLOCK_MONOTONIC: a
system suspend stops the monotonic clock while the wall clock goes on, which would read as a jump.

After a jump, every timestamp on disk was read against another clock than ``now``: a 2-day-old
file seen after a +29-day step is "31 days old". So a jump is not over when a scan under the
new clock is done: from then on, no file ages from before the moment the jump was seen
(``Rules.not_before``). A file present at the jump is deleted by max_age only once it has been
in model_dir max_age under the new clock. The mark lives in memory: a restart forgets it,
which is why the unit starts after time-sync.target."""

from __future__ import annotations

from collections.abc import Callable

from ocrd.base import log
from ocrd.base.clock import Clock

JUMP_S = 60.0  # a step of the wall clock larger than this is a jump


class ClockGuard:
    def __init__(
        self, clock: Clock, threshold: float = JUMP_S, on_jump: Callable[[], None] | None = None
    ) -> None:
        self.clock = clock
        self.on_jump = on_jump  # e.g. wake the main loop: its next step scans again
        self.threshold = threshold
        self._steady: Callable[[], float] = getattr(clock, "boottime", clock.monotonic)
        self.offset = clock.time() - self._steady()
        self.not_before = float("-inf")  # wall time of the last jump, under the new clock
        self.jumps = 0
        self.pending = False  # a jump not yet followed by a fresh scan

    def jumped(self, suspended: str = "max_age") -> bool:
        """True (and a ``clock_jumped`` warning) if the wall clock jumped since the last look."""
        wall = self.clock.time()
        offset = wall - self._steady()
        jump = offset - self.offset
        self.offset = offset
        if abs(jump) <= self.threshold:
            return False
        self.jumps += 1
        self.pending = True
        self.not_before = wall
        log.get().warning(
            "clock_jumped",
            jump_s=round(jump, 3),
            suspended=suspended,
            detail=(
                "age-based deletion is suspended until a fresh scan under the new clock; "
                "after it, files present now age from now, not from their timestamps"
            ),
        )
        if self.on_jump is not None:
            self.on_jump()
        return True
