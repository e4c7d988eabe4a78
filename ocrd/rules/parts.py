"""A big tree planned in parts: bounded work between two looks at the loop (the watchdog,
SIGTERM) and a bounded number of records alive at once, with the verdicts planning all of it
at once would give.

Planning a set of files gives the same verdicts as planning the whole tree when every family
(ocrd.rules.families) lies wholly inside one set: per-file rules judge a file alone, and
keep_newest and the last-version floor look only within a family. The refusal to delete
every model file is weighed outside the planner, against the whole index (ocrd.daemon.batcher), and
the census adds up part by part. So without families a part is any PART files; with them,
the files are first sorted into buckets by their family, a bucket per PART files on average,
and a bucket is a part."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from ocrd.fs.inventory import FileEntry
from ocrd.rules.families import Families
from ocrd.rules.retention import Rules
from ocrd.rules.selectors import KeepNewestRule

PART = 8192  # files planned between two looks at the loop
TICK_EVERY = 4096  # files looked at between two looks at the loop while sorting into buckets

Tick = Callable[[], object]


def families_of(rules: Rules) -> Families | None:
    """The families ``rules`` judge by (keep_newest's and the floor's are one), or None."""
    for s in rules.selectors:
        if isinstance(s, KeepNewestRule):
            return s.families
    return rules.floor


def chunks(entries: Iterable[FileEntry], tick: Tick, size: int = PART) -> Iterator[list[FileEntry]]:
    """``entries`` in lists of at most ``size``, ``tick`` called before each."""
    part: list[FileEntry] = []
    for e in entries:
        part.append(e)
        if len(part) >= size:
            tick()
            yield part
            part = []
    tick()
    if part:
        yield part


def buckets(
    entries: Iterable[FileEntry],
    count: int,
    families: Families,
    tick: Tick,
    size: int = PART,
) -> list[list[bytes]]:
    """The paths of ``entries`` (about ``count`` of them) sorted into buckets of about
    ``size`` each, every family wholly in one bucket; files in no family go anywhere.
    Only paths are kept: a part's records are looked up again when it is planned."""
    n = max(1, -(-count // size))
    found: list[list[bytes]] = [[] for _ in range(n)]
    key = families.key
    for i, e in enumerate(entries):
        if i % TICK_EVERY == 0:
            tick()
        family = None if e.is_link else key(e)
        found[(hash(family) if family is not None else i) % n].append(e.path)
    tick()
    return found


def parts(
    entries: Callable[[], Iterable[FileEntry]],
    count: int,
    rules: Rules,
    *,
    get: Callable[[bytes], FileEntry | None],
    finish: Callable[[list[FileEntry]], list[FileEntry]],
    tick: Tick,
    size: int = PART,
) -> Iterator[list[FileEntry]]:
    """Sets of files, each to be planned alone with the verdicts a plan of all of them gives:
    ``entries()`` (about ``count`` files) in chunks when ``rules`` judge each file alone,
    else sorted into buckets by family, each bucket's records fetched again by ``get``.
    Every part goes through ``finish`` (the arrivals applied) before it is handed on.
    ``tick`` is called at least every ``size`` files, and before each part."""
    if rules.per_file:
        for chunk in chunks(entries(), tick, size):
            yield finish(chunk)
        return
    families = families_of(rules)
    if families is None or any(
        not s.per_file and not isinstance(s, KeepNewestRule) for s in rules.selectors
    ):
        # A rule that judges the whole tree together: one part, as it needs.
        tick()
        yield finish(list(entries()))
        tick()
        return
    for paths in buckets(entries(), count, families, tick, size):
        if paths:
            tick()
            yield finish([e for p in paths if (e := get(p)) is not None])


def kin(
    files: list[FileEntry],
    entries: Callable[[], Iterable[FileEntry]],
    rules: Rules,
    *,
    get: Callable[[bytes], FileEntry | None],
    finish: Callable[[list[FileEntry]], list[FileEntry]],
    tick: Tick,
) -> list[FileEntry]:
    """``files`` (arrivals applied) with what ``rules`` would plan them with: nothing more
    when they judge each file alone, the other members of their families under ``rules``
    (from ``entries()``, fetched by ``get``, through ``finish``) when families are in use,
    and everything for a rule that judges the whole tree together."""
    if rules.per_file:
        return list(files)
    families = families_of(rules)
    if families is None or any(
        not s.per_file and not isinstance(s, KeepNewestRule) for s in rules.selectors
    ):
        tick()
        return finish(list(entries()))
    key = families.key
    keys = {k for f in files if (k := key(f)) is not None}
    have = {f.path for f in files}
    more: list[bytes] = []
    for i, e in enumerate(entries()):
        if i % TICK_EVERY == 0:
            tick()
        if e.path not in have and not e.is_link and key(e) in keys:
            more.append(e.path)
    tick()
    found = [g for p in more if (g := get(p)) is not None]
    return [*files, *finish(found)]
