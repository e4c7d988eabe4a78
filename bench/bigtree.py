"""Big trees: the watchdog's longest silence and the memory of ``ocrd run`` (and of ``ocrd
list --json``) on a tree of N files, in one directory and spread over many.

The tree is built on a tmpfs this bench mounts itself under a fresh temporary directory (and
unmounts at the end), so the disk plays no part: what is measured is ocrd's own work. Each
layout (``one``: every file in model_dir itself; ``spread``: the files over ``--dirs``
directories) is run with families off (``prefixes``, ``max_age``) and on (the same, plus
``keep_newest`` and a ``family`` pattern; every family holds 4 versions and keeps them all,
so nothing is deleted and every file is ranked on every plan). For each run ``ocrd run`` is a
real subprocess (tests/harness.py) with ``WATCHDOG_USEC`` set and its ``NOTIFY_SOCKET``
listened on here; the phases:

- start-up: from spawn to READY=1;
- one event: a file named ``old_…`` is made; from then until its ``model_deleted``;
- a periodic rescan (``watch.rescan`` set so that it comes after the event): from its
  ``scan_completed`` back to the one before it, the whole scan and plan;
- a SIGHUP with the config unchanged: from the signal to the READY=1 after RELOADING=1;
- SIGTERM: how long the exit takes, at rest after the phases above, and in a second
  process that gets it while its start-up scan is under way.

For each phase: its length, the longest gap between two ``WATCHDOG=1`` that overlaps it (the
contract: a ping at least every half of WATCHDOG_USEC; the loop aims at a quarter), and the
peak RSS (VmRSS sampled every 0.1 s during the phase; VmHWM at its end). Memory per file is
the peak above a daemon's RSS with an empty model_dir. ``ocrd list --json`` is run once per
layout and family setting: its wall time, the time to its first byte, and its peak RSS
(``ru_maxrss`` of the child).

    python -m bench.bigtree                       # a smoke: 20k files, about a minute
    python -m bench.bigtree --files 2000000       # the real run (tens of minutes, ~6 GiB)

The results go to ``--out`` (default bench/out/RESULTS-bigtree.md) and to stdout. Needs root
(it mounts a tmpfs).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import OcrdProcess, ocrd_argv

WATCHDOG_USEC = 30_000_000
FAMILY = r"^(?:d[0-9]+/)?(?P<family>m[0-9]+)-v(?P<version>[0-9]+)\.gguf$"
VERSIONS = 4  # per family; keep_newest keeps them all
SAMPLE_S = 0.1


# -- the tree ----------------------------------------------------------------------------------


class Tmpfs:
    """A tmpfs mounted on a fresh temporary directory; unmounted (and the directory removed)
    on close. Only this mount point is ever unmounted."""

    def __init__(self, files: int) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="ocrd-bigtree-"))
        inodes = files + files // 10 + 100_000
        options = f"size=1g,nr_inodes={inodes},mode=0755"
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(self.path)],
            check=True,
        )
        self.mounted = True

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.path)], check=True)
            self.mounted = False
        self.path.rmdir()


def build(models: Path, files: int, dirs: int) -> float:
    """``files`` empty files named ``m<family>-v<version>.gguf`` (4 versions a family) in
    ``models`` (dirs = 0) or spread over ``dirs`` directories ``d<n>``; seconds it took."""
    started = time.monotonic()
    models.mkdir()
    mode = 0o644 | stat.S_IFREG
    places = [models] if dirs == 0 else [models / f"d{n}" for n in range(dirs)]
    fds = []
    for place in places:
        place.mkdir(exist_ok=True)
        fds.append(os.open(place, os.O_RDONLY | os.O_DIRECTORY))
    try:
        k = len(fds)
        for i in range(files):
            # Families stay within one directory: family f's versions go to directory f % k.
            fam, ver = divmod(i, VERSIONS)
            os.mknod(f"m{fam}-v{ver}.gguf", mode, dir_fd=fds[fam % k])
    finally:
        for fd in fds:
            os.close(fd)
    return time.monotonic() - started


def write_config(scratch: Path, *, families: bool, rescan_s: int, name: str) -> Path:
    lines = [
        'model_dir = "models"',
        "[retention]",
        'prefixes = ["old_"]',
        'max_age = "30d"',
    ]
    if families:
        lines += [f"keep_newest = {VERSIONS}", f"family = '{FAMILY}'"]
    lines += [
        "[watch]",
        'settle = "0s"',
        f'rescan = "{rescan_s}s"',
        "[engine]",
        "enabled = false",
        "[log]",
        'format = "json"',
    ]
    path = scratch / name
    path.write_text("\n".join(lines) + "\n")
    return path


# -- watching one process ----------------------------------------------------------------------


class Sampler:
    """VmRSS and VmHWM of one pid every SAMPLE_S, in a thread: (monotonic, rss, hwm)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int, int]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def read(self) -> tuple[int, int] | None:
        rss = hwm = 0
        try:
            with open(f"/proc/{self.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
                    elif line.startswith("VmHWM:"):
                        hwm = int(line.split()[1]) * 1024
        except OSError:
            return None
        return rss, hwm

    def _run(self) -> None:
        while not self.done.wait(SAMPLE_S):
            got = self.read()
            if got is None:
                return
            with self.lock:
                self.samples.append((time.monotonic(), *got))

    def peak(self, t0: float, t1: float) -> int:
        """The largest VmRSS sampled in [t0, t1], or the last one before t1 if none was."""
        with self.lock:
            inside = [r for t, r, _ in self.samples if t0 <= t <= t1]
            before = [r for t, r, _ in self.samples if t <= t1][-1:]
        return max(inside or before or [0])

    def hwm(self) -> int:
        got = self.read()
        return got[1] if got else 0

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)


