"""§9: what the in-use checks cost, with P extra processes each holding the file: the
kernel's answer (one write lease attempt, ocrd.ops.inuse's first check) and the /proc fallback's
view (ocrd.fs.holders.take), against `lsof -t` and `fuser` on one file as the peers.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from bench.modes import Mode
from bench.report import Results, Row
from bench.workspace import Workspace
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


def section_holders(mode: Mode, ws: Workspace, res: Results) -> None:
    scratch = ws.fresh("holders")
    try:
        for n in mode.holder_procs:
            r = measure(n, scratch)
            label = f"holders of 1 file, {n} extra processes ({int(r['processes'])} in all)"
            res.add(
                Row("9", label, "ocrd: one write lease attempt", "s", r["lease_us"] / 1e6, n=101)
            )
            res.add(
                Row("9", label, "ocrd: /proc view (holders.take)", "s", r["ocrd_ms"] / 1e3, n=5)
            )
            for tool, key in (("fuser", "fuser_ms"), ("lsof -t", "lsof_ms")):
                value = r[key] / 1e3 if key in r else None
                note = "" if key in r else f"{tool.split()[0]} not installed"
                res.add(
                    Row("9", label, tool, "s", value, n=3 if key in r else 0, peer=True, note=note)
                )
    finally:
        ws.remove(scratch)
