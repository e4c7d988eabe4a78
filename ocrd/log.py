"""Configures structlog once: JSON lines (UTC timestamps) off a TTY, console rendering on one.

Under systemd a JSON line carries its priority as an sd-daemon ``<N>`` prefix, so journald files
it at that priority (``journalctl -p warning``) and strips the prefix again (``-o cat`` prints
the bare JSON). The prefix is written only when the stream *is* the journal: systemd documents
``$JOURNAL_STREAM`` (``device:inode``) for exactly that test; anywhere else (a pipe, a file, a
terminal, a test harness) the lines stay plain JSON.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# sd-daemon(3) priorities (syslog's): what journald files a "<N>"-prefixed line under.
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
FIRST_KEYS = ("timestamp", "level", "event")

# What the last configure() chose, for lines written without structlog (signal handlers).
_emergency: dict[str, Any] = {"fd": 1, "journal": False}


def to_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journal's stdout/stderr connection (``$JOURNAL_STREAM``)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = expected.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # not a real file (a test's StringIO), or closed
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _first_keys(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``timestamp``, ``level``, ``event`` lead every line, whatever else it carries."""
    head = {k: event_dict.pop(k) for k in FIRST_KEYS if k in event_dict}
    head.update(event_dict)
    return head


def _library_record(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A stdlib ``logging`` record from a library (watchdog, ...) becomes event ``library_log``
    with its logger and text, so it, too, is one JSON line and never a bare sentence."""
    record = event_dict.get("_record")
    message = event_dict.pop("event", "")
    event_dict["event"] = "library_log"
    event_dict["logger"] = record.name if record is not None else None
    event_dict["message"] = str(message)[:500]
    return event_dict


class _Rendered:
    """JSON via structlog's JSONRenderer, behind the sd-daemon priority prefix when asked."""

    def __init__(self, journal: bool) -> None:
        self._json = structlog.processors.JSONRenderer()
        self._journal = journal

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        line = str(self._json(logger, name, event_dict))
        if not self._journal:
            return line
        return f"<{PRIORITY.get(str(event_dict.get('level')), 6)}>{line}"


def configure(
    level: str = "info",
    fmt: Literal["json", "console", "auto"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """(Re)configure the process's loggers. Safe to call again on reload."""
    out = stream if stream is not None else sys.stdout
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    journal = not console and to_journal(out)
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty()) if console else _Rendered(journal)
    )
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            _first_keys,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library (watchdog does): the same stream, the same
    # line format, warnings and up; Python's last-resort handler would write bare text instead.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, _library_record],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _first_keys,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_ocrd", False)]:
        root.removeHandler(old)
    handler._ocrd = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, _LEVELS[level]))
    logging.captureWarnings(True)
    try:
        _emergency["fd"] = out.fileno()
    except (OSError, ValueError, AttributeError):
        _emergency["fd"] = 1
    _emergency["journal"] = journal


def line_now(level: str, event: str, **keys: Any) -> bytes:
    """One log line built without structlog or any lock, for a signal handler to os.write()."""
    stamp = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    text = json.dumps({"timestamp": stamp, "level": level, "event": event, **keys}, default=repr)
    prefix = f"<{PRIORITY[level]}>" if _emergency["journal"] else ""
    return f"{prefix}{text}\n".encode()


def emergency(level: str, event: str, **keys: Any) -> None:
    """Write ``line_now(...)`` straight to the log's file descriptor; never raises."""
    with contextlib.suppress(OSError):  # nowhere left to say it
        os.write(_emergency["fd"], line_now(level, event, **keys))


def get() -> Any:
    return structlog.get_logger()
