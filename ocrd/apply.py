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
import queue
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
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


THREADS = 4
"""At most this many directories are emptied at once, when deletions wait on the device.

Where unlink() only costs CPU (tmpfs, measured; a filesystem without online discard) one thread
is fastest: more threads just pass the GIL back and forth. Where it waits (measured here: ext4
mounted with ``discard`` sleeps in a synchronous discard on every unlink; a network filesystem
waits for a round trip) the waits overlap and a pass takes a fraction of the time.
bench/RESULTS.md has the numbers. One directory is never shared between threads: unlinks in
one directory serialise on its lock anyway."""

SAMPLE = 64  # deletions timed before deciding whether more threads would pay
WAITING_S = 50e-6  # mean time per deletion above which the thread is waiting, not working
HANDFUL = 32  # outcomes a worker hands over at once
IDLE_POLL_S = 0.1  # how often ``stop`` is asked while no deletion completes


def apply(
    plan: Plan,
    model_dir: os.PathLike[str] | str,
    *,
    dry_run: bool = False,
    stop: Callable[[], bool] = lambda: False,
    holders: Holders | None = None,
    threads: int = THREADS,
) -> Iterator[Outcome]:
    """Delete what ``plan`` says, yielding one Outcome per planned deletion as it happens.

    Each directory's deletions are done together, in inode order (the order of the
    filesystem's own tables, which saves it work). The first ones are done in the calling
    thread, and timed: if they wait on the device, the remaining directories are spread over
    up to ``threads`` threads. ``stop`` is asked in the calling thread between outcomes; once
    it says yes, the files in hand are finished and the rest are left for a later pass.
    Subdirectories emptied by the deletions are removed too; model_dir itself never is.
    """
    deletions = plan.deletions
    if not deletions:
        return
    if dry_run:
        for d in deletions:
            yield Outcome(d, Status.WOULD_DELETE)
        return
    holders = holders if holders is not None else Holders()
    holders.refresh()  # a fresh look per batch: a file released since the last one is free now
    dirs = DirFds(os.fsencode(model_dir))
    emptied: set[bytes] = set()
    try:
        for outcome in _delete(dirs, _by_directory(deletions), holders, stop, threads):
            if outcome.status is Status.DELETED:
                emptied.add(_parent(outcome.decision))
            yield outcome
        _remove_emptied(dirs, emptied)
    finally:
        dirs.close()


def _parent(d: Decision) -> bytes:
    return d.entry.path.rpartition(b"/")[0]


def _inode(d: Decision) -> int:
    return d.entry.ino


def _by_directory(deletions: Iterable[Decision]) -> deque[list[Decision]]:
    by_dir: dict[bytes, list[Decision]] = {}
    for d in deletions:
        by_dir.setdefault(_parent(d), []).append(d)
    for group in by_dir.values():
        group.sort(key=_inode)
    return deque(by_dir.values())


def _delete(
    dirs: DirFds,
    groups: deque[list[Decision]],
    holders: Holders,
    stop: Callable[[], bool],
    threads: int,
) -> Iterator[Outcome]:
    """In this thread until SAMPLE deletions are timed; then, if they waited and at least two
    directories are left, in threads."""
    timed = 0
    waited = 0.0
    while groups:
        group = groups.popleft()
        for i, d in enumerate(group):
            if stop():
                return
            started = time.perf_counter()
            outcome = _delete_one(dirs, d, holders)
            if timed < SAMPLE:
                waited += time.perf_counter() - started
                timed += 1
                unfinished = i + 1 < len(group)
                if (
                    timed == SAMPLE
                    and waited / SAMPLE > WAITING_S
                    and threads > 1
                    and len(groups) + unfinished >= 2
                ):
                    # This thread mostly waits: hand the rest to threads that wait together.
                    yield outcome
                    if unfinished:
                        groups.appendleft(group[i + 1 :])
                    yield from _parallel(dirs.root_fd, groups, holders, stop, threads)
                    return
            yield outcome


def _parallel(
    root_fd: int,
    groups: deque[list[Decision]],
    holders: Holders,
    stop: Callable[[], bool],
    threads: int,
) -> Iterator[Outcome]:
    """Worker threads each take whole directories and delete through their own DirFds; the
    calling thread yields their outcomes as they come. An error in a worker stops the others
    once the files in hand are done, and is raised here after every outcome already produced
    was yielded, so no deletion goes unreported."""
    threads = min(threads, len(groups))
    work: queue.SimpleQueue[list[Decision] | None] = queue.SimpleQueue()
    for group in groups:
        work.put(group)
    for _ in range(threads):
        work.put(None)
    done: queue.SimpleQueue[list[Outcome] | None] = queue.SimpleQueue()
    halt = threading.Event()
    errors: list[BaseException] = []

    def delete() -> None:
        # Outcomes go out in handfuls: a put() per file would wake the calling thread, and
        # hand it the GIL, once per file.
        outcomes: list[Outcome] = []
        try:
            with DirFds(os.dup(root_fd)) as dirs:
                while (group := work.get()) is not None:
                    for d in group:
                        if halt.is_set():
                            return
                        outcomes.append(_delete_one(dirs, d, holders))
                        if len(outcomes) == HANDFUL:
                            done.put(outcomes)
                            outcomes = []
        except BaseException as exc:  # noqa: BLE001 — re-raised in the calling thread
            errors.append(exc)
            halt.set()
        finally:
            if outcomes:
                done.put(outcomes)
            done.put(None)

    workers = [
        threading.Thread(target=delete, name=f"ocrd-delete-{i}", daemon=True)
        for i in range(threads)
    ]
    for t in workers:
        t.start()
    running = threads
    try:
        while running:
            try:
                outcomes = done.get(timeout=IDLE_POLL_S)
            except queue.Empty:
                if stop():
                    halt.set()
                continue
            if outcomes is None:
                running -= 1
                continue
            for outcome in outcomes:
                yield outcome
                if not halt.is_set() and stop():
                    halt.set()
    finally:
        halt.set()
        for t in workers:
            t.join()
    if errors:
        raise errors[0]


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
