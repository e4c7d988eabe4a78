"""Opens directories under model_dir one O_NOFOLLOW component at a time, re-verifying each."""

from __future__ import annotations

import errno
import os
import stat

from ocrd.inventory import DIR_FLAGS, FileEntry, open_root


class DirFds:
    """Directory fds keyed by relative path, each opened relative to its verified parent."""

    def __init__(self, root: bytes | int) -> None:
        """``root``: model_dir's path, or an fd on it that this object takes over."""
        self.root_fd = root if isinstance(root, int) else open_root(root)
        self.fds: dict[bytes, int] = {b"": self.root_fd}
        # An fd refers to the same inode for life, so its identity is read once, at open().
        self.ids: dict[int, tuple[int, int]] = {}

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        self.ids.clear()

    def open(self, rel: bytes) -> int:
        """The fd of directory ``rel``, re-verified: each component must still be the very
        directory we opened before (a swap for a link or another directory makes ELOOP/ENOTDIR
        or a mismatch, and we refuse)."""
        parent = self.root_fd
        walked = b""
        for part in rel.split(b"/") if rel else ():
            walked = walked + b"/" + part if walked else part
            fd = self.fds.get(walked)
            if fd is not None:
                now = os.stat(part, dir_fd=parent, follow_symlinks=False)
                if (now.st_dev, now.st_ino) != self.ids[fd] or not stat.S_ISDIR(now.st_mode):
                    self.forget(walked)
                    raise OSError(errno.ESTALE, "directory was replaced", os.fsdecode(walked))
            else:
                fd = os.open(part, DIR_FLAGS, dir_fd=parent)
                self.fds[walked] = fd
                was = os.fstat(fd)
                self.ids[fd] = (was.st_dev, was.st_ino)
            parent = fd
        return parent

    def forget(self, rel: bytes) -> None:
        for key in [k for k in self.fds if k == rel or k.startswith(rel + b"/")]:
            fd = self.fds.pop(key)
            self.ids.pop(fd, None)
            os.close(fd)

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


def entry_from_stat(rel: bytes, s: os.stat_result) -> FileEntry:
    return FileEntry(
        rel,
        s.st_size,
        s.st_mtime,
        s.st_atime,
        s.st_ctime,
        s.st_dev,
        s.st_ino,
        stat.S_ISLNK(s.st_mode),
    )
