"""The results of a ``bench.run``: rows, ratios to the fastest peer, the machine, the targets,
and the RESULTS markdown."""

from __future__ import annotations

import collections
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import loopfs
from bench.floor import compiler
from bench.modes import Mode
from bench.peers import MAX_AGE, TOOL_NAMES
from bench.sections.live import DEFAULT_RESCAN
from bench.tree import PREFIX
from ocrd.ops.fanout import FanOut
from tests.harness import ocrd_argv

FAN_OUT: FanOut[object, object] = FanOut()  # ocrd's defaults, as the report states them


@dataclass
class Row:
    section: str
    measure: str
    tool: str
    unit: str  # "s", "%", "MiB", "MiB/s", "B/file", "files", "files/s", "cycles"
    value: float | None  # None: not measured (see note)
    lo: float | None = None
    hi: float | None = None
    n: int = 0
    peer: bool = False
    note: str = ""
    cpu: float | None = None  # median CPU (user + system) of the runs, where measured

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
    if unit == "MiB/s":
        return f"{value:.2f} MiB/s"
    if unit == "files/s":
        return f"{value:,.0f} files/s"
    return f"{value:,.0f}"


def count_label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _row_line(row: Row) -> str:
    spread = "" if row.lo is None else f" ({fmt(row.lo, row.unit)}-{fmt(row.hi, row.unit)})"
    note = f"  [{row.note}]" if row.note else ""
    return f"  {row.section} | {row.measure} | {row.tool}: {fmt(row.value, row.unit)}{spread}{note}"


def peer_ratios(rows: Sequence[Row]) -> dict[int, float]:
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
    ratios = peer_ratios(rows)
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


@dataclass(frozen=True)
class Against:
    """One §2 pass set against the safe floor and find: the rows of one measure."""

    measure: str
    ocrd: Row | None
    find: Row | None
    floor: Row | None

    @staticmethod
    def _ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    @property
    def to_floor(self) -> float | None:
        return self._ratio(_value(self.ocrd), _value(self.floor))

    @property
    def to_find(self) -> float | None:
        return self._ratio(_value(self.ocrd), _value(self.find))

    @property
    def cpu_to_find(self) -> float | None:
        return self._ratio(_cpu(self.ocrd), _cpu(self.find))

    @property
    def cpu_to_floor(self) -> float | None:
        return self._ratio(_cpu(self.ocrd), _cpu(self.floor))


def _value(row: Row | None) -> float | None:
    return None if row is None else row.value


def _cpu(row: Row | None) -> float | None:
    return None if row is None else row.cpu


def against_floor(res: Results) -> list[Against]:
    """Every §2 pass that ocrd ran, with find's and the floor's rows of the same pass."""
    out = []
    for row in res.rows:
        if row.section == "2" and row.tool in (TOOL_NAMES["ocrd"], TOOL_NAMES["ocrd-py"]):
            out.append(
                Against(
                    row.measure
                    if row.tool == TOOL_NAMES["ocrd"]
                    else f"{row.measure}, Python path",
                    row,
                    res.find("2", TOOL_NAMES["find"], row.measure),
                    res.find("2", TOOL_NAMES["floor"], row.measure),
                )
            )
    return out


