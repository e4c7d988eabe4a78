"""§2, one retention pass: ``ocrd clean`` vs systemd-tmpfiles, tmpreaper and ``find -delete``."""

from __future__ import annotations

import collections
import os
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path

from bench.modes import Mode
from bench.peers import MAX_AGE, RETENTION_TOOLS, TOOL_NAMES, ensure_tmpreaper, retention_commands
from bench.report import Results, Row, count_label, fmt
from bench.tree import PREFIX, SUBDIRS, count_files, generate
from bench.workspace import Workspace, assert_targets, quiet, rotated, timed
from ocrd.fs.procfs import filesystem_type

FD_LIMIT = 256  # the soft and hard RLIMIT_NOFILE of the fd-bound pass


def section_retention(mode: Mode, ws: Workspace, res: Results) -> None:
    n = mode.retention_n
    missing: dict[str, str] = {}
    if (why := ensure_tmpreaper()) is not None:
        missing["tmpreaper"] = why
    if not shutil.which("systemd-tmpfiles"):
        missing["tmpfiles"] = "systemd-tmpfiles not installed"
    tools = [t for t in RETENTION_TOOLS if t not in missing]
    variants = [(True, f"pass {count_label(n)}: age {MAX_AGE} or prefix {PREFIX}")]
    if mode.age_only:
        variants.append((False, f"pass {count_label(n)}: age {MAX_AGE} only"))
    passes(mode, ws, res, variants, tools, missing=missing)
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
        measure = f"pass {count_label(n)} on tmpfs ({tmpfs}): age {MAX_AGE} or prefix {PREFIX}"
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
