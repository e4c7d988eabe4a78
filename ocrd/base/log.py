"""Configures structlog once: JSON lines (UTC timestamps) off a TTY, console rendering on one.

Under systemd a JSON line carries its priority as an sd-daemon ``<N>`` prefix, so journald files
it at that priority (``journalctl -p warning``) and strips the prefix again (``-o cat`` prints
the bare JSON). The prefix is written only when the stream *is* the journal: systemd documents
``$JOURNAL_STREAM`` (``device:inode``) for exactly that test; anywhere else (a pipe, a file, a
terminal, a test harness) the lines stay plain JSON.

structlog itself (about 45 ms of imports: its stdlib bridge brings asyncio) is imported when a
line is first written: a one-shot command configures with ``deferred=True``, and a pass that
logs nothing at its level never imports it (docs/performance.md, start-up).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Literal, TextIO

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
_handlers: list[logging.Handler] = []  # the root logger's handlers configure() installed
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
        import structlog  # noqa: PLC0415 — see the module's doc

        self._json = structlog.processors.JSONRenderer()
        self._journal = journal

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        line = str(self._json(logger, name, event_dict))
        if not self._journal:
            return line
        return f"<{PRIORITY.get(str(event_dict.get('level')), 6)}>{line}"


# Per-file events: one line per file, so as many lines as anyone can make files. Beyond a
# budget they are summed up instead (log_summary), so that a storm of hostile names can neither
# flood the journal nor push real deletion records past journald's rate limit (by default
# 10000 lines per 30 s per service): 200 lines/s with bursts of 2000 stays well inside it.
PER_FILE = frozenset(
    {
        "model_deleted",
        "model_would_be_deleted",
        "deletion_skipped",
        "deletion_failed",
        "future_timestamp",
        "scan_unreadable",
    }
)
RATE = 200.0
BURST = 2000.0
SAMPLE = 5
SUMMARY_S = 1.0  # per-file lines held back are summed up at most this often
PENDING_MAX = 256 * 1024  # bytes held for a stalled reader before lines are dropped


class Budget:
    """A token bucket over the per-file events, and what it held back, per event."""

    def __init__(self, rate: float = RATE, burst: float = BURST) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.at = time.monotonic()
        self.held: dict[str, dict[str, Any]] = {}
        self.summed_at = float("-inf")

    def __call__(
        self, _: Any, __: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event = event_dict.get("event")
        if event not in PER_FILE:
            return event_dict
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return event_dict
        held = self.held.setdefault(str(event), {"count": 0, "bytes": 0, "sample": []})
        held["count"] += 1
        size = event_dict.get("size")
        if isinstance(size, int):
            held["bytes"] += size
        if len(held["sample"]) < SAMPLE:
            held["sample"].append(event_dict.get("path"))
        reason = event_dict.get("reason")
        if reason is not None:
            reasons = held.setdefault("reasons", {})
            reasons[reason] = reasons.get(reason, 0) + 1
        import structlog  # noqa: PLC0415 — structlog is running this very processor

        raise structlog.DropEvent

    def summary_due(self) -> bool:
        """At most one summary per event and per SUMMARY_S: summing up is what saves lines."""
        return time.monotonic() - self.summed_at >= SUMMARY_S

    def summaries(self) -> list[dict[str, Any]]:
        self.summed_at = time.monotonic()
        held, self.held = self.held, {}
        return [{"of": event, **counts} for event, counts in held.items()]


class LineWriter:
    """structlog's final logger for ``ocrd run``: one line per call, written straight to the
    file descriptor, which is made non-blocking, so that a log reader that stalls (a full pipe
    to journald) costs lines, never a missed watchdog ping or an ignored SIGTERM.

    Lines are written whole, one write() each: a pipe takes a write of up to PIPE_BUF (4096)
    bytes entirely or not at all, so a reader never sees half a line, even when ocrd exits
    with lines still held. What does not fit is held (up to PENDING_MAX bytes) and written by
    pump(); beyond that, lines are dropped and counted, and the count is logged
    (log_lines_dropped) once writing works again. A reader that went away (EPIPE) is reported
    to ``on_closed`` and the rest goes to stderr."""

    def __init__(self, fd: int, on_closed: Callable[[], None] = lambda: None) -> None:
        self.fd = fd
        self.on_closed = on_closed
        self.pending: collections.deque[bytes] = collections.deque()
        self.held = 0  # bytes in pending
        self.dropped = 0
        self.closed = False
        with contextlib.suppress(OSError):
            os.set_blocking(fd, False)

    def msg(self, message: str) -> None:
        self.write(message.encode("utf-8", "backslashreplace") + b"\n")

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg

    def write(self, line: bytes) -> None:
        if self.pending:
            self.pump()
        if self.pending:
            self._hold(line)
        else:
            self._send(line)

    def pump(self) -> None:
        """Write what is held, as far as the reader takes it; then say what was dropped."""
        while self.pending:
            line = self.pending.popleft()
            self.held -= len(line)
            if not self._send(line, front=True):
                return
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self._send(_line("warning", "log_lines_dropped", count=dropped))

    def _send(self, line: bytes, *, front: bool = False) -> bool:
        """Write ``line``; True if it went out whole, else it is held (or dropped)."""
        try:
            written = os.write(self.fd, line)
        except BlockingIOError:
            written = 0
        except BrokenPipeError:
            self._close()
            return False
        except OSError:
            self.dropped += 1
            return False
        if written == len(line):
            return True
        rest = line[written:]  # a line longer than PIPE_BUF, half written: finished first
        if front or written:
            self.pending.appendleft(rest)
            self.held += len(rest)
        else:
            self._hold(rest)
        return False

    def _hold(self, line: bytes) -> None:
        if self.held + len(line) <= PENDING_MAX:
            self.pending.append(line)
            self.held += len(line)
        else:
            self.dropped += 1

    def _close(self) -> None:
        """The reader is gone: the rest of the lines go to stderr, beginning with a word."""
        if self.closed:
            return
        self.closed = True
        self.pending.clear()
        self.held = 0
        self.fd = 2
        _emergency["fd"] = 2
        with contextlib.suppress(OSError):
            os.set_blocking(2, False)
        self._send(_line("error", "log_closed", detail="stdout was closed by its reader"))
        self.on_closed()


def _line(level: str, event: str, **keys: Any) -> bytes:
    return line_now(level, event, **keys)


_budget: Budget | None = None
_writer: LineWriter | None = None


def pump(*, force: bool = False) -> None:
    """For the daemon's loop: write what a stalled reader left held, and the summaries of
    per-file lines held back by the budget."""
    if _budget is not None and _budget.held and (force or _budget.summary_due()):
        logger = get()
        for summary in _budget.summaries():
            logger.warning("log_summary", **summary)
    if _writer is not None:
        _writer.pump()


def busy() -> bool:
    """Whether pump() has something to do."""
    return bool(
        (_budget is not None and _budget.held)
        or (_writer is not None and (_writer.pending or _writer.dropped))
    )


def configure(
    level: str = "info",
    fmt: Literal["json", "console", "auto"] = "auto",
    stream: TextIO | None = None,
    *,
    daemon: bool = False,
    on_closed: Callable[[], None] = lambda: None,
    deferred: bool = False,
) -> None:
    """(Re)configure the process's loggers. Safe to call again on reload. ``daemon``: the
    lines of ``ocrd run``, written without ever blocking and within a budget per file.
    ``deferred`` (not with ``daemon``): structlog is imported and configured so only when the
    first line at ``level`` or above is written, by ocrd or by a library (see the module's doc);
    until then get() and bound() drop what ``level`` filters out, as structlog would."""
    global _pending  # noqa: PLW0603 — one logging setup per process
    out = stream if stream is not None else sys.stdout
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    journal = not console and to_journal(out)
    _bound.clear()
    _emergency_to(out, journal)
    if deferred and not daemon:
        _pending = (level, out, console, journal)
        _root_handler(_Pending(), level)
        return
    _pending = None
    _root_handler(_setup(level, out, console, journal, daemon=daemon, on_closed=on_closed), level)


def _setup(
    level: str,
    out: TextIO,
    console: bool,
    journal: bool,
    *,
    daemon: bool = False,
    on_closed: Callable[[], None] = lambda: None,
) -> logging.Handler:
    """structlog configured; the handler that writes library records alike."""
    global _budget, _writer  # noqa: PLW0603 — one logging setup per process
    import structlog  # noqa: PLC0415 — see the module's doc

    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty()) if console else _Rendered(journal)
    )
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    budget: list[Any] = []
    factory: Any = structlog.PrintLoggerFactory(out)
    if daemon:
        if _budget is None:
            _budget = Budget()
        budget = [_budget]
        if _writer is None or _writer.fd != out.fileno():
            _writer = LineWriter(out.fileno(), on_closed)
        _writer.on_closed = on_closed
        writer = _writer
        factory = lambda *args: writer  # noqa: E731 — structlog wants a factory
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *budget,
            *shared,
            structlog.processors.format_exc_info,
            _first_keys,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library (watchdog does): the same stream, the same
    # line format, warnings and up; Python's last-resort handler would write bare text instead.
    handler: logging.Handler = (
        _WriterHandler(_writer) if daemon and _writer is not None else logging.StreamHandler(out)
    )
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
    return handler


def _root_handler(handler: logging.Handler, level: str) -> None:
    root = logging.getLogger()
    while _handlers:
        root.removeHandler(_handlers.pop())
    _handlers.append(handler)
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, _LEVELS[level]))
    logging.captureWarnings(True)


def _emergency_to(out: TextIO, journal: bool) -> None:
    try:
        _emergency["fd"] = out.fileno()
    except (OSError, ValueError, AttributeError):
        _emergency["fd"] = 1
    _emergency["journal"] = journal


_pending: tuple[str, TextIO, bool, bool] | None = None
"""What configure(deferred=True) was asked for (level, stream, console, journal), until the first
line makes it so."""
_configuring = threading.Lock()


def _configured() -> Any:
    """structlog, configured as asked (once, at the first line written after a deferred
    configure())."""
    global _pending  # noqa: PLW0603 — one logging setup per process
    with _configuring:  # the deleting threads of a pass may write their first lines at once
        if _pending is not None:
            level, out, console, journal = _pending
            handler = _setup(level, out, console, journal)
            for waiting in _handlers:
                if isinstance(waiting, _Pending):
                    waiting.target = handler
            _pending = None
    import structlog  # noqa: PLC0415 — see the module's doc

    return structlog


class _Pending(logging.Handler):
    """The root logger's handler while structlog waits: a library's record configures it, and
    this handler passes that record and every later one on to the handler configured (the
    root's list of handlers is not changed while the root is handing a record to them)."""

    def __init__(self) -> None:
        super().__init__()
        self.target: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        _configured()
        if self.target is not None:
            self.target.handle(record)


class _Quiet:
    """get() and bound() while structlog waits (configure(deferred=True)): a line below the
    configured level is dropped here, as structlog's filtering logger drops it; any other
    line, or any other use of the logger, configures structlog and goes on to its logger."""

    def is_enabled_for(self, level: int) -> bool:
        if _pending is None:
            return bool(get().is_enabled_for(level))
        return level >= _LEVELS[_pending[0]]

    def _line(self, level: int, method: str, event: str | None, *args: Any, **kw: Any) -> Any:
        if _pending is not None and level < _LEVELS[_pending[0]]:
            return None
        return getattr(_configured().get_logger(), method)(event, *args, **kw)

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._line(logging.DEBUG, "debug", event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._line(logging.INFO, "info", event, *args, **kw)

    def warning(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._line(logging.WARNING, "warning", event, *args, **kw)

    def error(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._line(logging.ERROR, "error", event, *args, **kw)

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._line(logging.ERROR, "exception", event, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(_configured().get_logger(), name)


_QUIET = _Quiet()


class _WriterHandler(logging.Handler):
    """Library records, through the same non-blocking writer as ocrd's own lines."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.msg(self.format(record))
        except Exception:  # noqa: BLE001 — a logging handler must not raise
            self.handleError(record)


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
    if _pending is not None:
        return _QUIET
    return _configured().get_logger()


_bound: list[Any] = []  # one concrete logger, made at the first bound() after each configure()


def bound() -> Any:
    """The configured logger itself, for a line per file: get()'s lazy proxy builds a new
    logger on every call (measured: 0.5 s of ``ocrd clean``'s main thread, holding the GIL the
    deleting threads want, for 55k deletions). Made again after each configure()."""
    if _pending is not None:
        return _QUIET
    if not _bound:
        _bound.append(_configured().get_logger().bind())
    return _bound[0]
