"""What the planner decides for each file: a Verdict with the rule and the reason, and the Plan
of them all."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from ocrd.fs.inventory import FileEntry

DAY = 86_400.0


class Verdict(StrEnum):
    KEEP = "keep"
    DELETE = "delete"
    PROTECTED = "protected"
    SETTLING = "settling"


class Decision(NamedTuple):
    entry: FileEntry
    verdict: Verdict
    # "prefix", "max_age", "keep_newest", "interrupted", "whitelist" or None; a file kept by
    # the floor names the key that keeps it: "keep_last_version" or "allow_delete_all".
    rule: str | None
    reason: str


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...]
    now: float

    @property
    def deletions(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.verdict is Verdict.DELETE)


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def changed_at(f: FileEntry, now: float) -> float:
    """When the file last changed, as far as settling goes: the later of mtime and ctime (ctime
    too: a file copied with its old mtime kept, by cp -p or rsync -t, is still new here). An
    mtime in the future was set, not written (touch -d, an archive, a skewed clock), and would
    keep the file settling until then: it is ignored for ctime, which only the kernel sets."""
    return f.ctime if f.mtime > now else max(f.mtime, f.ctime)
