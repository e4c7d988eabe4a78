"""The refusal of a plan that would leave no model file that counts: its deletions by age or
rank are kept (retention.allow_delete_all)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from ocrd.fs.inventory import FileEntry
from ocrd.rules.decision import Decision, Plan, Verdict
from ocrd.rules.retention import Rules


@dataclass(frozen=True)
class Refusal:
    """Deletions by age or rank that were refused: with them, no model file that counts for
    them (ocrd.rules.trust) would be left under model_dir. ``paths``: those deletions."""

    would_delete: int
    would_free: int
    of_files: int
    paths: frozenset[bytes] = field(default=frozenset(), repr=False, compare=False)

    def fields(self) -> dict[str, object]:
        return {
            "reason": "every_model_file",
            "would_delete": self.would_delete,
            "would_free": self.would_free,
            "of_files": self.of_files,
            "detail": f"the plan would leave no model file under model_dir that counts for "
            f"{self.would_delete} of its deletions by age or rank (of {self.of_files} model "
            "file(s)): they are kept; a file counts if it is settled and owned by root, "
            "model_dir's owner, a retention.trusted_owners user or the deleted file's owner",
            "action": "check the rules with 'ocrd list'; to allow it, set "
            "retention.allow_delete_all = true",
        }


def refuse_all(
    deletions: Sequence[Decision],
    model_files: int,
    rules: Rules,
    *,
    allow: bool,
    stays: Mapping[int, int],
) -> Refusal | None:
    """A Refusal of the deletions by age or rank among ``deletions`` for which no model file
    that stays counts: ``stays`` holds, per owner uid, the model files under model_dir that
    neither these deletions nor any already due remove and that may vouch (Trust.doubt:
    settled, not dated ahead; staying() counts them). A file of a trusted owner counts for
    every deletion, any other file for its own owner's. ``model_files`` counts the regular
    files under model_dir, all of them, also when only a batch of them was planned (the
    daemon plans what changed). A file marked for deletion by its name (Selector.by_name: a
    prefix, an interrupted deletion) is never refused: whoever named it so asked for exactly
    that file's deletion; and without one deletion by age or rank there is nothing to
    refuse."""
    named = rules.by_name
    chosen = [d for d in deletions if d.rule not in named]
    if allow or not chosen:
        return None
    if any(stays.get(uid, 0) > 0 for uid in rules.trust.owners):
        return None
    lone = [d for d in chosen if stays.get(d.entry.uid, 0) <= 0]
    if not lone:
        return None
    return Refusal(
        len(lone),
        sum(d.entry.size for d in lone),
        model_files,
        frozenset(d.entry.path for d in lone),
    )


def staying(decisions: Iterable[Decision], rules: Rules, now: float) -> dict[int, int]:
    """Per owner uid, the model files a plan leaves that may vouch for a deletion: what
    refuse_all takes as ``stays`` for a plan of every model file."""
    doubt = rules.trust.doubt
    stays: dict[int, int] = {}
    for d in decisions:
        f = d.entry
        if d.verdict is not Verdict.DELETE and not f.is_link and doubt(f, now) is None:
            stays[f.uid] = stays.get(f.uid, 0) + 1
    return stays


def left_after(owners: Mapping[int, int], gone: Iterable[FileEntry]) -> dict[int, int]:
    """``owners`` (model files per uid, as the daemon's index counts them) less ``gone``."""
    left = dict(owners)
    for f in gone:
        if not f.is_link and f.uid in left:
            left[f.uid] -= 1
    return left


def guarded(
    the_plan: Plan, model_files: int, rules: Rules, *, allow: bool, stays: Mapping[int, int]
) -> tuple[Plan, Refusal | None]:
    """``the_plan`` with the delete-all refusal applied (refuse_all, then refused), and the
    refusal, if any: how every whole plan, the command line's and the daemon's, is guarded."""
    refusal = refuse_all(the_plan.deletions, model_files, rules, allow=allow, stays=stays)
    return (the_plan if refusal is None else refused(the_plan, refusal)), refusal


def refused(the_plan: Plan, refusal: Refusal) -> Plan:
    """``the_plan`` with the refused deletions kept instead, naming the refusal: what
    ``ocrd list`` shows and what nothing deletes. Deletions by name still go."""
    why = "no model file that counts for it would be left (retention.allow_delete_all)"
    paths = refusal.paths
    return replace(
        the_plan,
        decisions=tuple(
            Decision(d.entry, Verdict.KEEP, "allow_delete_all", f"{d.rule}: {d.reason}; {why}")
            if d.verdict is Verdict.DELETE and d.entry.path in paths
            else d
            for d in the_plan.decisions
        ),
    )
