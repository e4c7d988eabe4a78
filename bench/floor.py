"""The safe floor of a retention pass (``bench/floor.c``): built with the machine's C compiler
into a scratch directory, then checked on a small tree of each filesystem it is to run on.

The floor is the least any deleter with ocrd's per-file checks can do: per due file one
``openat`` (``O_NOFOLLOW|O_NONBLOCK``), one ``fstat`` (identity), one write lease, one
``unlinkat`` and one ``close``, on a walk of ``fstatat`` calls; the source says it exactly.
Where there is no compiler, or the filesystem refuses leases, there is no floor: the bench says
why and goes on.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.tree import DAY, PREFIX, count_files, generate
from bench.workspace import Workspace, assert_targets, timed

SOURCE = Path(__file__).with_name("floor.c")
MAX_AGE_S = round(30 * DAY)  # the §2 rules: older than 30 days by mtime (find's -mmin +43200)
NO_LEASES = 3  # floor.c's exit status when the filesystem refuses a write lease
PROBE_FILES = 300


def compiler() -> str | None:
    """The C compiler on PATH (``cc``, else ``gcc``), or None."""
    return shutil.which("cc") or shutil.which("gcc")


def build(ws: Workspace) -> Path | str:
    """Compile the floor with ``-O2`` into a fresh scratch dir of ``ws``: the binary, or why
    there is none."""
    cc = compiler()
    if cc is None:
        return "no C compiler (cc or gcc) on PATH"
    binary = ws.fresh("floor-build") / "floor"
    try:
        proc = subprocess.run(
            [cc, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(SOURCE)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{cc} could not be run: {exc}"
    if proc.returncode != 0 or not binary.exists():
        first = (proc.stderr.strip().splitlines() or ["no message"])[0]
        return f"{cc} -O2 could not build bench/floor.c: {first}"
    return binary


def argv(binary: Path, root: Path, prefix: bool) -> list[str]:
    """The floor's command line for the §2 rules: older than 30 days, or (``prefix``) named
    ``old_…``."""
    rules = [f"--prefix={PREFIX}"] if prefix else []
    return [str(binary), *rules, f"--max-age-s={MAX_AGE_S}", str(root)]


def probe(binary: Path, ws: Workspace) -> str | None:
    """Run the floor once on a small tree in ``ws`` and check its result file by file: None
    when it deleted exactly what the rules name, else why it cannot serve as the floor here."""
    scratch = ws.fresh("floor-probe")
    try:
        tree = generate(scratch / "tree", PROBE_FILES, subdirs=3)
        command = argv(binary, tree.root, prefix=True)
        assert_targets(command, scratch, tree)
        t = timed([command])
        if t.codes == (NO_LEASES,):
            return f"the filesystem refuses write leases ({t.stderr.splitlines()[0]})"
        if any(t.codes):
            return f"exit {t.codes[0]} on a {PROBE_FILES}-file tree: {t.stderr[:200]}"
        left = count_files(tree.root)
        kept = tree.kept()
        if left != kept:
            return (
                f"on a {PROBE_FILES}-file tree it deleted {len(kept - left)} files the rules "
                f"keep and left {len(left - kept)} they delete"
            )
        return None
    finally:
        ws.remove(scratch)
