"""Walks model_dir without following symlinks and records what each file is, as plain values."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from ocrd.errors import OcrdError


class ModelDirMissing(OcrdError):
    """model_dir is gone (unmounted, removed); nothing may be deleted until it returns."""


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

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files if not f.is_link)

    @property
    def file_count(self) -> int:
        return sum(1 for f in self.files if not f.is_link)


def scan(model_dir: os.PathLike[str] | str | bytes) -> Inventory:
    """Walk ``model_dir`` recursively with os.scandir; symlinks are recorded, never followed."""
    root = os.fsencode(model_dir)
    try:
        st = os.stat(root)
    except (FileNotFoundError, NotADirectoryError) as exc:  # ENOTDIR: a parent became a file
        raise ModelDirMissing(f"{os.fsdecode(root)}: model_dir does not exist") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ModelDirMissing(f"{os.fsdecode(root)}: model_dir is not a directory")
    files: list[FileEntry] = []
    unreadable: list[tuple[bytes, str]] = []
    for entry, rel in _walk(root, b"", unreadable):
        try:
            s = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # gone between readdir and stat: not ours to judge any more
        except OSError as exc:
            unreadable.append((rel, exc.strerror or str(exc)))
            continue
        mode = s.st_mode
        if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            files.append(
                FileEntry(
                    rel,
                    s.st_size,
                    s.st_mtime,
                    s.st_atime,
                    s.st_ctime,
                    s.st_dev,
                    s.st_ino,
                    stat.S_ISLNK(mode),
                )
            )
    if not os.path.isdir(root):
        raise ModelDirMissing(f"{os.fsdecode(root)}: model_dir vanished during the scan")
    return Inventory(tuple(files), tuple(unreadable))


def _walk(
    root: bytes, prefix: bytes, unreadable: list[tuple[bytes, str]]
) -> Iterator[tuple[os.DirEntry[bytes], bytes]]:
    stack = [prefix]
    while stack:
        rel = stack.pop()
        try:
            it = os.scandir(os.path.join(root, rel) if rel else root)
        except FileNotFoundError:
            continue
        except OSError as exc:
            unreadable.append((rel, exc.strerror or str(exc)))
            continue
        with it:
            for entry in it:
                child = rel + b"/" + entry.name if rel else entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if is_dir:
                    stack.append(child)
                else:
                    yield entry, child


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
