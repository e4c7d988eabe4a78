"""Directories that a pass's deletions emptied, removed after them, deepest first; model_dir
itself never is."""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable

from ocrd.fs.dirfds import DirFds


def remove_emptied(
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
