"""The command line: ``ocrd run | check | list | clean | --version``, as docs/contract.md says."""

from __future__ import annotations

import argparse
import calendar
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from ocrd import __version__
from ocrd.base import log
from ocrd.base.errors import EXIT_CONFIG, EXIT_NOPERM, ConfigError, ModelDirMissing
from ocrd.base.human import size
from ocrd.config.schema import (
    SYSTEM_CONFIG,
    Config,
    approx_duration,
    default_path,
    lint,
    load,
    log_warnings,
    parse_duration,
)
from ocrd.fs.access import NoAccess, denied
from ocrd.fs.holders import lease_report
from ocrd.fs.inventory import Inventory, display, printable
from ocrd.fs.place import Place, pin, raise_fd_limit
from ocrd.ops import passes
from ocrd.ops.delete import (
    Status,
)
from ocrd.ops.outcomes import Recorder
from ocrd.ops.passes import Cleaned, whole_plan
from ocrd.rules.families import Member, Ranking
from ocrd.rules.retention import (
    Decision,
    Plan,
    Refusal,
    due_at,
    family_rules,
    versions,
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.config = args.config or default_path()
    now = time.time()  # the moment `list` looks from (and `list --at` looks ahead from)
    at: float | None = args.at.resolve(now) if getattr(args, "at", None) is not None else None
    if args.command == "run":
        # Imported here: the daemon pulls in watchdog, sdnotify and, above all, the .NET runtime,
        # none of which the one-shot commands need.
        from ocrd.daemon.loop import run  # noqa: PLC0415

        return run(args.config)
    try:
        config = load(args.config)
    except NoAccess as exc:
        print(f"ocrd {args.command}: {exc.denial.advice(_again(args))}", file=sys.stderr)
        return EXIT_NOPERM
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return EXIT_CONFIG
    log.configure(
        "warning" if config.log.level in ("debug", "info") else config.log.level,
        config.log.format,
        stream=sys.stderr,
    )
    warnings = lint(config)
    if args.command == "check":
        # Warnings never change the answer: the config is valid, only perhaps not as meant.
        for warning in warnings:
            print(warning.line(config.path), file=sys.stderr)
        print(config.summary())
        # stdout keeps the contract's one-line summary; how "in use" will be judged is advice.
        print(f"{config.path}: in-use check: {lease_report(config.model_dir)}", file=sys.stderr)
        return 0
    log_warnings(config, warnings)
    before, after = raise_fd_limit()
    log.get().debug("fd_limit", soft_before=before, soft=after)
    place = pin(config.model_dir)  # resolved once: scan and deletions act on this directory
    try:
        if args.command == "list":
            the_plan, inventory, _, rules = whole_plan(config, place, now if at is None else at)
            # In use is known for now only: a file held now shows so at any --at.
            blocked = passes.blocked(config, the_plan, place)
            due = due_at(
                [d.entry for d in the_plan.decisions],
                rules,
                now,
                allow_delete_all=config.retention.allow_delete_all,
            )
            families = family_rules(config.retention)
            ranked = (
                families.rank(
                    versions(d.entry for d in the_plan.decisions), rules.trust, the_plan.now
                )
                if families is not None
                else None
            )
            _print_list(
                the_plan,
                args.json,
                config.retention.age_by,
                blocked,
                inventory,
                ranked=ranked,
                due=due,
                ahead=None if at is None else args.at.text,
            )
            return 0
        return _clean(
            config, place, dry_run=args.dry_run or config.retention.dry_run, as_json=args.json
        )
    except ModelDirMissing as exc:
        print(f"{config.path}: at 'model_dir': {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PermissionError:
        # model_dir was readable when the config was loaded; if it no longer is, say so as
        # load() would have. Any other refusal is not ours to explain: it crashes loudly.
        denial = denied(config.model_dir)
        if denial is None:
            raise
        print(f"ocrd {args.command}: {denial.advice(_again(args))}", file=sys.stderr)
        return EXIT_NOPERM


def _again(args: argparse.Namespace) -> list[str]:
    """This very command, with the config it used named (sudo drops $OCRD_CONFIG)."""
    flags = [f for f in ("json", "dry_run") if getattr(args, f, False)]
    return [
        "ocrd",
        args.command,
        "-c",
        str(args.config.absolute()),
        *(f"--{f.replace('_', '-')}" for f in flags),
        *(["--at", args.at.text] if getattr(args, "at", None) is not None else []),
    ]


EPILOG = f"""\
config file: -c PATH, else $OCRD_CONFIG, else ./config.toml if it exists, else
{SYSTEM_CONFIG} (where `make install` puts it).

exit status:
  0   done (run: stopped by SIGTERM or SIGINT)
  1   any other fatal error (run)
  2   a bad argument, such as a list --at TIME in the past
  77  this user may not read model_dir (check, list, clean); the message names
      who may: run it as root or as model_dir's owner, or join its group
  78  the config is invalid, or model_dir is missing
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocrd",
        description="Keeps an Aspose OCR AI model directory tidy and safe.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ocrd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = (
        "config file (default: $OCRD_CONFIG, else ./config.toml if it exists, else "
        f"{SYSTEM_CONFIG})"
    )
    for name, text in (
        ("run", "the daemon, in the foreground"),
        (
            "check",
            "validate the config, print a one-line summary; warn (stderr) about rules that "
            "cannot mean what they say",
        ),
        ("list", "the audit: every model file with its verdict and the rule behind it"),
        ("clean", "one retention pass, then exit"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("-c", "--config", type=Path, default=None, help=config_help)
        if name in ("list", "clean"):
            p.add_argument("--json", action="store_true", help="print JSON instead of text")
        if name == "list":
            p.add_argument(
                "--at",
                type=_ahead,
                metavar="TIME",
                help="the verdicts at TIME instead of now, if no file arrives or changes and "
                "the config stays: +DURATION (+7d, +12h) or an ISO 8601 time (UTC if it has "
                "no zone)",
            )
        if name == "clean":
            p.add_argument("--dry-run", action="store_true", help="print, delete nothing")
    return parser


class Ahead(NamedTuple):
    """``list --at``: ``+DURATION`` from now, or a wall-clock time."""

    text: str
    seconds: float
    relative: bool

    def resolve(self, now: float) -> float:
        return now + self.seconds if self.relative else self.seconds


def _ahead(text: str) -> Ahead:
    """``+7d``, ``+1h30m`` (config.parse_duration after the ``+``), or an ISO 8601 time:
    ``2027-01-15``, ``2027-01-15T06:00``, ``2027-01-15T06:00:00+01:00`` (UTC if no zone)."""
    if text.startswith("+"):
        try:
            return Ahead(text, parse_duration(text[1:]), relative=True)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (after the '+')") from None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither +DURATION (+7d, +12h) nor an ISO 8601 time (2027-01-15T06:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time()
    if when.timestamp() < now:
        raise argparse.ArgumentTypeError(
            f"{text} is in the past (it is {_iso(now)} now): give a later time, or +DURATION"
        )
    return Ahead(text, when.timestamp(), relative=False)


def _iso(t: float) -> str:
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


def _print_list(
    the_plan: Plan,
    as_json: bool,
    age_by: str = "mtime",
    blocked: dict[bytes, str] | None = None,
    inventory: Inventory | None = None,
    *,
    ranked: Ranking | None = None,
    due: Sequence[float | None] | None = None,
    ahead: str | None = None,
) -> None:
    """``ranked``: each version's family and rank, when families are in use. ``due``: each
    decision's due_at (ocrd.rules.retention.due_at), in the plan's order. ``ahead``: the plan is
    for a later time than now (``list --at``), as the operator wrote it."""
    now = the_plan.now
    blocked = blocked or {}
    mounts = inventory.mounts if inventory is not None else ()
    due_of = (
        {id(d.entry): t for d, t in zip(the_plan.decisions, due, strict=True)}
        if due is not None
        else {}
    )

    def due_text(d: Decision) -> str | None:
        t = due_of.get(id(d.entry))
        return None if t is None else _iso(t)

    def verdict(d: Decision) -> str:
        why = blocked.get(d.entry.path)
        return why if why in _BLOCKED else d.verdict

    def reason(d: Decision) -> str:
        why = blocked.get(d.entry.path)
        return printable(
            f"{d.reason}, but {_BLOCKED.get(why) or _SKIPPED.get(why, why)}" if why else d.reason
        )

    def age(d: Decision) -> float:
        # Negative for a timestamp in the future: the text says "future", JSON says 0.
        return now - (d.entry.atime if age_by == "atime" else d.entry.mtime)

    if as_json:
        rows = [
            {
                "path": display(d.entry.path),
                "size": d.entry.size,
                "mtime": d.entry.mtime,
                "atime": d.entry.atime,
                # When it arrived in model_dir, as far as the filesystem tells (ocrd.fs.arrival).
                "arrived": d.entry.ctime,
                "in_model_dir_s": max(0.0, round(now - d.entry.ctime, 3)),
                "age_s": max(0.0, round(age(d), 3)),
                "verdict": str(verdict(d)),
                "rule": d.rule,
                "reason": reason(d),
                "symlink": d.entry.is_link,
                "owner": d.entry.uid,
                **_member(d, ranked),
                # When a pass would first delete it under these rules; null: never.
                "due_at": due_text(d),
            }
            for d in the_plan.decisions
        ]
        rows += [
            {
                "path": display(rel),
                "size": 0,
                "mtime": None,
                "atime": None,
                "age_s": None,
                "verdict": "skipped",
                "rule": None,
                "reason": printable(
                    f"mount point: another filesystem (device {device}), not entered"
                ),
                "symlink": False,
                "family": None,
                "rank": None,
                "rank_reason": None,
                "owner": None,
                "device": device,
                "due_at": None,
            }
            for rel, device in mounts
        ]
        json.dump(rows, sys.stdout, indent=None)
        sys.stdout.write("\n")
        return
    # With families in use, two more columns: the rank of each version in its family (1 is
    # the newest) before the path, and the family after the reason.
    rank = f"{'RANK':>4}  " if ranked is not None else ""
    family = "  FAMILY" if ranked is not None else ""
    out = [f"{'VERDICT':<10} {'SIZE':>9} {'AGE':>6}  {'RULE':<9}  {rank}PATH  (REASON){family}"]
    if ahead is not None:
        out.insert(
            0,
            f"at {_iso(now)} ({ahead}), if no file arrives or changes and the config stays; "
            "in use: as of now",
        )
    for d in sorted(the_plan.decisions, key=lambda d: d.entry.path):
        line = (
            f"{verdict(d).upper():<10} {_size(d.entry.size):>9} "
            f"{approx_duration(age(d)):>6}  {d.rule or '-':<9}  "
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
    print("\n".join(out))


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


def _clean(config: Config, place: Place, *, dry_run: bool, as_json: bool) -> int:
    """One pass (ocrd.ops.passes.clean), then its report."""
    cleaned = Cleaned()
    try:
        passes.clean(config, place, cleaned, dry_run=dry_run)
    except ModelDirMissing:
        # What was deleted before model_dir went is reported all the same; then the error.
        if cleaned.recorder.kept:
            _report(cleaned.recorder, None, cleaned.mounts, dry_run=dry_run, as_json=as_json)
        raise
    _report(cleaned.recorder, cleaned.refusal, cleaned.mounts, dry_run=dry_run, as_json=as_json)
    return 0


def _report(
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
    for o in recorder.kept:
        path = display(o.decision.entry.path)
        if o.status in (Status.DELETED, Status.WOULD_DELETE):
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
