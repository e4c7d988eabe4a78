"""A fresh ext4 filesystem for §2: an image file in a scratch dir of the bench's workspace, made
with ``mkfs.ext4``, attached with ``losetup`` and mounted with ext4's defaults, that is without
``discard`` (Debian's default mount of ext4: freed blocks are not discarded one unlink at a time,
so ``unlink`` does not wait on the device). Unmounted, detached and removed afterwards.

Needs root and mkfs.ext4, losetup, mount, umount and findmnt; ``unavailable()`` says why not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.workspace import Workspace

TOOLS = ("mkfs.ext4", "losetup", "mount", "umount", "findmnt")
LABEL = "on ext4 without discard (loop image)"  # in the measure of its §2 rows
BLOCK = 4096  # mkfs.ext4's block size for any image this big


@dataclass(frozen=True)
class Ext4:
    mnt: Path
    options: str  # the mount options, as findmnt shows them


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def unavailable() -> str | None:
    """None when an ext4 loop image can be made here, else why not."""
    if os.geteuid() != 0:
        return "not run as root (a loop mount needs root)"
    missing = [tool for tool in TOOLS if _which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    return None


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()[:200]}")
    return proc.stdout.strip()


@contextmanager
def ext4_loop(ws: Workspace, files: int, dirs: int) -> Iterator[Ext4]:
    """Mount a fresh ext4 image big enough for a tree of ``files`` small files in ``dirs``
    directories (one block each, twice over: a tree and the one a tool is deleting may not
    both be there, but the image is sparse, so room costs nothing). Raises OSError when a
    step fails; whatever was set up is taken down again."""
    home = ws.fresh("ext4")
    image, mnt = home / "ext4.img", home / "mnt"
    mnt.mkdir()
    size = max(64 << 20, 2 * (files + dirs) * BLOCK + (64 << 20))
    with open(image, "wb") as fh:
        fh.truncate(size)
    device = None
    mounted = False
    try:
        # Inode tables and journal written now (no lazy init: the kernel's ext4lazyinit thread
        # would write them during the timed passes); no discard of the fresh image by mkfs.
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-N",
                str(2 * (files + dirs) + 1024),
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
                str(image),
            ]
        )
        device = _run(["losetup", "--find", "--show", str(image)])
        _run(["mount", "-t", "ext4", device, str(mnt)])
        mounted = True
        options = _run(["findmnt", "-n", "-o", "OPTIONS", str(mnt)])
        if "discard" in options.split(",") and "nodiscard" not in options.split(","):
            raise OSError(f"{mnt} came up with discard ({options})")
        yield Ext4(mnt, options)
    finally:
        if mounted:
            os.sync()
            proc = subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
            if proc.returncode != 0:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
        if device is not None:
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        if not os.path.ismount(mnt):
            ws.remove(home)
