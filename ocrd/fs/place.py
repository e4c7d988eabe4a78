"""Where model_dir is and what counts as inside it: its pinned path, its filesystem and identity,
and the fd budget every walk shares."""

from __future__ import annotations

import ctypes
import errno
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from ocrd.base.errors import ModelDirMissing

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # below model_dir
# Components above model_dir are only passed through: O_PATH needs search permission, not read,
# as a path lookup does.
_PASS_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# -- the fd budget ------------------------------------------------------------------------------

RESERVED_FDS = 64
"""fds left for everything that is not a directory of a walk: stdio, the inotify instance and
its pipes, the notify socket, the .NET runtime's own, the in-use check's /proc reads."""
DIR_FD_HOLDERS = 6
"""Holders of directory fds at one time: a walk, the DirFds of the thread that deletes, the 3
threads ocrd.ops.fanout.FanOut may add (each with its own DirFds), and the watcher's walk."""
MAX_DIR_FDS = 256  # more buys nothing: a walk needs one per level of depth it keeps open


def fd_budget() -> int:
    """How many directory fds one walk or one DirFds may keep open: the soft RLIMIT_NOFILE,
    less what the rest of the process needs, shared by every holder that can run at once.
    Under ``ulimit -n 256`` that is 32 each; under systemd's 1024, 160."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_DIR_FDS
    return max(4, min(MAX_DIR_FDS, (soft - RESERVED_FDS) // DIR_FD_HOLDERS))


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd's default soft limit is 1024,
    its hard limit far higher); returns (before, after). Unchanged if the kernel refuses."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, hard


# -- where model_dir is -------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """model_dir as configured, and as resolved once (at load or reload): every later open
    goes to ``real`` without following a symlink at any component."""

    configured: bytes
    real: bytes

    def __str__(self) -> str:
        return os.fsdecode(self.real)


def pin(model_dir: os.PathLike[str] | str | bytes) -> Place:
    configured = os.path.abspath(os.fsencode(model_dir))
    return Place(configured, os.path.realpath(configured))


def open_root(model_dir: Place | os.PathLike[str] | str | bytes) -> int:
    """An fd on model_dir, reached from ``/`` one component at a time with O_NOFOLLOW, so a
    symlink put anywhere on the way (model_dir itself swapped for a link included) is refused
    as ModelDirMissing instead of followed. Pass a pinned Place (or a resolved path)."""
    path = model_dir.real if isinstance(model_dir, Place) else os.fsencode(model_dir)
    path = os.path.abspath(path)
    shown = os.fsdecode(path)
    parts = [p for p in path.split(b"/") if p]
    fd = os.open(b"/", _PASS_FLAGS if parts else DIR_FLAGS)
    try:
        for i, part in enumerate(parts):
            flags = DIR_FLAGS if i == len(parts) - 1 else _PASS_FLAGS
            try:
                next_fd = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError as exc:
                raise ModelDirMissing(f"{shown}: model_dir does not exist") from exc
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise ModelDirMissing(
                        f"{shown}: model_dir is not a directory reached without a symlink "
                        f"(at {os.fsdecode(part)!r}); ocrd acts only on the directory resolved "
                        "at load: a reload resolves it anew"
                    ) from exc
                raise
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


# -- what is on model_dir's filesystem ----------------------------------------------------------


class Identity(NamedTuple):
    """A directory's device and inode, and the id of the mount it is reached through (None
    where the kernel cannot say: then only the device is compared)."""

    dev: int
    ino: int
    mnt: int | None

    def crosses(self, boundary: Identity) -> bool:
        """On another filesystem than ``boundary``: another device (a btrfs subvolume too, as
        ``find -xdev`` sees it), or another mount of the same device (a bind mount)."""
        return self.dev != boundary.dev or (
            self.mnt is not None and boundary.mnt is not None and self.mnt != boundary.mnt
        )

    @property
    def device(self) -> str:
        return f"{os.major(self.dev)}:{os.minor(self.dev)}"


_AT_EMPTY_PATH = 0x1000
_STATX_INO = 0x100
_STATX_MNT_ID = 0x1000


def _load_statx() -> Callable[..., int] | None:
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):
        return None
    return fn


_statx = _load_statx()


def identify(fd: int) -> Identity:
    """The Identity of an open fd. The mount id comes from statx(2) (Linux 5.8+): st_dev
    alone cannot tell a bind mount of a directory on the same filesystem from the rest."""
    if _statx is not None:
        buf = (ctypes.c_char * 256)()
        if _statx(fd, b"", _AT_EMPTY_PATH, _STATX_INO | _STATX_MNT_ID, buf) == 0:
            raw = bytes(buf)
            mask = int.from_bytes(raw[0:4], "little")
            ino = int.from_bytes(raw[32:40], "little")
            dev = os.makedev(
                int.from_bytes(raw[136:140], "little"), int.from_bytes(raw[140:144], "little")
            )
            mnt = int.from_bytes(raw[144:152], "little") if mask & _STATX_MNT_ID else None
            return Identity(dev, ino, mnt)
    st = os.fstat(fd)
    return Identity(st.st_dev, st.st_ino, None)


def still_there(place: Place, root: Identity) -> None:
    """After a walk from model_dir's fd: the fd kept working even if the directory was
    removed, unmounted or swapped for a link meanwhile, so open its pinned path once more."""
    try:
        fd = open_root(place)
    except ModelDirMissing as exc:
        raise ModelDirMissing(f"{place}: model_dir vanished during the scan") from exc
    try:
        now = identify(fd)
    finally:
        os.close(fd)
    if now[:2] != root[:2]:
        raise ModelDirMissing(f"{place}: model_dir was replaced during the scan")
