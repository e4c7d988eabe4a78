"""What model_dir holds, as plain values: a FileEntry per file, the Inventory of one walk, and
display() for any file name. No I/O here: the walker (ocrd.fs.scan) and the daemon's mirror make
these values, the planner and everyone else read them."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple


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
    # The owner's uid: whose word a file is when it ranks another (ocrd.rules.trust). Entries made
    # by hand (tests) default to root's.
    uid: int = 0

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
    directories: tuple[tuple[bytes, int], ...] = field(default=())
    # Directories not entered because they are on another filesystem: (path, device).
    mounts: tuple[tuple[bytes, str], ...] = field(default=())

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files if not f.is_link)

    @property
    def file_count(self) -> int:
        return sum(1 for f in self.files if not f.is_link)


def display(path: bytes) -> str:
    """One unambiguous line for any file name: ``\\`` doubled, ``\\n``, ``\\t``; bytes that are
    not UTF-8 and ASCII control characters written as ``\\xNN``; any other character that does
    not print as ``\\uNNNN`` or ``\\UNNNNNNNN``. Plain names print unchanged."""
    return display_text(path.decode("utf-8", "surrogateescape"))


def display_all(paths: Sequence[bytes]) -> list[str]:
    """``[display(p) for p in paths]``, in a few calls over all of them at once when every
    name is plain (printable, no backslash): a report of 55k deleted files. The paths are
    joined with NUL, which no file name holds, so a byte sequence cut at the end of one path
    cannot join the next one's into a character; any other name sends all of them through
    display() one by one."""
    if not paths:
        return []
    text = b"\0".join(paths).decode("utf-8", "surrogateescape")
    parts = text.split("\0")
    if len(parts) == len(paths) and "\\" not in text and all(map(str.isprintable, parts)):
        return parts
    return [display(p) for p in paths]


def display_text(text: str) -> str:
    """display() for a name already decoded (undecodable bytes as surrogates, as os.fsdecode
    leaves them): a family's name, cut from a path."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(ch, backslash=True) for ch in text)


def printable(text: str) -> str:
    """``text`` with every character that does not print escaped as display() escapes it,
    and backslashes left as they are: for a line built of names display()ed already (a
    reason), so that nothing in it reaches a terminal raw or starts a line of its own."""
    if text.isprintable():
        return text
    return "".join(_escape(ch, backslash=False) for ch in text)


def _escape(ch: str, *, backslash: bool) -> str:
    code = ord(ch)
    if ch == "\\":
        return "\\\\" if backslash else ch
    if ch == "\n":
        return "\\n"
    if ch == "\t":
        return "\\t"
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if ch.isprintable():
        return ch
    # \xNN is kept for ASCII: from 0x80 up it already means "a byte that is not UTF-8", so
    # U+0085 and the lone byte 0x85 must not both print as \x85; and a fixed width per escape
    # keeps U+E000 followed by "1" apart from U+E0001.
    if code < 0x80:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def entry_from_stat(rel: bytes, s: os.stat_result) -> FileEntry:
    """The FileEntry for ``rel``, from its lstat."""
    return FileEntry(
        rel,
        s.st_size,
        s.st_mtime,
        s.st_atime,
        s.st_ctime,
        s.st_dev,
        s.st_ino,
        stat.S_ISLNK(s.st_mode),
        s.st_uid,
    )
