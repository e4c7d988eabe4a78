"""The deleter: carries out a Plan's deletions inside model_dir, and no further. Each file is
unlinked by ocrd.ops.onebehind or renamed into the trash by ocrd.ops.totrash; nothing else deletes.

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

import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator

from ocrd.base.collector import collecting_paused
from ocrd.fs.dirfds import DirFds
from ocrd.ops.check import Checked, check_file
from ocrd.ops.emptied import remove_emptied
from ocrd.ops.fanout import FanOut, Timer
from ocrd.ops.inuse import InUse, ignore_lease_breaks
from ocrd.ops.onebehind import OneBehind
from ocrd.ops.outcomes import Outcome, Status
from ocrd.ops.quick import Parent, quick_check
from ocrd.ops.sweep import available, ready, step
from ocrd.ops.totrash import Bin, ToTrash
from ocrd.rules.decision import Decision, Plan
from ocrd.rules.leftovers import INTERRUPTED


def apply(
    plan: Plan,
    model_dir: os.PathLike[str] | str,
    *,
    dry_run: bool = False,
    stop: Callable[[], bool] = lambda: False,
    in_use: InUse | None = None,
    fan_out: FanOut[Decision, Outcome] | None = None,
    to_trash: ToTrash | None = None,
) -> Generator[Outcome, None, None]:
    """Delete what ``plan`` says, yielding one Outcome per planned deletion as it happens.
    With ``to_trash``, a deletion is a rename into the trash (ToTrash, ocrd.fs.trash).

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
        by_directory(deletions),
        model_dir,
        stop=stop,
        in_use=in_use,
        fan_out=fan_out,
        to_trash=to_trash,
    )


def delete_groups(
    groups: Iterable[list[Decision]],
    model_dir: os.PathLike[str] | str,
    *,
    stop: Callable[[], bool] = lambda: False,
    in_use: InUse | None = None,
    fan_out: FanOut[Decision, Outcome] | None = None,
    to_trash: ToTrash | None = None,
) -> Generator[Outcome, None, None]:
    """apply()'s deletions, one group per directory, each group in inode order (by_directory);
    ``groups`` may be made while the first are deleted (FanOut.run). If making them raises, the
    groups already taken are finished, their outcomes yielded, then the error is raised."""
    ignore_lease_breaks()
    holders = in_use if in_use is not None else InUse()
    fan: FanOut[Decision, Outcome] = fan_out if fan_out is not None else FanOut()

    dirs = DirFds(os.fsencode(model_dir))
    bin_: Bin | None = None
    if to_trash is not None and to_trash.grace > 0:
        bin_ = Bin(dirs.root_fd, to_trash)

    def work(
        dirs: DirFds, group: list[Decision], timer: Timer | None, pause: Callable[[], bool]
    ) -> Iterator[Outcome]:
        return _empty(dirs, group, holders, timer, pause, bin_=bin_)

    emptied: set[bytes] = set()
    # The cyclic collector is off while the pass deletes: a few objects per file, none in a
    # cycle, would start a collection every 700 of them, and each older-generation one walks
    # every Decision of the plan. Measured on ``ocrd clean``, 100k files, 55k deletions: the
    # deleting part took 3.27/3.49 s with it off, 3.89/4.06 s with it on.
    try:
        with collecting_paused():
            for outcome in fan.run(groups, dirs, work, stop):
                if outcome.status is Status.DELETED:
                    emptied.add(outcome.decision.entry.path.rpartition(b"/")[0])
                yield outcome
            remove_emptied(dirs, emptied, stop)
    finally:
        if bin_ is not None:
            bin_.close()
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
    *,
    bin_: Bin | None = None,
) -> Iterator[Outcome]:
    """Delete one directory's planned files (``group``), one behind: see OneBehind; or, with
    ``bin_``, each into the trash. ``pause`` is asked before each file; the file in hand is
    finished all the same."""
    behind = OneBehind(timer)
    # Nearly every file: opened, leased, checked by ocrd.ops.quick in a directory verified
    # once per Parent.EVERY files; anything else by check_file, which knows every case. Where
    # the compiled step is built, it takes such a file after a leased one (ocrd.ops.sweep).
    here = Parent(dirs, _parent(group[0])) if holders.open_files and group else None
    fast = here is not None and bin_ is None and holders.before_open is None and available()
    me = os.geteuid()
    try:
        for d in group:
            if pause():
                break
            if bin_ is not None and d.rule != INTERRUPTED and (why := bin_.unusable()):
                yield Outcome(d, Status.SKIPPED, why)
                continue
            parent = here.get() if here is not None else -1
            if fast and parent >= 0 and ready(behind, holders):
                settled = step(behind, parent, d, me, timer)
                if settled is not None:
                    yield from settled
                    continue
            checked: Outcome | Checked | None = None
            if parent >= 0:
                checked = quick_check(parent, d, holders, me)
            if checked is None:
                checked = check_file(dirs, d, holders, probe=False)
            if isinstance(checked, Outcome):
                yield checked
            elif bin_ is not None and d.rule != INTERRUPTED:
                # An interrupted deletion's leftover is finished as it began, by an unlink:
                # its name is a private one, not a path anyone would restore.
                yield bin_.put(checked)
            else:
                yield from behind.take(checked)
        last = behind.finish()
        if last is not None:
            yield last
    finally:
        try:
            behind.abandon()
        finally:
            if here is not None:
                here.close()
