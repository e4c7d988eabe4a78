"""The only module that deletes: carries out a Plan's deletions inside model_dir, and no further.

Every path is walked from a directory file descriptor opened with O_NOFOLLOW, one component at
a time, so a symbolic link at any depth — even a directory swapped for a link while we work —
cannot lead outside model_dir (the tmpreaper CVE-2019-3461 and systemd-tmpfiles CVE-2018-6954
class). Each file is re-checked just before its unlink: still the same device, inode, size and
mtime that were planned, and not held open or mapped by any process.
"""

from __future__ import annotations

import errno
import heapq
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
"""At most this many directories are emptied at once, when unlink() dominates a deletion.

Where unlink() is cheap next to ocrd's own per-file work (tmpfs) one thread is fastest: more
threads just pass the GIL back and forth. Where it is not — the kernel's own work on ext4, a
synchronous discard per unlink on ext4 mounted with ``discard``, a network filesystem's round
trip — that time is spent with the GIL released, and threads overlap it. bench/RESULTS.md has
the numbers. One directory is never shared between threads: unlinks in one directory
serialise on its lock anyway."""

SAMPLE = 64  # deletions timed before deciding whether more threads would pay
UNLINK_SHARE = 0.6
"""Threads are used once unlink() — where the GIL is released — takes this share of the time
per deletion or more. Measured here (unlink vs everything else per file, including the
caller's logging): tmpfs 5.7 vs 6.3 µs (0.48), and four threads made a pass 45 % slower;
ext4 without online discard (Debian's default) 17 vs 7 µs (0.71), threads 19 % faster; ext4
with ``discard`` 86 vs 15 µs (0.85), threads 40 % faster. A share is a ratio of two times on
one machine, so a faster or slower CPU moves both alike."""
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
    thread, and timed: if most of their time is spent in unlink(), outside the GIL, the
    remaining directories are spread over up to ``threads`` threads. ``stop`` is asked in the
    calling thread between outcomes; once it says yes, the files in hand are finished and the
    rest are left for a later pass.
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
        _remove_emptied(dirs, emptied, stop)
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
    """In this thread while SAMPLE deletions are timed, the caller's handling of each outcome
    included; then, if unlink() took UNLINK_SHARE of that time and at least two directories are
    left, in threads."""
    timed = 0
    unlinking = [0.0]
    started = time.perf_counter()
    while groups:
        group = groups.popleft()
        for i, d in enumerate(group):
            if stop():
                return
            sampling = timed < SAMPLE
            outcome = _delete_one(dirs, d, holders, unlinking if sampling else None)
            if sampling and (timed := timed + 1) == SAMPLE:
                share = unlinking[0] / (time.perf_counter() - started)
                unfinished = i + 1 < len(group)
                if share >= UNLINK_SHARE and threads > 1 and len(groups) + unfinished >= 2:
                    # This thread mostly waits in unlink(): threads can wait together.
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


def _delete_one(
    dirs: DirFds, d: Decision, holders: Holders, unlinking: list[float] | None = None
) -> Outcome:
    """Re-check and unlink one file; adds the time unlink() took to ``unlinking[0]``."""
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
        if unlinking is None:
            os.unlink(name, dir_fd=parent)
        else:
            began = time.perf_counter()
            os.unlink(name, dir_fd=parent)
            unlinking[0] += time.perf_counter() - began
    except FileNotFoundError:
        return Outcome(d, Status.SKIPPED, "vanished")
    except OSError as exc:
        return Outcome(d, Status.FAILED, exc.strerror or str(exc))
    return Outcome(d, Status.DELETED)


def _remove_emptied(
    dirs: DirFds, emptied: set[bytes], stop: Callable[[], bool] = lambda: False
) -> None:
    """rmdir each directory we deleted from, then its parents, deepest first; a directory that
    is not empty (or was replaced) stays. rmdir is atomic, so a file that just arrived is safe.

    A heap orders them (a scan for the deepest per rmdir was quadratic in their number). After
    each rmdir its parent is tried at once, reached through ``..`` of the directory in hand and
    checked against the identity seen from the root (DirFds.parent): a chain emptied from the
    bottom is climbed a step at a time, not re-walked from the root per level (quadratic in the
    depth). A parent that still holds a sibling waiting in the heap is tried again when that
    sibling goes. ``stop`` is asked between directories."""
    heap = [(-rel.count(b"/"), rel) for rel in emptied if rel]
    heapq.heapify(heap)
    while heap:
        if stop():
            return
        _, rel = heapq.heappop(heap)
        parent_rel, _, name = rel.rpartition(b"/")
        try:
            parent = dirs.open(parent_rel)
            dirs.forget(rel)
            os.rmdir(name, dir_fd=parent)
        except OSError:
            continue
        while parent_rel and not stop():
            rel = parent_rel
            parent_rel, _, name = rel.rpartition(b"/")
            try:
                up = dirs.parent(rel, parent)
                dirs.forget(rel)
                os.rmdir(name, dir_fd=up)
            except OSError:
                break
            parent = up
