"""Deletions into the trash: ``[trash] grace`` as the deleter takes it (ToTrash), and the trash
of one pass (Bin), opened at its first deletion, each checked file renamed into it under its
lease (ocrd.fs.trash).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ocrd.base import log
from ocrd.fs.trash import Trash, Unusable
from ocrd.ops.check import Checked
from ocrd.ops.outcomes import Outcome, Status


@dataclass(frozen=True)
class ToTrash:
    """Deletions go into the trash for ``grace`` seconds (``[trash] grace``), times by ``now``."""

    grace: float
    now: Callable[[], float] = time.time


class Bin:
    """The trash of one pass, opened (made if need be) at its first deletion. If
    ``.ocrd-trash`` is not a trash ocrd may use, every deletion that would go there keeps
    its file (``trash_unusable``, logged once per pass with the reason)."""

    def __init__(self, root_fd: int, to: ToTrash) -> None:
        self.root_fd = root_fd
        self.to = to
        self.trash: Trash | None = None
        self.refused: str | None = None
        self.lock = threading.Lock()

    def unusable(self) -> str | None:
        """None if the trash is open for deletions, else the skip reason."""
        with self.lock:
            if self.trash is None and self.refused is None:
                try:
                    self.trash = Trash.open(self.root_fd, create=True)
                except (Unusable, OSError) as exc:
                    self.refused = "trash_unusable"
                    log.get().warning(
                        "trash_unusable",
                        reason=exc.reason if isinstance(exc, Unusable) else str(exc),
                        action="deletions keep their files (deletion_skipped trash_unusable)",
                        fix="remove or rename what is at model_dir/.ocrd-trash; ocrd makes its "
                        "own there",
                    )
            return self.refused

    def put(self, c: Checked) -> Outcome:
        """The checked file into the trash, its lease held until it is there."""
        d = c.decision
        try:
            if c.opening():
                return Outcome(d, Status.SKIPPED, "in_use")
            assert self.trash is not None
            entry = self.trash.put(
                c.parent,
                c.name,
                d.entry.path,
                c.now,
                rule=d.rule,
                now=self.to.now(),
                grace=self.to.grace,
            )
        except FileNotFoundError:
            return Outcome(d, Status.SKIPPED, "vanished")
        except OSError as exc:
            if exc.errno == errno.ESTALE:
                return Outcome(d, Status.SKIPPED, "changed")
            return Outcome(d, Status.FAILED, exc.strerror or str(exc))
        finally:
            if c.fd is not None:
                os.close(c.fd)
        return Outcome(d, Status.DELETED, None, 0, entry)

    def close(self) -> None:
        if self.trash is not None:
            self.trash.close()
            self.trash = None
