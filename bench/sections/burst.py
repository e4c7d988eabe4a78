"""§5, a burst of ``old_`` files: anything left behind after the drain, and how long it took."""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

from bench.modes import Mode
from bench.report import Results, Row, count_label, counts_text
from bench.sections.live import start_daemon
from bench.tree import PREFIX, count_files
from bench.workspace import Workspace
from tests.harness import NotReady


def measure_burst(mode: Mode, ws: Workspace, res: Results) -> None:
    left_all: list[float] = []
    drain: list[float] = []
    rate: list[float] = []
    cpu: list[float] = []
    peak: list[float] = []
    events_seen: list[int] = []
    skips: collections.Counter[str] = collections.Counter()
    scans: collections.Counter[str] = collections.Counter()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    tag = f"{PREFIX}burst_"
    for _ in range(mode.burst_reps):
        try:
            daemon, scratch, tree = start_daemon(
                ws, "burst", mode.daemon_tree, watchdog=False, rescan=mode.rescan
            )
        except NotReady as exc:
            res.notes.append(f"§5: {exc}")
            break
        try:
            dir_fds = [
                os.open(tree.root / f"d{d:02d}", os.O_RDONLY | os.O_DIRECTORY) for d in range(100)
            ]
            cpu0 = daemon.cpu_seconds()
            started = time.monotonic()
            for i in range(mode.burst_n):
                fd = os.open(f"{tag}{i:06d}.bin", flags, 0o644, dir_fd=dir_fds[i % 100])
                os.write(fd, b"burst\n")
                os.close(fd)
            created = time.monotonic()
            for fd in dir_fds:
                os.close(fd)
            rate.append(mode.burst_n / (created - started))
            deadline = created + mode.drain_timeout_s
            next_look = created + 1.0
            remaining = mode.burst_n
            while time.monotonic() < deadline:
                if daemon.deleted_count(tag) >= mode.burst_n:
                    break
                if time.monotonic() >= next_look:
                    remaining = _count_tagged(tree.root, tag)
                    if remaining == 0:
                        break
                    next_look = time.monotonic() + 1.0
                with daemon.cond:
                    daemon.cond.wait(0.05)
            drained = time.monotonic()
            cpu.append(daemon.cpu_seconds() - cpu0)
            peak.append(daemon.memory()["VmHWM"] / 2**20)
            remaining = _count_tagged(tree.root, tag)
            left_all.append(remaining)
            events_seen.append(daemon.deleted_count(tag))
            with daemon.cond:
                skips += daemon.skips
                scans += daemon.scans
            if remaining == 0:
                drain.append(drained - created)
        finally:
            daemon.terminate()
            ws.remove(scratch)
    if not left_all:
        res.add(
            Row(
                "5",
                f"burst of {count_label(mode.burst_n)} {PREFIX} files",
                "ocrd run",
                "s",
                None,
                note="ocrd run not available",
            )
        )
        return
    burst, kept = count_label(mode.burst_n), count_label(mode.daemon_tree)
    measure = f"burst of {burst} {PREFIX} files ({kept} kept)"
    res.add(
        Row.of(
            "5",
            measure,
            "ocrd run: files left after drain",
            "files",
            left_all,
            note=f"waited up to {mode.drain_timeout_s:.0f} s (rescan = {mode.rescan}); "
            f"deletions logged (lines or summaries): {', '.join(map(str, events_seen))}; "
            f"deletion_skipped: {counts_text(skips)}; full scans: {counts_text(scans)}",
        )
    )
    res.add(
        Row.of(
            "5",
            measure,
            "ocrd run: drain time after last create",
            "s",
            drain,
            note=f"runs that drained: {len(drain)}/{len(left_all)}",
        )
    )
    res.add(Row.of("5", measure, "bench: create rate", "files/s", rate))
    res.add(Row.of("5", measure, "ocrd run: CPU during burst + drain", "s", cpu))
    res.add(Row.of("5", measure, "ocrd run: peak RSS (VmHWM)", "MiB", peak))
    if any(left_all):
        res.problems.append(f"§5 burst: files left behind after the drain: {left_all}")


def _count_tagged(root: Path, tag: str) -> int:
    return sum(1 for rel in count_files(root) if rel.rpartition("/")[2].startswith(tag))
