"""The config file, read only when it can be trusted: a regular file, bounded in size and
depth, that nobody but root and the service's own user may change."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

from ocrd.base.errors import ConfigError
from ocrd.config.text import plain

MAX_BYTES = 1 << 20  # a real config is a few hundred bytes; this bounds what a wrong -c reads


MAX_DEPTH = 16  # tables and arrays inside each other; the schema itself needs 3


def read_trusted(path: Path, name: str) -> bytes:
    """The file's bytes, if it is a regular file (a symlink to one is fine) of at most MAX_BYTES.

    A FIFO would block the reader (and a daemon reloading it would stop answering signals), a
    device may never end (/dev/zero) or act on being opened: they are refused by stat() before
    any open(), and the opened file is checked again, so a swap in between is refused too.
    O_NONBLOCK makes even that racing open of a FIFO return at once."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError([_not_regular(name, st.st_mode)])
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError([_not_regular(name, st.st_mode)])
            untrusted = _untrusted(path, name, st)
            if untrusted:
                raise ConfigError(untrusted)
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_BYTES and (chunk := os.read(fd, MAX_BYTES + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror or exc}"]) from exc
    if size > MAX_BYTES:
        limit = MAX_BYTES >> 20
        raise ConfigError([f"{name}: larger than {limit} MiB: this is not an ocrd config file"])
    return b"".join(chunks)


def _untrusted(path: Path, name: str, st: os.stat_result) -> list[str]:
    """Why someone other than root and the user ocrd runs as could decide what it deletes
    (as sshd's StrictModes and logrotate refuse such files): the file is theirs, or they may
    write it, or they may replace it — a directory above it (as written, and as it resolves)
    that is theirs, or writable by group or others without the sticky bit (/tmp itself is fine
    for a file you own: the sticky bit keeps others from replacing it)."""
    me = os.geteuid()
    trusted = (0, me)
    problems = []
    if st.st_uid not in trusted:
        problems.append(
            f"{name}: owned by uid {st.st_uid}, neither root nor the user ocrd runs as "
            f"(uid {me}): its owner could make ocrd delete anything ocrd may; chown it"
        )
    if st.st_mode & 0o022:
        problems.append(
            f"{name}: writable by {writers(st.st_mode)} (mode {stat.S_IMODE(st.st_mode):04o}): "
            "anyone who may write it decides what ocrd deletes; chmod go-w it"
        )
    absolute = path.absolute()
    dirs = {*absolute.parents, *Path(os.path.realpath(absolute)).parents}
    for directory in sorted(dirs, key=lambda p: len(p.parts)):
        try:
            ds = os.stat(directory)
        except OSError:
            continue  # it resolved a moment ago; the open that follows will say what is wrong
        sticky = bool(ds.st_mode & stat.S_ISVTX)
        if ds.st_uid not in trusted:
            problems.append(
                f"{name}: the directory {plain(directory)} is owned by uid {ds.st_uid}, who "
                "could replace the file; move the config or chown the directory"
            )
        elif ds.st_mode & 0o022 and not sticky:
            problems.append(
                f"{name}: the directory {plain(directory)} is writable by "
                f"{writers(ds.st_mode)} without the sticky bit (mode "
                f"{stat.S_IMODE(ds.st_mode):04o}), so the file could be replaced; "
                "chmod go-w it or move the config"
            )
    return problems


def writers(mode: int) -> str:
    return " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if mode & bit)


SERVICE_USER = "ocrd"  # the user the shipped unit runs as (systemd/ocrd.sysusers)


def trusted_by() -> tuple[frozenset[int], frozenset[int]]:
    """The uids and gids that may write where ocrd writes: root, the user and group ocrd runs
    as, and the service user and its group (so that ``ocrd check`` run as root judges as the
    daemon will)."""
    uids, gids = {0, os.geteuid()}, {0, os.getegid()}
    with suppress(KeyError):
        service = pwd.getpwnam(SERVICE_USER)
        uids.add(service.pw_uid)
        gids.add(service.pw_gid)
    return frozenset(uids), frozenset(gids)


def writers_beyond(st: os.stat_result) -> str | None:
    """Who, besides root and ocrd's own user, may create, rename or remove entries in the
    directory ``st`` describes (and so plant a link or a file where ocrd writes), or None.
    A group may write only if it is root's or ocrd's own, with no other user in it; the
    sticky bit does not help: it stops no one from creating a name ocrd is about to use."""
    uids, gids = trusted_by()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in uids:
        return f"owned by uid {st.st_uid}, neither root nor ocrd's user"
    if mode & 0o002:
        return f"writable by others (mode {mode:04o})"
    if mode & 0o020:
        if st.st_gid not in gids:
            return f"writable by group {st.st_gid}, which is not ocrd's (mode {mode:04o})"
        if (other := _other_member(st.st_gid, uids)) is not None:
            return f"writable by group {st.st_gid}, which has {other} in it (mode {mode:04o})"
    return None


def _other_member(gid: int, uids: frozenset[int]) -> str | None:
    """A user in group ``gid`` (by the group's list, or as their own group) outside ``uids``."""
    try:
        members = grp.getgrgid(gid).gr_mem
    except KeyError:
        members = []
    for member in members:
        try:
            uid = pwd.getpwnam(member).pw_uid
        except KeyError:
            return f"the unknown user {member!r}"
        if uid not in uids:
            return f"user {member!r}"
    for user in pwd.getpwall():
        if user.pw_gid == gid and user.pw_uid not in uids:
            return f"user {user.pw_name!r}"
    return None


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _not_regular(name: str, mode: int) -> str:
    kind = _KINDS.get(stat.S_IFMT(mode), "not a file")
    return f"{name}: is {kind}, not a regular file: point -c or $OCRD_CONFIG at the config file"


def too_deep(name: str) -> str:
    return (
        f"{name}: arrays or tables nested more than {MAX_DEPTH} levels deep: "
        "an ocrd config needs 3 at most"
    )


def depth(value: object) -> int:
    """How many tables and arrays sit inside each other in ``value``; iterative, so any depth
    is measured without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Iterator[object] = iter(item.values())
        elif isinstance(item, list):
            children = iter(item)
        else:
            continue
        deepest = max(deepest, level + 1)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest
