"""Deletes one directory's checked files, one file behind, through a name only ocrd uses: the
unlink half of ocrd.ops.delete (which plans the order and re-checks each file first).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Sequence

from ocrd.base import log
from ocrd.fs import private
from ocrd.fs.inventory import display
from ocrd.ops.check import Checked
from ocrd.ops.fanout import Timer
from ocrd.ops.outcomes import Outcome, Status
from ocrd.rules.decision import Decision

_GETLEASE, _WRLCK = fcntl.F_GETLEASE, fcntl.F_WRLCK


class OneBehind:
    """Deletes exactly the checked files of one directory, one file behind.

    unlink() takes a name, and another file can be renamed over that name between our check
    and the unlink: it would be deleted in its place. So each checked file is first renamed to
    a name only we use, in the same directory (ocrd.fs.private: unique to this process, on any
    host, in any PID namespace), and the inode found there is compared with the checked one;
    a stranger found there is put back under its name ("changed"), not deleted. The verified
    file then waits under the private name, its lease still held, and the next file's rename
    over that name is its deletion: one directory operation per file, as a plain unlink is
    (measured in bench/RESULTS*.md), not two. finish() unlinks the last one. Just before a
    waiting file goes, its lease is asked once more: if a process is opening it meanwhile, it
    is put back ("in_use").

    A private name is taken only where nothing is (private.claim: a squatter's entry, of any
    kind, is logged as ``private_name_taken`` and passed over for a fresh name), and nothing
    is renamed over it, unlinked or linked from it unless the entry there is still the very
    file we left waiting (same device and inode; we hold it open, so the inode cannot be
    reused meanwhile). An entry that is not is a stranger's: left alone, and the waiting file
    is reported "vanished" (it is no longer where we left it).

    A waiting file's directory is our own fd (a dup), so it never depends on DirFds' cache.
    If the work ends early (an error, or the consumer went away) the waiting file is put
    back: nothing is deleted that no Outcome reports. If ocrd is killed, the private name is
    left; rule ``interrupted`` deletes it on the next pass (it was due, and checked).
    """

    CLAIMS = 8  # fresh names tried for one file before it is given up (each one was taken)

    def __init__(self, timer: Timer | None) -> None:
        self.timer = timer
        self.dir_fd = -1
        self.private = b""  # the name self.waiting waits under
        self.waiting: Checked | None = None

    def take(self, c: Checked) -> Sequence[Outcome]:
        """The file ``c`` goes under the private name; the outcomes this settled: the file
        that was waiting there (deleted by the rename, or put back first), and ``c`` itself
        unless it now waits."""
        if self.dir_fd < 0:
            self.dir_fd = os.dup(c.parent)
        settled: list[Outcome] = []
        w = self.waiting
        if w is not None:
            if w.leased and w.fd is not None and fcntl.fcntl(w.fd, _GETLEASE) != _WRLCK:
                settled.append(self._put_back_waiting("in_use"))  # a process is opening it
            elif not self._still_waiting():
                settled.append(self._lost())
            w = self.waiting
        timer = self.timer
        began = time.perf_counter() if timer is not None else 0.0
        try:
            if w is None:
                self._claim(c)
            else:
                os.rename(c.name, self.private, src_dir_fd=c.parent, dst_dir_fd=self.dir_fd)
        except OSError as exc:
            _close(c.fd)
            if isinstance(exc, FileNotFoundError):
                return (*settled, Outcome(c.decision, Status.SKIPPED, "vanished"))
            return (*settled, Outcome(c.decision, Status.FAILED, exc.strerror or str(exc)))
        finally:
            if timer is not None:
                timer.since(began)
        if w is not None:  # the rename replaced it: its last name here is gone
            self.waiting = None
            settled.append(self._gone(w))
        landed = self.landed(c)
        if landed is not None:
            settled.append(landed)
        return settled

    def landed(self, c: Checked) -> Outcome | None:
        """``c`` was just renamed to the private name: if the file there is ``c``, it waits
        (None); else the stranger renamed into its name meanwhile, and moved there by our
        rename, gets that name back, and ``c``'s outcome says so."""
        try:
            there = os.stat(self.private, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError as exc:
            _close(c.fd)
            if isinstance(exc, FileNotFoundError):  # someone removed it meanwhile
                return Outcome(c.decision, Status.SKIPPED, "vanished")
            return Outcome(c.decision, Status.FAILED, exc.strerror or str(exc))
        if there.st_ino != c.now.st_ino or there.st_dev != c.now.st_dev:
            _close(c.fd)
            return self._put_back(c.decision, c.name, "changed")
        self.waiting = c
        return None

    def _claim(self, c: Checked) -> None:
        """Rename ``c`` to a fresh private name where nothing is; a name someone else's entry
        holds is logged and passed over. OSError if every name tried was taken."""
        for _ in range(self.CLAIMS):
            name = private.make()
            try:
                private.claim(c.parent, c.name, self.dir_fd, name)
            except FileExistsError:
                self._taken(c.decision, name)
                continue
            self.private = name
            return
        raise OSError(errno.EEXIST, f"{self.CLAIMS} private names in a row were taken")

    def _taken(self, d: Decision, name: bytes) -> None:
        """Say what holds a private name we were about to use (it stays as it is)."""
        where = d.entry.path.rpartition(b"/")[0]
        path = display(where + b"/" + name if where else name)
        try:
            st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError:
            owner, kind = None, "gone again"
        else:
            owner, kind = st.st_uid, _KINDS.get(stat.S_IFMT(st.st_mode), "other")
        log.get().warning(
            "private_name_taken",
            path=path,
            owner=owner,
            kind=kind,
            action="left as it is; another private name is used",
        )

    def _still_waiting(self) -> bool:
        """Whether the entry under our private name is still the file we left there."""
        w = self.waiting
        assert w is not None
        try:
            there = os.stat(self.private, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError:
            return False
        return (there.st_dev, there.st_ino) == (w.now.st_dev, w.now.st_ino)

    def _lost(self) -> Outcome:
        """The waiting file is no longer under our private name: someone moved it, or renamed
        their own entry over it. Whatever is there now is theirs and is left alone."""
        w = self.waiting
        assert w is not None
        self.waiting = None
        _close(w.fd)
        if _exists(self.dir_fd, self.private):
            self._taken(w.decision, self.private)
        return Outcome(w.decision, Status.SKIPPED, "vanished")

    def finish(self) -> Outcome | None:
        """Delete the file still waiting, if any."""
        w = self.waiting
        if w is None:
            return None
        if w.opening():
            return self._put_back_waiting("in_use")
        if not self._still_waiting():
            return self._lost()
        self.waiting = None
        began = time.perf_counter()
        try:
            os.unlink(self.private, dir_fd=self.dir_fd)
        except OSError as exc:
            _close(w.fd)
            if isinstance(exc, FileNotFoundError):
                return Outcome(w.decision, Status.SKIPPED, "vanished")
            return Outcome(w.decision, Status.FAILED, exc.strerror or str(exc))
        finally:
            if self.timer is not None:
                self.timer.since(began)
        return self._gone(w)

    def abandon(self) -> None:
        """Put back a file still waiting (the work ended early), and let go of the directory."""
        try:
            if self.waiting is not None:
                with contextlib.suppress(OSError):
                    self._put_back_waiting("in_use")
        finally:
            if self.dir_fd >= 0:
                os.close(self.dir_fd)
                self.dir_fd = -1

    def _gone(self, w: Checked) -> Outcome:
        # Closing our fd is where a deleted file is really freed (it held the inode), so it is
        # timed with the unlink: on ext4 with discard it is most of a deletion's cost.
        timer = self.timer
        if timer is None:
            _close(w.fd)
        else:
            began = time.perf_counter()
            _close(w.fd)
            timer.since(began)
        # Space comes back only with a file's last link: a hard link elsewhere keeps the data.
        return Outcome(
            w.decision, Status.DELETED, None, w.decision.entry.size * (w.now.st_nlink <= 1)
        )

    def _put_back_waiting(self, why: str) -> Outcome:
        w = self.waiting
        assert w is not None
        if not self._still_waiting():
            return self._lost()
        self.waiting = None
        try:
            return self._put_back(w.decision, w.name, why)
        finally:
            _close(w.fd)  # after the file has its name again: an opener waiting on us finds it

    def _put_back(self, d: Decision, name: bytes, why: str) -> Outcome:
        """The file under the private name gets ``name`` back; then the Outcome ``why``."""
        try:
            _put_back(self.dir_fd, self.private, name)
        except OSError as exc:
            return Outcome(d, Status.FAILED, exc.strerror or str(exc))
        return Outcome(d, Status.SKIPPED, why)


_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "symbolic link",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _put_back(parent: int, private: bytes, name: bytes) -> None:
    """Give a file we moved by mistake its name back, without replacing whatever may have
    taken the name since (link() fails rather than replace; rename() would not)."""
    try:
        os.link(private, name, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EEXIST:  # the name was taken yet again: keep both, say where
            raise OSError(
                errno.EEXIST, f"a file renamed over it meanwhile was kept as {private!r}"
            ) from exc
        if exc.errno not in (errno.EPERM, errno.EISDIR):
            raise
        # A directory (which cannot be linked): renamed back if the name is still free.
        if not _exists(parent, name):
            os.rename(private, name, src_dir_fd=parent, dst_dir_fd=parent)
        return
    os.unlink(private, dir_fd=parent)


def _exists(parent: int, name: bytes) -> bool:
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
