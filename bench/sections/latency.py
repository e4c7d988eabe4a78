"""§3, latency of a running ``ocrd run``: file created → ``model_deleted`` logged."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from bench.modes import Mode
from bench.report import Results, Row, count_label, counts_text
from bench.sections.live import Tallied
from bench.tree import PREFIX, Tree
from bench.workspace import assert_inside

LATENCY_WAIT_S = 5.0


def measure_latency(mode: Mode, daemon: Tallied, tree: Tree, scratch: Path, res: Results) -> None:
    """One file at a time: written beside model_dir and renamed in (atomic: the daemon can only
    see it complete), then written in place (open, write, close: what "created" means to most
    programs, and the figure the target is judged on)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for how, tag in (("renamed in", "mv"), ("written in place", "lat")):
        latencies: list[float] = []  # math.inf: no model_deleted within LATENCY_WAIT_S
        still_there = 0
        skips_before = daemon.skipped()
        for i in range(mode.latency_files):
            name = f"{PREFIX}{tag}_{i:05d}.bin"
            path = tree.root / f"d{i % 100:02d}" / name
            assert_inside(path, tree.root)
            if tag == "mv":
                staging = scratch / name  # outside model_dir, on the same filesystem
                staging.write_bytes(b"latency probe\n")
                created = time.monotonic()
                os.rename(staging, path)
            else:
                created = time.monotonic()
                fd = os.open(path, flags, 0o644)
                os.write(fd, b"latency probe\n")
                os.close(fd)
            seen = daemon.wait_deleted(name, timeout=LATENCY_WAIT_S)
            latencies.append(math.inf if seen is None else seen - created)
            if os.path.lexists(path):
                deadline = time.monotonic() + 1.0
                while os.path.lexists(path) and time.monotonic() < deadline:
                    time.sleep(0.01)
                still_there += os.path.lexists(path)
            time.sleep(0.005)
        unseen = sum(1 for x in latencies if math.isinf(x))
        skips = daemon.skipped() - skips_before
        seen_n = len(latencies) - unseen
        checks = f"{seen_n}/{len(latencies)} model_deleted within {LATENCY_WAIT_S:.0f} s"
        if unseen:
            checks += f" ({unseen} never: counted as ∞)"
        checks += f", {still_there} files still there" if still_there else ", every file gone"
        if skips:
            checks += f"; deletion_skipped: {counts_text(skips)}"
        measure = f"create → model_deleted, {how} ({count_label(tree.n)} files, settle 0 s)"
        p50 = _percentile(latencies, 50)
        p99 = _percentile(latencies, 99)
        lo, hi = min(latencies), max(latencies)
        res.add(Row("3", measure, "ocrd run p50", "s", p50, lo, hi, len(latencies), note=checks))
        res.add(Row("3", measure, "ocrd run p99", "s", p99, lo, hi, len(latencies)))
        if still_there:
            res.problems.append(f"§3 latency, {how}: {checks}")


def _percentile(samples: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]
