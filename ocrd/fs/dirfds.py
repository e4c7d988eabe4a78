"""Opens directories under model_dir one O_NOFOLLOW component at a time, re-verifying each."""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict

from ocrd.base.errors import OtherFilesystem
from ocrd.fs.inventory import FileEntry, entry_from_stat
from ocrd.fs.place import DIR_FLAGS, Place, fd_budget, identify, open_root


class DirFds:
    """Directory fds keyed by relative path, each opened relative to its verified parent.

    At most ``max_fds`` (default: ocrd.fs.place.fd_budget()) stay open, least recently used closed
    first, so a pass over any number of directories fits any fd limit. The identity of every
    directory opened is remembered for the object's life: one re-opened after its fd was
    closed must be the very directory it was, or it is refused like a swapped one."""

    def __init__(self, root: Place | bytes | int, max_fds: int | None = None) -> None:
        """``root``: model_dir's pinned Place or resolved path, or an fd on it that this
        object takes over."""
        self.root_fd = root if isinstance(root, int) else open_root(root)
        self.boundary = identify(self.root_fd)
        self.max_fds = max(2, max_fds or fd_budget())
        self.fds: OrderedDict[bytes, int] = OrderedDict()  # below the root; LRU order
        # path → identity, read once at the first open(); kept after its fd is closed.
        self.ids: dict[bytes, tuple[int, int]] = {}

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        self.ids.clear()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def open(self, rel: bytes) -> int:
        """The fd of directory ``rel``, re-verified: each component must still be the very
        directory we opened before (a swap for a link or another directory makes ELOOP/ENOTDIR
        or a mismatch, and we refuse), and on model_dir's filesystem (OtherFilesystem)."""
        parent = self.root_fd
        walked = b""
        fds = self.fds
        for part in rel.split(b"/") if rel else ():
            walked = walked + b"/" + part if walked else part
            fd = fds.get(walked)
            if fd is not None:
                fds.move_to_end(walked)
                now = os.stat(part, dir_fd=parent, follow_symlinks=False)
                if (now.st_dev, now.st_ino) != self.ids[walked] or not stat.S_ISDIR(now.st_mode):
                    self.forget(walked)
                    raise OSError(errno.ESTALE, "directory was replaced", os.fsdecode(walked))
            else:
                fd = os.open(part, DIR_FLAGS, dir_fd=parent)
                ident = identify(fd)
                was = self.ids.get(walked)
                if ident.crosses(self.boundary) or (was is not None and was != ident[:2]):
                    os.close(fd)
                    self.forget(walked)
                    if was is None or was == ident[:2]:
                        raise OtherFilesystem(walked, ident.device)
                    raise OSError(errno.ESTALE, "directory was replaced", os.fsdecode(walked))
                self.ids[walked] = (ident.dev, ident.ino)
                fds[walked] = fd
                if len(fds) > self.max_fds:
                    # The least recently used is never ``parent``: that was just moved to the end.
                    _, old = fds.popitem(last=False)
                    os.close(old)
            parent = fd
        return parent

    def parent(self, rel: bytes, fd: int) -> int:
        """The fd of ``rel``'s parent, reached as ``..`` of ``fd`` (an fd this object gave for
        ``rel``) and checked to be the directory seen at that path from the root; else from
        the root, as open() does. One step up instead of a walk down, for climbing a chain."""
        parent_rel = rel.rpartition(b"/")[0]
        if not parent_rel:
            return self.root_fd
        was = self.ids.get(parent_rel)
        up = os.open("..", DIR_FLAGS, dir_fd=fd)
        ident = identify(up)
        if was is None or was != ident[:2] or ident.crosses(self.boundary):
            os.close(up)
            return self.open(parent_rel)
        old = self.fds.pop(parent_rel, None)
        if old is not None:
            os.close(old)
        self.fds[parent_rel] = up
        if len(self.fds) > self.max_fds:
            _, evicted = self.fds.popitem(last=False)
            os.close(evicted)
        return up

    def forget(self, rel: bytes) -> None:
        """Drop ``rel`` and whatever open fds lie below it (identities below it stay: a new
        directory at such a path is refused until the next pass, which is the safe side)."""
        self.ids.pop(rel, None)
        prefix = rel + b"/"
        for key in [k for k in self.fds if k == rel or k.startswith(prefix)]:
            os.close(self.fds.pop(key))

    def __enter__(self) -> DirFds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stat(self, rel: bytes) -> os.stat_result | None:
        """lstat of ``rel`` reached without following any link, or None if it is not there
        any more (or a directory on its way is no longer a real directory)."""
        parent_rel, _, name = rel.rpartition(b"/")
        try:
            return os.stat(name, dir_fd=self.open(parent_rel), follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ESTALE):
                return None
            raise

    def lstat(self, rel: bytes) -> FileEntry | None:
        """A fresh FileEntry for ``rel`` if it is a regular file or a symlink, else None."""
        s = self.stat(rel)
        if s is None or not (stat.S_ISREG(s.st_mode) or stat.S_ISLNK(s.st_mode)):
            return None
        return entry_from_stat(rel, s)
