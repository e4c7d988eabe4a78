"""ocrd's benchmark against its peers: ``python -m bench.run [--quick] [--out PATH]``.

Sections (the method and its fairness rules are written into the report, under "Method"):

1. initial scan: ``ocrd.walker.scan`` vs ``find -type f -printf``;
2. one retention pass: ``ocrd clean`` vs systemd-tmpfiles, tmpreaper and ``find -delete``;
3. latency of a running ``ocrd run``: file created → ``model_deleted`` logged;
4. idle CPU and RSS per indexed file of ``ocrd run``;
5. a burst of ``old_`` files: anything left behind after the drain, and how long it took.

Every tool only ever sees its own tree, created under a fresh ``tempfile.mkdtemp()``; every
command that deletes is checked to target a path inside that directory before it runs, and
every deletion result is compared file by file with what the rules say must remain.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.tree import DAY, PREFIX, SUBDIRS, Tree, count_files, generate
from ocrd.fanout import FanOut
from ocrd.watch import filesystem_type

TOOL_TIMEOUT_S = 900.0
READY_TIMEOUT_S = 120.0
MAX_AGE = "30d"
FD_LIMIT = 256  # the soft and hard RLIMIT_NOFILE of the fd-bound pass
MAX_AGE_S = 30 * DAY
FIND_AGE = "+43200"  # minutes: strictly more than 30 days, like the others (-mtime +30 is ≥31 d)
WATCHDOG_USEC = 10_000_000
DEFAULT_RESCAN = "10m"  # ocrd's default: the idle, latency and RSS daemons run with it
LATENCY_WAIT_S = 5.0

FAN_OUT: FanOut[object, object] = FanOut()  # ocrd's defaults, as the report states them


@dataclass(frozen=True)
class Mode:
    name: str
    reps: int
    scan_sizes: tuple[int, ...]
    retention_n: int
    age_only: bool  # also the age-only pass, where every peer is native
    daemon_tree: int  # files already in model_dir while latency, idle CPU and bursts are measured
    latency_files: int
    idle_s: float
    rss_sizes: tuple[int, ...]
    rss_reps: int
    burst_n: int
    burst_reps: int
    rescan: str  # for the burst daemon: short, so that a lost event is recovered within the run
    drain_timeout_s: float
    pause_s: float  # quiet time after sync(), before each timed deletion
    tmpfs_dir: str | None  # also a pass (ocrd and find) on this tmpfs, where unlink never waits
    # Also a pass over this many directories under ulimit -n 256, this many times (mkdir is
    # slow here: 10k directories take ~10 s to make).
    fd_dirs: tuple[tuple[int, int], ...]


QUICK = Mode(
    name="quick",
    reps=3,
    scan_sizes=(2_000,),
    retention_n=2_000,
    age_only=False,
    daemon_tree=2_000,
    latency_files=50,
    idle_s=5.0,
    rss_sizes=(0, 1_000, 2_000),
    rss_reps=1,
    burst_n=5_000,
    burst_reps=1,
    rescan="10s",
    drain_timeout_s=20.0,
    pause_s=0.2,
    tmpfs_dir=None,
    fd_dirs=((10_000, 1),),
)
FULL = Mode(
    name="full",
    reps=5,
    scan_sizes=(10_000, 100_000),
    retention_n=100_000,
    age_only=True,
    daemon_tree=10_000,
    latency_files=500,
    idle_s=60.0,
    rss_sizes=(0, 10_000, 100_000),
    rss_reps=3,
    burst_n=50_000,
    burst_reps=3,
    rescan="1m",
    drain_timeout_s=90.0,
    pause_s=1.0,
    tmpfs_dir="/dev/shm",
    fd_dirs=((10_000, 5), (100_000, 1)),
)


# -- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    section: str
    measure: str
    tool: str
    unit: str  # "s", "%", "MiB", "B/file", "files", "files/s"
    value: float | None  # None: not measured (see note)
    lo: float | None = None
    hi: float | None = None
    n: int = 0
    peer: bool = False
    note: str = ""

    @classmethod
    def of(
        cls, section: str, measure: str, tool: str, unit: str, samples: Sequence[float], **kw: Any
    ) -> Row:
        if not samples:
            return cls(section, measure, tool, unit, None, **kw)
        return cls(
            section,
            measure,
            tool,
            unit,
            statistics.median(samples),
            min(samples),
            max(samples),
            len(samples),
            **kw,
        )


@dataclass
class Results:
    mode: Mode
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # a tool deleted the wrong set, …
    notes: list[str] = field(default_factory=list)
    targets: list[tuple[str, str, str, bool | None]] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(_row_line(row), flush=True)
        return row

    def find(self, section: str, tool: str, measure: str | None = None) -> Row | None:
        for row in self.rows:
            if (
                row.section == section
                and row.tool == tool
                and (measure is None or row.measure == measure)
            ):
                return row
        return None


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞"
    if unit == "s":
        if value < 0.001:
            return f"{value * 1e6:.0f} µs"
        if value < 1:
            return f"{value * 1000:.1f} ms"
        return f"{value:.2f} s"
    if unit == "%":
        return f"{value:.3f} %"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit == "B/file":
        return f"{value:.0f} B/file"
    if unit == "files/s":
        return f"{value:,.0f} files/s"
    return f"{value:,.0f}"


def _count(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _row_line(row: Row) -> str:
    spread = "" if row.lo is None else f" ({fmt(row.lo, row.unit)}-{fmt(row.hi, row.unit)})"
    note = f"  [{row.note}]" if row.note else ""
    return f"  {row.section} | {row.measure} | {row.tool}: {fmt(row.value, row.unit)}{spread}{note}"


def _ratios(rows: Sequence[Row]) -> dict[int, float]:
    """Each row's median over the fastest peer's median in its (section, measure) group."""
    best: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.peer and r.value:
            key = (r.section, r.measure)
            best[key] = min(best.get(key, math.inf), r.value)
    return {
        id(r): r.value / best[(r.section, r.measure)]
        for r in rows
        if r.value is not None and (r.section, r.measure) in best
    }


def table(rows: Sequence[Row]) -> str:
    ratios = _ratios(rows)
    out = [
        "| § | measure | tool | median | min-max | n | x fastest peer | notes |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        spread = "" if r.lo is None else f"{fmt(r.lo, r.unit)} - {fmt(r.hi, r.unit)}"
        ratio = f"{ratios[id(r)]:.2f}x" if id(r) in ratios else ""
        tool = f"**{r.tool}**" if r.tool.startswith("ocrd") else r.tool
        out.append(
            f"| {r.section} | {r.measure} | {tool} | {fmt(r.value, r.unit)} | {spread} | "
            f"{r.n or ''} | {ratio} | {r.note} |"
        )
    return "\n".join(out)


# -- the scratch space and its guards --------------------------------------------------------


class Workspace:
    """Fresh ``mkdtemp()`` directories, one per tree; only these are ever removed."""

    def __init__(self, parent: Path | None) -> None:
        self.parent = Path(os.path.realpath(parent or tempfile.gettempdir()))
        self.made: list[Path] = []

    def fresh(self, label: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"ocrd-bench-{label}-", dir=self.parent))
        self.made.append(path)
        return path

    def remove(self, path: Path) -> None:
        assert path in self.made, f"refusing to remove {path}: not made by this run"
        assert path.parent == self.parent, path
        assert path.name.startswith("ocrd-bench-"), path
        shutil.rmtree(path)
        self.made.remove(path)

    def close(self) -> None:
        for path in list(self.made):
            self.remove(path)


def assert_inside(path: str | Path, base: Path) -> None:
    """``path`` (a glob is fine: it is compared as text) lies strictly inside ``base``."""
    real = os.path.realpath(path)
    root = os.path.realpath(base)
    assert len(Path(root).parts) >= 3, f"unsafe scratch dir {root}"
    assert real.startswith(root + os.sep), f"refusing to run: {path} is not inside {base}"


def assert_targets(argv: Sequence[str], scratch: Path, tree: Tree) -> None:
    """Every absolute path in a deleting command lies inside the run's own scratch dir, and the
    tree it works on is the one generated there."""
    assert_inside(tree.root, scratch)
    for arg in argv[1:]:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if value.startswith("/"):
            assert_inside(value, scratch)


# -- the machine -----------------------------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine(tmp: Path) -> list[tuple[str, str]]:
    mem = "?"
    cpu = "?"
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mount = _first_line(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "-T", str(tmp)])
    git, changed = code_state()
    tmpreaper = _first_line(["dpkg-query", "-W", "-f", "${Version}", "tmpreaper"])
    return [
        ("CPUs (nproc)", f"{len(os.sched_getaffinity(0))} x {cpu}"),
        ("memory", mem),
        ("kernel", platform.release()),
        ("temp dir", f"{tmp} on {mount}"),
        ("Python", f"{platform.python_version()} ({_shown(sys.executable)})"),
        (
            "ocrd",
            f"{_first_line([*ocrd_argv(), '--version'])}, git {git}"
            + (f" + uncommitted changes in {', '.join(changed)}" if changed else ""),
        ),
        ("find", _first_line(["find", "--version"])),
        ("systemd-tmpfiles", _first_line(["systemd-tmpfiles", "--version"])),
        ("tmpreaper", tmpreaper),
    ]


def _shown(path: str) -> str:
    """A path as the report shows it: relative to the checkout, so no machine's layout is
    written into the repository."""
    root = Path(__file__).resolve().parent.parent
    try:
        return str(Path(path).absolute().relative_to(root))
    except ValueError:
        return Path(path).name


def code_state() -> tuple[str, list[str]]:
    """The git commit of the ocrd under test and its files with uncommitted changes."""
    top = str(Path(__file__).resolve().parent.parent)
    git = _first_line(["git", "-C", top, "rev-parse", "--short", "HEAD"])
    status = subprocess.run(
        ["git", "-C", top, "status", "--porcelain", "ocrd"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return git, [line[3:] for line in status.splitlines() if line.strip()]


def _code_digest() -> str:
    """A digest of ocrd/*.py as they are on disk: tells whether the code changed mid-run."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parent.parent / "ocrd").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def ocrd_argv() -> list[str]:
    script = Path(sys.executable).with_name("ocrd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from ocrd.cli import main; sys.exit(main())"]


def ensure_tmpreaper() -> str | None:
    """tmpreaper from Debian's packages if missing; None when present, else why not."""
    if shutil.which("tmpreaper", path=os.environ.get("PATH", "") + ":/usr/sbin"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "tmpreaper not installed (apt-get install tmpreaper needs root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing tmpreaper from Debian's packages …", flush=True)
    for argvs in (
        [["apt-get", "install", "-y", "tmpreaper"]],
        [["apt-get", "update"], ["apt-get", "install", "-y", "tmpreaper"]],
    ):
        for argv in argvs:
            subprocess.run(argv, env=env, capture_output=True, timeout=600, check=False)
        if shutil.which("tmpreaper", path=os.environ.get("PATH", "") + ":/usr/sbin"):
            return None
    return "tmpreaper could not be installed with apt-get"


# -- running commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    wall: float
    cpu: float
    codes: tuple[int, ...]
    stderr: str


def timed(argvs: Sequence[Sequence[str]]) -> Timed:
    """Run the commands one after the other; wall time of all, and their CPU (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    codes: list[int] = []
    errors: list[str] = []
    for argv in argvs:
        proc = subprocess.run(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )
        codes.append(proc.returncode)
        errors.append(proc.stderr.decode("utf-8", "replace").strip())
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Timed(wall, cpu, tuple(codes), "\n".join(e for e in errors if e))


def quiet(pause: float) -> None:
    """Flush what generating the tree left dirty, so that no tool pays for another's writes."""
    os.sync()
    time.sleep(pause)


def rotated(items: Sequence[str], rep: int) -> list[str]:
    k = rep % len(items)
    return [*items[k:], *items[:k]]


# -- 1. initial scan -------------------------------------------------------------------------

SCAN_CHILD = """
import json, os, sys, time
if sys.argv[2] == "ocrd":
    from ocrd.walker import scan
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
        scratch = ws.fresh(f"scan{_count(n)}")
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
                res.problems.append(f"scan {_count(n)}: {who} saw {seen} files, expected {n}")
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
        measure = f"scan {_count(n)} files"
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


# -- 2. one retention pass -------------------------------------------------------------------

RETENTION_TOOLS = ("ocrd", "tmpfiles", "tmpreaper", "find")
TOOL_NAMES = {
    "ocrd": "ocrd clean",
    "tmpfiles": "systemd-tmpfiles --clean",
    "tmpreaper": "tmpreaper --mtime",
    "find": "find -delete",
}


def retention_commands(tool: str, tree: Tree, scratch: Path, prefix: bool) -> list[list[str]]:
    """The argv list that makes ``tool`` apply "older than 30 days by mtime" (and, if ``prefix``,
    "name starts with old_") to ``tree``; config files are written into ``scratch``."""
    root = str(tree.root)
    assert not any(c.isspace() for c in root), root  # tmpfiles.d lines split on whitespace
    if tool == "ocrd":
        config = scratch / "ocrd.toml"
        config.write_text(
            f"model_dir = {json.dumps(root)}\n\n"
            "[retention]\n"
            f"prefixes = {json.dumps([PREFIX] if prefix else [])}\n"
            f'max_age = "{MAX_AGE}"\nage_by = "mtime"\n'
            # The tree is made now with old mtimes: by mtime alone, as tmpfiles' "m:" judges.
            'age_from = "timestamp"\n\n'
            '[watch]\nsettle = "0s"\n\n'
            "[engine]\nenabled = false\n"
        )
        return [[*ocrd_argv(), "clean", "-c", str(config)]]
    if tool == "tmpfiles":
        # "e" cleans what is in the directory by age; "m:" judges by mtime alone (by default
        # tmpfiles keeps a file if any of atime, ctime, btime, mtime is recent, and ctime is
        # always now on a generated tree). tmpfiles has no name-prefix rule: "r" removes what a
        # glob matches, whatever its age, which is what ocrd's prefix rule does. Its globs do
        # not recurse, so one "r" line per level of the tree (the tree has two: the top and
        # the 100 subdirectories).
        lines = [f"e {root} - - - m:{MAX_AGE}"]
        if prefix:
            lines += [f"r {root}/{PREFIX}*", f"r {root}/*/{PREFIX}*"]
        config = scratch / "ocrd-bench.conf"
        config.write_text("\n".join(lines) + "\n")
        for line in lines:
            assert_inside(line.split()[1], scratch)
        flags = ["--clean", "--remove"] if prefix else ["--clean"]
        return [["systemd-tmpfiles", *flags, f"--prefix={root}", str(config)]]
    if tool == "tmpreaper":
        # --runtime (-T) defaults to 55 s, after which tmpreaper gives up: far more than that.
        # It has no name rule at all: the prefix rule is a second command, timed with it.
        argvs = [["tmpreaper", "--mtime", "--runtime=3600", MAX_AGE, root]]
        if prefix:
            argvs.append(["find", root, "-type", "f", "-name", f"{PREFIX}*", "-delete"])
        return argvs
    if tool == "find":
        if prefix:
            test = ["(", "-name", f"{PREFIX}*", "-o", "-mmin", FIND_AGE, ")"]
        else:
            test = ["-mmin", FIND_AGE]
        return [["find", root, "-type", "f", *test, "-delete"]]
    raise ValueError(tool)


