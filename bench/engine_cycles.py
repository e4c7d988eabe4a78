"""§6, engine cycles: what each retention scenario costs the AsposeAI engine under ``ocrd run``.

Each scenario runs twice in the same invocation, against the real engine: with the shipped
coalescing (engine.batch = "2s", engine.restart_after = "10s") and with both set to "0s", which
frees and restarts the engine for every deletion pass (the baseline; the pre-check that keeps
files that cannot go from costing a cycle applies to both). Per scenario: engine cycles
(engine_freed for deletions), total engine downtime, ocrd's CPU, and the latency from a file's
creation to its model_deleted line (p50/p99). The mode names the scenarios.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.modes import Mode
from bench.report import Results, Row
from bench.workspace import Workspace
from tests.harness import Event, NotReady, OcrdProcess

SHIPPED = ("2s", "10s")
WINDOW_S = 10.0  # held/immutable: CPU is measured over this long, reloads included
BASELINE = ("0s", "0s")


class Run(OcrdProcess):
    """``ocrd run`` on a fresh model_dir, with our own NOTIFY_SOCKET, past READY=1."""

    def __init__(
        self,
        scratch: Path,
        settle: str,
        batch: str,
        restart_after: str,
        prepare: Callable[[Path], None] = lambda models: None,
    ) -> None:
        self.models = scratch / "models"
        self.models.mkdir()
        prepare(self.models)
        config = scratch / "config.toml"
        config.write_text(
            'model_dir = "models"\n[retention]\nprefixes = ["old_"]\n'
            f'[watch]\nsettle = "{settle}"\n'
            f'[engine]\nbatch = "{batch}"\nrestart_after = "{restart_after}"\n'
            '[log]\nformat = "json"\n',
        )
        super().__init__(config)
        try:
            self.wait_ready(60)
        except BaseException:
            self.close()
            raise

    def until(self, what: Callable[[list[Event]], bool], timeout: float = 120) -> None:
        self.wait_for("ocrd run to get there", lambda: what(self.events), timeout)


def _count(events: list[Event], name: str, **keys: Any) -> int:
    return sum(
        1 for e in events if e["event"] == name and all(e.get(k) == v for k, v in keys.items())
    )


def _reloads(n: int) -> Callable[[list[Event]], bool]:
    return lambda events: _count(events, "config_reloaded") >= n


def _stamp(event: Event) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def scenario(name: str, batch: str, restart_after: str) -> dict[str, float]:
    created: dict[str, float] = {}
    stuck: list[Path] = []
    holder: list[subprocess.Popen[bytes]] = []

    def prepare(models: Path) -> None:
        if name not in ("held", "immutable"):
            return
        target = models / "old_stuck.gguf"
        target.write_bytes(b"GGUF" + b"\0" * 4096)
        stuck.append(target)
        if name == "immutable":
            subprocess.run(["chattr", "+i", str(target)], check=True)
        else:
            holder.append(subprocess.Popen(["sh", "-c", f'exec 3<"{target}"; exec sleep 600']))

    with tempfile.TemporaryDirectory(prefix="ocrd-cycles-") as tmp:
        run = Run(Path(tmp), "1s" if name == "trickle" else "0s", batch, restart_after, prepare)
        try:
            cpu0, began = run.cpu_seconds(), time.monotonic()
            if name == "trickle":
                for i in range(20):
                    path = run.models / f"old_{i:02d}.bin"
                    path.write_bytes(b"x" * 100)
                    created[path.name] = time.time()
                    time.sleep(0.3)  # the trickle: one file every 0.3 s
                run.until(lambda ev: _count(ev, "model_deleted") >= 20)
            elif name == "burst":
                staging = Path(tmp) / "staging"
                staging.mkdir()
                for i in range(1000):
                    (staging / f"old_{i:04d}.bin").write_bytes(b"x")
                for entry in sorted(os.listdir(staging)):
                    os.rename(staging / entry, run.models / entry)
                    created[entry] = time.time()
                run.until(lambda ev: _count(ev, "model_deleted") >= 1000)
            else:
                # Three more attempts: each reload retries at once instead of after minutes.
                for n in range(1, 4):
                    run.send(signal.SIGHUP)
                    run.until(_reloads(n))
                time.sleep(max(0.0, WINDOW_S - (time.monotonic() - began)))  # CPU over a window
            if _count(run.events, "engine_freed", reason="deletion"):
                # Let the freed engine start again, so that its downtime is counted whole.
                run.until(lambda ev: ev[-1]["event"] == "engine_started", timeout=60)
            cpu, wall = run.cpu_seconds() - cpu0, time.monotonic() - began
            events = list(run.events)
        finally:
            run.terminate(timeout=15)
            for p in holder:
                p.kill()
                p.wait()
            for path in stuck:
                subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)
    deleted_at = {e["path"]: _stamp(e) for e in events if e["event"] == "model_deleted"}
    latencies = sorted(deleted_at[p] - t for p, t in created.items() if p in deleted_at)
    return {
        "cycles": _count(events, "engine_freed", reason="deletion"),
        "downtime_s": sum(e.get("downtime_ms", 0) for e in events if e["event"] == "engine_started")
        / 1000,
        "cpu_pct": 100 * cpu / wall,
        "p50_s": statistics.median(latencies) if latencies else float("nan"),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if latencies
        else float("nan"),
    }


def section_cycles(mode: Mode, ws: Workspace, res: Results) -> None:
    del ws  # each scenario makes its own temporary directory
    for name in mode.cycle_scenarios:
        label = f"engine cycles: {name}"
        if name == "immutable" and shutil.which("chattr") is None:
            res.add(Row("6", label, "ocrd run", "cycles", None, note="no chattr"))
            continue
        for tool, (batch, restart) in (
            (f"ocrd run, batch {SHIPPED[0]}, restart {SHIPPED[1]}", SHIPPED),
            ("ocrd run, baseline: a cycle per pass", BASELINE),
        ):
            try:
                r = scenario(name, batch, restart)
            except NotReady as exc:
                res.add(Row("6", label, tool, "cycles", None, note=f"ocrd run not ready: {exc}"))
                continue
            res.add(
                Row(
                    "6",
                    label,
                    tool,
                    "cycles",
                    r["cycles"],
                    n=1,
                    note=f"downtime {r['downtime_s']:.1f} s, CPU {r['cpu_pct']:.1f} %, "
                    f"create → model_deleted p50 {_secs(r['p50_s'])}, p99 {_secs(r['p99_s'])}",
                )
            )


def _secs(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f} s"  # NaN: no file was deleted
