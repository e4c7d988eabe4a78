"""The systemd notify protocol through sdnotify, with its swallowed errors made visible."""

from __future__ import annotations

import os
import time
from typing import Any

import sdnotify

from ocrd.base import log

SEND_TIMEOUT_S = 0.5


class Notifier:
    """Sends sd_notify messages when ``$NOTIFY_SOCKET`` is set; does nothing otherwise.

    sdnotify swallows every socket error unless built with ``debug=True``; we build it so and
    log each failure at debug level, so a missing or broken socket is visible but never fatal.
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._sd: Any = None
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # Pinged every quarter of WATCHDOG_USEC: a ping is only sent where the loop or a
            # walk checks between directories or files, so the gap between two is the period
            # plus up to one such step; a quarter keeps it under half of WATCHDOG_USEC.
            self.watchdog_interval = int(usec) / 4_000_000
        if self.enabled:
            try:
                self._sd = sdnotify.SystemdNotifier(debug=True)
                # A receiver that stops reading fills the datagram queue and a blocking send
                # would then hang the main loop for good, SIGTERM included (PEP 475 retries
                # the send after the handler). Give up on a message after a while instead.
                self._sd.socket.settimeout(SEND_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 — sdnotify raises whatever socket raised
                log.get().debug("notify_failed", message="connect", error=repr(exc))

    def send(self, *lines: str) -> None:
        if self._sd is None:
            return
        message = "\n".join(lines)
        try:
            self._sd.notify(message)
        except Exception as exc:  # noqa: BLE001 — see above; never fatal
            log.get().debug("notify_failed", message=message, error=repr(exc))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")
