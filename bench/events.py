"""§11, events: the CPU a running ``ocrd run`` spends on filesystem events it has no work for.

``python -m bench.events [--quick]`` runs it alone; ``python -m bench.run --sections 11`` as a
section of the report. Each scenario starts ``ocrd run`` as a real subprocess (tests.harness)
on a fresh model_dir holding a tree of kept files, drives one writer for a fixed time, and reads
the daemon's CPU (utime + stime from /proc/PID/stat, every thread, and each thread apart from
/proc/PID/task) over the run:

- **reopen**: one file opened for writing, a few bytes written at its start, closed again,
  every 3 ms (settle 0): the IN_CLOSE_WRITE storm of a process that rewrites a state file;
- **churn**: files created at a steady rate in ten directories, each removed a few seconds
  later (created, closed, deleted: three events per file).

A few ``old_`` files are made during every run: each must be deleted by event (its
``model_deleted`` read) while the storm goes on, so that being cheap is not bought by looking
away. The daemon's own count of what it received and did is read from its ``daemon_stopped``
line (``watch``: events, marks, paths looked at again, paths planned).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.modes import FULL, QUICK, Mode
from bench.report import Results, Row, fmt, loadavg
from bench.workspace import Workspace
from tests import configs
from tests.harness import OcrdProcess

SECTION = "11"
REOPEN_PERIOD_S = 0.003
CHURN_LIFE_S = 3.0
OLD_FILES = 5  # old_ files made during each run, each to be deleted by event
DELETE_WAIT_S = 15.0  # how long after the run an old_ file's model_deleted may still come
TARGETS = {"reopen": 5.0, "churn": 10.0}  # daemon CPU, % of one core
CONFIG = configs.toml(retention={"max_age": "30d"})  # prefix old_, max_age 30d, settle 0s


@dataclass
class Run:
    """One scenario's outcome."""

    cpu_share: float  # % of one core, the whole daemon
    threads: list[tuple[str, float]]  # (thread, % of one core), busiest first
    ops: int  # what the writer did (reopens, or files created)
    old_deleted: int  # of OLD_FILES
    old_left: int  # old_ files still on disk after the wait
    watch: dict[str, Any] = field(default_factory=dict)  # daemon_stopped's "watch" counts


def _tree(models: Path, n: int) -> None:
    for d in range(10):
        (models / f"d{d}").mkdir(parents=True)
    for i in range(n):
        (models / f"d{i % 10}" / f"kept{i}.bin").write_bytes(b"k")


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid``, by "tid comm" ("main" for the main thread)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                text = fh.read()
        except OSError:
            continue  # ended meanwhile
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rpartition(")")[2].split()
        name = "main" if tid == str(pid) else f"{tid} {comm}"
        found[name] = (int(fields[11]) + int(fields[12])) / tick
    return found


class _Writer:
    """Paces one scenario's writer and makes its old_ files; ``step(now)`` does what is due."""

    def __init__(self, models: Path, seconds: float) -> None:
        self.models = models
        self.seconds = seconds
        self.ops = 0
        self.old: list[Path] = []

    def old_due(self, elapsed: float) -> None:
        due = int(elapsed / self.seconds * OLD_FILES) + 1
        while len(self.old) < min(due, OLD_FILES):
            path = self.models / f"d{len(self.old) % 10}" / f"old_{len(self.old)}.bin"
            path.write_bytes(b"o")
            self.old.append(path)


def _reopen(models: Path, seconds: float) -> _Writer:
    writer = _Writer(models, seconds)
    target = models / "d0" / "state.bin"
    target.write_bytes(b"0123456789")
    began = time.monotonic()
    while (now := time.monotonic()) - began < seconds:
        fd = os.open(target, os.O_WRONLY)
        try:
            os.write(fd, b"%06d" % (writer.ops % 1_000_000))
        finally:
            os.close(fd)
        writer.ops += 1
        writer.old_due(now - began)
        # Paced from the start, not from the last write: the rate holds however long one took.
        time.sleep(max(0.0, began + writer.ops * REOPEN_PERIOD_S - time.monotonic()))
    return writer


