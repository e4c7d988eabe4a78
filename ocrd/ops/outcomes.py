"""Deletion outcomes into log lines and totals: the one place that does it, for ``ocrd clean`` and
the daemon alike."""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import NamedTuple

from ocrd.base import log
from ocrd.fs.inventory import display
from ocrd.fs.trashentry import Entry, iso
from ocrd.ops.stats import Totals
from ocrd.rules.decision import Decision
from ocrd.rules.refusal import Refusal


class Recorder:
    """Each Outcome becomes its one log line (``model_deleted``, ``model_would_be_deleted``,
    ``deletion_skipped``, ``deletion_failed``) and its count in ``totals``. With ``keep``, the
    outcomes are kept in ``kept`` as well, for a report of the whole pass (``ocrd clean``);
    the daemon, which runs for months, keeps counts only."""

    def __init__(self, totals: Totals | None = None, *, keep: bool = False) -> None:
        self.totals = totals if totals is not None else Totals()
        self.kept: list[Outcome] = []
        self.keep = keep

    def record(self, o: Outcome, *, retry: tuple[int, float] | None = None) -> None:
        """``retry``: (attempt, seconds until the next one) for a deletion that will be tried
        again (the daemon's backoff); a skip for the engine being busy is a warning."""
        e = o.decision.entry
        if self.keep:
            self.kept.append(o)
        logger = log.bound()
        if o.status is Status.DELETED:
            self.totals.deleted(o.freed, o.decision.rule)
            # The commonest line, and filtered out by ``ocrd clean`` (its level is warning):
            # then not even its path is written out (0.3 s of the main thread per 55k).
            if logger.is_enabled_for(logging.INFO):
                t = o.trashed
                into = {} if t is None else {"trash": True, "purge_at": iso(t.purge_at, up=True)}
                logger.info(
                    "model_deleted",
                    path=display(e.path),
                    size=e.size,
                    rule=o.decision.rule,
                    **into,
                )
        else:
            path = display(e.path)
            again = {} if retry is None else {"attempt": retry[0], "retry_in_s": retry[1]}
            if o.status is Status.WOULD_DELETE:
                self.totals.would_delete(e.size)
                logger.info("model_would_be_deleted", path=path, size=e.size, rule=o.decision.rule)
            elif o.status is Status.SKIPPED:
                self.totals.skipped(o.detail)
                level = logger.warning if o.detail == "engine_busy" else logger.info
                level("deletion_skipped", path=path, reason=o.detail, **again)
            else:
                self.totals.failed()
                logger.error("deletion_failed", path=path, error=o.detail, **again)


def say_refused(refusal: Refusal, *, dry_run: bool) -> None:
    """``deletion_refused``: the plan would have left no model file, so its deletions by age or
    rank were not done. ``ocrd clean`` and the daemon both say it here."""
    log.get().warning("deletion_refused", dry_run=dry_run, **refusal.fields())


class Status(StrEnum):
    DELETED = "deleted"
    WOULD_DELETE = "would_delete"
    SKIPPED = "skipped"
    FAILED = "failed"


class Outcome(NamedTuple):
    decision: Decision
    status: Status
    detail: str | None = None  # the skip reason, or the OS error
    freed: int = 0  # bytes given back: the size, if the unlink removed the file's last link
    trashed: Entry | None = None  # DELETED by a rename into the trash (ocrd.fs.trash): its entry