def section_retention(mode: Mode, ws: Workspace, res: Results) -> None:
    n = mode.retention_n
    missing: dict[str, str] = {}
    if (why := ensure_tmpreaper()) is not None:
        missing["tmpreaper"] = why
    if not shutil.which("systemd-tmpfiles"):
        missing["tmpfiles"] = "systemd-tmpfiles not installed"
    tools = [t for t in RETENTION_TOOLS if t not in missing]
    variants = [(True, f"pass {_count(n)}: age {MAX_AGE} or prefix {PREFIX}")]
    if mode.age_only:
        variants.append((False, f"pass {_count(n)}: age {MAX_AGE} only"))
    passes(mode, ws, res, variants, tools, missing=missing)
    for dirs, reps in mode.fd_dirs:
        # systemd's default soft limit is 1024; 256 is tighter still. A pass that kept an fd
        # per directory failed past ~240 of them; ocrd's are bounded (rootdir.fd_budget).
        measure = f"pass {_count(2 * dirs)} in {_count(dirs)} directories, ulimit -n {FD_LIMIT}"
        passes(
            mode,
            ws,
            res,
            [(True, measure)],
            ["ocrd", "find"],
            missing={},
            n=2 * dirs,
            subdirs=dirs,
            reps=reps,
            wrap=["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--"],
        )
    tmpfs = mode.tmpfs_dir
    if tmpfs is None:
        return
    if filesystem_type(os.fsencode(tmpfs)) != "tmpfs":
        res.problems.append(f"§2 on tmpfs: {tmpfs} is not a tmpfs here; not measured")
        return
    # Where unlink does not wait on a device, a pass is CPU-bound: Python's floor shows.
    memory = Workspace(Path(tmpfs))
    try:
        measure = f"pass {_count(n)} on tmpfs ({tmpfs}): age {MAX_AGE} or prefix {PREFIX}"
        passes(mode, memory, res, [(True, measure)], ["ocrd", "find"], missing={})
    finally:
        memory.close()


