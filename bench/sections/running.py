"""§3-5 on one running ``ocrd run`` and a few more: which measures run, in which order."""

from __future__ import annotations

from bench.modes import Mode
from bench.report import Results, Row, count_label
from bench.sections.burst import measure_burst
from bench.sections.footprint import measure_idle, measure_rss
from bench.sections.latency import measure_latency
from bench.sections.live import start_daemon
from bench.tree import PREFIX
from bench.workspace import Workspace
from tests.harness import NotReady


def section_daemon(mode: Mode, ws: Workspace, res: Results, wanted: set[str]) -> None:
    try:
        daemon, scratch, tree = start_daemon(ws, "run", mode.daemon_tree, watchdog=True)
    except NotReady as exc:
        reason = f"ocrd run not available: {exc}"
        res.notes.append(reason)
        for section, measure in (
            ("3", "create → model_deleted"),
            ("4", "idle CPU"),
            ("4", "RSS per indexed file"),
            ("5", f"burst of {count_label(mode.burst_n)} {PREFIX} files"),
        ):
            if section in wanted:
                res.add(Row(section, measure, "ocrd run", "s", None, note=reason))
        return
    try:
        if "4" in wanted:
            measure_idle(mode, daemon, tree, res)
        if "3" in wanted:
            measure_latency(mode, daemon, tree, scratch, res)
    finally:
        code, took = daemon.terminate()
        ws.remove(scratch)
    res.add(
        Row(
            "4",
            "SIGTERM → exit",
            "ocrd run",
            "s",
            took,
            n=1,
            note=f"exit status {code if code is not None else 'none: killed after 10 s'}",
        )
    )
    if "4" in wanted:
        measure_rss(mode, ws, res)
    if "5" in wanted:
        measure_burst(mode, ws, res)