def pings(ocrd: OcrdProcess) -> list[float]:
    with ocrd.cond:
        return [t for t, n in ocrd.notes if n == "WATCHDOG=1"]


def longest_gap(times: list[float], t0: float, t1: float) -> float:
    """The longest interval between consecutive pings (``t0`` counting as one before the first,
    ``t1`` as one after the last) that overlaps [t0, t1]."""
    marks = sorted([t0, *times, t1])
    gaps = [b - a for a, b in itertools.pairwise(marks) if b >= t0 and a <= t1]
    return max(gaps, default=t1 - t0)


@dataclass
class Phase:
    layout: str
    families: bool
    name: str
    seconds: float
    gap: float
    peak_rss: int
    hwm: int
    note: str = ""


@dataclass
class Listed:
    layout: str
    families: bool
    seconds: float
    first_byte: float
    maxrss: int
    rows: int
    code: int


@dataclass
class Results:
    files: int
    dirs: int
    baseline: dict[bool, int] = field(default_factory=dict)
    built: dict[str, float] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)
    listed: list[Listed] = field(default_factory=list)
    stops: list[tuple[str, bool, str, float, int | None]] = field(default_factory=list)


def count(ocrd: OcrdProcess, event: str, **keys: object) -> int:
    with ocrd.cond:
        return sum(
            1
            for e in ocrd.events
            if e.get("event") == event and all(e.get(k) == v for k, v in keys.items())
        )


def notes_after(ocrd: OcrdProcess, text: str, after: float) -> list[float]:
    with ocrd.cond:
        return [t for t, n in ocrd.notes if n == text and t >= after]


