"""The only module that deletes: carries out a Plan's deletions inside model_dir, and no further.

Every path is walked from a directory file descriptor opened with O_NOFOLLOW, one component at
a time, so a symbolic link at any depth — even a directory swapped for a link while we work —
cannot lead outside model_dir (the tmpreaper CVE-2019-3461 and systemd-tmpfiles CVE-2018-6954
class). Each file is re-checked just before its unlink: still the same device, inode, size and
mtime that were planned, and not held open or mapped by any process.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from itertools import chain
from typing import NamedTuple

from ocrd.fsdirs import DirFds
from ocrd.holders import Holders
from ocrd.retention import Decision, Plan


class Status(StrEnum):
    DELETED = "deleted"
    WOULD_DELETE = "would_delete"
    SKIPPED = "skipped"
    FAILED = "failed"


class Outcome(NamedTuple):
    decision: Decision
    status: Status
    detail: str | None = None  # the skip reason, or the OS error


def apply(
    plan: Plan | Iterable[Decision],
    model_dir: os.PathLike[str] | str,
    *,
    dry_run: bool = False,
    stop: Callable[[], bool] = lambda: False,
    holders: Holders | None = None,
) -> Iterator[Outcome]:
    """Delete what ``plan`` says (a Plan, or a stream of its deletions still being planned),
    yielding one Outcome per planned deletion as it happens.

    ``stop`` is asked before each file; once it says yes, the file in hand is finished and the
    rest are left for a later pass. Subdirectories emptied by the deletions are removed too;
    model_dir itself never is.
    """
    stream = iter(plan.deletions if isinstance(plan, Plan) else plan)
    first = next(stream, None)
    if first is None:
        return
    deletions = chain((first,), stream)
    if dry_run:
        for d in deletions:
            yield Outcome(d, Status.WOULD_DELETE)
        return
    holders = holders if holders is not None else Holders()
    holders.refresh()  # a fresh look per batch: a file released since the last one is free now
    dirs = DirFds(os.fsencode(model_dir))
    emptied: set[bytes] = set()
    try:
        for d in deletions:
            if stop():
                break
            outcome = _delete_one(dirs, d, holders)
            if outcome.status is Status.DELETED:
                emptied.add(d.entry.path.rpartition(b"/")[0])
            yield outcome
        _remove_emptied(dirs, emptied)
    finally:
        dirs.close()


def _delete_one(dirs: DirFds, d: Decision, holders: Holders) -> Outcome:
    entry = d.entry
    parent_rel, _, name = entry.path.rpartition(b"/")
    try:
        parent = dirs.open(parent_rel)
        now = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return Outcome(d, Status.SKIPPED, "vanished")
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ESTALE):
            return Outcome(d, Status.SKIPPED, "changed")
        return Outcome(d, Status.FAILED, exc.strerror or str(exc))
    if (
        not stat.S_ISREG(now.st_mode)
        or (now.st_dev, now.st_ino) != (entry.dev, entry.ino)
        or now.st_size != entry.size
        or now.st_mtime != entry.mtime
    ):
        return Outcome(d, Status.SKIPPED, "changed")
    if holders.holds((now.st_dev, now.st_ino)):
        return Outcome(d, Status.SKIPPED, "in_use")
    try:
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        return Outcome(d, Status.SKIPPED, "vanished")
    except OSError as exc:
        return Outcome(d, Status.FAILED, exc.strerror or str(exc))
    return Outcome(d, Status.DELETED)


def _remove_emptied(dirs: DirFds, emptied: set[bytes]) -> None:
    """rmdir each directory we deleted from, then its parents, deepest first; a directory that
    is not empty (or was replaced) stays. rmdir is atomic, so a file that just arrived is safe."""
    pending = {rel for rel in emptied if rel}
    while pending:
        rel = max(pending, key=lambda r: r.count(b"/"))
        pending.discard(rel)
        parent_rel, _, name = rel.rpartition(b"/")
        try:
            parent = dirs.open(parent_rel)
            dirs.forget(rel)
            os.rmdir(name, dir_fd=parent)
        except OSError:
            continue
        if parent_rel:
            pending.add(parent_rel)
