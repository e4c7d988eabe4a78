"""The bench's safe floor (bench/floor.c, built by bench/floor.py): it deletes exactly what the
§2 rules name, keeps a file someone holds open (its write lease fails), follows no symlink,
and the bench checks its result file by file like any tool's."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import floor
from bench.modes import QUICK
from bench.report import Results
from bench.sections.clean import passes
from bench.tree import DAY
from bench.workspace import Workspace

pytestmark = pytest.mark.skipif(floor.compiler() is None, reason="no C compiler on PATH")


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    ws = Workspace(tmp_path_factory.mktemp("floor"))
    built = floor.build(ws)
    assert isinstance(built, Path), built
    yield built
    ws.close()


def file(path: Path, age_days: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")
    when = time.time() - age_days * DAY
    os.utime(path, (when, when))
    return path


def run(binary: Path, root: Path, *, prefix: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        floor.argv(binary, root, prefix), capture_output=True, text=True, timeout=60, check=False
    )


def left(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_symlink() or not p.is_dir()}


def test_deletes_what_the_rules_name_and_nothing_else(binary: Path, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    file(root / "d0/old_a.bin")  # the prefix, new
    file(root / "d0/m_b.bin", age_days=31)  # older than 30 days
    file(root / "d1/m_c.bin", age_days=29)
    file(root / "d1/sub/m_d.bin", age_days=45)
    file(root / "m_e.bin", age_days=1)
    file(root / "xold_f.bin")  # the prefix is a prefix
    proc = run(binary, root)
    assert proc.returncode == 0, proc.stderr
    assert left(root) == {"d1/m_c.bin", "m_e.bin", "xold_f.bin"}
    assert proc.stdout.split()[:2] == ["deleted", "3"]


def test_without_the_prefix_rule_only_age_counts(binary: Path, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    file(root / "old_a.bin", age_days=2)
    file(root / "m_b.bin", age_days=40)
    proc = run(binary, root, prefix=False)
    assert proc.returncode == 0, proc.stderr
    assert left(root) == {"old_a.bin"}


def test_a_file_held_open_is_kept(binary: Path, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    held = file(root / "old_held.bin")
    file(root / "old_free.bin")
    with open(held, "rb"):  # an open fd anywhere: no write lease, so the file stays
        proc = run(binary, root)
    assert proc.returncode == 0, proc.stderr
    assert left(root) == {"old_held.bin"}
    assert "held 1" in proc.stdout


def test_no_symlink_is_followed(binary: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    target = file(outside / "old_target.bin", age_days=90)
    root = tmp_path / "tree"
    root.mkdir()
    (root / "old_link.bin").symlink_to(target)
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    proc = run(binary, root)
    assert proc.returncode == 0, proc.stderr
    assert target.exists()
    assert left(root) == {"old_link.bin", "dirlink"}  # symlinks are no regular files


def test_usage_errors(binary: Path, tmp_path: Path) -> None:
    assert subprocess.run([str(binary)], capture_output=True, check=False).returncode == 2
    bad = [str(binary), "--max-age-s=soon", str(tmp_path)]
    assert subprocess.run(bad, capture_output=True, check=False).returncode == 2


def test_the_probe_passes_on_this_filesystem(binary: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    assert floor.probe(binary, ws) is None
    assert not ws.made


def test_the_bench_reports_a_floor_that_deletes_the_wrong_files(tmp_path: Path) -> None:
    # A stand-in for the floor's binary that deletes every file of the tree it is given.
    wrong = tmp_path / "wrong-floor"
    wrong.write_text('#!/bin/sh\nfor root; do :; done\nexec find "$root" -type f -delete\n')
    wrong.chmod(0o755)
    ws = Workspace(tmp_path)
    res = Results(QUICK)
    mode = dataclasses.replace(QUICK, pause_s=0.0)
    passes(mode, ws, res, [(True, "a pass")], ["floor"], missing={}, n=60, reps=1, floor_bin=wrong)
    assert any("safe floor (C)" in p and p.startswith("§2") for p in res.problems), res.problems
    row = res.find("2", "safe floor (C)", "a pass")
    assert row is not None
    assert "wrongly deleted" in row.note
    assert not row.peer
