"""ocrd's private names: the name a file takes in its own directory while ocrd deletes it
(ocrd.ops.delete), made, told apart from a stranger's, and claimed without replacing anything.

A name is ``.ocrd-deleting-BOOT-PID-PROCESS-TOKEN``: the first 12 hex digits of the kernel's
boot id, the PID, 8 hex digits drawn once per process and 8 more drawn for each name. The PID
alone is not unique: every container's first process is PID 1, so two ocrds in two PID
namespaces on one directory would share ``.ocrd-deleting-1-0`` and each rename a file over
the other's. The random parts make a name no other process makes, on this host or another
sharing the filesystem, and one no one can guess before ocrd uses it. Guessing is not what
the safety rests on, though: a name is claimed with RENAME_NOREPLACE (claim), which fails on
any entry already there, so a squatter's entry is found and never replaced.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
from typing import NamedTuple

PREFIX = b".ocrd-deleting-"
FORMAT = re.compile(rb"\.ocrd-deleting-([0-9a-f]{12})-([0-9]{1,10})-([0-9a-f]{8})-([0-9a-f]{8})")
BOOT_ID = "/proc/sys/kernel/random/boot_id"


class Name(NamedTuple):
    """A private name taken apart."""

    boot: bytes
    pid: int
    process: bytes  # drawn once per process
    token: bytes  # drawn for this name


class _Process(NamedTuple):
    pid: int
    prefix: bytes  # b".ocrd-deleting-BOOT-PID-PROCESS-"


_made: list[_Process] = []  # this process's part of every name, made once
os.register_at_fork(after_in_child=_made.clear)  # a child is another process: its own part


def _boot() -> bytes:
    try:
        with open(BOOT_ID, "rb") as fh:
            boot = fh.read(64).strip().replace(b"-", b"")[:12].lower()
    except OSError:
        boot = b""
    if re.fullmatch(rb"[0-9a-f]{12}", boot) is None:
        # No /proc: a random stand-in is as unique; only "same boot" can no longer be told.
        boot = secrets.token_hex(6).encode()
    return boot


def _process() -> _Process:
    if not _made:
        pid = os.getpid()
        _made.append(_Process(pid, b"%s%s-%d-%s-" % (PREFIX, _boot(), pid, _token())))
    return _made[0]


def _token() -> bytes:
    return secrets.token_hex(4).encode()


def make() -> bytes:
    """A fresh private name of this process: never made before, by it or anyone."""
    return _process().prefix + _token()


def parse(name: bytes) -> Name | None:
    """The parts of ``name`` if it is in the format ocrd makes, else None."""
    m = FORMAT.fullmatch(name)
    if m is None:
        return None
    return Name(m[1], int(m[2]), m[3], m[4])


def looks_private(name: bytes) -> bool:
    """Named as if private: ocrd's own (parse) or someone's imitation. Neither is a model."""
    return name.startswith(PREFIX)


def is_mine(name: bytes) -> bool:
    """Whether ``name`` is one this very process made."""
    return name.startswith(_process().prefix) and parse(name) is not None


RENAME_NOREPLACE = 1  # linux/fs.h
_libc = ctypes.CDLL(None, use_errno=True)  # the C library python itself runs on
_renameat2 = getattr(_libc, "renameat2", None)  # glibc 2.28, musl 1.2.2
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    _renameat2.argtypes += [ctypes.c_uint]
    _renameat2.restype = ctypes.c_int


def claim(src_dir: int, src: bytes, dst_dir: int, dst: bytes) -> None:
    """Rename ``src`` to the private name ``dst`` only if nothing is there: FileExistsError
    if anything is (a file, a directory, a link, of anyone), which stays as it was.

    RENAME_NOREPLACE makes that one atomic step. Where it is missing (a C library without
    renameat2, a filesystem that refuses the flag), the name is looked up first and then
    renamed to: a squat made in between is then a directory (the rename fails) or a file
    the squatter made there a moment earlier, and the caller finds the stranger by inode."""
    if _renameat2 is not None:
        if _renameat2(src_dir, src, dst_dir, dst, RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), src, None, dst)
    try:
        os.stat(dst, dir_fd=dst_dir, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), src, None, dst)