def passes(
    mode: Mode,
    ws: Workspace,
    res: Results,
    variants: Sequence[tuple[bool, str]],
    tools: Sequence[str],
    *,
    missing: dict[str, str],
    n: int | None = None,
    subdirs: int = SUBDIRS,
    reps: int | None = None,
    wrap: Sequence[str] = (),
) -> None:
    """Each tool's pass on its own fresh tree, ``mode.reps`` times per variant; one row each.
    ``n`` files (default: mode.retention_n) in ``subdirs`` directories; each command is run
    under ``wrap`` (e.g. prlimit)."""
    n = mode.retention_n if n is None else n
    reps = mode.reps if reps is None else reps
    wall: dict[tuple[bool, str], list[float]] = collections.defaultdict(list)
    cpu: dict[tuple[bool, str], list[float]] = collections.defaultdict(list)
    wrong: dict[tuple[bool, str], list[str]] = collections.defaultdict(list)
    due: dict[bool, int] = {}
    for rep in range(reps):
        for prefix, measure in variants:
            for tool in rotated(tools, rep):
                scratch = ws.fresh(f"{tool}")
                tree = generate(scratch / "tree", n, subdirs=subdirs)
                argvs = retention_commands(tool, tree, scratch, prefix)
                for argv in argvs:
                    assert_targets(argv, scratch, tree)
                argvs = [[*wrap, *argv] for argv in argvs]
                quiet(mode.pause_s)
                t = timed(argvs)
                left = count_files(tree.root)
                kept = tree.kept(prefix_rule=prefix)
                due[prefix] = n - len(kept)
                key = (prefix, tool)
                if any(t.codes):
                    wrong[key].append(f"exit {t.codes}: {t.stderr[:200]}")
                if left != kept:
                    gone = len(kept - left)
                    stayed = len(left - kept)
                    wrong[key].append(f"{gone} wrongly deleted, {stayed} not deleted")
                    res.problems.append(
                        f"§2 {measure}, {TOOL_NAMES[tool]}, run {rep + 1}: {gone} files "
                        f"deleted that the rules keep, {stayed} left that they delete"
                    )
                wall[key].append(t.wall)
                cpu[key].append(t.cpu)
                print(
                    f"    rep {rep + 1} {measure} {tool}: {t.wall:.3f} s, {n - len(left)} deleted",
                    flush=True,
                )
                ws.remove(scratch)
                os.sync()
    for prefix, measure in variants:
        expected = due.get(prefix, 0)
        for tool in RETENTION_TOOLS:
            if tool not in tools and tool not in missing:
                continue
            name = TOOL_NAMES[tool]
            if tool == "tmpreaper" and prefix:
                name += " + find -name old_* -delete"
            if tool in missing:
                res.add(Row("2", measure, name, "s", None, peer=tool != "ocrd", note=missing[tool]))
                continue
            key = (prefix, tool)
            check = (
                "; ".join(sorted(set(wrong[key])))
                if wrong[key]
                else f"all {expected} due files deleted and no other, every run"
            )
            res.add(
                Row.of(
                    "2",
                    measure,
                    name,
                    "s",
                    wall[key],
                    peer=tool != "ocrd",
                    note=f"CPU {fmt(statistics.median(cpu[key]), 's')}; {check}",
                )
            )


