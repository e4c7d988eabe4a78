"""A running ``ocrd run`` for §3-5: its config, its start, and its log tallied."""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path

from bench.tree import PREFIX, Tree, generate
from bench.workspace import Workspace
from tests.harness import Event, NotReady, OcrdProcess

READY_TIMEOUT_S = 120.0
WATCHDOG_USEC = 10_000_000
DEFAULT_RESCAN = "10m"  # ocrd's default: the idle, latency and RSS daemons run with it


class Tallied(OcrdProcess):
    """``ocrd run`` whose log is tallied as it is read, not kept: a burst writes tens of
    thousands of lines."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.deleted: dict[str, float] = {}  # file name → when its model_deleted was read
        self.summarised = 0  # deletions counted in log_summary lines instead
        self.skips: collections.Counter[str] = collections.Counter()  # deletion_skipped reasons
        self.scans: collections.Counter[str] = collections.Counter()  # scan_completed triggers
        self.scan_ms: list[float] = []  # scan_completed duration_ms, in order
        super().__init__(config, env)

    def record(self, line: str, event: Event, seen: float) -> None:
        name = str(event.get("event"))
        if name == "model_deleted":
            path = str(event.get("path", ""))
            self.deleted[path.rpartition("/")[2]] = seen
        elif name == "log_summary" and event.get("of") == "model_deleted":
            # Per-file lines beyond ocrd's log budget come summed up (ocrd/base/log.py).
            self.summarised += int(event.get("count", 0))
        elif name == "deletion_skipped":
            self.skips[str(event.get("reason"))] += 1
        elif name == "scan_completed":
            self.scans[str(event.get("trigger"))] += 1
            ms = event.get("duration_ms")
            if isinstance(ms, int | float):
                self.scan_ms.append(float(ms))

    def wait_deleted(self, name: str, timeout: float) -> float | None:
        """When the model_deleted line of file ``name`` was read; None if none came in time."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while name not in self.deleted:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self.cond.wait(left)
            return self.deleted[name]

    def deleted_count(self, prefix: str) -> int:
        """Deletions of files named ``prefix…``, those counted in log summaries included (the
        bursts delete nothing else, so a summary's count is theirs)."""
        with self.cond:
            return self.summarised + sum(1 for name in self.deleted if name.startswith(prefix))

    def skipped(self) -> collections.Counter[str]:
        with self.cond:
            return collections.Counter(self.skips)

    def count_notes(self, text: str, since: float) -> int:
        with self.cond:
            return sum(1 for t, n in self.notes if n == text and t >= since)


def daemon_config(scratch: Path, tree: Tree, rescan: str) -> Path:
    """Prefix rule only (the trees made for the daemon have no ``old_`` files, so everything
    already there is kept and indexed), settle 0 s, engine off."""
    config = scratch / "ocrd.toml"
    config.write_text(
        f"model_dir = {json.dumps(str(tree.root))}\n\n"
        f'[retention]\nprefixes = ["{PREFIX}"]\n\n'
        f'[watch]\nsettle = "0s"\nrescan = "{rescan}"\n\n'
        "[engine]\nenabled = false\n\n"
        '[log]\nlevel = "info"\nformat = "json"\n'
    )
    return config


def start_daemon(
    ws: Workspace, label: str, n: int, watchdog: bool, rescan: str = DEFAULT_RESCAN
) -> tuple[Tallied, Path, Tree]:
    """``ocrd run`` on a fresh tree of ``n`` kept files, past READY=1; NotReady if it never
    got there (its scratch directory is then removed)."""
    scratch = ws.fresh(label)
    tree = generate(scratch / "tree", n, old_share=0.0)
    os.sync()
    config = daemon_config(scratch, tree, rescan)
    daemon = Tallied(config, {"WATCHDOG_USEC": str(WATCHDOG_USEC)} if watchdog else None)
    try:
        daemon.wait_ready(READY_TIMEOUT_S)
    except NotReady:
        daemon.terminate()
        ws.remove(scratch)
        raise
    return daemon, scratch, tree
