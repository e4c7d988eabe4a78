"""The deleter's common case through a compiled step (ocrd/ops/sweep.c), where it was built.

A planned file that is ours to open, leased and unchanged, after a file that waits leased
under the directory's private name (ocrd.ops.onebehind): the compiled step makes exactly the
system calls of the Python path (ocrd.ops.quick.quick_check, then OneBehind.take) in the same
order, in one call with the GIL released. It decides nothing else: where the file is not that
case it does nothing to it, and the Python path, the reference, takes the file from the start.
Only after its rename over the private name can a file stop the step; then OneBehind.landed
finishes it, as take() would. One file per call, like the Python path: ``pause`` is asked
before each file, and each outcome is yielded before the next file is touched.

The extension is optional: built by ``pip install`` where a C compiler and Python's headers
are there, else absent, and then every file takes the Python path. ``OCRD_PURE_PYTHON=1`` in
the environment makes ocrd take the Python path where the extension is built too.
"""

from __future__ import annotations

import os
import time
from types import ModuleType

from ocrd.base.compiled import wanted
from ocrd.ops.check import Checked
from ocrd.ops.fanout import Timer
from ocrd.ops.inuse import InUse
from ocrd.ops.onebehind import OneBehind
from ocrd.ops.outcomes import Outcome, Status
from ocrd.rules.decision import Decision
from ocrd.rules.leftovers import INTERRUPTED

compiled: ModuleType | None
try:
    from ocrd.ops import _sweep as compiled
except ImportError:  # not built here: the Python path does it all
    compiled = None


def available() -> bool:
    """Whether the compiled step is there and not turned off (``OCRD_PURE_PYTHON=1``)."""
    return compiled is not None and wanted()


def ready(behind: OneBehind, holders: InUse) -> bool:
    """Whether ``behind`` has a file waiting that the compiled step can go on from: held open
    and leased by us (not one /proc vouched for), on a filesystem whose leases see every
    holder, mappings included (the step asks nothing of /proc)."""
    w = behind.waiting
    return (
        w is not None
        and w.leased
        and w.fd is not None
        and not holders.lease_blind(w.fd, w.now.st_dev)
    )


def step(
    behind: OneBehind, parent: int, d: Decision, me: int, timer: Timer | None = None
) -> tuple[Outcome, ...] | None:
    """The planned file ``d`` of ``parent`` (our fd of the directory ``behind`` deletes in)
    through the compiled step, after the leased file waiting under the private name: the
    outcomes it settled (the waiting file deleted, and, if ``d`` did not land as renamed,
    what OneBehind.landed made of it), ``d`` waiting in its turn otherwise; None if the
    step did nothing and ``d`` needs the Python path. ``me``: our effective uid; ``timer``
    (ocrd.ops.fanout) is given the time of the compiled call alone."""
    assert compiled is not None
    w = behind.waiting
    assert w is not None
    assert w.fd is not None
    e = d.entry
    dev = w.now.st_dev
    if e.dev != dev:  # another filesystem's file (a bind mount): the Python path says
        return None
    name = e.path.rpartition(b"/")[2]
    began = time.perf_counter() if timer is not None else 0.0
    how, fd = compiled.step(
        parent,
        behind.dir_fd,
        behind.private,
        w.fd,
        dev,
        w.now.st_ino,
        me,
        name,
        e.ino,
        e.size,
        e.mtime,
        d.rule == INTERRUPTED,
    )
    if timer is not None:
        timer.since(began)  # the step's system calls, made with the GIL released
    if how == compiled.STOP_BEFORE:
        return None
    # The rename over the private name deleted the file waiting there (its fd is closed).
    behind.waiting = None
    gone = Outcome(w.decision, Status.DELETED, None, w.decision.entry.size * (w.now.st_nlink <= 1))
    c = Checked(d, parent, name, fd, True, os.fstat(fd))
    if how == compiled.STOP_AFTER:
        landed = behind.landed(c)
        return (gone,) if landed is None else (gone, landed)
    behind.waiting = c
    return (gone,)
