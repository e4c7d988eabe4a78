"""The walk (ocrd.fs.walk.walk_dirs) on real directories: every directory once, no link
followed, within its fd budget at any depth, stopped between directories, other filesystems
listed and left alone."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocrd.base.errors import Stopped
from ocrd.fs.place import open_root, pin
from ocrd.fs.walk import walk_dirs
from tests.conftest import make_file


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def walk(root: Path, **kw: object) -> Iterator[bytes]:
    """The paths walk_dirs yields, each directory's subdirectories (not links) queued in
    name order, as the scanner does."""
    for d in walk_dirs(open_root(pin(root)), **kw):  # type: ignore[arg-type]
        d.subdirs = sorted(
            (e.name for e in os.scandir(d.fd) if e.is_dir(follow_symlinks=False)), reverse=True
        )
        yield d.path


def test_every_directory_once_depth_first_and_no_fd_left(models: Path) -> None:
    for rel in (b"a/b/m.bin", b"a/c/m.bin", b"d/m.bin", b"e/f/g/m.bin"):
        make_file(models, rel)
    before = open_fds()
    assert list(walk(models)) == [b"", b"a", b"a/b", b"a/c", b"d", b"e", b"e/f", b"e/f/g"]
    assert open_fds() == before


@pytest.mark.parametrize("max_fds", [2, 3])
def test_a_deep_tree_is_walked_whole_within_a_small_fd_budget(models: Path, max_fds: int) -> None:
    depth = 40
    chain = b"/".join(b"d%02d" % i for i in range(depth))
    make_file(models, chain + b"/m.bin")
    make_file(models, b"d00/d01/side/m.bin")  # a branch left behind while deeper levels close
    seen: list[bytes] = []
    most = 0
    before = len(open_fds())
    for path in walk(models, max_fds=max_fds):
        seen.append(path)
        most = max(most, len(open_fds()) - before)
    assert len(seen) == depth + 2
    assert seen[-1] == b"d00/d01/side"  # reached through reopened ancestors
    assert most <= max_fds + 1  # the budget, plus the fd scandir() holds while it reads


def test_a_link_to_a_directory_is_never_entered(models: Path, tmp_path: Path) -> None:
    make_file(tmp_path, b"elsewhere/secret.bin")
    os.symlink(tmp_path / "elsewhere", models / "link")
    make_file(models, b"real/m.bin")
    assert list(walk(models)) == [b"", b"real"]


def test_a_directory_swapped_for_a_link_after_readdir_is_not_followed(
    models: Path, tmp_path: Path
) -> None:
    make_file(models, b"a/m.bin")
    make_file(tmp_path, b"elsewhere/b/m.bin")
    unreadable: list[tuple[bytes, str]] = []
    seen = []
    for d in walk_dirs(open_root(pin(models)), unreadable=unreadable):
        seen.append(d.path)
        if d.path == b"":
            d.subdirs = ["a"]
            os.rename(models / "a", tmp_path / "a.away")  # between readdir and open
            os.symlink(tmp_path / "elsewhere", models / "a")
    assert seen == [b""]  # a/b, through the link, is never reached
    # O_DIRECTORY | O_NOFOLLOW on a link fails with ENOTDIR here (skipped, as a directory
    # swapped for a file is) or ELOOP (listed as unreadable); never followed either way.
    assert [path for path, _ in unreadable] in ([], [b"a"])


def test_tick_stops_the_walk_between_directories(models: Path) -> None:
    for rel in (b"a/m.bin", b"b/m.bin", b"c/m.bin"):
        make_file(models, rel)
    before = open_fds()
    ticks = 0

    def tick() -> bool:
        nonlocal ticks
        ticks += 1
        return ticks == 2

    seen: list[bytes] = []
    with pytest.raises(Stopped):
        seen.extend(walk(models, tick=tick))  # item by item: what came before is kept
    assert seen == [b"", b"a"]
    assert open_fds() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root (CI runs as root)")
def test_another_filesystem_below_is_listed_not_entered(models: Path) -> None:
    mnt = models / "mnt"
    make_file(models, b"mnt/under.bin")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        make_file(models, b"mnt/inside/m.bin")
        mounts: list[tuple[bytes, str]] = []
        assert list(walk(models, mounts=mounts)) == [b""]
        [(path, device)] = mounts
        assert path == b"mnt"
        st = os.stat(mnt)
        assert device == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
