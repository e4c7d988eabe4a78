"""§4, what an idle ``ocrd run`` costs: CPU, and RSS per indexed file."""

from __future__ import annotations

import collections
import os
import statistics
import time

from bench.modes import Mode
from bench.report import Results, Row, count_label
from bench.sections.live import DEFAULT_RESCAN, WATCHDOG_USEC, Tallied, start_daemon
from bench.tree import Tree
from bench.workspace import Workspace
from tests.harness import NotReady


def measure_idle(mode: Mode, daemon: Tallied, tree: Tree, res: Results) -> None:
    time.sleep(2.0)  # let whatever READY=1 set in motion finish
    since = time.monotonic()
    cpu0 = daemon.cpu_seconds()
    time.sleep(mode.idle_s)
    cpu1 = daemon.cpu_seconds()
    elapsed = time.monotonic() - since
    pings = daemon.count_notes("WATCHDOG=1", since)
    expected = int(elapsed // (WATCHDOG_USEC / 2e6))
    tick = 100 / os.sysconf("SC_CLK_TCK") / elapsed
    rescan = ""
    if daemon.scan_ms:
        share = daemon.scan_ms[0] / 1000 / 600 * 100
        rescan = (
            f"; not in the window: the rescan every {DEFAULT_RESCAN}, whose scan took "
            f"{daemon.scan_ms[0]:.0f} ms at start-up (about {share:.3f} % amortized)"
        )
    res.add(
        Row(
            "4",
            f"idle CPU ({count_label(tree.n)} files, {elapsed:.0f} s)",
            "ocrd run",
            "%",
            100 * (cpu1 - cpu0) / elapsed,
            n=1,
            note=f"utime+stime from /proc/PID/stat (resolution {tick:.3f} %); "
            f"WATCHDOG_USEC=10 s: {pings} WATCHDOG=1 received, ≥{expected} due{rescan}",
        )
    )


def measure_rss(mode: Mode, ws: Workspace, res: Results) -> None:
    rss: dict[int, list[float]] = collections.defaultdict(list)
    hwm: dict[int, list[float]] = collections.defaultdict(list)
    for n in mode.rss_sizes:
        for _ in range(mode.rss_reps):
            try:
                daemon, scratch, _tree = start_daemon(ws, f"rss{count_label(n)}", n, watchdog=False)
            except NotReady as exc:
                res.add(
                    Row("4", f"RSS, {count_label(n)} files", "ocrd run", "MiB", None, note=str(exc))
                )
                return
            try:
                time.sleep(1.0)
                mem = daemon.memory()
            finally:
                daemon.terminate()
                ws.remove(scratch)
            rss[n].append(mem["VmRSS"] / 2**20)
            hwm[n].append(mem["VmHWM"] / 2**20)
    base = statistics.median(rss[0]) if rss.get(0) else None
    for n in mode.rss_sizes:
        res.add(
            Row.of(
                "4",
                f"RSS, {count_label(n)} files",
                "ocrd run",
                "MiB",
                rss[n],
                note=f"VmRSS 1 s after READY=1, engine.enabled = false; peak (VmHWM) "
                f"{statistics.median(hwm[n]):.1f} MiB",
            )
        )
    for n in mode.rss_sizes:
        if n and base is not None:
            per_file = (statistics.median(rss[n]) - base) * 2**20 / n
            res.add(
                Row(
                    "4",
                    f"index, {count_label(n)} files",
                    "ocrd run",
                    "B/file",
                    per_file,
                    n=1,
                    note="(median RSS - median RSS at 0 files) / files",
                )
            )
