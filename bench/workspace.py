"""Where the benchmarks work: fresh scratch directories (only these are ever removed), the
guards every deleting command passes first, and timing commands as subprocesses."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.tree import Tree

TOOL_TIMEOUT_S = 900.0


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
    args = list(argv)
    if args and args[0] == "env":  # env NAME=VALUE … PROGRAM ARGS: the program is the command
        args = args[1:]
        while args and "=" in args[0] and not args[0].startswith("/"):
            args = args[1:]
    for arg in args[1:]:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if value.startswith("/"):
            assert_inside(value, scratch)


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
