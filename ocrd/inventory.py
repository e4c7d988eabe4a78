"""Walks model_dir without following symlinks and records what each file is, as plain values."""

from __future__ import annotations

import gc
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

from ocrd.rootdir import (
    DIR_FLAGS,
    Identity,
    ModelDirMissing,
    Place,
    identify,
    open_root,
    pin,
    walk_dirs,
)

__all__ = ["DIR_FLAGS", "FileEntry", "Inventory", "ModelDirMissing", "open_root", "scan", "walk"]


class FileEntry(NamedTuple):
    """One file under model_dir. ``path`` is relative, as the bytes the kernel gave us.

    A NamedTuple, not a dataclass: the daemon keeps one per model file, and a tuple is both the
    cheapest to build on a 100k-file scan and the smallest to hold.
    """

    path: bytes
    size: int
    mtime: float
    atime: float
    ctime: float
    dev: int
    ino: int
    is_link: bool

    @property
    def name(self) -> bytes:
        return self.path.rpartition(b"/")[2]

    @property
    def text(self) -> str:
        """The path as text for matching; undecodable bytes survive as surrogates."""
        return os.fsdecode(self.path)


@dataclass(frozen=True)
class Inventory:
    """Everything under model_dir at one moment, plus the places the walk could not read."""

    files: tuple[FileEntry, ...]
    unreadable: tuple[tuple[bytes, str], ...] = field(default=())
    # Every directory walked (model_dir itself as b""), with its inode: what a watch must cover.
    dirs: tuple[tuple[bytes, int], ...] = field(default=())
    # Directories not entered because they are on another filesystem: (path, device).
    mounts: tuple[tuple[bytes, str], ...] = field(default=())

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files if not f.is_link)

    @property
    def file_count(self) -> int:
        return sum(1 for f in self.files if not f.is_link)


def scan(model_dir: Place | os.PathLike[str] | str | bytes) -> Inventory:
    """Walk ``model_dir`` recursively; symlinks are recorded, never followed.

    The walk goes from directory file descriptors, each subdirectory opened with O_NOFOLLOW
    relative to its parent, so a directory swapped for a symlink mid-walk is not entered (it
    ends up unread, not listed from outside), and a directory on another filesystem is not
    entered at all (it is listed in ``mounts``). A path is pinned (resolved) here, once.
    """
    place = model_dir if isinstance(model_dir, Place) else pin(model_dir)
    fd = open_root(place)
    root = identify(fd)
    inventory = walk(fd)
    still_there(place, root)
    return inventory


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


def walk(
    root_fd: int,
    *,
    boundary: Identity | None = None,
    tick: Callable[[], bool] | None = None,
) -> Inventory:
    """The walk behind scan(), from an open directory fd, which it closes. Paths are relative
    to that directory; the daemon uses it for a subtree reached through verified fds, with
    model_dir's ``boundary``."""
    unreadable: list[tuple[bytes, str]] = []
    dirs: list[tuple[bytes, int]] = []
    mounts: list[tuple[bytes, str]] = []
    with collecting_paused():
        files = [
            f
            for batch in walk_batches(
                root_fd, unreadable, dirs, boundary=boundary, mounts=mounts, tick=tick
            )
            for f in batch
        ]
    return Inventory(tuple(files), tuple(unreadable), tuple(dirs), tuple(mounts))


@contextmanager
def collecting_paused() -> Iterator[None]:
    """The cyclic garbage collector off while records are made by the hundred thousand: they
    hold no cycles, yet each 700 new ones start a collection that looks at all the young ones
    (about a tenth of a scan's time). Left off if it was off."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def walk_batches(
    root_fd: int,
    unreadable: list[tuple[bytes, str]],
    dirs: list[tuple[bytes, int]],
    *,
    boundary: Identity | None = None,
    mounts: list[tuple[bytes, str]] | None = None,
    tick: Callable[[], bool] | None = None,
) -> Iterator[list[FileEntry]]:
    """The walk, one directory's files at a time, so a caller can plan and drop them as it
    goes instead of holding a record per file of the whole tree (the daemon's full pass).
    Closes ``root_fd``; appends to ``unreadable``, ``dirs`` and ``mounts`` as it goes; calls
    ``tick`` between directories (rootdir.walk_dirs: no recursion, fds bounded, one filesystem).
    """
    is_reg, is_lnk = stat.S_ISREG, stat.S_ISLNK
    fsencode = os.fsencode
    # This runs once per file of every scan, so the record is built the quickest way Python
    # has: each name encoded as os.fsencode would (minus its checks), the tuple made without
    # FileEntry's keyword-parsing __new__. bench/RESULTS.md §1 measures what that buys.
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    record = tuple.__new__
    for here in walk_dirs(
        root_fd, boundary=boundary, unreadable=unreadable, mounts=mounts, tick=tick
    ):
        dirs.append((here.path, here.ino))
        prefix = here.path + b"/" if here.path else b""
        subdirs = here.subdirs
        files: list[FileEntry] = []
        append = files.append
        try:
            with os.scandir(here.fd) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            subdirs.append(entry.name)
                            continue
                        s = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # gone between readdir and stat: not ours to judge now
                    except OSError as exc:
                        rel = prefix + fsencode(entry.name)
                        unreadable.append((rel, exc.strerror or str(exc)))
                        continue
                    mode = s.st_mode
                    if is_reg(mode) or is_lnk(mode):
                        append(
                            record(
                                FileEntry,
                                (
                                    prefix + entry.name.encode(encoding, errors),
                                    s.st_size,
                                    s.st_mtime,
                                    s.st_atime,
                                    s.st_ctime,
                                    s.st_dev,
                                    s.st_ino,
                                    is_lnk(mode),
                                ),
                            )
                        )
        except OSError as exc:
            unreadable.append((here.path, exc.strerror or str(exc)))
        if files:
            yield files


def display(path: bytes) -> str:
    """One unambiguous line for any file name: ``\\`` doubled, ``\\n``, ``\\t``; bytes that are
    not UTF-8 and ASCII control characters written as ``\\xNN``; any other character that does
    not print as ``\\uNNNN`` or ``\\UNNNNNNNN``. Plain names print unchanged."""
    text = path.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif not ch.isprintable():
            # \xNN is kept for ASCII: from 0x80 up it already means "a byte that is not UTF-8", so
            # U+0085 and the lone byte 0x85 must not both print as \x85; and a fixed width per
            # escape keeps U+E000 followed by "1" apart from U+E0001.
            if code < 0x80:
                out.append(f"\\x{code:02x}")
            elif code <= 0xFFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)
