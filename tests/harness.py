"""The one process harness: ``ocrd run`` as a real subprocess, watched the way systemd would,
for the tests and for the benchmarks alike.

It lives in ``tests/`` because the tests are its first users, and both entry points import it
as ``tests.harness`` without touching ``sys.path``: ``pytest`` puts the directory above the
``tests`` package (the checkout) on the path to import the test modules, and ``python -m
bench.run`` (like every ``python -m``, run from the checkout, as ``make bench`` does) puts the
current directory first. Nothing here imports pytest or ``bench``, so the dependency runs one
way: ``bench`` → ``tests.harness``.

- :func:`ocrd_argv`: how to start this checkout's ``ocrd``;
- :func:`running`: an :class:`OcrdProcess` past READY=1 for a ``with`` block;
- :class:`OcrdProcess`: starts ``ocrd run -c CONFIG`` with its own ``NOTIFY_SOCKET``, collects
  its stdout JSON lines, its notify datagrams and its stderr, and waits on conditions over
  them, never on time alone.
"""

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Event = dict[str, Any]
WAIT_S = 30.0  # generous upper bound for a condition; tests wait on conditions, not on time

# What the caller's environment must not hand to ocrd: its own config, and systemd's sockets
# and watchdog, which are the harness's to give (pass them in ``env``).
_NOT_INHERITED = ("OCRD_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def ocrd_argv() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m ocrd``."""
    script = shutil.which("ocrd", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "ocrd"]


def with_user_limit(setting: str, value: int) -> list[str]:
    """A command prefix: run in a user namespace of its own where /proc/sys/user/``setting``
    (max_inotify_watches, max_inotify_instances, ...) is ``value``. The limit is real for that
    process and leaves the host's untouched."""
    script = f'echo {value} > /proc/sys/user/{setting} && exec "$@"'
    return ["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh"]


def user_limits_work() -> bool:
    """Whether with_user_limit works here (unshare present, user namespaces allowed)."""
    if shutil.which("unshare") is None:
        return False
    probe = [*with_user_limit("max_inotify_watches", 5), "true"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


class NotReady(Exception):
    """``ocrd run`` exited before READY=1, or sent none in time."""


class OcrdProcess:
    """Starts ``ocrd run -c CONFIG``; collects stdout JSON lines and notify datagrams.

    ``events`` (parsed lines; a line that is not JSON becomes ``{"event": "<not json>"}``),
    ``lines`` (as written), ``notes`` ((arrival time, message) per notify message) and
    ``stderr`` (whole, once the process exited) are read under ``cond``, which is notified on
    every arrival. A subclass that wants tallies instead of the whole log overrides
    :meth:`record`."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
        notify_buffer: int | None = None,
        command: list[str] | None = None,
    ) -> None:
        """``env`` is added to this process's environment (less what ``_NOT_INHERITED`` names,
        and ``LISTEN_*``); ``command``: how to start ocrd (default: :func:`ocrd_argv`);
        ``prefix`` goes before it (another user, a namespace, prlimit); ``notify_buffer``: the
        notify socket's receive buffer in bytes."""
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
        self.cond = threading.Condition()
        full_env = {
            k: v
            for k, v in os.environ.items()
            if k not in _NOT_INHERITED and not k.startswith("LISTEN_")
        }
        full_env.update({"NOTIFY_SOCKET": self.socket_path, **(env or {})})
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [*(prefix or []), *(command or ocrd_argv()), "run", "-c", str(config)],
            stdin=subprocess.DEVNULL,
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

    def record(self, line: str, event: Event, seen: float) -> None:
        """Keep one stdout line, read at ``seen`` (monotonic); called with ``cond`` held."""
        self.lines.append(line)
        self.events.append(event)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            seen = time.monotonic()
            line = raw.decode("utf-8")
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "<not json>", "line": line}
            with self.cond:
                self.record(line, event, seen)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

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
            seen = time.monotonic()
            with self.cond:
                for part in data.decode("utf-8", "replace").split("\n"):
                    self.notes.append((seen, part))
                self.cond.notify_all()

    # -- waiting ---------------------------------------------------------------------------

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        """``check()``'s first true answer, asked with ``cond`` held at every arrival;
        AssertionError (with what was collected) once ``timeout`` passed or ocrd exited."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = check()
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not found):
                    if self.proc.poll() is not None:
                        self.cond.wait(0.5)  # let collectors drain what the process wrote
                        found = check()
                        if found:
                            return found
                    raise AssertionError(
                        f"timed out waiting for {what}; exit={self.proc.poll()}\n"
                        f"events={[e.get('event') for e in self.events]}\n"
                        f"notes={[n for _, n in self.notes]}\nstderr={self.stderr[-2000:]}"
                    )
                self.cond.wait(min(left, 0.5))

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

    def wait_ready(self, timeout: float = WAIT_S) -> float:
        """Seconds from spawn to READY=1; NotReady if ocrd exits first or sends none within
        ``timeout`` (the process is left running: stop or close it)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                ready = next((t for t, n in self.notes if n == "READY=1"), None)
                if ready is not None:
                    return ready - self.started
                left = deadline - time.monotonic()
                if self.proc.poll() is not None or left <= 0:
                    break
                self.cond.wait(min(left, 0.1))
        if self.proc.poll() is not None:
            raise NotReady(
                f"`ocrd run` exited with status {self.proc.returncode} before READY=1: "
                + self.last_error()
            )
        raise NotReady(f"`ocrd run` sent no READY=1 within {timeout:.0f} s")

    def deletions(self) -> int:
        """Files deleted so far: a model_deleted line each, or counted in a log_summary (per-file
        lines beyond ocrd's budget are summed up, see ocrd/base/log.py)."""
        with self.cond:
            return sum(
                1
                if e.get("event") == "model_deleted"
                else int(e.get("count", 0))
                if e.get("event") == "log_summary" and e.get("of") == "model_deleted"
                else 0
                for e in self.events
            )

    def names(self) -> list[str]:
        with self.cond:
            return [str(e.get("event")) for e in self.events]

    def last_error(self) -> str:
        """The last line ocrd wrote to stderr (once it exited), at most 200 characters."""
        self._threads[2].join(timeout=5)
        lines = self.stderr.strip().splitlines()
        return lines[-1][:200] if lines else "(nothing on stderr)"

    # -- what it costs -----------------------------------------------------------------------

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (all its threads), from /proc/PID/stat."""
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM in bytes, from /proc/PID/status."""
        found: dict[str, int] = {}
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0]) * 1024
        return found

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

    def terminate(self, timeout: float = 10.0) -> tuple[int | None, float]:
        """SIGTERM, killed if still there after ``timeout``, then :meth:`close`; the exit
        status (None: it had to be killed) and how long SIGTERM → exit took."""
        try:
            code: int | None
            code, took = self.stop(signal.SIGTERM, timeout)
        except subprocess.TimeoutExpired:
            code, took = None, timeout
        self.close()
        return code, took

    def wait(self, timeout: float = WAIT_S) -> int:
        """Wait for the process to exit by itself; its exit status."""
        code = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=5)
        return code

    def close(self) -> None:
        """Kill it if still running, and release the pipes and the notify socket."""
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


@contextmanager
def running(config: Path, ready_s: float = WAIT_S) -> Iterator[OcrdProcess]:
    """``ocrd run -c CONFIG`` past READY=1 for the block (NotReady if it never gets there);
    terminated after it (SIGTERM, killed if it does not exit), its collections kept."""
    ocrd = OcrdProcess(config)
    try:
        ocrd.wait_ready(ready_s)
        yield ocrd
    finally:
        ocrd.terminate()
