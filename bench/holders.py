"""What the in-use check costs: one /proc snapshot (ocrd.holders.Holders.refresh) with P extra
processes each holding a few files, against `lsof -t` and `fuser` on one file as the peers.

    python -m bench.holders [--procs 0,500,2000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from ocrd.holders import Holders


def _time(fn: object, repeat: int = 5) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t)
    return out


def measure(extra: int, workdir: Path) -> dict[str, float]:
    target = workdir / "model.gguf"
    target.write_bytes(b"x")
    procs = [
        subprocess.Popen(["sleep", "600"], stdin=target.open("rb"), stdout=subprocess.DEVNULL)
        for _ in range(extra)
    ]
    try:
        h = Holders()
        ours = _time(h.refresh)
        row = {"processes": float(h.processes), "ocrd_ms": statistics.median(ours) * 1000}
        if shutil.which("fuser"):
            row["fuser_ms"] = (
                statistics.median(
                    _time(
                        lambda: subprocess.run(
                            ["fuser", str(target)], capture_output=True, check=False
                        ),
                        repeat=3,
                    )
                )
                * 1000
            )
        if shutil.which("lsof"):
            row["lsof_ms"] = (
                statistics.median(
                    _time(
                        lambda: subprocess.run(
                            ["lsof", "-t", str(target)], capture_output=True, check=False
                        ),
                        repeat=3,
                    )
                )
                * 1000
            )
        st = target.stat()
        assert (st.st_dev, st.st_ino) in h.held or extra == 0
        return row
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
            if p.stdin:
                p.stdin.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", default="0,500,2000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocrd-holders-") as tmp:
        print(
            f"{'extra procs':>11} {'total':>6} {'ocrd snapshot':>14} {'fuser 1 file':>13} "
            f"{'lsof 1 file':>12}"
        )
        for n in (int(x) for x in args.procs.split(",")):
            r = measure(n, Path(tmp))
            print(
                f"{n:>11} {int(r['processes']):>6} {r['ocrd_ms']:>11.1f} ms "
                f"{r.get('fuser_ms', float('nan')):>10.1f} ms "
                f"{r.get('lsof_ms', float('nan')):>9.1f} ms"
            )


if __name__ == "__main__":
    main()
