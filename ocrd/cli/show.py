"""What the one-shot commands print: ``list``'s table or JSON rows, ``clean``'s report."""

from __future__ import annotations

import calendar
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ocrd.base.human import size
from ocrd.config.durations import approx_duration
from ocrd.config.sizes import format_size
from ocrd.fs.inventory import FileEntry, Inventory, display, display_all, printable
from ocrd.ops.outcomes import Recorder, Status
from ocrd.rules.decision import Decision, Plan
from ocrd.rules.families import Member, Ranking
from ocrd.rules.refusal import Refusal

if TYPE_CHECKING:
    from ocrd.rules.budget import Budget  # `list` with a budget only: imported where it is shown


def iso(t: float) -> str:
    """A wall-clock time as ISO 8601 UTC, to the second, rounded up: ``list --at`` that
    time gives the verdict it stands for. Beyond the year 9999, 9999-12-31T23:59:59Z."""
    last = calendar.timegm((9999, 12, 31, 23, 59, 59, 0, 0, 0))
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(min(math.ceil(t), last)))


_BLOCKED = {
    "in_use": "a process holds it open or mapped",
    "in_use_unknown": "no lease, and /proc cannot tell who holds it: kept "
    "(retention.unknown_holders)",
    "foreign": "it is another user's, not ocrd's own leftover: left alone",
}


_SKIPPED = {"changed": "it changed since the scan", "vanished": "it is gone since the scan"}


def print_list(
    the_plan: Plan,
    as_json: bool,
    age_by: str = "mtime",
    blocked: dict[bytes, str] | None = None,
    inventory: Inventory | None = None,
    *,
    ranked: Ranking | None = None,
    due: Sequence[float | None] | None = None,
    ahead: str | None = None,
    last_used: Callable[[FileEntry], float | None] = lambda e: None,
    engine: frozenset[bytes] = frozenset(),
    budget: Budget | None = None,
) -> None:
    """``ranked``: each version's family and rank, when families are in use. ``due``: each
    decision's due_at (ocrd.rules.foresight.due_at), in the plan's order. ``ahead``: the plan is
    for a later time than now (``list --at``), as the operator wrote it."""
    now = the_plan.now
    blocked = blocked or {}
    mounts = inventory.mounts if inventory is not None else ()

    def verdict(d: Decision) -> str:
        why = blocked.get(d.entry.path)
        return why if why in _BLOCKED else d.verdict

    def reason(d: Decision) -> str:
        why = blocked.get(d.entry.path)
        return printable(
            f"{d.reason}, but {_BLOCKED.get(why) or _SKIPPED.get(why, why)}" if why else d.reason
        )

    def used(d: Decision) -> tuple[float, str]:
        """The file's last use, and whether ocrd saw it ("use") or it is its arrival."""
        t = last_used(d.entry)
        return (d.entry.ctime, "arrival") if t is None else (t, "use")

    def age(d: Decision) -> float:
        # Negative for a timestamp in the future: the text says "future", JSON says 0.
        return now - (d.entry.atime if age_by == "atime" else d.entry.mtime)

    if as_json:
        print_rows(
            [(the_plan, due, ranked, blocked)],
            mounts,
            age_by,
            last_used=last_used,
            engine=engine,
            budget=budget,
        )
        return
    # With families in use, two more columns: the rank of each version in its family (1 is
    # the newest) before the path, and the family after the reason.
    rank = f"{'RANK':>4}  " if ranked is not None else ""
    family = "  FAMILY" if ranked is not None else ""
    out = [
        f"{'VERDICT':<10} {'SIZE':>9} {'AGE':>6}  {'RULE':<9}  {'LAST USED':>9}  "
        f"{rank}PATH  (REASON){family}"
    ]
    if ahead is not None:
        out.insert(
            0,
            f"at {iso(now)} ({ahead}), if no file arrives or changes and the config stays; "
            "in use: as of now",
        )
    for d in sorted(the_plan.decisions, key=lambda d: d.entry.path):
        line = (
            f"{verdict(d).upper():<10} {_size(d.entry.size):>9} "
            f"{approx_duration(age(d)):>6}  {d.rule or '-':<9}  {_ago(now, *used(d)):>9}  "
        )
        if ranked is not None:
            m = _member(d, ranked)
            why = reason(d)
            line += f"{m['rank'] or '-':>4}  {display(d.entry.path)}  ({why})  "
            line += m["family"] if m["family"] is not None else "-"
            note = m["rank_reason"]
            # A version kept for what it says says so in its reason already.
            if note is not None and note not in why and ranked and ranked.notable(d.entry):
                line += f"  ({note})"
        else:
            line += f"{display(d.entry.path)}  ({reason(d)})"
        out.append(line)
    counts: dict[str, list[int]] = {}
    for d in the_plan.decisions:
        c = counts.setdefault(verdict(d), [0, 0])
        c[0] += 1
        c[1] += d.entry.size
    total = sum(c[0] for c in counts.values())
    parts = [f"{v} {c[0]} ({_size(c[1])})" for v, c in sorted(counts.items())]
    out.append(f"{total} file(s): " + (", ".join(parts) if parts else "nothing under model_dir"))
    out += [
        printable(
            f"not entered: {display(rel)}  (mount point: another filesystem, device {device})"
        )
        for rel, device in mounts
    ]
    if budget is not None:
        out += _budget_text(budget)
    print("\n".join(out))