# -- 3-5. the running daemon -----------------------------------------------------------------


class DaemonUnavailable(Exception):
    """``ocrd run`` did not start (exited, or never said READY=1)."""


class Daemon:
    """``ocrd run -c CONFIG`` with our own NOTIFY_SOCKET; collects its JSON log lines."""

    def __init__(self, config: Path, scratch: Path, watchdog_usec: int | None = None) -> None:
        self.sock_path = str(scratch / "notify.sock")
        assert len(self.sock_path) < 100, self.sock_path  # AF_UNIX path limit is 108 bytes
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.sock.settimeout(0.2)
        self.cond = threading.Condition()
        self.ready = threading.Event()
        self.notes: list[tuple[float, str]] = []
        self.deleted: dict[str, float] = {}  # file name → when its model_deleted was read
        self.summarised = 0  # deletions counted in log_summary lines instead
        self.events: collections.Counter[str] = collections.Counter()
        self.skips: collections.Counter[str] = collections.Counter()  # deletion_skipped reasons
        self.scans: collections.Counter[str] = collections.Counter()  # scan_completed triggers
        self.scan_ms: list[float] = []  # scan_completed duration_ms, in order
        self.stderr_path = scratch / "ocrd-run.stderr"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("OCRD_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
            and not k.startswith("LISTEN_")
        }
        env["NOTIFY_SOCKET"] = self.sock_path
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*ocrd_argv(), "run", "-c", str(config)],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self.started = time.monotonic()
        self.threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_notify, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            seen = time.monotonic()
            try:
                event: dict[str, Any] = json.loads(raw)
            except ValueError:
                continue
            name = str(event.get("event"))
            with self.cond:
                self.events[name] += 1
                if name == "model_deleted":
                    path = str(event.get("path", ""))
                    self.deleted[path.rpartition("/")[2]] = seen
                elif name == "log_summary" and event.get("of") == "model_deleted":
                    # Per-file lines beyond ocrd's log budget come summed up (ocrd/log.py).
                    self.summarised += int(event.get("count", 0))
                elif name == "deletion_skipped":
                    self.skips[str(event.get("reason"))] += 1
                elif name == "scan_completed":
                    self.scans[str(event.get("trigger"))] += 1
                    ms = event.get("duration_ms")
                    if isinstance(ms, int | float):
                        self.scan_ms.append(float(ms))
                self.cond.notify_all()

    def _read_notify(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if self.proc.poll() is not None:
                    return
                continue
            except OSError:
                return
            seen = time.monotonic()
            with self.cond:
                for part in data.decode("utf-8", "replace").split("\n"):
                    self.notes.append((seen, part))
                    if part == "READY=1":
                        self.ready.set()
                self.cond.notify_all()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds from spawn to READY=1; DaemonUnavailable if it exits or never gets there."""
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None:
                raise DaemonUnavailable(
                    f"`ocrd run` exited with status {self.proc.returncode} before READY=1: "
                    + self.last_error()
                )
            if time.monotonic() > deadline:
                self.stop()
                raise DaemonUnavailable(f"`ocrd run` sent no READY=1 within {timeout:.0f} s")
        return next(t for t, n in self.notes if n == "READY=1") - self.started

    def last_error(self) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1][:200] if lines else "(nothing on stderr)"

    def wait_deleted(self, name: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while name not in self.deleted:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self.cond.wait(left)
            return self.deleted[name]

    def deleted_count(self, prefix: str) -> int:
        """Deletions of files named ``prefix…``, those counted in log summaries included (the
        bursts delete nothing else, so a summary's count is theirs)."""
        with self.cond:
            return self.summarised + sum(1 for name in self.deleted if name.startswith(prefix))

    def skipped(self) -> collections.Counter[str]:
        with self.cond:
            return collections.Counter(self.skips)

    def count_notes(self, text: str, since: float) -> int:
        with self.cond:
            return sum(1 for t, n in self.notes if n == text and t >= since)

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (all its threads), from /proc/PID/stat."""
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM in bytes, from /proc/PID/status."""
        found: dict[str, int] = {}
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0]) * 1024
        return found

    def stop(self) -> tuple[int | None, float]:
        """SIGTERM; the exit status (None: had to be killed after 10 s) and how long it took."""
        started = time.monotonic()
        code: int | None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            code = None
        took = time.monotonic() - started
        for thread in self.threads:
            thread.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.sock.close()
        return code, took


