"""Generates benchmark trees: N small files in 100 subdirectories, some named ``old_…``, with
mtimes (and atimes) spread uniformly over the last 60 days.

The same ``seed`` gives the same tree every time (names, sizes, which files carry the prefix and
each file's age relative to the moment of generation), so every tool is measured on an
identical tree. Files whose age would fall within ``guard_s`` of the age limit are moved just
outside that band, so the few seconds between generating a tree and running a tool on it cannot
change which files are due: the expected result is exact, and each tool's result is checked
against it.

Run it by hand with ``python -m bench.tree DIR N``.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

DAY = 86400.0
SUBDIRS = 100
PREFIX = "old_"
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True)
class Tree:
    """What was generated, and what a retention pass over it must leave behind."""

    root: Path
    files: tuple[str, ...]  # relative paths, "dNN/name"
    ages: tuple[float, ...]  # seconds before ``generated_at``, one per file
    generated_at: float
    max_age_s: float

    @property
    def n(self) -> int:
        return len(self.files)

    def due(self, *, prefix_rule: bool = True, age_rule: bool = True) -> frozenset[str]:
        """What a pass with these rules deletes: named ``old_…``, or older than the limit."""
        return frozenset(
            rel
            for rel, age in zip(self.files, self.ages, strict=True)
            if (prefix_rule and rel.rpartition("/")[2].startswith(PREFIX))
            or (age_rule and age > self.max_age_s)
        )

    def kept(self, *, prefix_rule: bool = True, age_rule: bool = True) -> frozenset[str]:
        return frozenset(self.files) - self.due(prefix_rule=prefix_rule, age_rule=age_rule)


def generate(
    root: Path,
    n: int,
    *,
    old_share: float = 0.10,
    days: float = 60.0,
    max_age_s: float = 30 * DAY,
    guard_s: float = 3600.0,
    seed: int = 1,
    subdirs: int = SUBDIRS,
) -> Tree:
    """Create ``root`` (it must not exist yet) and fill it; returns what was made.

    About 25k files/s on the reference VM: one ``open(O_EXCL)``, ``write``, ``futimens`` and
    ``close`` per file, each relative to an open directory fd, so no path is looked up twice.
    """
    root = Path(root)
    os.mkdir(root)  # fails if it exists: a tree is always fresh
    rng = random.Random(seed)
    old = set(rng.sample(range(n), round(n * old_share))) if n else set()
    span = days * DAY
    files: list[str] = []
    ages: list[float] = []
    names: list[str] = []
    for i in range(n):  # drawn in file order, whatever the order of creation below
        age = rng.uniform(0.0, span)
        if abs(age - max_age_s) < guard_s:  # keep clear of the limit: see module doc
            age = max_age_s + guard_s if age >= max_age_s else max_age_s - guard_s
        names.append(f"{PREFIX if i in old else 'm_'}{i:07d}.bin")
        ages.append(age)
        files.append(f"d{i % subdirs:02d}/{names[i]}")
    now_ns = time.time_ns()
    top = os.open(root, _DIR_FLAGS)
    try:
        # One directory at a time, so a tree of 100k directories needs two fds, not 100k.
        for d in range(subdirs):
            name = f"d{d:02d}"
            os.mkdir(name, dir_fd=top)
            sub = os.open(name, _DIR_FLAGS, dir_fd=top)
            try:
                for i in range(d, n, subdirs):
                    fd = os.open(names[i], _FLAGS, 0o644, dir_fd=sub)
                    try:
                        os.write(fd, b"model %d\n" % i)
                        stamp = now_ns - int(ages[i] * 1e9)
                        os.utime(fd, ns=(stamp, stamp))  # atime = mtime
                    finally:
                        os.close(fd)
            finally:
                os.close(sub)
    finally:
        os.close(top)
    return Tree(root, tuple(files), tuple(ages), now_ns / 1e9, max_age_s)


def count_files(root: Path) -> set[str]:
    """Every regular file under ``root``, as "dNN/name" relative paths."""
    found: set[str] = set()
    for dirpath, _dirs, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in names:
            found.add(name if rel == "." else f"{rel}/{name}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description="Generate a benchmark tree (see module doc).")
    parser.add_argument("dir", type=Path, help="directory to create (must not exist)")
    parser.add_argument("n", type=int, help="number of files")
    parser.add_argument("--old-share", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    started = time.perf_counter()
    tree = generate(args.dir, args.n, old_share=args.old_share, seed=args.seed)
    took = time.perf_counter() - started
    print(
        f"{tree.n} files in {took:.2f} s under {tree.root}; "
        f"a 30d+old_ pass deletes {len(tree.due())}"
    )


if __name__ == "__main__":
    main()