def floor_table(res: Results) -> str:
    def x(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}x"

    def both(row: Row | None) -> str:
        if row is None or row.value is None:
            return "—"
        return f"{fmt(row.value, 's')} (CPU {fmt(row.cpu, 's')})"

    out = [
        "| pass | ocrd clean | find -delete | safe floor | ocrd / floor | ocrd / find "
        "| CPU: ocrd / find | CPU: ocrd / floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in against_floor(res):
        out.append(
            f"| {a.measure} | {both(a.ocrd)} | {both(a.find)} | {both(a.floor)} | "
            f"{x(a.to_floor)} | {x(a.to_find)} | {x(a.cpu_to_find)} | {x(a.cpu_to_floor)} |"
        )
    return "\n".join(out)


def counts_text(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in counter.most_common()) or "none"


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
    cc = compiler()
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
        ("C compiler (the safe floor)", _first_line([cc, "--version"]) if cc else "none"),
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


def code_digest() -> str:
    """A digest of ocrd/**/*.py as they are on disk: tells whether the code changed mid-run."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parent.parent / "ocrd").rglob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


# -- targets and the report ------------------------------------------------------------------


def evaluate(res: Results) -> None:
    """Fill ``res.targets``: (target, measured, verdict detail, met?)."""
    rows = res.rows
    ratios = peer_ratios(rows)
    for n in res.mode.scan_sizes:
        row = res.find("1", "ocrd scan() in-process", f"scan {count_label(n)} files")
        ratio = ratios.get(id(row)) if row else None
        res.targets.append(_target(f"scan {count_label(n)} ≤ 1.3x find -printf", ratio, 1.3, "x"))
    size = count_label(res.mode.retention_n)
    combined = f"pass {size}: age {MAX_AGE} or prefix {PREFIX}"
    row = res.find("2", "ocrd clean", combined)
    ratio = ratios.get(id(row)) if row else None
    res.targets.append(_target("retention pass ≤ 1.1x fastest peer", ratio, 1.1, "x"))
    passes = {a.measure: a for a in against_floor(res)}
    tmpfs = next((a for m, a in passes.items() if m.startswith(f"pass {size} on tmpfs")), None)
    ext4 = next((a for m, a in passes.items() if m.startswith(f"pass {size} {loopfs.LABEL}")), None)
    disk = passes.get(combined)
    res.targets += [
        _target(
            "pass, tmpfs: ocrd / safe floor ≤ 1.5x", tmpfs.to_floor if tmpfs else None, 1.5, "x"
        ),
        _target(
            "pass, ext4 without discard: ocrd / safe floor ≤ 1.3x",
            ext4.to_floor if ext4 else None,
            1.3,
            "x",
        ),
        _target(
            "pass, the temp dir's disk: ocrd / find -delete ≤ 1.0x",
            disk.to_find if disk else None,
            1.0,
            "x",
        ),
        _target(
            "pass, the temp dir's disk: CPU of ocrd / CPU of find ≤ 2x",
            disk.cpu_to_find if disk else None,
            2.0,
            "x",
        ),
    ]
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
    growth = res.find("7", "ocrd run RSS growth")
    res.targets.append(
        _target(
            "churn: RSS growth after warm-up ≤ 10 MiB",
            abs(growth.value) if growth and growth.value is not None else None,
            10,
            "MiB",
        )
    )
    storm = res.find("8", "ocrd run: deletions accounted for")
    res.targets.append(
        _target(
            "name storm: every deletion accounted for",
            None if storm is None or storm.value is None else res.mode.storm_files - storm.value,
            0,
            "files",
        )
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
        "- Wall time of the command(s) as a subprocess; CPU = user + system of the children. "
        "ocrd's bytecode is compiled before the first section, as an install has it.",
        "- `ocrd clean, Python path` is the same command with `OCRD_PURE_PYTHON=1`: the "
        "deleter's compiled step (`ocrd/ops/sweep.c`) off, what the step gains in the same run.",
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
        "ocrd deletes from each directory as soon as its walk has planned it (every rule "
        "here judges a file alone), in inode order, one file behind (a checked file waits "
        "under a private name and goes with the next file's rename over it), and spreads "
        "directories over "
        f"{FAN_OUT.threads} threads once unlink() took {FAN_OUT.share:.0%} "
        f"or more of the time of its first {FAN_OUT.sample} deletions, the walk going on "
        "in the calling thread. The tmpfs "
        "rows (ocrd, find and the floor) show the other case: unlink() is cheap next to "
        "ocrd's own work per file, one thread deletes, and the pass is CPU-bound. The rows "
        f"{loopfs.LABEL} (as root, with mkfs.ext4 and losetup) run on a fresh image file "
        "in the temp dir, made with `mkfs.ext4 -N … -E lazy_itable_init=0,lazy_journal_init=0,"
        "nodiscard` (inode tables and journal written before any timing), attached with "
        "`losetup` and mounted with ext4's defaults: no `discard`, Debian's default mount, "
        "so unlink() does not wait on the device; unmounted, detached and removed after.",
        "- §2, the safe floor (`bench/floor.c`, built with `cc -O2` into a scratch dir when "
        "there is a C compiler): the least any deleter with ocrd's per-file checks can do. "
        "It walks the tree with directory fds (`openat` O_DIRECTORY|O_NOFOLLOW, `readdir`, "
        "entries sorted by inode, `fstatat` AT_SYMLINK_NOFOLLOW each, one filesystem) and "
        "judges each regular file by the same rules (name starts with `old_`, or mtime more "
        "than 30 days before its start, as find's `-mmin +43200`); per due file it makes "
        "`openat(O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC)`, `fstat` (still a regular file, "
        "same dev, inode, size and mtime as walked), `fcntl(F_SETLEASE, F_WRLCK)` (EAGAIN: "
        "the file stays), `unlinkat` and `close`, with SIGIO ignored. No rename to a private "
        "name, no re-verified fd chain, no log: those are ocrd's, over the floor. It is "
        "checked on a 300-file tree of each filesystem first (where it cannot lease, its "
        "rows say why), then timed and its result checked file by file like every tool's. "
        "It is no peer in the x-fastest-peer column (it is not a tool anyone runs): the "
        "table under the results sets every pass against it and against find.",
        f'- §3-5: `ocrd run` with prefixes = ["{PREFIX}"], settle = "0s", rescan = '
        f'"{DEFAULT_RESCAN}" (the default; "{mode.rescan}" for the bursts, so that lost events '
        "are recovered within the wait), engine.enabled = false, on a tree without `old_` "
        "files (all kept and indexed); NOTIFY_SOCKET is ours, READY=1 ends the start. "
        "RSS is measured with the engine disabled (no AsposeAI instance), so it is ocrd's "
        "own index and runtime.",
        "- §6: `ocrd run` with the real AsposeAI engine, scenarios "
        f"{', '.join(mode.cycle_scenarios)} (`bench/engine_cycles.py`): trickle = 20 `old_` "
        "files one every 0.3 s, settle 1 s; "
        "burst = 1000 renamed in; held / immutable = one `old_` file held open or `chattr +i`, "
        "three reloads. Each with the shipped engine.batch and engine.restart_after and with "
        "both 0 s (a cycle per pass).",
        f"- §7: `ocrd run` (max_age 30d, engine off) while a writer makes {mode.churn_rate:.0f} "
        f"kept files/s in 10 directories and removes each {mode.churn_life_s:.0f} s later, for "
        f"{mode.churn_s:.0f} s; VmRSS and CPU sampled every {mode.churn_sample_s:.0f} s, the "
        f"first {mode.churn_warmup_s:.0f} s not compared.",
        f"- §8: `ocrd run` (prefix old_, settle 0 s) while {mode.storm_files} `old_` files with "
        "255-byte names of control bytes are created as fast as possible; the bytes it wrote "
        "to stdout until every deletion was in a line or a log_summary count.",
        f"- §9: one file held by {', '.join(map(str, mode.holder_procs))} extra `sleep` "
        "processes; ocrd's write lease attempt (101 runs) and its /proc view (5 runs) in this "
        "process, `fuser FILE` and `lsof -t FILE` (3 runs each) as the peers.",
        "- §10: the budget in this process: `decide()` over 100k model files (10k quick; 3 "
        "runs) with 1 % whitelisted, half in families, and the last-use store recording 1000 "
        "use events/s over 100k rows (10 s; 3 s quick) with one write a second.",
        "",
        "## Results",
        "",
        table(res.rows),
        "",
        *(
            [
                "### Each pass against the safe floor and find",
                "",
                "Medians of the §2 rows above, wall time and CPU (user + system); the safe "
                "floor is `bench/floor.c` (see Method).",
                "",
                floor_table(res),
                "",
            ]
            if against_floor(res)
            else []
        ),
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
