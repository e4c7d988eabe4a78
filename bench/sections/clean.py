"""§2, one retention pass: ``ocrd clean`` vs systemd-tmpfiles, tmpreaper and ``find -delete``,
with the safe floor (``bench/floor.c``) beside them: on the temp dir's filesystem, on a tmpfs and
on a fresh ext4 image mounted without discard."""

from __future__ import annotations

import collections
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from bench import floor, loopfs
from bench.modes import Mode
from bench.peers import (
    ALL_TOOLS,
    MAX_AGE,
    OCRDS,
    RETENTION_TOOLS,
    TOOL_NAMES,
    ensure_tmpreaper,
    retention_commands,
)
from bench.report import Results, Row, count_label, fmt
from bench.tree import PREFIX, SUBDIRS, count_files, generate
from bench.workspace import Workspace, assert_targets, quiet, rotated, timed
from ocrd.fs.procfs import filesystem_type
from ocrd.ops import sweep

FD_LIMIT = 256  # the soft and hard RLIMIT_NOFILE of the fd-bound pass
RULES = f"age {MAX_AGE} or prefix {PREFIX}"


def section_retention(mode: Mode, ws: Workspace, res: Results) -> None:
    n = mode.retention_n
    missing: dict[str, str] = {}
    if (why := ensure_tmpreaper()) is not None:
        missing["tmpreaper"] = why
    if not shutil.which("systemd-tmpfiles"):
        missing["tmpfiles"] = "systemd-tmpfiles not installed"
    built = floor.build(ws)
    if isinstance(built, str):
        res.notes.append(f"§2: the safe floor is not measured anywhere: {built}.")
    here = floor_on(built, ws, "the temp dir", res)
    tools, missing = joined([t for t in RETENTION_TOOLS if t not in missing], missing, here)
    variants = [(True, f"pass {count_label(n)}: {RULES}")]
    if mode.age_only:
        variants.append((False, f"pass {count_label(n)}: age {MAX_AGE} only"))
    passes(mode, ws, res, variants, tools, missing=missing, floor_bin=here)
    near, near_missing = joined(["ocrd", "find"], {}, here)
    for dirs, reps in mode.fd_dirs:
        # systemd's default soft limit is 1024; 256 is tighter still. A pass that kept an fd
        # per directory failed past ~240 of them; ocrd's are bounded (rootdir.fd_budget).
        measure = (
            f"pass {count_label(2 * dirs)} in {count_label(dirs)} directories, ulimit -n {FD_LIMIT}"
        )
        passes(
            mode,
            ws,
            res,
            [(True, measure)],
            near,
            missing=near_missing,
            n=2 * dirs,
            subdirs=dirs,
            reps=reps,
            wrap=["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--"],
            floor_bin=here,
        )
    if mode.tmpfs_dir is not None:
        on_tmpfs(mode, Path(mode.tmpfs_dir), res, built)
    if mode.ext4_loop:
        on_ext4(mode, ws, res, built)


def floor_on(built: Path | str, ws: Workspace, where: str, res: Results) -> Path | str:
    """The floor's binary where it passes its check on ``ws``'s filesystem (bench.floor.probe),
    else why it is not measured there (said in a note too)."""
    if isinstance(built, str):
        return built
    why = floor.probe(built, ws)
    if why is None:
        return built
    res.notes.append(f"§2 on {where}: the safe floor is not measured: {why}.")
    return why


def joined(
    tools: Sequence[str], missing: dict[str, str], floor_here: Path | str
) -> tuple[list[str], dict[str, str]]:
    """The tools of a pass with the floor, or the floor among the missing with its reason;
    and ocrd's Python path beside ocrd, where ocrd's compiled step is built (else ocrd clean
    is that path already)."""
    if "ocrd" in tools:
        if sweep.compiled is not None:
            tools = [*tools, "ocrd-py"]
        else:
            missing = {
                **missing,
                "ocrd-py": "the compiled step is not built here: ocrd clean is the Python path",
            }
    if isinstance(floor_here, Path):
        return [*tools, "floor"], missing
    return list(tools), {**missing, "floor": floor_here}


def on_tmpfs(mode: Mode, where: Path, res: Results, built: Path | str) -> None:
    """ocrd, find and the floor on a tmpfs, where unlink() never waits on a device: a pass is
    CPU-bound there, and each tool's own work per file shows."""
    if not where.is_dir() or filesystem_type(os.fsencode(where)) != "tmpfs":
        res.notes.append(f"§2 on tmpfs: {where} is not a tmpfs here; not measured.")
        return
    memory = Workspace(where)
    try:
        here = floor_on(built, memory, "tmpfs", res)
        tools, missing = joined(["ocrd", "find"], {}, here)
        measure = f"pass {count_label(mode.retention_n)} on tmpfs ({where}): {RULES}"
        passes(mode, memory, res, [(True, measure)], tools, missing=missing, floor_bin=here)
    finally:
        memory.close()


def on_ext4(mode: Mode, ws: Workspace, res: Results, built: Path | str) -> None:
    """ocrd, find and the floor on a fresh ext4 image mounted with ext4's defaults, without
    discard (Debian's default): unlink() costs what the filesystem's own work costs."""
    if (why := loopfs.unavailable()) is not None:
        res.notes.append(f"§2 {loopfs.LABEL}: not measured: {why}.")
        return
    n = mode.retention_n
    began = time.monotonic()
    try:
        with loopfs.ext4_loop(ws, n, SUBDIRS) as fs:
            made = time.monotonic() - began
            disk = Workspace(fs.mnt)
            try:
                here = floor_on(built, disk, "ext4", res)
                tools, missing = joined(["ocrd", "find"], {}, here)
                measure = f"pass {count_label(n)} {loopfs.LABEL}: {RULES}"
                passes(mode, disk, res, [(True, measure)], tools, missing=missing, floor_bin=here)
            finally:
                disk.close()
    except OSError as exc:
        res.notes.append(f"§2 {loopfs.LABEL}: not measured: {exc}.")
        return
    res.notes.append(
        f"§2 {loopfs.LABEL}: a fresh image (mkfs.ext4 with 2 inodes per file, nothing left to "
        "initialise lazily), "
        f"made and mounted in {made:.2f} s, mounted with {fs.options}; its rows, set-up and "
        f"removal included, took {time.monotonic() - began:.0f} s."
    )


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
    floor_bin: Path | str = "",
) -> None:
    """Each tool's pass on its own fresh tree, ``mode.reps`` times per variant; one row each.
    ``n`` files (default: mode.retention_n) in ``subdirs`` directories; each command is run
    under ``wrap`` (e.g. prlimit). ``floor_bin`` is the safe floor's binary when it is among
    ``tools``."""
    binary = floor_bin if isinstance(floor_bin, Path) else None
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
                argvs = retention_commands(tool, tree, scratch, prefix, floor_binary=binary)
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
        for tool in ALL_TOOLS:
            if tool not in tools and tool not in missing:
                continue
            name = TOOL_NAMES[tool]
            peer = tool not in (*OCRDS, "floor")
            if tool == "tmpreaper" and prefix:
                name += " + find -name old_* -delete"
            if tool in missing:
                res.add(Row("2", measure, name, "s", None, peer=peer, note=missing[tool]))
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
                    peer=peer,
                    cpu=statistics.median(cpu[key]),
                    note=f"CPU {fmt(statistics.median(cpu[key]), 's')}; {check}",
                )
            )
