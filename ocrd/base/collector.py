"""The cyclic garbage collector switched off around work that makes records by the hundred
thousand (a walk, a plan, a pass's deletions), none of them in a cycle."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collecting_paused() -> Iterator[None]:
    """The cyclic garbage collector off while records are made by the hundred thousand: they
    hold no cycles, yet each 700 new ones start a collection that looks at all the young ones
    (about a tenth of a scan's time). Left off if it was off."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