def _churn(models: Path, seconds: float, rate: float) -> _Writer:
    writer = _Writer(models, seconds)
    alive: list[tuple[float, Path]] = []
    head = 0
    began = time.monotonic()
    while (now := time.monotonic()) - began < seconds:
        due = int((now - began) * rate) - writer.ops
        for _ in range(max(0, due)):
            path = models / f"d{writer.ops % 10}" / f"m{writer.ops}.bin"
            path.write_bytes(b"x")
            alive.append((now + CHURN_LIFE_S, path))
            writer.ops += 1
        while head < len(alive) and alive[head][0] <= now:
            alive[head][1].unlink()
            head += 1
        writer.old_due(now - began)
        time.sleep(0.002)
    for _, path in alive[head:]:
        path.unlink()
    return writer


def run_one(
    ws: Workspace,
    label: str,
    drive: Callable[[Path], _Writer],
    tree: int,
    *,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Run:
    """Start ocrd on a fresh tree of ``tree`` kept files, drive it, stop it; what it cost."""
    scratch = ws.fresh(f"events-{label}")
    try:
        models = scratch / "models"
        _tree(models, tree)
        config = scratch / "config.toml"
        config.write_text(CONFIG)
        # As tests.harness.running does, with the command and environment an experiment may
        # want (a profiler around ocrd, say).
        ocrd = OcrdProcess(config, env=env, command=command)
        try:
            ocrd.wait_ready(120)
            pid = ocrd.proc.pid
            threads0 = _thread_cpu(pid)
            cpu0, t0 = ocrd.cpu_seconds(), time.monotonic()
            writer = drive(models)
            cpu1, t1 = ocrd.cpu_seconds(), time.monotonic()
            threads1 = _thread_cpu(pid)
            deleted = sum(_deleted(ocrd, str(p.relative_to(models))) for p in writer.old)
            left = sum(1 for p in writer.old if p.exists())
        finally:
            ocrd.terminate()
        stopped = next((e for e in reversed(ocrd.events) if e.get("event") == "daemon_stopped"), {})
    finally:
        ws.remove(scratch)
    wall = t1 - t0
    shares = sorted(
        (
            (name, 100 * (threads1.get(name, 0.0) - threads0.get(name, 0.0)) / wall)
            for name in threads1
        ),
        key=lambda item: -item[1],
    )
    return Run(
        cpu_share=100 * (cpu1 - cpu0) / wall,
        threads=shares,
        ops=writer.ops,
        old_deleted=deleted,
        old_left=left,
        watch=dict(stopped.get("watch") or {}),
    )


# watchdog alone: the observer ocrd arms (inotify, recursive, the same event filter) with a
# handler that does nothing. What it costs under a storm is the floor under ocrd's own work.
WATCHDOG_ALONE = """
import signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the observer's threads inherit it
from watchdog.events import FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver
from ocrd.watch.observer import NO_READS

class Nothing(FileSystemEventHandler):
    def on_any_event(self, event):
        pass

observer = InotifyObserver()
observer.daemon = True
observer.schedule(Nothing(), sys.argv[1], recursive=True, event_filter=NO_READS)
observer.start()
print("ready", flush=True)
signal.sigwait({signal.SIGTERM})
"""


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_watchdog_alone(ws: Workspace, drive: Callable[[Path], _Writer], tree: int) -> float:
    """watchdog's observer alone (WATCHDOG_ALONE) on a fresh tree, driven the same way: its
    CPU share, % of one core."""
    scratch = ws.fresh("events-watchdog")
    try:
        models = scratch / "models"
        _tree(models, tree)
        proc = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG_ALONE, str(models)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            cpu0, t0 = _cpu_of(proc.pid), time.monotonic()
            drive(models)
            cpu1, t1 = _cpu_of(proc.pid), time.monotonic()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
    finally:
        ws.remove(scratch)
    return 100 * (cpu1 - cpu0) / (t1 - t0)


def _deleted(ocrd: OcrdProcess, path: str) -> bool:
    """Whether ``path``'s model_deleted line came (within DELETE_WAIT_S)."""
    try:
        ocrd.event("model_deleted", timeout=DELETE_WAIT_S, path=path)
    except AssertionError:  # the harness's word for "not in time"
        return False
    return True


@dataclass(frozen=True)
class Scenario:
    kind: str  # "reopen" or "churn"
    label: str
    drive: Callable[[Path], _Writer]
    target: float | None = None  # the target for the daemon's CPU, % of one core


def scenarios(mode: Mode) -> list[Scenario]:
    seconds = 8.0 if mode.name == "quick" else 20.0
    found = [
        Scenario(
            "reopen",
            f"one file reopened every {REOPEN_PERIOD_S * 1000:.0f} ms for {seconds:.0f} s",
            lambda models: _reopen(models, seconds),
            TARGETS["reopen"],
        )
    ]
    for rate in (200.0, 2000.0):
        found.append(
            Scenario(
                "churn",
                f"{rate:.0f} files/s created and removed for {seconds:.0f} s",
                functools.partial(_churn, seconds=seconds, rate=rate),
                TARGETS["churn"] if rate == 2000.0 else None,
            )
        )
    return found


def _note(runs: Sequence[Run]) -> str:
    last = runs[-1]
    busiest = ", ".join(f"{name} {share:.1f} %" for name, share in last.threads[:3])
    watch = ", ".join(f"{k} {v}" for k, v in last.watch.items())
    return (
        f"writer: {last.ops} ops; old_ deleted by event {last.old_deleted}/{OLD_FILES}, "
        f"left {last.old_left}; threads: {busiest}" + (f"; daemon: {watch}" if watch else "")
    )


def section_events(mode: Mode, ws: Workspace, res: Results, only: set[str] | None = None) -> None:
    """Each scenario (those of kinds ``only``, or all) three times, once in quick mode: the
    daemon's CPU share (median), watchdog's alone, and the old_ files not deleted by event."""
    tree = 1_000 if mode.name == "quick" else 10_000
    reps = 1 if mode.name == "quick" else 3
    for sc in scenarios(mode):
        if only and sc.kind not in only:
            continue
        runs = [run_one(ws, sc.kind, sc.drive, tree) for _ in range(reps)]
        label = f"{sc.label}, {tree} files kept"
        shares = [r.cpu_share for r in runs]
        res.add(Row.of(SECTION, label, "ocrd run CPU", "%", shares, note=_note(runs)))
        watchdog = [sum(s for name, s in r.threads if name != "main") for r in runs]
        res.add(Row.of(SECTION, label, "ocrd run CPU: watchdog's threads", "%", watchdog))
        alone = [run_watchdog_alone(ws, sc.drive, tree) for _ in range(reps)]
        res.add(
            Row.of(
                SECTION,
                label,
                "watchdog alone (same observer, a handler that does nothing)",
                "%",
                alone,
                peer=True,
            )
        )
        missed = sum(OLD_FILES - r.old_deleted for r in runs)
        res.add(
            Row(
                SECTION,
                f"{sc.label}: deletions by event meanwhile",
                "ocrd run: old_ files not deleted by event",
                "files",
                missed,
                n=len(runs),
            )
        )
        if missed:
            res.problems.append(f"§11 {sc.label}: {missed} old_ files not deleted by event")
        target = sc.target
        if target is not None:
            value = statistics.median(shares)
            met = value <= target
            res.targets.append(
                (
                    f"events: {sc.label}, daemon CPU ≤ {target:.0f} %",
                    fmt(value, "%"),
                    "met" if met else "**not met**",
                    met,
                )
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.events", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs, one of each")
    parser.add_argument("--only", default="", help="scenario kinds, e.g. reopen or churn")
    parser.add_argument("--tmpdir", type=Path, default=None, help="parent of the scratch dirs")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    ws = Workspace(args.tmpdir)
    res = Results(mode)
    print(f"load average {loadavg()}", flush=True)
    try:
        section_events(mode, ws, res, set(filter(None, args.only.split(","))))
    finally:
        ws.close()
    print(f"load average {loadavg()}", flush=True)
    for problem in res.problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if res.problems else 0


if __name__ == "__main__":
    sys.exit(main())
