"""Empties the trash (ocrd.fs.trash): entries past their grace, the oldest first for the budget,
and what a killed process left; each file deleted by ocrd.ops.delete's deleter, with every check a
deletion makes (the same file, held by no process: the lease)."""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable

from ocrd.base import log
from ocrd.fs import private
from ocrd.fs.inventory import FileEntry, display, entry_from_stat
from ocrd.fs.place import Place, pin
from ocrd.fs.trash import (
    DATA,
    ENTRY,
    NAME,
    RULE,
    Entry,
    Freed,
    Trash,
    Unusable,
    clear_entry,
    fault,
    iso,
    names,
    read_entry,
)
from ocrd.ops.delete import delete_groups
from ocrd.ops.inuse import InUse
from ocrd.ops.outcomes import Outcome, Status
from ocrd.rules.decision import Decision, Verdict

ModelDir = Place | os.PathLike[str] | str | bytes


def _place(model_dir: ModelDir) -> Place:
    return model_dir if isinstance(model_dir, Place) else pin(model_dir)


def _delete(place: Place, entry: FileEntry, reason: str, in_use: InUse | None) -> Outcome:
    """One file deleted through the deleter: re-checked (identity, lease) and deleted exactly."""
    d = Decision(entry, Verdict.DELETE, RULE, reason)
    outcomes = list(delete_groups([[d]], os.fsdecode(place.real), in_use=in_use))
    return outcomes[0] if outcomes else Outcome(d, Status.SKIPPED, "stopped")


def purge(
    model_dir: ModelDir,
    entries: Iterable[Entry],
    *,
    reason: str,
    in_use: InUse | None = None,
    want: int | None = None,
) -> Freed:
    """Purge ``entries`` in the order given, each under its lock; with ``want``, stop once at
    least that many bytes are freed. An entry another process is working on, or that left
    the trash meanwhile, is passed over; one in use or changed is kept and logged
    (``trash_purge_skipped``). Each purged one is logged ``trash_purged``."""
    place = _place(model_dir)
    freed, done, skipped = 0, [], 0
    try:
        t = Trash.open(place, create=False)
    except Unusable:
        return Freed(0, [], 0)
    if t is None:
        return Freed(0, [], 0)
    logger = log.get()
    with t:
        for e in entries:
            if want is not None and freed >= want:
                break
            with t.locked(e.id, wait=False) as efd:
                if efd is None:
                    skipped += 1
                    continue
                now_e = read_entry(e.id, efd)
                if now_e is None or (now_e.dev, now_e.ino) != (e.dev, e.ino):
                    continue  # restored or purged by another process meanwhile
                st = os.stat(DATA, dir_fd=efd, follow_symlinks=False)
                fault("purge:locked")
                outcome = _delete(place, entry_from_stat(e.rel(), st), reason, in_use)
                shown = None if e.path is None else display(e.path)
                if outcome.status is not Status.DELETED:
                    skipped += 1
                    logger.info(
                        "trash_purge_skipped",
                        path=shown,
                        entry=e.id.decode(),
                        reason=outcome.detail,
                    )
                    continue
                fault("purge:deleted")
                clear_entry(efd, t.fd, e.id)
            freed += outcome.freed
            done.append(e)
            logger.info(
                "trash_purged",
                path=shown,
                size=e.size,
                rule=e.rule,
                deleted_at=iso(e.deleted_at),
                reason=reason,
            )
    return Freed(freed, done, skipped)


def purge_due(
    model_dir: ModelDir, *, now: float, grace: float, in_use: InUse | None = None
) -> Freed:
    """Purge every entry whose grace has ended at ``now``."""
    place = _place(model_dir)
    due = [e for e in entries(place) if e.due(now, grace) <= now]
    if not due:
        return Freed(0, [], 0)
    return purge(place, due, reason="grace", in_use=in_use)


def free(model_dir: ModelDir, want: int, *, in_use: InUse | None = None) -> Freed:
    """For the budget: purge entries oldest first (by deletion time) until at least ``want``
    bytes are freed or the trash is empty."""
    if want <= 0:
        return Freed(0, [], 0)
    place = _place(model_dir)
    return purge(place, entries(place), reason="budget", in_use=in_use, want=want)


def entries(model_dir: ModelDir) -> list[Entry]:
    """The trash's entries, oldest first ([] if it is absent or unusable)."""
    try:
        t = Trash.open(_place(model_dir), create=False)
    except Unusable:
        return []
    if t is None:
        return []
    with t:
        return t.entries()


def recover(model_dir: ModelDir, *, in_use: InUse | None = None) -> int:
    """Clear what a killed process left in the trash: an entry without its file (killed while
    putting it in, restoring it or purging it) loses its record; a file a purge had renamed
    to a private name is purged (it was due and checked; it is checked again). Entries
    another process is working on are left. Returns how many entries were cleared."""
    place = _place(model_dir)
    try:
        t = Trash.open(place, create=False)
    except Unusable:
        return 0
    if t is None:
        return 0
    cleared = 0
    with t:
        for name in names(t.fd):
            if ENTRY.fullmatch(name) is None:
                continue
            with t.locked(name, wait=False) as efd:
                if efd is None or read_entry(name, efd) is not None:
                    continue
                if _leftovers(place, name, efd, in_use):
                    clear_entry(efd, t.fd, name)
                    cleared += 1
    if cleared:
        log.get().info("trash_recovered", entries=cleared)
    return cleared


def _leftovers(place: Place, eid: bytes, efd: int, in_use: InUse | None) -> bool:
    """Purge the private names a killed purge left in entry ``eid``; whether none is left.
    A ``data`` that is not a regular file (no one else may write here) is left alone."""
    clean = True
    for name in names(efd):
        if name == DATA:
            return False
        if not private.looks_private(name):
            continue
        try:
            st = os.stat(name, dir_fd=efd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            clean = False
            continue
        rel = NAME + b"/" + eid + b"/" + name
        outcome = _delete(place, entry_from_stat(rel, st), "interrupted purge", in_use)
        if outcome.status is not Status.DELETED:
            clean = False
    return clean


class Schedule:
    """When the daemon purges next: at the earliest due entry the last look found, and after
    every full rescan. An entry kept (in use) is tried again after RETRY_S, not each turn."""

    RETRY_S = 60.0

    def __init__(self) -> None:
        self.next_at = 0.0  # wall clock; 0: look at once (start, reload)

    def trashed(self, purge_at: float) -> None:
        """A deletion went into the trash, to be purged at ``purge_at``."""
        self.next_at = min(self.next_at, purge_at)

    def run_if_due(
        self, model_dir: ModelDir, *, now: float, grace: float, in_use: InUse | None = None
    ) -> Freed | None:
        if now < self.next_at:
            return None
        place = _place(model_dir)
        freed = purge_due(place, now=now, grace=grace, in_use=in_use)
        left = [e.due(now, grace) for e in entries(place)]
        self.next_at = min(left, default=math.inf)
        if freed.skipped:
            self.next_at = max(self.next_at, now + self.RETRY_S)
        return freed