def _ago(now: float, t: float, by: str) -> str:
    """How long ago a file was last used; ``~`` marks its arrival, for a file never seen used."""
    return ("~" if by == "arrival" else "") + approx_duration(max(0.0, now - t))


def _budget_text(budget: Budget) -> list[str]:
    """The budget's order, for the operator: which files it takes now, and why each is or is
    not a candidate."""
    from ocrd.rules.budget import describe  # noqa: PLC0415 — see the imports

    state = "crossed" if budget.crossed else "holds"
    out = [f"budget {state}: {describe(budget)}"]
    if budget.purge:
        out.append(f"  the trash first: {format_size(budget.purge)}, oldest first")
    lines = sorted(budget.lines(), key=lambda x: (x.position is None, x.position or 0))
    for line in lines:
        mark = f"#{line.position}" if line.position is not None else "-"
        take = "TAKES" if line.taken else "     "
        out.append(printable(f"  {mark:>5} {take} {display(line.entry.path)}  ({line.why})"))
    return out


def print_rows(
    parts: Iterable[tuple[Plan, Sequence[float | None] | None, Ranking | None, dict[bytes, str]]],
    mounts: Iterable[tuple[bytes, str]],
    age_by: str,
    *,
    last_used: Callable[[FileEntry], float | None] = lambda e: None,
    engine: frozenset[bytes] = frozenset(),
    budget: Budget | None = None,
) -> None:
    """``list --json``: one JSON array, each part's rows written before the next part is
    asked for (ocrd.ops.passes.listing), so no row per file of the whole tree is held. A part
    is a plan, each decision's due_at (None: none known), the ranking of its versions and
    what blocks its deletions; the mount points not entered come last. ``last_used``: each
    file's recorded last use (None: its arrival stands for it, docs/budget.md); ``engine``:
    the files the engine lists itself; ``budget``: the budget's order, when one is set."""
    budget_of = {id(line.entry): line for line in budget.lines()} if budget is not None else {}
    out = sys.stdout
    out.write("[")
    sep = ""
    for the_plan, due, ranked, blocked in parts:
        now = the_plan.now
        dues: Iterable[float | None] = due if due is not None else [None] * len(the_plan.decisions)
        rows = []
        for d, t in zip(the_plan.decisions, dues, strict=True):
            why = blocked.get(d.entry.path)
            verdict = why if why in _BLOCKED else str(d.verdict)
            reason = printable(
                f"{d.reason}, but {_BLOCKED.get(why) or _SKIPPED.get(why, why)}"
                if why
                else d.reason
            )
            stamp = d.entry.atime if age_by == "atime" else d.entry.mtime
            row = {
                "path": display(d.entry.path),
                "size": d.entry.size,
                "mtime": d.entry.mtime,
                "atime": d.entry.atime,
                # When it arrived in model_dir, as far as the filesystem tells (ocrd.fs.arrival).
                "arrived": d.entry.ctime,
                "in_model_dir_s": max(0.0, round(now - d.entry.ctime, 3)),
                # Negative for a timestamp in the future: JSON says 0.
                "age_s": max(0.0, round(now - stamp, 3)),
                "verdict": verdict,
                "rule": d.rule,
                "reason": reason,
                "symlink": d.entry.is_link,
                "owner": d.entry.uid,
                **_member(d, ranked),
                # When a pass would first delete it under these rules; null: never.
                "due_at": None if t is None else iso(t),
            }
            used = last_used(d.entry)
            # Its last use as ocrd recorded it, or its arrival (docs/budget.md).
            row["last_used"] = iso(d.entry.ctime if used is None else used)
            row["last_used_by"] = "arrival" if used is None else "use"
            row["engine_lists"] = d.entry.path in engine
            if budget is not None:
                line = budget_of.get(id(d.entry))
                row["budget"] = None
                if line is not None:
                    why = printable(line.why)
                    row["budget"] = {"position": line.position, "taken": line.taken, "why": why}
            rows.append(sep + json.dumps(row))
            sep = ", "
        out.write("".join(rows))
    for rel, device in mounts:
        row = {
            "path": display(rel),
            "size": 0,
            "mtime": None,
            "atime": None,
            "age_s": None,
            "verdict": "skipped",
            "rule": None,
            "reason": printable(f"mount point: another filesystem (device {device}), not entered"),
            "symlink": False,
            "family": None,
            "rank": None,
            "rank_reason": None,
            "owner": None,
            "device": device,
            "due_at": None,
        }
        out.write(sep + json.dumps(row))
        sep = ", "
    out.write("]\n")


