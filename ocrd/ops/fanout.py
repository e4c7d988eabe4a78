"""Spreads a pass's directories over threads, when and only when threads pay.

The deleter (``ocrd.ops.delete``) says how one directory is emptied; this module says who empties
which directory. Where unlink() is cheap next to ocrd's own per-file work (tmpfs) one thread is
fastest: more threads just pass the GIL back and forth. Where it is not — the kernel's own work
on ext4, a synchronous discard per unlink on ext4 mounted with ``discard``, a network
filesystem's round trip — that time is spent with the GIL released, and threads overlap it.
So the first deletions are done in the calling thread and timed, and the rest go to threads
only if most of that time was spent waiting in the kernel. One directory is never shared
between threads: unlinks in one directory serialise on its lock anyway.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from ocrd.fs.dirfds import DirFds

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Timer:
    """Time spent where the GIL is released (the kernel's share of a deletion), added up by
    the work it is handed to."""

    waited: float = 0.0

    def since(self, began: float) -> None:
        self.waited += time.perf_counter() - began


Work = Callable[[DirFds, list[T], Timer | None, Callable[[], bool]], Iterator[R]]
"""Empties one directory: ``work(dirs, items, timer, pause)`` yields one result per item, in
any order. ``pause`` is asked before each item; once it says yes, the work finishes what it has
in hand, yields its results and returns, so the results yielded are exactly the items it took,
from the front. ``timer`` (None: not timed) collects the time spent waiting in the kernel."""


@dataclass(frozen=True)
class FanOut(Generic[T, R]):
    """How many threads may empty directories at once, and when to start them.

    Measured here (unlink vs everything else per file, including the caller's logging): tmpfs
    5.7 vs 6.3 µs (a share of 0.48), and four threads made a pass 45 % slower; ext4 without
    online discard (Debian's default) 17 vs 7 µs (0.71), threads 19 % faster; ext4 with
    ``discard`` 86 vs 15 µs (0.85), threads 40 % faster. How many: on two CPUs and ext4 with
    ``discard``, 100k files, deleting 55k (two runs, apply() alone): 2 threads 4.66/5.31 s,
    3 threads 3.63/4.43 s, 4 threads 4.37/5.47 s, 6 threads 4.57/5.43 s, with CPU time
    rising from 4.0 s (3 threads) to 5.5-7.1 s (4 and 6): more threads than that spend it in
    the kernel's scheduler, handing the GIL around (perf: a quarter of a three-thread pass's
    cycles already). A share is a ratio of two times on one machine, so a faster or slower
    CPU moves both alike. bench/RESULTS*.md has the passes."""

    threads: int = 3
    sample: int = 64  # results timed in the calling thread before deciding
    share: float = 0.6  # threads once the kernel took this share of that time or more
    # ... and at least this long per result: a shorter stretch without the GIL is taken back by
    # handing the GIL between threads. apply() alone, 100k files, 54,871 deletions through the
    # compiled step (ocrd/ops/sweep.c), one thread / three (wall, CPU): tmpfs, about 13 us per
    # file without the GIL, 1.21 s / 1.93 s (CPU 1.17 / 2.87 s); ext4 without discard, about
    # 30 us, 2.19 s / 1.31 s; ext4 with discard, about 120 us, 7.21 s / 4.99 s.
    min_wait_s: float = 20e-6
    handful: int = 32  # results a worker hands over at once
    idle_poll_s: float = 0.1  # how often ``stop`` is asked while no result arrives
    # How long a thread may keep the GIL while others wait for it, while threads delete
    # (Python's default is 5 ms). A deleting thread holds the GIL for microseconds between
    # syscalls, and each syscall's return waits for it: with 5 ms a worker back from the
    # kernel can wait for a whole interval. apply() alone, 100k files, 55k deletions, three
    # threads (one run each): 5 ms 3.91/4.11 s, 2 ms 4.05 s, 1 ms 2.96/3.00 s, 0.5 ms 2.82 s;
    # four threads at 0.5 ms 3.08 s. Restored when the threads are done.
    switch_interval_s: float = 0.0005

    def run(
        self,
        groups: Iterable[list[T]],
        dirs: DirFds,
        work: Work[T, R],
        stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[R]:
        """Every group through ``work``, yielding results as they come. ``stop`` is asked in
        the calling thread between results; once it says yes, the items in hand are finished
        and the rest are left alone. The first groups are worked in the calling thread (with
        ``dirs``) until ``sample`` results are timed; then, if the kernel's share was at least
        ``share`` and at least two groups are left, the rest go to threads.

        ``groups`` may be made as they are taken (ocrd clean plans each directory as its walk
        reaches it): it is read in the calling thread, one group ahead of the work, while the
        threads work. If reading it raises, no group is taken after that; the results of the
        groups already taken are yielded all the same, then the error is raised."""
        source = iter(groups)
        ahead: deque[list[T]] = deque()
        timer = Timer()
        began = time.perf_counter()
        reading = 0.0  # of the time since ``began``, what making groups took: not deleting
        done = 0
        wide = False

        def more() -> bool:
            """Whether a group waits after the one in hand (read one ahead to know)."""
            nonlocal reading
            if not ahead:
                started = time.perf_counter()
                group = next(source, None)
                reading += time.perf_counter() - started
                if group is None:
                    return False
                ahead.append(group)
            return True

        decided = False

        def pause() -> bool:
            nonlocal wide, decided
            if stop():
                return True
            # ``done`` may pass ``sample`` by more than one: a compiled run of a directory's
            # files (ocrd.ops.sweep) yields its results together.
            if not decided and done >= self.sample and self.threads > 1 and more():
                decided = True
                # The group in hand is unfinished (pause comes before an item), and at least
                # one more waits: enough for two threads.
                working = time.perf_counter() - began - reading
                wide = (
                    timer.waited / working >= self.share and timer.waited / done >= self.min_wait_s
                )
            return wide

        while ahead or more():
            group = ahead.popleft()
            taken = 0
            for result in work(dirs, group, timer if done < self.sample else None, pause):
                taken += 1
                done += 1
                yield result
            if stop():
                return
            if wide:
                if taken < len(group):
                    ahead.appendleft(group[taken:])
                yield from self._wide(dirs.root_fd, ahead, source, work, stop)
                return

    def _wide(
        self,
        root_fd: int,
        ahead: deque[list[T]],
        source: Iterator[list[T]],
        work: Work[T, R],
        stop: Callable[[], bool],
    ) -> Iterator[R]:
        """Worker threads each take whole groups and work them through their own DirFds; the
        calling thread reads ``source`` for more groups and yields the workers' results as they
        come. An error in a worker stops the others once the items in hand are done, and is
        raised here after every result already produced was yielded, so nothing done goes
        unreported; so is an error reading ``source``, after the groups taken are done."""
        threads = self.threads
        todo: queue.SimpleQueue[list[T] | None] = queue.SimpleQueue()
        for group in ahead:
            todo.put(group)
        done: queue.SimpleQueue[list[R] | None] = queue.SimpleQueue()
        halt = threading.Event()
        errors: list[BaseException] = []
        feeding = True

        def fed() -> None:
            """No group will come any more: each worker stops once the queue is empty."""
            nonlocal feeding
            feeding = False
            for _ in range(threads):
                todo.put(None)

        def worker() -> None:
            # Results go out in handfuls: a put() per item would wake the calling thread, and
            # hand it the GIL, once per item.
            results: list[R] = []
            try:
                with DirFds(os.dup(root_fd)) as dirs:
                    while not halt.is_set() and (group := todo.get()) is not None:
                        for result in work(dirs, group, None, halt.is_set):
                            results.append(result)
                            if len(results) == self.handful:
                                done.put(results)
                                results = []
            except BaseException as exc:  # noqa: BLE001 — re-raised in the calling thread
                errors.append(exc)
                halt.set()
            finally:
                if results:
                    done.put(results)
                done.put(None)

        workers = [
            threading.Thread(target=worker, name=f"ocrd-delete-{i}", daemon=True)
            for i in range(threads)
        ]
        previous = sys.getswitchinterval()
        sys.setswitchinterval(self.switch_interval_s)
        for t in workers:
            t.start()
        running = threads
        try:
            while running:
                if feeding:
                    # Read one more group, then pass on whatever results are ready by then.
                    if halt.is_set() or stop():
                        halt.set()
                        fed()
                    else:
                        fresh: list[T] | None
                        try:
                            fresh = next(source, None)
                        except BaseException as exc:  # noqa: BLE001 — raised once all is done
                            errors.append(exc)
                            fresh = None
                        if fresh is None:
                            fed()
                        else:
                            todo.put(fresh)
                    ready: list[list[R] | None] = []
                    with contextlib.suppress(queue.Empty):
                        while True:
                            ready.append(done.get_nowait())
                else:
                    try:
                        ready = [done.get(timeout=self.idle_poll_s)]
                    except queue.Empty:
                        if stop():
                            halt.set()
                        continue
                for results in ready:
                    if results is None:
                        running -= 1
                        continue
                    for result in results:
                        yield result
                        if not halt.is_set() and stop():
                            halt.set()
        finally:
            halt.set()
            if feeding:
                fed()
            for t in workers:
                t.join()
            sys.setswitchinterval(previous)
        if errors:
            raise errors[0]
