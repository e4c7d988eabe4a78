"""The bench's ext4 image for §2 (bench/loopfs.py): mounted without discard, a real ext4 with
room for the tree it is made for, and gone afterwards: unmounted, detached, removed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench import loopfs
from bench.tree import count_files, generate
from bench.workspace import Workspace
from ocrd.fs.procfs import filesystem_type

pytestmark = pytest.mark.skipif(
    loopfs.unavailable() is not None, reason=f"no ext4 loop image: {loopfs.unavailable()}"
)


def test_a_fresh_ext4_without_discard_holds_the_tree_and_is_gone_after(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    with loopfs.ext4_loop(ws, 3000, 100) as fs:
        assert filesystem_type(os.fsencode(fs.mnt)) == "ext4"
        assert "discard" not in fs.options.split(",")
        device = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(fs.mnt)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert device.startswith("/dev/loop")
        inner = Workspace(fs.mnt)
        tree = generate(inner.fresh("t") / "tree", 3000)
        assert len(count_files(tree.root)) == 3000
        inner.close()
    assert not ws.made
    assert not list(tmp_path.iterdir())
    listed = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    assert device + ":" not in listed
