"""ocrd.fs.dirfds.DirFds on real directories: each component opened without following a link,
at most max_fds kept open, and a directory swapped or replaced after its first open refused,
also once its fd was closed."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocrd.base.errors import OtherFilesystem
from ocrd.fs.dirfds import DirFds
from ocrd.fs.place import pin
from tests.conftest import make_file


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def tree(models: Path) -> Path:
    for rel in (b"a/b/c/m.bin", b"a/x.bin", b"d/e/n.bin", b"f/o.bin"):
        make_file(models, rel)
    return models


@pytest.fixture
def dirs(tree: Path) -> Iterator[DirFds]:
    before = open_fds()
    with DirFds(pin(tree)) as d:
        yield d
    assert open_fds() == before, "DirFds left fds open"


def test_open_reaches_the_directory_at_the_path(tree: Path, dirs: DirFds) -> None:
    fd = dirs.open(b"a/b/c")
    assert sorted(os.listdir(fd)) == ["m.bin"]
    assert os.fstat(fd).st_ino == os.stat(tree / "a" / "b" / "c").st_ino
    assert dirs.open(b"") == dirs.root_fd


def test_at_most_max_fds_stay_open_least_recently_used_first_closed(tree: Path) -> None:
    with DirFds(pin(tree), max_fds=2) as dirs:
        dirs.open(b"a")
        dirs.open(b"d")
        dirs.open(b"f")
        assert list(dirs.fds) == [b"d", b"f"]
        dirs.open(b"d")  # used again: now the most recent
        dirs.open(b"a")
        assert list(dirs.fds) == [b"d", b"a"]
        # Every directory still opens, whatever was closed on the way.
        assert sorted(os.listdir(dirs.open(b"d/e"))) == ["n.bin"]


def test_a_directory_swapped_for_a_link_is_not_followed(tree: Path, dirs: DirFds) -> None:
    os.rename(tree / "d", tree / "d.away")
    os.symlink(tree / "a", tree / "d")
    with pytest.raises(OSError, match=r"Not a directory|Too many levels") as raised:
        dirs.open(b"d/e")
    assert raised.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert dirs.stat(b"d/e/n.bin") is None
    assert dirs.lstat(b"d/e/n.bin") is None


@pytest.mark.parametrize("evicted", [False, True], ids=["fd_open", "fd_closed"])
def test_a_directory_replaced_after_its_first_open_is_refused(tree: Path, evicted: bool) -> None:
    with DirFds(pin(tree), max_fds=2) as dirs:
        dirs.open(b"d")
        if evicted:
            dirs.open(b"a")
            dirs.open(b"f")
            assert b"d" not in dirs.fds
        os.rename(tree / "d", tree / "d.away")
        make_file(tree, b"d/e/n.bin", b"planted")
        with pytest.raises(OSError, match="replaced") as raised:
            dirs.open(b"d/e")
        assert raised.value.errno == errno.ESTALE


def test_stat_through_a_replaced_directory_is_none(tree: Path, dirs: DirFds) -> None:
    assert dirs.stat(b"d/e/n.bin") is not None
    os.rename(tree / "d", tree / "d.away")
    make_file(tree, b"d/e/n.bin", b"planted")
    assert dirs.stat(b"d/e/n.bin") is None


def test_parent_climbs_to_the_directory_seen_from_the_root(tree: Path, dirs: DirFds) -> None:
    deep = dirs.open(b"a/b/c")
    up = dirs.parent(b"a/b/c", deep)
    assert os.fstat(up).st_ino == os.stat(tree / "a" / "b").st_ino
    assert dirs.parent(b"a", dirs.open(b"a")) == dirs.root_fd


def test_lstat_is_a_fresh_entry_for_files_and_links_only(tree: Path, dirs: DirFds) -> None:
    os.symlink("x.bin", tree / "a" / "link")
    entry = dirs.lstat(b"a/x.bin")
    assert entry is not None
    assert entry.path == b"a/x.bin"
    assert dirs.lstat(b"a/link") is not None
    assert dirs.lstat(b"a/b") is None  # a directory
    assert dirs.lstat(b"a/none.bin") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root (CI runs as root)")
def test_a_filesystem_mounted_below_the_root_is_another_filesystem(tree: Path) -> None:
    mnt = tree / "f"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "inside").mkdir()
        with DirFds(pin(tree)) as dirs, pytest.raises(OtherFilesystem):
            dirs.open(b"f/inside")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
