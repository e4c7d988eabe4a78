"""§10, the budget: the eviction decision a pass adds while a limit is crossed, and the
last-use store's cost per use event at 1000 opens/s (bench/budget.py measures both)."""

from __future__ import annotations

import random

from bench.budget import bench_decide, bench_store, entries_of
from bench.modes import Mode
from bench.report import Results, Row, count_label
from bench.workspace import Workspace

RATE = 1000  # use events per second, as the issue asks


def section_budget(mode: Mode, ws: Workspace, res: Results) -> None:
    n = 10_000 if mode.name == "quick" else 100_000
    seconds = 3.0 if mode.name == "quick" else 10.0
    rng = random.Random(1)
    entries = entries_of(n, rng)
    label = count_label(n)
    decide = [bench_decide(entries, rng, repeat=1)["decide_ms_median"] / 1000 for _ in range(3)]
    res.add(Row.of("10", f"decide() over {label} models", "ocrd", "s", decide))
    store = bench_store(entries, RATE, seconds, ws.fresh(f"budget{label}"))
    per_event = store["saw_us_per_event"] + store["flush_us_per_event"]
    res.add(
        Row(
            "10",
            f"store CPU per use event at {RATE}/s, {label} rows",
            "ocrd",
            "s",
            per_event / 1e6,
            n=1,
            note=f"{store['cpu_share_at_rate'] * 100:.1f} % of a core; one write a second "
            f"{store['flush_ms_median']:.0f} ms",
        )
    )
    res.add(Row("10", f"store load at start, {label} rows", "ocrd", "s", store["load_s"], n=1))
