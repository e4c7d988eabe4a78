"""One pass of the command line, ``ocrd list`` or ``ocrd clean`` (``--dry-run`` too): the walk,
the plan, the delete-all refusal, then what a deletion of each planned file meets now (probed,
or done), as Outcomes. ``list`` and ``clean --dry-run`` ask the very same probe, so they give
one answer about a file in use. The command line only prints what this returns."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from ocrd.base import log
from ocrd.base.collector import collecting_paused
from ocrd.base.errors import ModelDirMissing
from ocrd.config.schema import Config
from ocrd.fs.arrival import Arrivals
from ocrd.fs.holds import holds
from ocrd.fs.inventory import FileEntry, Inventory, display
from ocrd.fs.place import Place
from ocrd.fs.scan import scan, scan_batches, unreadable
from ocrd.ops import purge
from ocrd.ops.check import probe_each
from ocrd.ops.delete import apply, delete_groups
from ocrd.ops.inuse import InUse, limited_check
from ocrd.ops.outcomes import Outcome, Recorder, Status, say_refused
from ocrd.ops.stream import Walked, planned
from ocrd.ops.totrash import ToTrash
from ocrd.rules.decision import Decision, Plan
from ocrd.rules.families import Ranking
from ocrd.rules.foresight import LastToGo, coming_due
from ocrd.rules.parts import PART, parts
from ocrd.rules.refusal import Refusal, guarded, refuse_all, refused, staying
from ocrd.rules.retention import Rules, family_rules, plan
from ocrd.rules.selectors import versions
from ocrd.rules.trust import model_dir_owner
from ocrd.watch.index import Index


class Planned(NamedTuple):
    """A whole plan, the inventory it came from (for its mount points), the refusal of its
    deletions that would leave no model file that counts for them (then they are kept), and
    the rules that made it."""

    plan: Plan
    inventory: Inventory
    refusal: Refusal | None
    rules: Rules


@dataclass
class Cleaned:
    """What one ``ocrd clean`` did, filled in as it goes: every outcome (``recorder.kept``),
    the refusal once the plan is known, the mount points not entered."""

    recorder: Recorder = field(default_factory=lambda: Recorder(keep=True))
    refusal: Refusal | None = None
    mounts: list[tuple[bytes, str]] = field(default_factory=list)


def rules_for(config: Config, place: Place) -> Rules:
    """The config's rules, with the files restored from the trash held (ocrd.fs.trash)."""
    return Rules.from_config(
        config.retention, config.watch.settle, owner=model_dir_owner(place.real)
    ).holding(holds(place, time.time()))


def to_trash(config: Config) -> ToTrash | None:
    return ToTrash(config.trash.grace) if config.trash.grace > 0 else None


def whole_plan(config: Config, place: Place, now: float | None = None) -> Planned:
    """The plan of all of model_dir at ``now`` (default: the current time), refusal applied."""
    inventory = scan(place)
    walk_news(inventory.unreadable, inventory.mounts)
    rules = rules_for(config, place)
    with collecting_paused():  # a Decision per file, and no cycle among them
        # Files of a directory that was moved in arrived with it (ocrd.fs.arrival).
        files = Arrivals(place.real).apply(inventory.files)
        the_plan = plan(files, rules, time.time() if now is None else now)
    the_plan, refusal = guarded(
        the_plan,
        inventory.file_count,
        rules,
        allow=config.retention.allow_delete_all,
        stays=staying(the_plan.decisions, rules, the_plan.now),
    )
    return Planned(the_plan, inventory, refusal, rules)


Listed = tuple[Plan, list[float | None], Ranking | None, dict[bytes, str]]


def listing(
    config: Config, place: Place, now: float, at: float | None
) -> tuple[Iterator[Listed], list[tuple[bytes, str]]]:
    """``list --json``'s plan, part by part: each part's plan at ``at`` (default: ``now``),
    when each of its files comes due from ``now``, the ranking of its versions and what
    blocks its deletions; and the mount points not entered. The walk keeps one packed record
    per file (ocrd.watch.index); the tree is planned in parts that plan alone as all of it
    would (ocrd.rules.parts), twice: first for what needs every file (the refusal to delete
    every model file, and when each file comes due past it), then part by part as the caller
    asks for them."""
    when = now if at is None else at
    rules = rules_for(config, place)
    index = Index()
    unread: list[tuple[bytes, str]] = []
    directories: list[tuple[bytes, int]] = []
    mounts: list[tuple[bytes, str]] = []
    with collecting_paused():
        for batch in scan_batches(place, unread, directories, mounts=mounts, chunk=PART):
            for e in batch:
                index.put(e)
    walk_news(unread, mounts)
    arrivals = Arrivals(place.real)
    cache: dict[bytes, float] = {}

    def pieces() -> Iterator[list[FileEntry]]:
        return parts(
            index.entries,
            len(index),
            rules,
            get=index.get,
            finish=lambda part: arrivals.apply(part, cache),
            tick=lambda: None,
        )

    allow = config.retention.allow_delete_all
    stays: dict[int, int] = {}
    deletions: list[Decision] = []
    last = LastToGo(rules.by_name, now, rules.trust)
    with collecting_paused():
        for part in pieces():
            the_plan = plan(part, rules, when)
            for uid, n in staying(the_plan.decisions, rules, when).items():
                stays[uid] = stays.get(uid, 0) + n
            deletions.extend(the_plan.deletions)
            if not allow:
                for f, due in zip(part, coming_due(part, rules, now), strict=True):
                    last.add(f, due)
    refusal = refuse_all(deletions, index.files, rules, allow=allow, stays=stays)
    del deletions
    families = family_rules(config.retention)

    def listed() -> Iterator[Listed]:
        for part in pieces():
            with collecting_paused():
                the_plan = plan(part, rules, when)
                if refusal is not None:
                    the_plan = refused(the_plan, refusal)
                dues = [
                    None if d is None else d.at if allow else last.when(f, d)
                    for f, d in zip(part, coming_due(part, rules, now), strict=True)
                ]
                ranked = (
                    families.rank(versions(part), rules.trust, when)
                    if families is not None
                    else None
                )
                yield the_plan, dues, ranked, blocked(config, the_plan, place)

    return listed(), mounts


