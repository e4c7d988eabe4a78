"""``ocrd run``'s start: the config, the log, the engine's runtime, then the loop
(ocrd.daemon.loop) until a signal stops it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from ocrd.base import log
from ocrd.base.errors import EXIT_CONFIG, ConfigError
from ocrd.config.load import load
from ocrd.daemon import signals
from ocrd.daemon.engine import load_runtime
from ocrd.daemon.loop import Daemon
from ocrd.fs.place import raise_fd_limit


def run(config_path: Path) -> int:
    """``ocrd run``: 0 after SIGTERM/SIGINT, 78 for an invalid config at start, 1 otherwise.
    Every outcome is a log line (JSON off a TTY), start-up config errors and crashes included."""
    try:
        config = load(config_path)
    except ConfigError as exc:
        log.configure()  # the config's own [log] is unknown: the defaults
        log.get().error("config_invalid", config=str(config_path), errors=list(exc.problems))
        return EXIT_CONFIG
    daemons: list[Daemon] = []

    def went_away() -> None:
        for d in daemons:
            d.log_went_away()

    log.configure(config.log.level, config.log.format, daemon=True, on_closed=went_away)
    threading.excepthook = _thread_failed
    before, after = raise_fd_limit()
    log.get().debug("fd_limit", soft_before=before, soft=after)
    try:
        # The runtime is imported before any signal handler is installed: see install_signals.
        runtime = load_runtime() if config.engine.enabled else None
        daemon = Daemon(config, runtime=runtime)
        daemons.append(daemon)
        _woken.append(daemon.waker.wake)
        daemon.install_signals()
        signals.release()  # every handler is in place: what arrived meanwhile is delivered now
        return daemon.serve()
    except Exception as exc:  # noqa: BLE001 — logged loudly, exit 1, systemd restarts us
        log.get().exception("daemon_failed", error=repr(exc))
        return 1


_woken: list[Callable[[], None]] = []  # the loop to wake when a thread dies


def _thread_failed(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught exception (the observer's, a library's) as a log line, not a bare
    traceback on stderr; the loop is woken to look at its watch at once."""
    thread = args.thread.name if args.thread is not None else None
    log.get().error(
        "thread_failed",
        thread=thread,
        error=repr(args.exc_value),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
    for wake in _woken:
        wake()
