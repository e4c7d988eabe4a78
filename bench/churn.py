"""§7, churn: ocrd run's memory and CPU while files are created and removed at a steady rate.

A writer creates model files at the mode's rate (kept by the rules: no prefix match, younger
than max_age, so each is indexed and scheduled for a max_age revisit) and removes each a few
seconds later. ocrd's RSS (VmRSS) and CPU are sampled at a fixed period. With nothing kept for
paths that are gone, RSS stays flat: the target is the last sample after warm-up within 10 MiB
of the first.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

from bench.modes import Mode
from bench.report import Results, Row
from bench.workspace import Workspace
from tests import configs
from tests.harness import running

CONFIG = configs.toml(retention={"max_age": "30d"})  # prefix old_, max_age 30d, settle 0s


def section_churn(mode: Mode, ws: Workspace, res: Results) -> None:
    scratch = ws.fresh("churn")
    try:
        models = scratch / "models"
        for d in range(10):
            (models / f"d{d}").mkdir(parents=True)
        config = scratch / "config.toml"
        config.write_text(CONFIG)
        with running(config, ready_s=60) as ocrd:
            alive: collections.deque[tuple[float, Path]] = collections.deque()
            began = last = time.monotonic()
            cpu_last = ocrd.cpu_seconds()
            made = 0
            samples: list[tuple[float, float]] = []  # (seconds since start, RSS MiB)
            shares: list[float] = []
            while (now := time.monotonic()) - began < mode.churn_s:
                due = int((now - began) * mode.churn_rate) - made
                for _ in range(max(0, due)):
                    path = models / f"d{made % 10}" / f"m{made}.bin"
                    path.write_bytes(b"x")
                    alive.append((now + mode.churn_life_s, path))
                    made += 1
                while alive and alive[0][0] <= now:
                    alive.popleft()[1].unlink()
                if now - last >= mode.churn_sample_s:
                    cpu = ocrd.cpu_seconds()
                    samples.append((now - began, ocrd.memory()["VmRSS"] / 2**20))
                    shares.append(100 * (cpu - cpu_last) / (now - last))
                    last, cpu_last = now, cpu
                time.sleep(0.005)  # the writer's pace: it keeps the rate, nothing is awaited
    finally:
        ws.remove(scratch)
    after = [rss for t, rss in samples if t >= mode.churn_warmup_s] or [r for _, r in samples]
    label = f"churn {mode.churn_rate:.0f} files/s for {mode.churn_s:.0f} s"
    note = f"{made} files made, each removed {mode.churn_life_s:.0f} s later"
    if not after:
        res.add(Row("7", label, "ocrd run RSS growth", "MiB", None, note="no sample taken"))
        return
    res.add(Row("7", label, "ocrd run RSS after warm-up", "MiB", after[0], n=1, note=note))
    res.add(Row("7", label, "ocrd run RSS at the end", "MiB", after[-1], n=1))
    res.add(Row("7", label, "ocrd run RSS growth", "MiB", after[-1] - after[0], n=1))
    res.add(Row.of("7", label, "ocrd run CPU", "%", shares))