def walk_news(
    unreadable_dirs: Iterable[tuple[bytes, str]], mounts: Iterable[tuple[bytes, str]]
) -> None:
    """What the walk could not read, and where it did not go: before any deletion after it."""
    for rel, why in unreadable_dirs:
        unreadable(rel, why)
    for rel, device in mounts:
        log.get().warning(
            "mount_skipped",
            path=display(rel),
            device=device,
            detail="another filesystem than model_dir's: not entered, nothing deleted there",
        )


def in_use(config: Config, *, open_files: bool = True) -> InUse:
    unknown = config.retention.unknown_holders
    return InUse(
        unknown=unknown,
        on_limited=lambda view: limited_check(log.get(), view, unknown),
        open_files=open_files,
    )


def checked(
    config: Config,
    deletions: Iterable[Decision],
    place: Place,
    before_open: Callable[[bytes], None] | None = None,
) -> Iterator[Outcome]:
    """What a deletion of each of ``deletions`` would meet now, deleting nothing: the one
    answer behind ``list``'s verdicts and ``clean --dry-run``'s report. Under
    ``retention.dry_run`` nothing is asked: the daemon then reports every planned deletion as
    model_would_be_deleted, without checking for holders. Only /proc is asked: a look opens no
    model file, which the daemon would record as a use of it (docs/budget.md)."""
    if config.retention.dry_run:
        return (Outcome(d, Status.WOULD_DELETE) for d in deletions)
    holders = in_use(config, open_files=False)
    holders.before_open = before_open
    return probe_each(deletions, str(place), holders)


def blocked(
    config: Config,
    the_plan: Plan,
    place: Place,
    before_open: Callable[[bytes], None] | None = None,
) -> dict[bytes, str]:
    """Files the plan would delete that a deletion would not delete right now, and why: in use
    (or of unknown holders), which ``list`` shows as the verdict instead of "delete"; or
    another skip or failure (``clean --dry-run``'s), which it adds to the reason."""
    return {
        o.decision.entry.path: o.detail
        for o in checked(config, the_plan.deletions, place, before_open)
        if o.status is not Status.WOULD_DELETE and o.detail is not None
    }


def clean(config: Config, place: Place, cleaned: Cleaned, *, dry_run: bool) -> None:
    """One ``ocrd clean``, into ``cleaned``. Where every rule judges each file alone, each
    directory is deleted from as soon as the walk has planned it (ocrd.ops.stream); else the
    whole plan comes first. If model_dir goes meanwhile, ``cleaned`` holds what was done
    before ModelDirMissing is raised. First, what a killed process left in the trash is
    cleared and what is due there purged: ``ocrd clean`` is the whole of ocrd for cron users."""
    if not dry_run:
        purge.recover(place, in_use=in_use(config))
        purge.purge_due(place, now=time.time(), grace=config.trash.grace, in_use=in_use(config))
    rules = rules_for(config, place)
    recorder = cleaned.recorder
    if not rules.per_file:
        the_plan, inventory, refusal, _ = whole_plan(config, place)
        cleaned.refusal, cleaned.mounts = refusal, list(inventory.mounts)
        if refusal is not None:
            say_refused(refusal, dry_run=dry_run)
        for o in (
            checked(config, the_plan.deletions, place)
            if dry_run
            else apply(the_plan, str(place), in_use=in_use(config), to_trash=to_trash(config))
        ):
            recorder.record(o)
        return
    walked = Walked(mounts=cleaned.mounts)
    groups = planned(
        place,
        rules,
        time.time(),
        allow_delete_all=config.retention.allow_delete_all,
        walked=walked,
        news=walk_news,
    )
    outcomes = (
        checked(config, (d for group in groups for d in group), place)
        if dry_run
        else delete_groups(groups, str(place), in_use=in_use(config), to_trash=to_trash(config))
    )
    try:
        for o in outcomes:
            recorder.record(o)
    except ModelDirMissing:
        cleaned.refusal = None
        raise
    cleaned.refusal = walked.refusal
    if walked.refusal is not None:
        say_refused(walked.refusal, dry_run=dry_run)
