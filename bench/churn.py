"""Churn soak: ocrd run's memory and CPU while files are created and removed at a steady rate.

A writer creates model files at RATE files/s (kept by the rules: no prefix match, younger than
max_age, so each is indexed and scheduled for a max_age revisit) and removes each LIFE seconds
later, for SECONDS. ocrd's RSS (VmRSS) and CPU are sampled every 10 s. With nothing kept for
paths that are gone, RSS stays flat: the target is the last sample within 10 MB of the first
one taken after warm-up.

    python -m bench.churn [--seconds 600] [--rate 2000] [--life 7]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

from tests.harness import running


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser(prog="python -m bench.churn")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--life", type=float, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocrd-churn-") as tmp:
        scratch = Path(tmp)
        models = scratch / "models"
        for d in range(10):
            (models / f"d{d}").mkdir(parents=True)
        config = scratch / "config.toml"
        config.write_text(
            'model_dir = "models"\n[retention]\nprefixes = ["old_"]\nmax_age = "30d"\n'
            '[watch]\nsettle = "0s"\n[engine]\nenabled = false\n[log]\nformat = "json"\n',
        )
        with running(config, ready_s=60) as ocrd:
            print(
                f"{'t (s)':>6} {'RSS MiB':>8} {'CPU %':>6} {'files/s':>8} {'live':>6}", flush=True
            )
            alive: collections.deque[tuple[float, Path]] = collections.deque()
            began = last = time.monotonic()
            cpu_last = ocrd.cpu_seconds()
            made = made_last = 0
            samples: list[tuple[float, float]] = []
            while (now := time.monotonic()) - began < args.seconds:
                due = int((now - began) * args.rate) - made
                for _ in range(max(0, due)):
                    path = models / f"d{made % 10}" / f"m{made}.bin"
                    path.write_bytes(b"x")
                    alive.append((now + args.life, path))
                    made += 1
                while alive and alive[0][0] <= now:
                    alive.popleft()[1].unlink()
                if now - last >= 10:
                    cpu = ocrd.cpu_seconds()
                    rss = ocrd.memory()["VmRSS"] / 2**20
                    samples.append((now - began, rss))
                    share = 100 * (cpu - cpu_last) / (now - last)
                    rate = (made - made_last) / (now - last)
                    t = now - began
                    print(f"{t:>6.0f} {rss:>8.1f} {share:>6.1f} {rate:>8.0f} {len(alive):>6}")
                    last, cpu_last, made_last = now, cpu, made
                time.sleep(0.005)
            after_warmup = [rss for t, rss in samples if t >= 60] or [r for _, r in samples]
            growth = after_warmup[-1] - after_warmup[0]
            print(
                f"RSS after warm-up: {after_warmup[0]:.1f} -> {after_warmup[-1]:.1f} MiB "
                f"({growth:+.1f}), max {max(after_warmup):.1f}; target: within 10 MB — "
                f"{'met' if abs(growth) <= 10 else 'not met'}"
            )
            return 0 if abs(growth) <= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
