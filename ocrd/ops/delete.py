"""The only module that deletes: carries out a Plan's deletions inside model_dir, and no further.

Every path is walked from a directory file descriptor opened with O_NOFOLLOW, one component at
a time, so a symbolic link at any depth — even a directory swapped for a link while we work —
cannot lead outside model_dir (the tmpreaper CVE-2019-3461 and systemd-tmpfiles CVE-2018-6954
class). Each file is re-checked just before its unlink: still the same device, inode, size and
mtime that were planned, and held open or mapped by no process at all.

"No process holds it" is asked of the kernel, per file: a write lease (F_SETLEASE, F_WRLCK) is
granted only while no other open file description of the file exists, in any process, user or
PID namespace, and whether the holder has it open or only mapped. The lease is held across the
identity check and the unlink, so a process that opens the file meanwhile waits for us, and
one that already had it makes the lease fail. Only where a lease cannot be taken (a
filesystem without leases; another user's file without CAP_LEASE) is /proc asked instead
(``ocrd.fs.holders``), and where /proc cannot tell either, the file is kept (``in_use_unknown``)
unless the operator chose otherwise (``retention.unknown_holders = "delete"``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator

from ocrd.base import log
from ocrd.base.collector import collecting_paused
from ocrd.fs import private
from ocrd.fs.dirfds import DirFds
from ocrd.fs.inventory import display
from ocrd.ops.check import Checked, check_file
from ocrd.ops.emptied import remove_emptied
from ocrd.ops.fanout import FanOut, Timer
from ocrd.ops.inuse import InUse, ignore_lease_breaks
from ocrd.ops.outcomes import Outcome, Status
from ocrd.rules.decision import Decision, Plan


def apply(
    plan: Plan,
    model_dir: os.PathLike[str] | str,
    *,
    dry_run: bool = False,
    stop: Callable[[], bool] = lambda: False,
    in_use: InUse | None = None,
    fan_out: FanOut[Decision, Outcome] | None = None,
) -> Generator[Outcome, None, None]:
    """Delete what ``plan`` says, yielding one Outcome per planned deletion as it happens.

    Each directory's deletions are done together, in inode order (the order of the
    filesystem's own tables, which saves it work); ``fan_out`` decides whether directories go
    to threads. ``stop`` is asked between files; once it says yes, the files in hand are
    finished and the rest are left for a later pass.
    Subdirectories emptied by the deletions are removed too; model_dir itself never is.
    Closing the generator early deletes nothing more: a file in hand is put back.
    """
    deletions = plan.deletions
    if not deletions:
        return
    if dry_run:
        for d in deletions:
            yield Outcome(d, Status.WOULD_DELETE)
        return
    yield from delete_groups(
        by_directory(deletions), model_dir, stop=stop, in_use=in_use, fan_out=fan_out
    )


def delete_groups(
    groups: Iterable[list[Decision]],
    model_dir: os.PathLike[str] | str,
    *,
    stop: Callable[[], bool] = lambda: False,
    in_use: InUse | None = None,
    fan_out: FanOut[Decision, Outcome] | None = None,
) -> Generator[Outcome, None, None]:
    """apply()'s deletions, one group per directory, each group in inode order (by_directory);
    ``groups`` may be made while the first are deleted (FanOut.run). If making them raises, the
    groups already taken are finished, their outcomes yielded, then the error is raised."""
    ignore_lease_breaks()
    holders = in_use if in_use is not None else InUse()
    fan: FanOut[Decision, Outcome] = fan_out if fan_out is not None else FanOut()

    def work(
        dirs: DirFds, group: list[Decision], timer: Timer | None, pause: Callable[[], bool]
    ) -> Iterator[Outcome]:
        return _empty(dirs, group, holders, timer, pause)

    dirs = DirFds(os.fsencode(model_dir))
    emptied: set[bytes] = set()
    # The cyclic collector is off while the pass deletes: a few objects per file, none in a
    # cycle, would start a collection every 700 of them, and each older-generation one walks
    # every Decision of the plan. Measured on ``ocrd clean``, 100k files, 55k deletions: the
    # deleting part took 3.27/3.49 s with it off, 3.89/4.06 s with it on.
    try:
        with collecting_paused():
            for outcome in fan.run(groups, dirs, work, stop):
                if outcome.status is Status.DELETED:
                    emptied.add(_parent(outcome.decision))
                yield outcome
            remove_emptied(dirs, emptied, stop)
    finally:
        dirs.close()


def _parent(d: Decision) -> bytes:
    return d.entry.path.rpartition(b"/")[0]


def _inode(d: Decision) -> int:
    return d.entry.ino


def by_directory(deletions: Iterable[Decision]) -> deque[list[Decision]]:
    """Deletions grouped by directory, each group in inode order."""
    by_dir: dict[bytes, list[Decision]] = {}
    for d in deletions:
        by_dir.setdefault(_parent(d), []).append(d)
    for group in by_dir.values():
        group.sort(key=_inode)
    return deque(by_dir.values())


def _empty(
    dirs: DirFds,
    group: list[Decision],
    holders: InUse,
    timer: Timer | None,
    pause: Callable[[], bool],
) -> Iterator[Outcome]:
    """Delete one directory's planned files (``group``), one behind: see _Behind. ``pause``
    is asked before each file; the file in hand is finished all the same."""
    behind = _Behind(timer)
    try:
        for d in group:
            if pause():
                break
            checked = check_file(dirs, d, holders, probe=False)
            if isinstance(checked, Outcome):
                yield checked
            else:
                yield from behind.take(checked)
        last = behind.finish()
        if last is not None:
            yield last
    finally:
        behind.abandon()


class _Behind:
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

    def take(self, c: Checked) -> tuple[Outcome, ...]:
        """The file ``c`` goes under the private name; the outcomes this settled: the file
        that was waiting there (deleted by the rename, or put back first), and ``c`` itself
        unless it now waits."""
        if self.dir_fd < 0:
            self.dir_fd = os.dup(c.parent)
        settled: list[Outcome] = []
        if self.waiting is not None and self.waiting.opening():
            settled.append(self._put_back_waiting("in_use"))
        if self.waiting is not None and not self._still_waiting():
            settled.append(self._lost())
        began = time.perf_counter()
        try:
            if self.waiting is None:
                self._claim(c)
            else:
                os.rename(c.name, self.private, src_dir_fd=c.parent, dst_dir_fd=self.dir_fd)
        except OSError as exc:
            _close(c.fd)
            if isinstance(exc, FileNotFoundError):
                return (*settled, Outcome(c.decision, Status.SKIPPED, "vanished"))
            return (*settled, Outcome(c.decision, Status.FAILED, exc.strerror or str(exc)))
        finally:
            if self.timer is not None:
                self.timer.since(began)
        if self.waiting is not None:  # the rename replaced it: its last name here is gone
            settled.append(self._gone(self.waiting))
            self.waiting = None
        try:
            there = os.stat(self.private, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError as exc:
            _close(c.fd)
            if isinstance(exc, FileNotFoundError):  # someone removed it meanwhile
                return (*settled, Outcome(c.decision, Status.SKIPPED, "vanished"))
            return (*settled, Outcome(c.decision, Status.FAILED, exc.strerror or str(exc)))
        if (there.st_dev, there.st_ino) != (c.now.st_dev, c.now.st_ino):
            _close(c.fd)
            return (*settled, self._put_back(c.decision, c.name, "changed"))
        self.waiting = c
        return tuple(settled)

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
        began = time.perf_counter()
        _close(w.fd)
        if self.timer is not None:
            self.timer.since(began)
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
