"""The budget's costs at 100k model files (bench.run's section 10 runs these): the eviction
decision a pass adds, and what the last-use store costs per use event at 1000 opens/s (CPU of
the recording thread and of the batched SQLite writes), plus loading 100k rows at start.

    python -m bench.budget [--files 100000] [--rate 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import structlog

from ocrd.config.sizes import Amount
from ocrd.fs.inventory import FileEntry
from ocrd.rules.budget import Limits, Model, Space, decide
from ocrd.watch.lastuse import LastUse

MiB = 1 << 20


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def entries_of(n: int, rng: random.Random) -> list[FileEntry]:
    return [
        FileEntry(
            f"d{i // 1000}/model-{i}.gguf".encode(),
            rng.randint(1, 4096) * MiB,
            1.7e9 + i,
            1.7e9 + i,
            1.7e9 + i,
            2049,
            1000 + i,
            False,
        )
        for i in range(n)
    ]


def bench_decide(entries: list[FileEntry], rng: random.Random, repeat: int = 5) -> dict[str, float]:
    models = [
        Model(
            e,
            1.7e9 + rng.random() * 1e7,
            engine_lists=i % 500 == 0,
            protected="whitelist" if i % 97 == 0 else None,
            family=f"fam{i % 3000}" if i % 2 == 0 else None,
            rank=i // 3000,
        )
        for i, e in enumerate(entries)
    ]
    total = sum(e.size for e in entries)
    space = Space(total=total * 2, free=total // 20)
    limits = Limits(max_size=Amount(size=total * 9 // 10), min_free=Amount(share=0.10))
    times = []
    budget = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        budget = decide(models, space, limits)
        times.append(time.perf_counter() - t0)
    assert budget is not None
    return {
        "decide_ms_median": statistics.median(times) * 1000,
        "decide_ms_max": max(times) * 1000,
        "evictions": float(len(budget.evictions)),
    }


def bench_store(
    entries: list[FileEntry], rate: int, seconds: float, scratch: Path
) -> dict[str, float]:
    # As under ocrd run at the default level: debug lines (use_recorded) are filtered out.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    by_path = {e.path: e for e in entries}
    state = scratch / "state" / "state.db"
    uses = LastUse.open(state)
    # 100k rows already recorded: the store as it looks after a long life
    for i, e in enumerate(entries):
        uses.saw(e.path, 1.7e9 + i)
    t0 = time.perf_counter()
    uses.flush(by_path.get)
    first_flush = time.perf_counter() - t0
    uses.close()

    t0 = time.perf_counter()
    uses = LastUse.open(state)
    load = time.perf_counter() - t0
    rng = random.Random(7)
    events = int(rate * seconds)
    paths = [e.path for e in entries]
    saw_cpu = 0.0
    flush_cpu = 0.0
    flush_wall: list[float] = []
    start = time.perf_counter()
    for second in range(int(seconds)):
        c0 = _cpu()
        for _ in range(rate):
            uses.saw(rng.choice(paths), time.time())
        saw_cpu += _cpu() - c0
        c0 = _cpu()
        t0 = time.perf_counter()
        uses.flush(by_path.get)  # one batch per second of events
        flush_wall.append(time.perf_counter() - t0)
        flush_cpu += _cpu() - c0
        # pace to the rate, as real events would come (the bench itself, not a wait on work)
        ahead = start + second + 1 - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    uses.close()
    return {
        "rows": float(len(entries)),
        "first_flush_s": first_flush,
        "load_s": load,
        "saw_us_per_event": saw_cpu / events * 1e6,
        "flush_us_per_event": flush_cpu / events * 1e6,
        "flush_ms_median": statistics.median(flush_wall) * 1000,
        "cpu_share_at_rate": (saw_cpu + flush_cpu) / seconds,
        "db_bytes": float(state.stat().st_size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    rng = random.Random(1)
    entries = entries_of(args.files, rng)
    print(f"budget bench: {args.files} model files, {args.rate} use events/s")
    d = bench_decide(entries, rng)
    print(
        f"  decide(): median {d['decide_ms_median']:.0f} ms, max {d['decide_ms_max']:.0f} ms "
        f"per pass ({d['evictions']:.0f} evictions chosen)"
    )
    with tempfile.TemporaryDirectory(prefix="ocrd-bench-budget-") as scratch:
        s = bench_store(entries, args.rate, args.seconds, Path(scratch))
    print(
        f"  store: first write of {s['rows']:.0f} rows {s['first_flush_s']:.2f} s, "
        f"load at start {s['load_s']:.2f} s, file {s['db_bytes'] / MiB:.1f} MiB"
    )
    print(
        f"  per use event: record {s['saw_us_per_event']:.1f} us + batched write "
        f"{s['flush_us_per_event']:.1f} us CPU; one flush a second takes "
        f"{s['flush_ms_median']:.1f} ms; {s['cpu_share_at_rate'] * 100:.1f} % of a core "
        f"at {args.rate}/s"
    )


if __name__ == "__main__":
    main()
