"""A self-pipe the main loop sleeps on: woken by the observer thread, timers and signals alike.

Not a threading.Event: its set() takes a lock, and a signal handler that runs while the main
thread holds that same lock (inside Event.wait or clear) deadlocks the daemon — it then ignores
SIGTERM until systemd kills it. Writing a byte to a non-blocking pipe takes no lock, and
``signal.set_wakeup_fd`` makes the interpreter's C-level handler write one too.
"""

from __future__ import annotations

import os
import select
import signal
from contextlib import suppress


class Waker:
    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        """Safe from any thread and from a signal handler."""
        with suppress(BlockingIOError):  # the pipe is full: a wake-up is pending anyway
            os.write(self._w, b"\0")

    def wait(self, timeout: float | None) -> bool:
        """Sleep until woken or ``timeout`` passes; True if woken. Drains pending wake-ups."""
        ready, _, _ = select.select([self._r], [], [], timeout)
        if not ready:
            return False
        with suppress(BlockingIOError):
            while os.read(self._r, 4096):
                pass
        return True

    def wake_on_signals(self) -> None:
        """Have every caught signal wake the loop even before its Python handler runs."""
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)

    def close(self) -> None:
        for fd in (self._r, self._w):
            os.close(fd)
