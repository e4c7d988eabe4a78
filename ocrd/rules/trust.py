"""Whose word a file is: a model file decides another's fate (ranks it out of its family, or
vouches that a model stays) only if it is settled, dated no later than now, and owned by
someone who could have had the other file deleted anyway."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ocrd.fs.inventory import FileEntry

# How far ahead of our clock an mtime may be and still count as "now": a writer on another
# host (NFS) whose clock runs a little fast. Beyond it the date was set, not written (touch -d,
# an archive), and says nothing about which version is newer.
SKEW_S = 30.0


@dataclass(frozen=True)
class Trust:
    """``owners``: the uids whose files may rank or vouch for anyone's — root, model_dir's
    owner and retention.trusted_owners; any other owner's files only for files of that same
    owner (they could delete those themselves). ``settle``: watch.settle; a file still
    settling is being written, and says nothing yet."""

    owners: frozenset[int] = frozenset({0})
    settle: float = 0.0

    def trusted_from(self, entry: FileEntry) -> float:
        """From when ``entry`` may count for others: once ``settle`` has passed since both
        its ctime (the kernel's own record of its last change) and its mtime, an mtime up to
        SKEW_S ahead counting as now. A single time, so that whether it counts only ever
        changes once (ocrd.rules.foresight.coming_due foresees it)."""
        return max(entry.mtime - SKEW_S, entry.ctime) + self.settle

    def doubt(self, entry: FileEntry, now: float) -> str | None:
        """Why ``entry`` vouches for no file at all at ``now``, or None."""
        if now >= self.trusted_from(entry):
            return None
        if entry.mtime - SKEW_S > now:
            return "untrusted: mtime in the future"
        return "untrusted: settling"

    def stranger(self, entry: FileEntry, of: FileEntry) -> str | None:
        """Why ``entry``'s owner has no say over ``of``, or None."""
        if entry.uid in self.owners or entry.uid == of.uid:
            return None
        return f"untrusted: owner uid {entry.uid}"

    def distrust(self, entry: FileEntry, of: FileEntry, now: float) -> str | None:
        """Why ``entry`` does not count against ``of`` (ranks it no lower, does not vouch that
        a model of its owner stays), or None if it does."""
        return self.doubt(entry, now) or self.stranger(entry, of)


def model_dir_owner(model_dir: str | bytes | os.PathLike[str]) -> int | None:
    """The uid that owns model_dir, None if it cannot be told (then only root and the
    configured owners are trusted: the safe side)."""
    try:
        return os.stat(model_dir).st_uid
    except OSError:
        return None
