"""§1, the initial scan: ``ocrd.fs.scan.scan`` vs ``find -type f -printf``."""

from __future__ import annotations

import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.modes import Mode
from bench.report import Results, Row, count_label, fmt
from bench.tree import generate
from bench.workspace import TOOL_TIMEOUT_S, Workspace, rotated, timed

SCAN_CHILD = """
import json, os, sys, time
if sys.argv[2] == "ocrd":
    from ocrd.fs.scan import scan
    t0 = time.perf_counter(); c0 = time.process_time()
    inventory = scan(sys.argv[1])
    print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                      "files": inventory.file_count}))
else:
    # The least a Python walk does: scandir from directory fds, one stat per entry, no record.
    t0 = time.perf_counter(); c0 = time.process_time()
    stats, stack = [], [os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)]
    while stack:
        fd = stack.pop()
        with os.scandir(fd) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                         dir_fd=fd))
                else:
                    stats.append(e.stat(follow_symlinks=False))
        os.close(fd)
    print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                      "files": len(stats)}))
"""


def section_scan(mode: Mode, ws: Workspace, res: Results) -> None:
    for n in mode.scan_sizes:
        scratch = ws.fresh(f"scan{count_label(n)}")
        tree = generate(scratch / "tree", n)
        os.sync()
        find_argv = ["find", str(tree.root), "-type", "f", "-printf", "%p %s %T@\\n"]
        # One warm-up run of each, which also checks that both see every file.
        child = _scan_child(tree.root, "ocrd")
        floor = _scan_child(tree.root, "floor")
        listed = subprocess.run(find_argv, capture_output=True, check=True).stdout.count(b"\n")
        for who, seen in (
            ("ocrd scan()", int(child["files"])),
            ("the floor loop", int(floor["files"])),
            ("find -printf", listed),
        ):
            if seen != n:
                res.problems.append(f"scan {count_label(n)}: {who} saw {seen} files, expected {n}")
        samples: dict[str, list[float]] = collections.defaultdict(list)
        for rep in range(mode.reps):
            for tool in rotated(["ocrd", "floor", "find"], rep):
                if tool == "ocrd":
                    started = time.perf_counter()
                    child = _scan_child(tree.root, "ocrd")
                    samples["proc"].append(time.perf_counter() - started)
                    samples["ocrd"].append(child["wall"])
                    samples["ocrd_cpu"].append(child["cpu"])
                elif tool == "floor":
                    samples["floor"].append(_scan_child(tree.root, "floor")["wall"])
                else:
                    t = timed([find_argv])
                    samples["find"].append(t.wall)
                    samples["find_cpu"].append(t.cpu)
        measure = f"scan {count_label(n)} files"
        res.add(
            Row.of(
                "1",
                measure,
                "ocrd scan() in-process",
                "s",
                samples["ocrd"],
                note=f"CPU {fmt(statistics.median(samples['ocrd_cpu']), 's')}; timed "
                "inside a fresh child process, around scan() alone",
            )
        )
        res.add(
            Row.of(
                "1",
                measure,
                "ocrd scan() whole process",
                "s",
                samples["proc"],
                note="the same child, timed from spawn to exit: interpreter start and "
                "imports included",
            )
        )
        res.add(
            Row.of(
                "1",
                measure,
                "Python floor: scandir + stat loop",
                "s",
                samples["floor"],
                note="timed inside its own fresh child: directory fds, one stat per entry, "
                "nothing kept but the stat results; what any Python walk pays",
            )
        )
        res.add(
            Row.of(
                "1",
                measure,
                "find -printf",
                "s",
                samples["find"],
                peer=True,
                note=f"CPU {fmt(statistics.median(samples['find_cpu']), 's')}; "
                "`find DIR -type f -printf '%p %s %T@\\n' > /dev/null`",
            )
        )
        ws.remove(scratch)


def _scan_child(root: Path, what: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", SCAN_CHILD, str(root), what],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result
