"""The one reader of procfs's mount table and fd descriptions: /proc/PID/mountinfo (where each
mount is, its id, device, filesystem type and options) and /proc/PID/fdinfo/N (an fd's mount
and inode, an inotify fd's watches). The in-use fallback (ocrd.fs.holders), the watch
(ocrd.watch.mirror) and the config's atime check (ocrd.config.schema) all read through it."""

from __future__ import annotations

import os
import re
from typing import NamedTuple

_OCTAL = re.compile(rb"\\([0-7]{3})")


class MountLine(NamedTuple):
    """One line of a mountinfo file, as far as it could be read: ``mnt_id`` and ``device``
    (None where they do not parse), ``point`` and ``options`` (None where the line has too few
    fields), ``fstype`` (None where the line has no " - " part)."""

    mnt_id: int | None
    device: int | None
    point: bytes | None
    options: frozenset[str] | None
    fstype: bytes | None


def mountinfo(path: str = "/proc/self/mountinfo") -> list[MountLine] | None:
    """Every line of a mountinfo file, in mount order; None if unreadable."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return [m for line in data.splitlines() if (m := _line(line)) is not None]


def _line(line: bytes) -> MountLine | None:
    # "ID PARENT MAJ:MIN ROOT POINT OPTIONS [optional fields] - FSTYPE SOURCE SUPER-OPTIONS"
    left, _, right = line.partition(b" - ")
    fields = left.split()
    if len(fields) < 3:
        return None
    mnt_id = device = None
    major, _, minor = fields[2].partition(b":")
    try:
        mnt_id = int(fields[0])
        device = os.makedev(int(major), int(minor))
    except ValueError:
        mnt_id = device = None
    point = options = None
    if len(fields) >= 6:
        # The kernel escapes space, tab, newline and backslash as \ooo.
        point = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4])
        options = frozenset(fields[5].decode(errors="replace").split(","))
    after = right.split(None, 1)
    return MountLine(mnt_id, device, point, options, after[0] if after else None)


class Mount(NamedTuple):
    """One mount of this process: where, what filesystem, the per-mount options."""

    point: bytes
    fstype: str
    options: frozenset[str]

    @property
    def atime(self) -> str:
        """How this mount updates atime: "noatime", "relatime" or "strictatime"."""
        for mode in ("noatime", "relatime"):
            if mode in self.options:
                return mode
        return "strictatime"


def mounts() -> list[Mount] | None:
    """Every mount of /proc/self/mountinfo, in mount order; None if unreadable."""
    lines = mountinfo()
    if lines is None:
        return None
    return [
        Mount(m.point, m.fstype.decode(errors="replace"), m.options)
        for m in lines
        if m.point is not None and m.options is not None and m.fstype is not None
    ]


def mount_of(path: bytes) -> Mount | None:
    """The mount holding ``path`` (after realpath): the longest matching mount point, the last
    one mounted if several share it. None if unreadable."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in mounts() or ():
        inside = real == m.point or real.startswith(m.point.rstrip(b"/") + b"/")
        if inside and (best is None or len(m.point) >= len(best.point)):
            best = m
    return best


def mounts_below(path: bytes) -> list[bytes] | None:
    """Mount points strictly inside ``path`` (resolved), relative to it; None if unreadable."""
    found = mounts()
    if found is None:
        return None
    top = path.rstrip(b"/") + b"/"
    return sorted({m.point[len(top) :] for m in found if m.point.startswith(top)})


def filesystem_type(path: bytes) -> str | None:
    """The type of the filesystem holding ``path``, from /proc/self/mountinfo (longest match)."""
    mount = mount_of(path)
    return mount.fstype if mount else None


def fdinfo(base: str, fd: int | str) -> bytes:
    """The text of ``base``/fdinfo/``fd`` (``base``: /proc/PID); raises what open() raises."""
    with open(f"{base}/fdinfo/{fd}", "rb") as fh:
        return fh.read()


def mnt_ino(info: bytes) -> tuple[int, int] | None:
    """(mnt_id, ino) from the text of /proc/PID/fdinfo/N; None where it lacks them (kernels
    before 5.14 have no ``ino:`` line)."""
    mnt_id = ino = None
    for line in info.splitlines():
        if line.startswith(b"mnt_id:"):
            mnt_id = int(line[7:])
        elif line.startswith(b"ino:"):
            ino = int(line[4:])
    return None if mnt_id is None or ino is None else (mnt_id, ino)


def watched_inodes() -> set[int] | None:
    """Inodes of every directory this process has an inotify watch on, from
    /proc/self/fdinfo; None where that cannot be read.

    watchdog logs (and otherwise drops) the ENOSPC of a watch it could not add below the root
    once it runs (the max_user_watches limit): the directory is then unwatched. Comparing this
    set with the directories a scan found is how the mirror notices.
    """
    found: set[int] = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            info = fdinfo("/proc/self", fd)
        except OSError:
            continue  # closed meanwhile (listdir's own fd, for one)
        for line in info.splitlines():
            if line.startswith(b"inotify wd:"):
                for part in line.split():
                    if part.startswith(b"ino:"):
                        found.add(int(part[4:], 16))
    return found
