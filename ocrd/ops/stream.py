"""``ocrd clean``'s pass when every rule judges each file alone (Rules.per_file): each directory
is planned as the walk reaches it and handed to the deleter at once, so the deleting threads
work while the walk goes on, as ``find -delete`` deletes while it walks. A whole plan first
(ocrd.rules.retention.plan over the whole inventory) is needed only by rules that compare files with
each other (``keep_newest``, ``keep_last_version``).

The plan of a directory is the one the whole inventory would give it: the same rules, one
``now`` for the whole pass, the same arrival evidence (ocrd.fs.arrival, one stat per directory).
Two answers need the whole walk, and wait for it:

- The refusal of deletions that would leave no model file that counts for them
  (``allow_delete_all``, ocrd.rules.refusal.refuse_all): a deletion by age or rank is held back
  until a model file that stays and counts for it has been seen (one of a trusted owner
  counts for all, in the first directory on any real host; another for its owner's);
  deletions by name go at once, they are never refused. If the walk ends with deletions
  still held, those are the refused ones.
- model_dir still being the directory the walk started from (ocrd.fs.place.still_there): asked
  every ``recheck_s`` while the walk goes on and once at its end. If it was swapped, the
  groups already handed over are finished (and reported) and ModelDirMissing is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ocrd.fs.arrival import Arrivals
from ocrd.fs.inventory import FileEntry
from ocrd.fs.place import Place
from ocrd.fs.scan import scan_batches
from ocrd.ops.delete import by_directory
from ocrd.rules.decision import Decision, Verdict
from ocrd.rules.refusal import Refusal, refuse_all
from ocrd.rules.retention import Rules, plan

News = Callable[[Sequence[tuple[bytes, str]], Sequence[tuple[bytes, str]]], None]
"""Called with the directories the walk could not read and those on another filesystem, as it
finds them, before any deletion from later directories."""


@dataclass
class Walked:
    """What the walk found, filled in as it goes; ``refusal`` is known once it is done."""

    unreadable: list[tuple[bytes, str]] = field(default_factory=list)
    directories: list[tuple[bytes, int]] = field(default_factory=list)
    mounts: list[tuple[bytes, str]] = field(default_factory=list)
    model_files: int = 0
    refusal: Refusal | None = None


def planned(
    place: Place,
    rules: Rules,
    now: float,
    *,
    allow_delete_all: bool,
    walked: Walked,
    news: News = lambda unreadable, mounts: None,
    recheck_s: float = 0.1,
    plan_at: int = 512,
) -> Iterator[list[Decision]]:
    """The deletions of model_dir, one group per directory in inode order, each yielded as soon
    as the walk has planned its directory (see the module's doc). ``rules`` must be per_file.
    Directories are planned together once they hold ``plan_at`` files or more: a plan per
    directory of two files would cost more than the deletions (10k directories)."""
    assert rules.per_file, "a rule that compares files needs the whole plan first"
    arrivals = Arrivals(place.real)
    cache: dict[bytes, float] = {}
    named = rules.by_name
    doubt, trusted = rules.trust.doubt, rules.trust.owners
    stays: dict[int, int] = {}  # per owner uid, the model files seen that stay and may vouch
    everyone = allow_delete_all  # whether a trusted owner's file stays (or none need)
    held: dict[int, list[Decision]] = {}  # per owner uid, deletions by age or rank no file
    # seen so far counts for

    def deletions(files: list[FileEntry]) -> Iterator[list[Decision]]:
        nonlocal everyone
        deleting: list[Decision] = []
        for d in plan(arrivals.apply(files, cache), rules, now).decisions:
            f = d.entry
            if f.is_link:
                continue
            walked.model_files += 1
            if d.verdict is Verdict.DELETE:
                deleting.append(d)
            elif doubt(f, now) is None:
                stays[f.uid] = stays.get(f.uid, 0) + 1
                everyone = everyone or f.uid in trusted
        free = [d for uid in list(held) if everyone or uid in stays for d in held.pop(uid)]
        for d in deleting:
            if everyone or d.rule in named or d.entry.uid in stays:
                free.append(d)
            else:
                held.setdefault(d.entry.uid, []).append(d)
        yield from by_directory(free)

    told_unreadable = told_mounts = 0

    def tell() -> None:
        """What the walk found since last time that it could not read or did not enter."""
        nonlocal told_unreadable, told_mounts
        if len(walked.unreadable) > told_unreadable or len(walked.mounts) > told_mounts:
            news(walked.unreadable[told_unreadable:], walked.mounts[told_mounts:])
            told_unreadable, told_mounts = len(walked.unreadable), len(walked.mounts)

    waiting: list[FileEntry] = []
    for batch in scan_batches(
        place, walked.unreadable, walked.directories, mounts=walked.mounts, recheck_s=recheck_s
    ):
        tell()
        waiting += batch
        if len(waiting) >= plan_at:
            files, waiting = waiting, []
            yield from deletions(files)
    tell()
    yield from deletions(waiting)
    if held:
        waited = [d for group in held.values() for d in group]
        walked.refusal = refuse_all(
            waited, walked.model_files, rules, allow=allow_delete_all, stays=stays
        )
        refused = walked.refusal.paths if walked.refusal is not None else frozenset()
        # Not reached: what is still held, no file seen counts for, and refuse_all agrees.
        yield from by_directory([d for d in waited if d.entry.path not in refused])