def daemon_config(scratch: Path, tree: Tree, rescan: str) -> Path:
    """Prefix rule only (the trees made for the daemon have no ``old_`` files, so everything
    already there is kept and indexed), settle 0 s, engine off."""
    config = scratch / "ocrd.toml"
    config.write_text(
        f"model_dir = {json.dumps(str(tree.root))}\n\n"
        f'[retention]\nprefixes = ["{PREFIX}"]\n\n'
        f'[watch]\nsettle = "0s"\nrescan = "{rescan}"\n\n'
        "[engine]\nenabled = false\n\n"
        '[log]\nlevel = "info"\nformat = "json"\n'
    )
    return config


def start_daemon(
    ws: Workspace, label: str, n: int, watchdog: bool, rescan: str = DEFAULT_RESCAN
) -> tuple[Daemon, Path, Tree]:
    scratch = ws.fresh(label)
    tree = generate(scratch / "tree", n, old_share=0.0)
    os.sync()
    config = daemon_config(scratch, tree, rescan)
    daemon = Daemon(config, scratch, WATCHDOG_USEC if watchdog else None)
    try:
        daemon.wait_ready()
    except DaemonUnavailable:
        daemon.stop()
        ws.remove(scratch)
        raise
    return daemon, scratch, tree


def section_daemon(mode: Mode, ws: Workspace, res: Results, wanted: set[str]) -> None:
    try:
        daemon, scratch, tree = start_daemon(ws, "run", mode.daemon_tree, watchdog=True)
    except DaemonUnavailable as exc:
        reason = f"ocrd run not available: {exc}"
        res.notes.append(reason)
        for section, measure in (
            ("3", "create → model_deleted"),
            ("4", "idle CPU"),
            ("4", "RSS per indexed file"),
            ("5", f"burst of {_count(mode.burst_n)} {PREFIX} files"),
        ):
            if section in wanted:
                res.add(Row(section, measure, "ocrd run", "s", None, note=reason))
        return
    try:
        if "4" in wanted:
            measure_idle(mode, daemon, tree, res)
        if "3" in wanted:
            measure_latency(mode, daemon, tree, scratch, res)
    finally:
        code, took = daemon.stop()
        ws.remove(scratch)
    res.add(
        Row(
            "4",
            "SIGTERM → exit",
            "ocrd run",
            "s",
            took,
            n=1,
            note=f"exit status {code if code is not None else 'none: killed after 10 s'}",
        )
    )
    if "4" in wanted:
        measure_rss(mode, ws, res)
    if "5" in wanted:
        measure_burst(mode, ws, res)


