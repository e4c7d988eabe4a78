"""When the daemon's work is due: the periodic rescan, watchdog pings, and per-file revisits."""

from __future__ import annotations

import heapq
from collections.abc import Callable

from ocrd.base.clock import Clock

COMPACT_MIN = 4096  # gone paths tolerated before the revisits are compacted


class Scheduler:
    """When work is due: the periodic rescan, watchdog pings and per-file revisits (a settling
    file stops settling, a kept file ages past max_age, a skipped deletion is retried).
    Pure arithmetic over the injected clock; the loop asks it how long it may sleep."""

    def __init__(self, clock: Clock, rescan: float, ping: float | None) -> None:
        self.clock = clock
        self.rescan = rescan
        self.ping = ping
        now = clock.monotonic()
        self.next_rescan = now + rescan
        self.next_ping = now if ping else float("inf")
        self._revisits: list[tuple[float, bytes]] = []  # (wall time, path), a heap
        # Kept files crossing max_age: one per indexed file, so they go in buckets of
        # ``coarse_s`` seconds (a list slot per file, not a heap entry of ~100 bytes each).
        self.coarse_s = 1.0
        self._buckets: dict[int, list[bytes]] = {}
        self._bucket_heap: list[int] = []
        # Entries held for paths since gone (deleted, renamed away) or planned again are
        # dropped in bulk, once they are a quarter of all entries: memory follows the live
        # files, not the churn.
        self._entries = 0
        self._gone = 0

    def reconfigure(self, rescan: float, coarse_s: float) -> None:
        """A reload: the rescan period, and how late a coarse revisit may be."""
        self.rescan = rescan
        self.coarse_s = coarse_s

    def revisit(self, path: bytes, at_wall: float, *, coarse: bool = False) -> None:
        """Look at ``path`` again at ``at_wall``; ``coarse`` allows up to coarse_s later."""
        self._entries += 1
        if not coarse:
            heapq.heappush(self._revisits, (at_wall, path))
            return
        bucket = -int(-at_wall // self.coarse_s)  # rounded up: never early
        paths = self._buckets.get(bucket)
        if paths is None:
            paths = self._buckets[bucket] = []
            heapq.heappush(self._bucket_heap, bucket)
        paths.append(path)

    def clear_revisits(self) -> None:
        self._revisits.clear()
        self._buckets.clear()
        self._bucket_heap.clear()
        self._entries = self._gone = 0

    def clear_coarse(self) -> None:
        """Drop the kept files' revisits (the coarse ones): a plan of every file is about to
        note each of them again, and would otherwise hold two per file."""
        self._entries -= sum(len(paths) for paths in self._buckets.values())
        self._buckets.clear()
        self._bucket_heap.clear()

    def gone(self, count: int = 1) -> None:
        """``count`` paths that may have revisits are gone; see compact_due()."""
        self._gone += count

    def replanned(self, count: int) -> None:
        """``count`` files were planned again, each noting its revisit anew: the one noted
        before is stale. A file that a writer keeps closing is planned every turn; without
        this its 30-day revisits would pile up, one a turn, until they came due."""
        self._gone += count

    def __len__(self) -> int:
        """Revisits held (fine and coarse, stale ones included)."""
        return self._entries

    def compact_due(self) -> bool:
        return self._gone >= max(COMPACT_MIN, self._entries // 4)

    def compact(self, present: Callable[[bytes], bool]) -> None:
        """Keep one revisit per path still ``present``, the earliest of each kind; drop the
        rest. O(entries), and due only after as many paths went: O(1) per path, amortized."""
        fine: dict[bytes, float] = {}
        for at, path in self._revisits:
            if present(path) and at < fine.get(path, float("inf")):
                fine[path] = at
        coarse: dict[bytes, int] = {}
        for bucket, paths in self._buckets.items():
            for path in paths:
                if present(path) and bucket < coarse.get(path, 1 << 62):
                    coarse[path] = bucket
        self._revisits = [(at, path) for path, at in fine.items()]
        heapq.heapify(self._revisits)
        self._buckets = {}
        for path, bucket in coarse.items():
            self._buckets.setdefault(bucket, []).append(path)
        self._bucket_heap = list(self._buckets)
        heapq.heapify(self._bucket_heap)
        self._entries, self._gone = len(fine) + len(coarse), 0

    def due_revisits(self) -> set[bytes]:
        now = self.clock.time()
        due: set[bytes] = set()
        while self._revisits and self._revisits[0][0] <= now:
            due.add(heapq.heappop(self._revisits)[1])
            self._entries -= 1
        while self._bucket_heap and self._bucket_heap[0] * self.coarse_s <= now:
            paths = self._buckets.pop(heapq.heappop(self._bucket_heap))
            self._entries -= len(paths)
            due.update(paths)
        return due

    def rescan_due(self) -> bool:
        return self.clock.monotonic() >= self.next_rescan

    def rescanned(self) -> None:
        self.next_rescan = self.clock.monotonic() + self.rescan

    def ping_due(self) -> bool:
        if self.clock.monotonic() < self.next_ping:
            return False
        assert self.ping is not None
        self.next_ping = self.clock.monotonic() + self.ping
        return True

    def timeout(self, cap: float | None = None) -> float:
        mono = self.clock.monotonic()
        waits = [self.next_rescan - mono, self.next_ping - mono]
        if self._revisits:
            waits.append(self._revisits[0][0] - self.clock.time())
        if self._bucket_heap:
            waits.append(self._bucket_heap[0] * self.coarse_s - self.clock.time())
        if cap is not None:
            waits.append(cap)
        return max(0.0, min(waits))
