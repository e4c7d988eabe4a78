"""What the in-use checks cost, with P extra processes each holding the file: the kernel's answer
(one write lease attempt, ocrd.ops.delete's first check) and the /proc fallback's view
(ocrd.fs.holders.take), against `lsof -t` and `fuser` on one file as the peers.

    python -m bench.holders [--procs 0,500,2000]
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from ocrd.fs.holders import Answer, file_id, take


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
        views = []
        ours = _time(lambda: views.append(take()))
        row = {"processes": float(views[-1].processes), "ocrd_ms": statistics.median(ours) * 1000}
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
        try:
            refused = []

            def lease() -> None:
                try:
                    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
                    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
                except OSError as exc:
                    refused.append(exc.errno == errno.EAGAIN)

            row["lease_us"] = statistics.median(_time(lease, repeat=101)) * 1e6
            assert len(refused) == (101 if extra else 0)
            assert all(refused)
            fid = file_id(fd)
        finally:
            os.close(fd)
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
        assert fid is not None
        assert (views[-1].answer(fid) is Answer.HELD) is bool(extra)
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
            f"{'extra procs':>11} {'total':>6} {'lease 1 file':>13} {'/proc view':>11} "
            f"{'fuser 1 file':>13} {'lsof 1 file':>12}"
        )
        for n in (int(x) for x in args.procs.split(",")):
            r = measure(n, Path(tmp))
            print(
                f"{n:>11} {int(r['processes']):>6} {r['lease_us']:>10.1f} us "
                f"{r['ocrd_ms']:>8.1f} ms "
                f"{r.get('fuser_ms', float('nan')):>10.1f} ms "
                f"{r.get('lsof_ms', float('nan')):>9.1f} ms"
            )


if __name__ == "__main__":
    main()
