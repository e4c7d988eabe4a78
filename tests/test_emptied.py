"""ocrd/ops/emptied.py: directories a pass emptied, removed deepest first, on real directories."""

from __future__ import annotations

import os
from pathlib import Path

from ocrd.fs.dirfds import DirFds
from ocrd.ops.emptied import remove_emptied


def run(model_dir: Path, emptied: set[bytes], *, stop: bool = False) -> None:
    dirs = DirFds(os.fsencode(model_dir))
    try:
        remove_emptied(dirs, emptied, lambda: stop)
    finally:
        dirs.close()


def test_an_emptied_chain_is_climbed_to_model_dir_which_stays(tmp_path: Path) -> None:
    (tmp_path / "a/b/c").mkdir(parents=True)
    run(tmp_path, {b"a/b/c"})
    assert tmp_path.is_dir()
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_still_holds_something_stays_with_its_parents(tmp_path: Path) -> None:
    (tmp_path / "a/b/c").mkdir(parents=True)
    (tmp_path / "a/b/keep.bin").write_bytes(b"x")
    run(tmp_path, {b"a/b/c"})
    assert not (tmp_path / "a/b/c").exists()
    assert (tmp_path / "a/b/keep.bin").is_file()


def test_a_parent_goes_once_its_last_emptied_child_has_gone(tmp_path: Path) -> None:
    (tmp_path / "a/x").mkdir(parents=True)
    (tmp_path / "a/y/z").mkdir(parents=True)
    run(tmp_path, {b"a/x", b"a/y/z"})
    assert list(tmp_path.iterdir()) == []


def test_only_directories_named_as_emptied_are_tried(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "untouched").mkdir()
    run(tmp_path, {b"a"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["untouched"]


def test_stop_removes_nothing_more(tmp_path: Path) -> None:
    (tmp_path / "a/b").mkdir(parents=True)
    run(tmp_path, {b"a/b"}, stop=True)
    assert (tmp_path / "a/b").is_dir()
