"""A real ``ocrd run`` subprocess, with the test listening on its own NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]
WAIT_S = 30.0  # generous upper bound for a condition; tests wait on conditions, not on time


def ocrd_argv() -> list[str]:
    script = shutil.which("ocrd", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "ocrd"]


class Daemon:
    """Starts ``ocrd run -c CONFIG``; collects stdout JSON lines and notify datagrams."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
        notify_buffer: int | None = None,
        command: list[str] | None = None,
    ) -> None:
        """``command``: how to start ocrd (default: this venv's console script); ``prefix``
        goes before it (another user, a namespace)."""
        self.config = config
        # AF_UNIX paths are limited to 108 bytes: a short private directory, not tmp_path.
        self._sockdir = tempfile.mkdtemp(prefix="ocrd-n")
        self.socket_path = os.path.join(self._sockdir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if notify_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, notify_buffer)
        self.sock.bind(self.socket_path)
        self.reading = threading.Event()  # cleared: the collector stops taking datagrams
        self.reading.set()
        self.sock.settimeout(0.2)
        self.lines: list[str] = []
        self.events: list[Event] = []
        self.notes: list[tuple[float, str]] = []
        self.stderr = ""
        self._cond = threading.Condition()
        full_env = {k: v for k, v in os.environ.items() if k not in ("OCRD_CONFIG", "LISTEN_FDS")}
        full_env.update({"NOTIFY_SOCKET": self.socket_path, **(env or {})})
        self.proc = subprocess.Popen(
            [*(prefix or []), *(command or ocrd_argv()), "run", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_notify, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    # -- collectors ------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8")
            with self._cond:
                self.lines.append(line)
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    self.events.append({"event": "<not json>", "line": line})
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        data = self.proc.stderr.read()
        self.stderr = data.decode("utf-8", "replace")

    def _read_notify(self) -> None:
        while True:
            if not self.reading.is_set():
                if self.proc.poll() is not None:
                    return
                self.reading.wait(0.2)
                continue
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if self.proc.poll() is not None:
                    return
                continue
            except OSError:
                return
            with self._cond:
                for part in data.decode().split("\n"):
                    self.notes.append((time.monotonic(), part))
                self._cond.notify_all()

    # -- waiting ---------------------------------------------------------------------------

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = check()
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not found):
                    if self.proc.poll() is not None:
                        self._cond.wait(0.5)  # let collectors drain what the process wrote
                        found = check()
                        if found:
                            return found
                    raise AssertionError(
                        f"timed out waiting for {what}; exit={self.proc.poll()}\n"
                        f"events={[e.get('event') for e in self.events]}\n"
                        f"notes={[n for _, n in self.notes]}\nstderr={self.stderr[-2000:]}"
                    )
                self._cond.wait(min(left, 0.5))

    def event(self, name: str, timeout: float = WAIT_S, **keys: Any) -> Event:
        def check() -> Event | None:
            for e in self.events:
                if e.get("event") == name and all(e.get(k) == v for k, v in keys.items()):
                    return e
            return None

        found: Event = self.wait_for(f"event {name} {keys}", check, timeout)
        return found

    def note(self, text: str, count: int = 1, timeout: float = WAIT_S) -> list[float]:
        """Wait until notify message ``text`` arrived ``count`` times; their arrival times."""

        def check() -> list[float] | None:
            times = [t for t, n in self.notes if n == text or n.startswith(text)]
            return times if len(times) >= count else None

        found: list[float] = self.wait_for(f"notify {text} x{count}", check, timeout)
        return found

    def deletions(self) -> int:
        """Files deleted so far: a model_deleted line each, or counted in a log_summary (per-file
        lines beyond ocrd's budget are summed up, see ocrd/log.py)."""
        with self._cond:
            return sum(
                1
                if e.get("event") == "model_deleted"
                else int(e.get("count", 0))
                if e.get("event") == "log_summary" and e.get("of") == "model_deleted"
                else 0
                for e in self.events
            )

    def names(self) -> list[str]:
        with self._cond:
            return [str(e.get("event")) for e in self.events]

    # -- stopping --------------------------------------------------------------------------

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        """Send ``sig`` and wait; returns (exit status, seconds it took)."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        took = time.monotonic() - started
        for t in self._threads:
            t.join(timeout=5)
        return code, took

    def wait(self, timeout: float = WAIT_S) -> int:
        """Wait for the process to exit by itself; its exit status."""
        code = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for t in self._threads:
            t.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        self.sock.close()
        shutil.rmtree(self._sockdir, ignore_errors=True)
