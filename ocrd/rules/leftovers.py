"""The rule for ocrd's own leftovers: a file under one of ocrd's private names whose deletion
was interrupted before it finished."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ocrd.fs import private
from ocrd.fs.inventory import FileEntry
from ocrd.rules.families import Versions
from ocrd.rules.selectors import ByName, first_after, named_private

INTERRUPTED = "interrupted"  # the rule's name, which ocrd.ops.delete asks for its owner check


PROCESS_STARTED = time.time()  # private names older than this process are no live ocrd's own


@dataclass(frozen=True)
class InterruptedRule(ByName):
    """A file ocrd had checked and was deleting when it was killed. To delete exactly the
    checked file, ocrd renames it to a private name first (ocrd.fs.private), and deletes it
    under that name (ocrd.ops.onebehind); a SIGKILL leaves the private name behind. Such a file had
    passed every check already; it is planned again, and checked again, under this rule.

    Only a regular file whose name is in ocrd's own format is one: a link, or anything else
    named ``.ocrd-deleting-*``, is someone's imitation, kept and listed as such (directories
    are no file of the plan at all). That the file is ocrd's own uid's is asked where the
    file is opened (ocrd.ops.delete), as the planner sees no owners.

    A name given before this process started (by ctime, which the rename set) is a leftover;
    a younger one only once it is GRACE_S old: it may belong to an ocrd that is deleting right
    now (``ocrd clean`` beside the daemon), whose file waits under that name for microseconds,
    leased. Opening it to check would break that lease, and the other ocrd would rightly put
    it back."""

    started: float = PROCESS_STARTED
    name: str = INTERRUPTED

    GRACE_S = 60.0

    @staticmethod
    def _private(f: FileEntry) -> bool:
        return not f.is_link and private.parse(f.name) is not None

    def _leftover(self, f: FileEntry, now: float) -> bool:
        return f.ctime < self.started or now - f.ctime >= self.GRACE_S

    def due(self, entry: FileEntry) -> float | None:
        if not self._private(entry):
            return None
        return entry.ctime if entry.ctime < self.started else entry.ctime + self.GRACE_S

    @property
    def due_slack(self) -> float | None:
        return 1.0

    def due_among(
        self, files: Sequence[FileEntry], present: Versions
    ) -> Iterator[tuple[FileEntry, float]]:
        for f in named_private(files):
            if self._private(f):
                if f.ctime < self.started:
                    yield f, -math.inf
                else:
                    yield f, first_after(f.ctime, self.GRACE_S, strictly=False)

    def select(self, files: Sequence[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        for f in named_private(files):
            if self._private(f) and self._leftover(f, now):
                yield f, "ocrd was stopped while deleting it"

    def held(self, files: Iterable[FileEntry], now: float) -> Iterator[tuple[FileEntry, str]]:
        for f in named_private(files):
            if self._private(f):
                if not self._leftover(f, now):
                    yield f, f"an ocrd is deleting it right now; a leftover after {self.GRACE_S:g}s"
            elif private.looks_private(f.name):
                yield f, "named like ocrd's private names, but not a name ocrd made: left alone"
