"""The directory walk under model_dir: depth first, without recursion, never following a
symlink, staying on model_dir's filesystem, with a bounded number of directory fds."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from ocrd.base.errors import Stopped
from ocrd.fs.place import DIR_FLAGS, Identity, fd_budget, identify


class Dir:
    """One directory of a walk: ``fd`` is open while the caller holds it; the caller puts the
    names of the subdirectories to visit in ``subdirs``."""

    __slots__ = ("fd", "ino", "path", "subdirs")

    def __init__(self, fd: int, path: bytes, ino: int) -> None:
        self.fd = fd
        self.path = path  # relative to the walk's root, b"" for the root itself
        self.ino = ino
        self.subdirs: list[str] = []


class _Frame:
    __slots__ = ("fd", "ident", "name", "path", "pending")

    def __init__(self, fd: int, path: bytes, name: str, ident: Identity, pending: list[str]):
        self.fd = fd
        self.path = path
        self.name = name
        self.ident = ident
        self.pending = pending


def walk_dirs(
    root_fd: int,
    *,
    boundary: Identity | None = None,
    unreadable: list[tuple[bytes, str]] | None = None,
    mounts: list[tuple[bytes, str]] | None = None,
    tick: Callable[[], bool] | None = None,
    max_fds: int | None = None,
) -> Iterator[Dir]:
    """Depth first from ``root_fd`` (which it closes), without recursion and without following
    a symlink: each subdirectory is opened O_NOFOLLOW relative to its parent's fd.

    - A directory on another filesystem than ``boundary`` (default: the root's) is not entered:
      it goes to ``mounts`` as (path, device).
    - At most ``max_fds`` directory fds are open (default: fd_budget()); deeper levels close
      their ancestors' fds, and an ancestor is reopened through ``..`` of its child, checked to
      be the very directory (device and inode) it was, or else from the root, component by
      component, each checked alike. One that changed meanwhile is left unread.
    - ``tick`` is called between directories; when it returns True the walk raises Stopped.
    """
    unreadable = unreadable if unreadable is not None else []
    mounts = mounts if mounts is not None else []
    limit = max(2, max_fds or fd_budget())
    stack: list[_Frame] = []
    low = 1  # stack[low:] have open fds; stack[1:low] were closed to keep within the limit
    fd = root_fd
    try:
        ident = identify(fd)
        boundary = boundary or ident
        path, name = b"", ""
        while True:
            here = Dir(fd, path, ident.ino)
            yield here
            stack.append(_Frame(fd, path, name, ident, here.subdirs))
            fd = -1
            if len(stack) - low + 1 > limit:
                stack[low].fd, old = -1, stack[low].fd
                os.close(old)
                low += 1
            if tick is not None and tick():
                raise Stopped("stopped between directories")
            while stack:
                top = stack[-1]
                if not top.pending:
                    stack.pop()
                    low = min(low, len(stack))
                    if stack and stack[-1].fd < 0:
                        _reopen(stack, top.fd, unreadable)
                        low = len(stack) - 1
                    if top.fd != root_fd:
                        os.close(top.fd)
                    continue
                name = top.pending.pop()
                path = top.path + b"/" + os.fsencode(name) if top.path else os.fsencode(name)
                try:
                    fd = os.open(name, DIR_FLAGS, dir_fd=top.fd)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # removed, or swapped for a non-directory, since readdir
                except OSError as exc:  # ELOOP: swapped for a link, never followed
                    unreadable.append((path, exc.strerror or str(exc)))
                    continue
                ident = identify(fd)
                if ident.crosses(boundary):
                    os.close(fd)
                    fd = -1
                    mounts.append((path, ident.device))
                    continue
                break
            if fd < 0:
                break
    finally:
        for frame in stack:
            if frame.fd >= 0 and frame.fd != root_fd:
                os.close(frame.fd)
        if fd >= 0 and fd != root_fd:
            os.close(fd)
        os.close(root_fd)


def _reopen(stack: list[_Frame], child_fd: int, unreadable: list[tuple[bytes, str]]) -> None:
    """Give the top frame, whose fd was closed, an fd on the very directory it was."""
    top = stack[-1]
    try:
        fd = os.open("..", DIR_FLAGS, dir_fd=child_fd)
    except OSError:
        fd = -1
    if fd >= 0 and identify(fd)[:2] != top.ident[:2]:
        os.close(fd)  # the child was moved elsewhere: its ".." is not our directory
        fd = -1
    if fd < 0:
        fd = _reopen_from_root(stack)
    if fd < 0:
        unreadable.append((top.path, "directory was replaced during the walk"))
        top.pending.clear()
        fd = os.dup(stack[0].fd)  # a placeholder closed with the frame; nothing is read
    top.fd = fd


def _reopen_from_root(stack: list[_Frame]) -> int:
    parent = stack[0].fd
    opened = -1
    for frame in stack[1:]:
        try:
            fd = os.open(frame.name, DIR_FLAGS, dir_fd=parent)
        except OSError:
            fd = -1
        if opened >= 0:
            os.close(opened)
        if fd < 0:
            return -1
        if identify(fd)[:2] != frame.ident[:2]:
            os.close(fd)
            return -1
        opened = parent = fd
    return opened