class Timed(OcrdProcess):
    """OcrdProcess that also keeps when each stdout line was read."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.seen: list[float] = []
        super().__init__(config, env=env)

    def record(self, line: str, event: dict[str, object], seen: float) -> None:
        super().record(line, event, seen)
        self.seen.append(seen)

    def when(self, name: str, after: float = 0.0, **keys: object) -> float | None:
        with self.cond:
            for t, e in zip(self.seen, self.events, strict=True):
                if (
                    t >= after
                    and e.get("event") == name
                    and all(e.get(k) == v for k, v in keys.items())
                ):
                    return t
        return None


def run_daemon(  # noqa: PLR0917 — one run's settings, each named where it is called
    res: Results, scratch: Path, layout: str, families: bool, rescan_s: int, timeout: float
) -> None:
    models = scratch / "models"
    config = write_config(scratch, families=families, rescan_s=rescan_s, name="ocrd.toml")
    ocrd = Timed(config, {"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    sampler = Sampler(ocrd.proc.pid)

    def phase(name: str, t0: float, t1: float, note: str = "") -> None:
        p = Phase(
            layout,
            families,
            name,
            t1 - t0,
            longest_gap(pings(ocrd), t0, t1),
            sampler.peak(t0, t1),
            sampler.hwm(),
            note,
        )
        res.phases.append(p)
        print(
            f"  {layout:<6} families={'on' if families else 'off':<3} {name:<9} "
            f"{p.seconds:7.1f} s  gap {p.gap:6.1f} s  peak {p.peak_rss / 2**20:7.0f} MiB  "
            f"HWM {p.hwm / 2**20:7.0f} MiB {note}",
            flush=True,
        )

    def next_ping(after: float) -> float:
        """When the loop is back: its first WATCHDOG=1 at or after ``after``."""
        found = ocrd.wait_for(
            "a ping", lambda: [t for t in pings(ocrd) if t >= after], timeout=timeout
        )
        return float(found[0])

    try:
        t0 = ocrd.started
        ocrd.wait_ready(timeout)
        phase("start-up", t0, notes_after(ocrd, "READY=1", t0)[0])
        # One event: a file the prefix rule deletes at once (settle 0 s).
        t0 = time.monotonic()
        probe = models / ("d0" if layout == "spread" else "") / "old_probe.bin"
        probe.write_bytes(b"x")
        ocrd.event("model_deleted", timeout=timeout)
        t1 = ocrd.when("model_deleted") or time.monotonic()
        rescanned = ocrd.when("scan_completed", trigger="rescan") is not None
        phase("event", t0, t1, "(a periodic rescan ran meanwhile)" if rescanned else "")
        # The periodic rescan: from its start (scan_completed's duration_ms back from it) to
        # the loop's first ping after it (the plan of a whole-tree rule comes after the line).
        done = ocrd.event("scan_completed", timeout=rescan_s + timeout, trigger="rescan")
        logged = ocrd.when("scan_completed", trigger="rescan")
        assert logged is not None
        scan_s = float(done.get("duration_ms", 0)) / 1000
        t0 = logged - scan_s
        phase("rescan", t0, next_ping(logged), f"(the scan {scan_s:.1f} s; until the next ping)")
        # SIGHUP, the config unchanged.
        readies = len(notes_after(ocrd, "READY=1", 0))
        t0 = time.monotonic()
        ocrd.send(signal.SIGHUP)
        ocrd.wait_for(
            "READY=1 after the reload",
            lambda: len([1 for _, n in ocrd.notes if n == "READY=1"]) > readies,
            timeout=timeout,
        )
        phase("SIGHUP", t0, notes_after(ocrd, "READY=1", t0)[-1])
        code, took = ocrd.stop(signal.SIGTERM, timeout=timeout)
        res.stops.append((layout, families, "at rest", took, code))
    finally:
        sampler.stop()
        ocrd.close()


def stop_mid_startup(
    res: Results, scratch: Path, layout: str, families: bool, timeout: float
) -> None:
    """SIGTERM two seconds into the start-up scan: how long until the process is gone."""
    config = write_config(scratch, families=families, rescan_s=600, name="ocrd-stop.toml")
    ocrd = Timed(config, {"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        ocrd.event("daemon_started", timeout=timeout)
        time.sleep(2.0)  # into the scan: what is measured is the exit from there
        ready = bool(notes_after(ocrd, "READY=1", 0))
        try:
            code: int | None
            code, took = ocrd.stop(signal.SIGTERM, timeout=timeout)
        except subprocess.TimeoutExpired:
            code, took = None, timeout
        where = "after READY=1" if ready else "mid start-up"
        res.stops.append((layout, families, where, took, code))
        print(
            f"  {layout:<6} families={'on' if families else 'off':<3} SIGTERM {where}: "
            f"exit {code} in {took:.1f} s",
            flush=True,
        )
    finally:
        ocrd.close()


def baseline(scratch: Path, families: bool, timeout: float) -> int:
    """RSS of a daemon whose model_dir is empty, once READY."""
    empty = scratch / "empty"
    (empty / "models").mkdir(parents=True, exist_ok=True)
    config = write_config(empty, families=families, rescan_s=600, name="ocrd.toml")
    ocrd = Timed(config, {"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        ocrd.wait_ready(timeout)
        return Sampler(ocrd.proc.pid).hwm()
    finally:
        ocrd.terminate()


def run_list(res: Results, scratch: Path, layout: str, families: bool, timeout: float) -> None:
    """``ocrd list --json``: wall time, time to its first byte, ru_maxrss, rows."""
    config = write_config(scratch, families=families, rescan_s=600, name="ocrd-list.toml")
    started = time.monotonic()
    proc = subprocess.Popen(
        [*ocrd_argv(), "list", "--json", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    first: float | None = None
    rows = 0
    tail = b""
    mark = b'"path":'
    while chunk := os.read(proc.stdout.fileno(), 1 << 20):
        if first is None:
            first = time.monotonic() - started
        joined = tail + chunk
        rows += joined.count(mark)
        tail = joined[-(len(mark) - 1) :]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    took = time.monotonic() - started
    got = Listed(
        layout, families, took, first or took, usage.ru_maxrss * 1024, rows, proc.returncode
    )
    res.listed.append(got)
    print(
        f"  {layout:<6} families={'on' if families else 'off':<3} list --json "
        f"{took:7.1f} s  first byte {got.first_byte:6.1f} s  maxrss "
        f"{got.maxrss / 2**20:7.0f} MiB  rows {rows}  exit {got.code}",
        flush=True,
    )


# -- the report --------------------------------------------------------------------------------


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "ocrd"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out + (" (ocrd/ modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def report(res: Results, started: str, load_before: str) -> str:
    mib = 2**20
    n = res.files
    out = [
        "# Big trees: the watchdog and memory at scale",
        "",
        f"`python -m bench.bigtree --files {n} --dirs {res.dirs}`, written "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (started {started}), ocrd "
        f"commit {commit()}. Machine: {os.cpu_count()} CPUs, {platform.python_version()}, "
        f"Linux {platform.release()}; load average {load_before} before, {load()} after "
        "(other work shared the machine: the times are upper bounds, the RSS is not affected).",
        "",
        f"Tree on a tmpfs of its own: {n} empty files, `m<f>-v<v>.gguf`, {VERSIONS} versions a "
        f"family; `one`: all in model_dir, `spread`: over {res.dirs} directories (built in "
        + ", ".join(f"{k} {v:.0f} s" for k, v in res.built.items())
        + '). Rules: `prefixes = ["old_"]`, `max_age = "30d"`, `settle = "0s"`, engine '
        f"off; families on adds `keep_newest = {VERSIONS}` and `family = '{FAMILY}'` (nothing "
        f"is due: every file is planned and kept). WATCHDOG_USEC = {WATCHDOG_USEC}: the loop "
        f"pings every {WATCHDOG_USEC / 4e6:g} s at rest; the contract's bound is "
        f"{WATCHDOG_USEC / 2e6:g} s between two pings.",
        "",
        "Baseline (empty model_dir, VmHWM at READY=1): "
        + ", ".join(
            f"families {'on' if k else 'off'} {v / mib:.0f} MiB" for k, v in res.baseline.items()
        )
        + ".",
        "",
        "| layout | families | phase | took | longest ping gap | peak RSS (sampled) "
        "| VmHWM after | B/file above baseline (VmHWM) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in res.phases:
        base = res.baseline.get(p.families, 0)
        per = (p.hwm - base) / n if n else 0
        out.append(
            f"| {p.layout} | {'on' if p.families else 'off'} | {p.name} {p.note} "
            f"| {p.seconds:.1f} s | {p.gap:.1f} s | {p.peak_rss / mib:.0f} MiB "
            f"| {p.hwm / mib:.0f} MiB | {per:.0f} |"
        )
    out += [
        "",
        "SIGTERM: "
        + "; ".join(
            f"{lay}, families {'on' if fam else 'off'}, {where}: exit {code} in {took:.1f} s"
            for lay, fam, where, took, code in res.stops
        )
        + ".",
        "",
        "`ocrd list --json`:",
        "",
        "| layout | families | took | first byte | max RSS | B/file | rows | exit |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for x in res.listed:
        out.append(
            f"| {x.layout} | {'on' if x.families else 'off'} | {x.seconds:.1f} s "
            f"| {x.first_byte:.1f} s | {x.maxrss / mib:.0f} MiB | {x.maxrss / n if n else 0:.0f} "
            f"| {x.rows} | {x.code} |"
        )
    return "\n".join(out) + "\n"


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser(prog="python -m bench.bigtree")
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--dirs", type=int, default=2000, help="directories of the spread layout")
    parser.add_argument("--layouts", default="one,spread")
    parser.add_argument("--families", default="off,on")
    parser.add_argument("--no-list", action="store_true", help="skip ocrd list --json")
    parser.add_argument("--no-stop", action="store_true", help="skip SIGTERM mid start-up")
    parser.add_argument("--only-list", action="store_true", help="ocrd list --json alone")
    parser.add_argument(
        "--rescan", type=int, default=None, help="watch.rescan in seconds (default: by --files)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out/RESULTS-bigtree.md"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench.bigtree mounts a tmpfs: run it as root", file=sys.stderr)
        return 2
    n = args.files
    timeout = 120 + n * 300e-6  # generous: 2M files → 12 min a phase at most
    # After start-up and the event on an idle machine; a loaded one needs --rescan longer, or
    # rescans run back to back and the event waits for them.
    rescan_s = args.rescan or max(20, int(n * 75e-6))
    res = Results(n, args.dirs)
    started = time.strftime("%H:%M UTC", time.gmtime())
    load_before = load()
    fams = [f == "on" for f in args.families.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="ocrd-bigtree-base-"))
    try:
        for fam in fams if not args.only_list else []:
            res.baseline[fam] = baseline(scratch, fam, timeout)
    finally:
        shutil.rmtree(scratch)
    print(f"baseline RSS: {res.baseline}", flush=True)
    for layout in args.layouts.split(","):
        fs = Tmpfs(n)
        try:
            took = build(fs.path / "models", n, args.dirs if layout == "spread" else 0)
            res.built[layout] = took
            print(f"{layout}: {n} files built in {took:.1f} s", flush=True)
            for fam in fams:
                if not args.only_list:
                    run_daemon(res, fs.path, layout, fam, rescan_s, timeout)
                if not (args.no_stop or args.only_list):
                    stop_mid_startup(res, fs.path, layout, fam, timeout)
                if not args.no_list:
                    run_list(res, fs.path, layout, fam, timeout)
        finally:
            fs.close()
    text = report(res, started, load_before)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
