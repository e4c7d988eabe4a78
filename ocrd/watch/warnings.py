"""watchdog's own warnings (a watch it could not add, a snapshot that failed) said as ocrd's
watch_warning, each followed by a rescan."""

from __future__ import annotations

import logging
from typing import Protocol

from ocrd.base import log


class Watched(Protocol):
    """The watch whose warnings these are: its kind, and how to tell it a change was lost."""

    @property
    def kind(self) -> str: ...

    def mark_lost(self) -> None: ...


class WatchdogWarnings(logging.Handler):
    """A warning from watchdog (on its loggers, or a RuntimeWarning from its code through
    ``warnings``, e.g. a directory replaced under a watched name) is something it did not tell
    the handler: a watch it could not add, a snapshot that failed. The first of each watch is
    said as ``watch_warning``; after each, only a full rescan is trustworthy."""

    def __init__(self, watcher: Watched) -> None:
        super().__init__(level=logging.WARNING)
        self._watcher = watcher
        self.said = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """On the ``py.warnings`` logger: watchdog's warnings are taken here (said once, as
        ours) and go no further; every other warning goes on as before."""
        if record.name == "py.warnings" and "/watchdog/" not in record.getMessage():
            return True
        self.handle_watchdog(record)
        return record.name != "py.warnings"

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != "py.warnings":
            self.handle_watchdog(record)

    def handle_watchdog(self, record: logging.LogRecord) -> None:
        try:
            if not self.said:
                log.get().warning(
                    "watch_warning",
                    observer=self._watcher.kind,
                    detail=record.getMessage()[:300],
                    action="rescanning model_dir",
                )
            self.said += 1
            self._watcher.mark_lost()
        except Exception:  # noqa: BLE001 — logging handlers must not raise either
            self.handleError(record)