def measure_idle(mode: Mode, daemon: Daemon, tree: Tree, res: Results) -> None:
    time.sleep(2.0)  # let whatever READY=1 set in motion finish
    since = time.monotonic()
    cpu0 = daemon.cpu_seconds()
    time.sleep(mode.idle_s)
    cpu1 = daemon.cpu_seconds()
    elapsed = time.monotonic() - since
    pings = daemon.count_notes("WATCHDOG=1", since)
    expected = int(elapsed // (WATCHDOG_USEC / 2e6))
    tick = 100 / os.sysconf("SC_CLK_TCK") / elapsed
    rescan = ""
    if daemon.scan_ms:
        share = daemon.scan_ms[0] / 1000 / 600 * 100
        rescan = (
            f"; not in the window: the rescan every {DEFAULT_RESCAN}, whose scan took "
            f"{daemon.scan_ms[0]:.0f} ms at start-up (about {share:.3f} % amortized)"
        )
    res.add(
        Row(
            "4",
            f"idle CPU ({_count(tree.n)} files, {elapsed:.0f} s)",
            "ocrd run",
            "%",
            100 * (cpu1 - cpu0) / elapsed,
            n=1,
            note=f"utime+stime from /proc/PID/stat (resolution {tick:.3f} %); "
            f"WATCHDOG_USEC=10 s: {pings} WATCHDOG=1 received, ≥{expected} due{rescan}",
        )
    )


def measure_latency(mode: Mode, daemon: Daemon, tree: Tree, scratch: Path, res: Results) -> None:
    """One file at a time: written beside model_dir and renamed in (atomic: the daemon can only
    see it complete), then written in place (open, write, close: what "created" means to most
    programs, and the figure the target is judged on)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for how, tag in (("renamed in", "mv"), ("written in place", "lat")):
        latencies: list[float] = []  # math.inf: no model_deleted within LATENCY_WAIT_S
        still_there = 0
        skips_before = daemon.skipped()
        for i in range(mode.latency_files):
            name = f"{PREFIX}{tag}_{i:05d}.bin"
            path = tree.root / f"d{i % 100:02d}" / name
            assert_inside(path, tree.root)
            if tag == "mv":
                staging = scratch / name  # outside model_dir, on the same filesystem
                staging.write_bytes(b"latency probe\n")
                created = time.monotonic()
                os.rename(staging, path)
            else:
                created = time.monotonic()
                fd = os.open(path, flags, 0o644)
                os.write(fd, b"latency probe\n")
                os.close(fd)
            seen = daemon.wait_deleted(name, timeout=LATENCY_WAIT_S)
            latencies.append(math.inf if seen is None else seen - created)
            if os.path.lexists(path):
                deadline = time.monotonic() + 1.0
                while os.path.lexists(path) and time.monotonic() < deadline:
                    time.sleep(0.01)
                still_there += os.path.lexists(path)
            time.sleep(0.005)
        unseen = sum(1 for x in latencies if math.isinf(x))
        skips = daemon.skipped() - skips_before
        seen_n = len(latencies) - unseen
        checks = f"{seen_n}/{len(latencies)} model_deleted within {LATENCY_WAIT_S:.0f} s"
        if unseen:
            checks += f" ({unseen} never: counted as ∞)"
        checks += f", {still_there} files still there" if still_there else ", every file gone"
        if skips:
            checks += f"; deletion_skipped: {_counts(skips)}"
        measure = f"create → model_deleted, {how} ({_count(tree.n)} files, settle 0 s)"
        p50 = _percentile(latencies, 50)
        p99 = _percentile(latencies, 99)
        lo, hi = min(latencies), max(latencies)
        res.add(Row("3", measure, "ocrd run p50", "s", p50, lo, hi, len(latencies), note=checks))
        res.add(Row("3", measure, "ocrd run p99", "s", p99, lo, hi, len(latencies)))
        if still_there:
            res.problems.append(f"§3 latency, {how}: {checks}")


def _percentile(samples: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def measure_rss(mode: Mode, ws: Workspace, res: Results) -> None:
    rss: dict[int, list[float]] = collections.defaultdict(list)
    hwm: dict[int, list[float]] = collections.defaultdict(list)
    for n in mode.rss_sizes:
        for _ in range(mode.rss_reps):
            try:
                daemon, scratch, _tree = start_daemon(ws, f"rss{_count(n)}", n, watchdog=False)
            except DaemonUnavailable as exc:
                res.add(Row("4", f"RSS, {_count(n)} files", "ocrd run", "MiB", None, note=str(exc)))
                return
            try:
                time.sleep(1.0)
                mem = daemon.memory()
            finally:
                daemon.stop()
                ws.remove(scratch)
            rss[n].append(mem["VmRSS"] / 2**20)
            hwm[n].append(mem["VmHWM"] / 2**20)
    base = statistics.median(rss[0]) if rss.get(0) else None
    for n in mode.rss_sizes:
        res.add(
            Row.of(
                "4",
                f"RSS, {_count(n)} files",
                "ocrd run",
                "MiB",
                rss[n],
                note=f"VmRSS 1 s after READY=1, engine.enabled = false; peak (VmHWM) "
                f"{statistics.median(hwm[n]):.1f} MiB",
            )
        )
    for n in mode.rss_sizes:
        if n and base is not None:
            per_file = (statistics.median(rss[n]) - base) * 2**20 / n
            res.add(
                Row(
                    "4",
                    f"index, {_count(n)} files",
                    "ocrd run",
                    "B/file",
                    per_file,
                    n=1,
                    note="(median RSS - median RSS at 0 files) / files",
                )
            )


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
        except DaemonUnavailable as exc:
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
            daemon.stop()
            ws.remove(scratch)
    if not left_all:
        res.add(
            Row(
                "5",
                f"burst of {_count(mode.burst_n)} {PREFIX} files",
                "ocrd run",
                "s",
                None,
                note="ocrd run not available",
            )
        )
        return
    measure = f"burst of {_count(mode.burst_n)} {PREFIX} files ({_count(mode.daemon_tree)} kept)"
    res.add(
        Row.of(
            "5",
            measure,
            "ocrd run: files left after drain",
            "files",
            left_all,
            note=f"waited up to {mode.drain_timeout_s:.0f} s (rescan = {mode.rescan}); "
            f"deletions logged (lines or summaries): {', '.join(map(str, events_seen))}; "
            f"deletion_skipped: {_counts(skips)}; full scans: {_counts(scans)}",
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


def _counts(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in counter.most_common()) or "none"


def _count_tagged(root: Path, tag: str) -> int:
    return sum(1 for rel in count_files(root) if rel.rpartition("/")[2].startswith(tag))


# -- targets and the report ------------------------------------------------------------------


def evaluate(res: Results) -> None:
    """Fill ``res.targets``: (target, measured, verdict detail, met?)."""
    rows = res.rows
    ratios = _ratios(rows)
    for n in res.mode.scan_sizes:
        row = res.find("1", "ocrd scan() in-process", f"scan {_count(n)} files")
        ratio = ratios.get(id(row)) if row else None
        res.targets.append(_target(f"scan {_count(n)} ≤ 1.3x find -printf", ratio, 1.3, "x"))
    combined = f"pass {_count(res.mode.retention_n)}: age {MAX_AGE} or prefix {PREFIX}"
    row = res.find("2", "ocrd clean", combined)
    ratio = ratios.get(id(row)) if row else None
    res.targets.append(_target("retention pass ≤ 1.1x fastest peer", ratio, 1.1, "x"))
    p99 = next(
        (r for r in rows if r.tool == "ocrd run p99" and "written in place" in r.measure), None
    )
    res.targets.append(
        _target("latency p99 ≤ settle + 0.2 s (settle 0 s)", p99.value if p99 else None, 0.2, "s")
    )
    idle = next((r for r in rows if r.measure.startswith("idle CPU")), None)
    res.targets.append(_target("idle CPU ≤ 0.1 %", idle.value if idle else None, 0.1, "%"))
    index = [r for r in rows if r.measure.startswith("index,") and r.value is not None]
    value = index[-1].value if index else None
    label = (
        f"index ≤ 300 B/file ({index[-1].measure.split(', ')[1]})"
        if index
        else ("index ≤ 300 B/file")
    )
    res.targets.append(_target(label, value, 300, "B/file"))
    left = next((r for r in rows if r.tool == "ocrd run: files left after drain"), None)
    res.targets.append(
        _target("burst: 0 files left after drain", left.hi if left else None, 0, "files")
    )


def _target(
    name: str, value: float | None, limit: float, unit: str
) -> tuple[str, str, str, bool | None]:
    if value is None:
        return (name, "—", "not measured", None)
    shown = f"{value:.2f}x" if unit == "x" else fmt(value, unit)
    met = value <= limit
    return (name, shown, "met" if met else "**not met**", met)


def report(
    res: Results, machine_rows: Sequence[tuple[str, str]], took: float, sections: set[str]
) -> str:
    mode = res.mode
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# ocrd benchmark results",
        "",
        f"Written by `python -m bench.run{' --quick' if mode.name == 'quick' else ''}` on "
        f"{stamp}; mode **{mode.name}** ({mode.reps} repetitions; sections "
        f"{', '.join(sorted(sections))}); the run took {took / 60:.1f} min.",
        "",
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in machine_rows),
        "",
        "## Method",
        "",
        "- Trees: N files in 100 subdirectories, 10 % named `old_…`, mtime = atime spread "
        "uniformly over 60 days, a few bytes each (`bench/tree.py`, seed 1: every tree is "
        "identical). No file is within 1 h of the 30-day limit, so the expected result is exact.",
        "- Every deletion runs on its own freshly generated tree, on a fresh `mkdtemp()` path; "
        "`sync` and a pause before each timed command; the order of the tools rotates from one "
        "repetition to the next. Each tool's result is compared file by file with what the rules "
        "must leave.",
        "- Wall time of the command(s) as a subprocess; CPU = user + system of the children.",
        "- §1: ocrd is timed *inside* a fresh child process around `scan()` alone (the daemon's "
        "first scan); the whole-process row adds interpreter start and imports. `find` is timed "
        "as a process. Both trees are warm in the page cache (one untimed warm-up run each). "
        "The Python floor row is a bare `scandir` + `stat` loop, timed the same way in its own "
        "child, keeping no record: what any Python walk pays before it writes anything down.",
        f'- §2: `ocrd clean` with settle = "0s", engine.enabled = false, max_age = '
        f'"{MAX_AGE}" (by mtime), prefixes = ["{PREFIX}"]. systemd-tmpfiles: `e ROOT - - - '
        f"m:{MAX_AGE}` (mtime only) plus `r ROOT/{PREFIX}*` and `r ROOT/*/{PREFIX}*` (tmpfiles has "
        "no prefix rule: `r` removes what a glob matches whatever its age, as ocrd's prefix rule "
        "does; globs don't recurse, so one line per level of the tree), run as `--clean "
        "--remove --prefix=ROOT CONF`. tmpreaper: `--mtime --runtime=3600 30d` (its -T default "
        "of 55 s would abort a slow pass); it has no name rule, so the prefix rule is a second "
        "command, `find ROOT -type f -name 'old_*' -delete`, timed with it. find: `-type f "
        "\\( -name 'old_*' -o -mmin +43200 \\) -delete` (`-mtime +30` would mean ≥ 31 days). "
        "The age-only rows are the same without the prefix rule: there every tool is native. "
        "ocrd deletes each directory in inode order, one file behind (a checked file waits "
        "under a private name and goes with the next file's rename over it), and spreads "
        "directories over "
        f"{FAN_OUT.threads} threads once unlink() took {FAN_OUT.share:.0%} "
        f"or more of the time of its first {FAN_OUT.sample} deletions. The tmpfs "
        "rows (full mode, ocrd and find only) show the other case: unlink() is cheap next to "
        "ocrd's own work per file, one thread deletes, and the pass is CPU-bound.",
        f'- §3-5: `ocrd run` with prefixes = ["{PREFIX}"], settle = "0s", rescan = '
        f'"{DEFAULT_RESCAN}" (the default; "{mode.rescan}" for the bursts, so that lost events '
        "are recovered within the wait), engine.enabled = false, on a tree without `old_` "
        "files (all kept and indexed); NOTIFY_SOCKET is ours, READY=1 ends the start. "
        "RSS is measured with the engine disabled (no AsposeAI instance), so it is ocrd's "
        "own index and runtime.",
        "",
        "## Results",
        "",
        table(res.rows),
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---:|---|",
        *(f"| {name} | {shown} | {verdict} |" for name, shown, verdict, _ in res.targets),
        "",
    ]
    if mode.name == "quick":
        out += ["Quick mode: small trees and few runs; the ratios are indicative only.", ""]
    if res.problems or res.notes:
        out += ["## Problems and notes", ""]
        out += [f"- **{p}**" for p in res.problems] + [f"- {n}" for n in res.notes] + [""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small trees, 3 runs (for CI)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the report (default: bench/RESULTS.md; with --quick "
        "bench/out/RESULTS-quick.md, so CI never overwrites the full results)",
    )
    parser.add_argument("--sections", default="1,2,3,4,5", help="comma-separated, e.g. 1,2")
    parser.add_argument("--tmpdir", type=Path, default=None, help="parent of the scratch dirs")
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions per row (default: the mode's)"
    )
    parser.add_argument(
        "--lean",
        action="store_true",
        help="full-size trees, but only the rows with every rule (no age-only pass, no 100k-"
        "directory pass): for a quicker look at the same measures",
    )
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    if args.reps is not None:
        mode = dataclasses.replace(
            mode, reps=args.reps, fd_dirs=tuple((d, min(r, args.reps)) for d, r in mode.fd_dirs)
        )
    if args.lean:
        mode = dataclasses.replace(mode, age_only=False, fd_dirs=mode.fd_dirs[:1])
    here = Path(__file__).parent
    out: Path = args.out or (
        here / "out" / "RESULTS-quick.md" if args.quick else here / "RESULTS.md"
    )
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - {"1", "2", "3", "4", "5"}
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    ws = Workspace(args.tmpdir)
    res = Results(mode)
    started = time.monotonic()
    steps: list[tuple[set[str], Callable[[], None]]] = [
        ({"1"}, lambda: section_scan(mode, ws, res)),
        ({"2"}, lambda: section_retention(mode, ws, res)),
        ({"3", "4", "5"}, lambda: section_daemon(mode, ws, res, sections)),
    ]
    load_start = _loadavg()
    try:
        machine_rows = machine(ws.parent)
        for keys, step in steps:
            if keys & sections:
                label = "§" + ", ".join(sorted(keys & sections))
                print(f"{label} …", flush=True)
                began = time.monotonic()
                before = _code_digest()
                git, changed = code_state()
                step()
                dirty = f" + uncommitted changes in {', '.join(changed)}" if changed else ""
                res.notes.append(
                    f"{label} took {time.monotonic() - began:.0f} s, on ocrd git {git}{dirty}."
                )
                if _code_digest() != before:
                    res.problems.append(
                        f"ocrd's code changed on disk while {label} ran: its rows mix two "
                        "versions; run again."
                    )
    finally:
        ws.close()
    machine_rows.append(
        ("load average (1, 5, 15 min)", f"{load_start} at start, {_loadavg()} at end")
    )
    if float(load_start.split()[0]) > 0.5:
        res.notes.append(
            f"The machine was not idle at the start (load average {load_start}): other "
            "processes competed for the 2 CPUs and the disk, so spreads are wider than usual."
        )
    evaluate(res)
    text = report(res, machine_rows, time.monotonic() - started, sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print()
    print(table(res.rows))
    print()
    for name, shown, verdict, _ in res.targets:
        print(f"{name}: {shown} — {verdict.strip('*')}")
    for problem in res.problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    print(f"\nwritten to {out}")
    # A tool that deleted the wrong set (or a scan that missed files) makes the comparison
    # meaningless: fail, so that CI notices. Targets not met are reported, not failed.
    return 1 if any(p.startswith(("§2", "scan")) for p in res.problems) else 0


if __name__ == "__main__":
    sys.exit(main())