def _member(d: Decision, ranked: Ranking | None) -> dict[str, Any]:
    """``family``, ``rank`` and ``rank_reason`` of a decision's file, None for a file in no
    family (or when families are not in use)."""
    m: Member | None = ranked.get(id(d.entry)) if ranked is not None else None
    if m is None or ranked is None:
        return {"family": None, "rank": None, "rank_reason": None}
    why = ranked.why(d.entry)
    return {
        "family": m.family,
        "rank": m.rank,
        "rank_reason": printable(why) if why is not None else None,
    }


def print_report(
    recorder: Recorder,
    refusal: Refusal | None,
    mounts: Iterable[tuple[bytes, str]],
    *,
    dry_run: bool,
    as_json: bool,
) -> None:
    """``ocrd clean``'s stdout: every outcome, the totals, and why nothing was deleted."""
    done = recorder.totals.since_start
    freed = done.freed + done.would_free
    deleted: list[str] = []
    skipped: list[dict[str, str | None]] = []
    failed: list[dict[str, str | None]] = []
    kept = recorder.kept
    gone = (Status.DELETED, Status.WOULD_DELETE)
    for o, path in zip(kept, display_all([o.decision.entry.path for o in kept]), strict=True):
        if o.status in gone:
            deleted.append(path)
        elif o.status is Status.SKIPPED:
            skipped.append({"path": path, "reason": o.detail})
        else:
            failed.append({"path": path, "error": o.detail})
    if as_json:
        json.dump(
            {
                "deleted": deleted,
                "freed_bytes": freed,
                "dry_run": dry_run,
                # Why nothing was deleted, when the plan would have deleted every model file.
                "refused": refusal.fields() if refusal is not None else None,
                "skipped": skipped,
                "failed": failed,
                "mounts_skipped": [
                    {"path": display(rel), "device": device} for rel, device in mounts
                ],
            },
            sys.stdout,
        )
        sys.stdout.write("\n")
    else:
        verb = "would delete" if dry_run else "deleted"
        lines = [f"{verb} {p}" for p in deleted]
        lines += [f"skipped {s['path']} ({printable(str(s['reason']))})" for s in skipped]
        lines += [f"failed  {f['path']} ({printable(str(f['error']))})" for f in failed]
        if refusal is not None:
            fields = refusal.fields()
            lines.append(f"refused: {fields['detail']}; {fields['action']}")
        lines.append(
            f"{verb} {len(deleted)} file(s), {_size(freed)}"
            + (f"; skipped {len(skipped)}" if skipped else "")
            + (f"; failed {len(failed)}" if failed else "")
        )
        print("\n".join(lines))


def _size(n: float) -> str:
    return size(n, short=True)
