"""The command line: ``ocrd run | check | list | clean | trash | restore | --version``, as
docs/contract.md says."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ocrd import __version__
from ocrd.base import log
from ocrd.base.errors import EXIT_CONFIG, EXIT_NOPERM, ConfigError, ModelDirMissing
from ocrd.config.durations import parse_duration
from ocrd.config.lint import lint, log_warnings
from ocrd.config.load import SYSTEM_CONFIG, default_path, load
from ocrd.fs.access import NoAccess, denied
from ocrd.fs.place import Place, pin, raise_fd_limit

if TYPE_CHECKING:
    from ocrd.config.schema import Config
    from ocrd.rules.budget import Space

# Each command imports what it alone needs where it runs (PLC0415 below): `check` loads no
# planner, `clean` no SQLite, daemon or trash code, and none of them the daemon's watch or
# engine (docs/performance.md, start-up).


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "restore" and bool(args.paths) == args.all:
        parser.error("restore: name PATH... or give --all, not both")
    if args.command == "restore" and args.since is not None and not args.all:
        parser.error("restore: --since goes with --all")
    args.config = args.config or default_path()
    now = time.time()  # the moment `list` looks from (and `list --at` looks ahead from)
    at: float | None = args.at.resolve(now) if getattr(args, "at", None) is not None else None
    if args.command == "run":
        # Imported here: the daemon pulls in watchdog, sdnotify and, above all, the .NET runtime,
        # none of which the one-shot commands need.
        from ocrd.daemon.run import run  # noqa: PLC0415

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
        deferred=True,  # structlog only if a line is written (ocrd.base.log)
    )
    warnings = lint(config)
    if args.command == "check":
        # Warnings never change the answer: the config is valid, only perhaps not as meant.
        for warning in warnings:
            print(warning.line(config.path), file=sys.stderr)
        print(config.summary())
        # stdout keeps the contract's one-line summary; how "in use" will be judged is advice.
        from ocrd.fs.leases import lease_report  # noqa: PLC0415 — see the imports

        print(f"{config.path}: in-use check: {lease_report(config.model_dir)}", file=sys.stderr)
        print(f"{config.path}: deleter: {_deleter()}", file=sys.stderr)
        return 0
    log_warnings(config, warnings)
    if args.command in ("trash", "restore"):
        return _trash_command(args, config)
    before, after = raise_fd_limit()
    log.get().debug("fd_limit", soft_before=before, soft=after)
    place = pin(config.model_dir)  # resolved once: scan and deletions act on this directory
    try:
        # Last use is recorded only with a budget or a [state] path (docs/budget.md).
        recording = config.budget.active or config.state.path is not None
        if args.command == "list":
            return _list(config, place, args, now, at, recording=recording)
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


def _list(
    config: Config,
    place: Place,
    args: argparse.Namespace,
    now: float,
    at: float | None,
    *,
    recording: bool,
) -> int:
    """``ocrd list``: the plan, what holds each file, when each comes due (--at), the budget."""
    from ocrd.cli.show import print_list, print_rows  # noqa: PLC0415
    from ocrd.daemon.budget import limits_of  # noqa: PLC0415
    from ocrd.fs.statefile import Looks  # noqa: PLC0415
    from ocrd.fs.statefile import default_path as state_default  # noqa: PLC0415
    from ocrd.ops import passes  # noqa: PLC0415
    from ocrd.ops.passes import whole_plan  # noqa: PLC0415
    from ocrd.rules.eviction import Inputs, over_plan  # noqa: PLC0415
    from ocrd.rules.foresight import due_at  # noqa: PLC0415
    from ocrd.rules.retention import family_rules  # noqa: PLC0415
    from ocrd.rules.selectors import versions  # noqa: PLC0415
    from ocrd.watch.lastuse import LastUse  # noqa: PLC0415

    if args.json and not recording:
        # Streamed part by part (docs/big-trees.md); every last use is an arrival.
        listed, mounts = passes.listing(config, place, now, at)
        print_rows(listed, mounts, config.retention.age_by)
        return 0
    the_plan, inventory, _, rules = whole_plan(config, place, now if at is None else at)
    state = config.state.path or state_default()
    uses = LastUse.read(state) if recording else LastUse.empty(state)
    engine = _engine_lists(config) if config.budget.active else frozenset()
    budget = None
    if config.budget.active and (space := _space(place)) is not None:
        inputs = Inputs(
            limits_of(config),
            space,
            uses.last_used,
            engine,
            allow_delete_all=config.retention.allow_delete_all,
        )
        the_plan, budget = over_plan(the_plan, rules, inputs)
    # In use is known for now only: a file held now shows so at any --at.
    looks = Looks(state)
    try:
        blocked = passes.blocked(config, the_plan, place, looks.note if recording else None)
    finally:
        looks.close()
    due = due_at(
        [d.entry for d in the_plan.decisions],
        rules,
        now,
        allow_delete_all=config.retention.allow_delete_all,
    )
    families = family_rules(config.retention)
    ranked = (
        families.rank(versions(d.entry for d in the_plan.decisions), rules.trust, the_plan.now)
        if families is not None
        else None
    )
    print_list(
        the_plan,
        args.json,
        config.retention.age_by,
        blocked,
        inventory,
        ranked=ranked,
        due=due,
        ahead=None if at is None else args.at.text,
        last_used=uses.last_used,
        engine=engine,
        budget=budget,
    )
    return 0


def _trash_command(args: argparse.Namespace, config: Config) -> int:
    """``ocrd trash`` and ``ocrd restore`` (ocrd.cli.trashcmd)."""
    from ocrd.cli import trashcmd  # noqa: PLC0415 — see the imports

    place = pin(config.model_dir)
    grace = config.trash.grace
    try:
        if args.command == "trash":
            return trashcmd.show(place, as_json=args.json, grace=grace)
        # A restore is an act the operator will want on record: model_restored at info.
        log.configure(config.log.level, config.log.format, stream=sys.stderr)
        return trashcmd.restore(
            place,
            [os.fsencode(p) for p in args.paths],
            everything=args.all,
            after=args.since,
            grace=grace,
        )
    except ModelDirMissing as exc:
        print(f"{config.path}: at 'model_dir': {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _since(text: str) -> float:
    from ocrd.cli import trashcmd  # noqa: PLC0415 — see the imports

    try:
        return trashcmd.since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
  1   any other fatal error (run); trash, restore: .ocrd-trash is not ocrd's to use
  2   a bad argument, such as a list --at TIME in the past
  3   restore: something is at a PATH now (or on its way): nothing restored
  4   restore: a PATH has no entry in the trash: nothing restored
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
        ("trash", "the files in the trash: deleted, restorable until purged"),
        ("restore", "put files back from the trash where they were; never over a file"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("-c", "--config", type=Path, default=None, help=config_help)
        if name in ("list", "clean", "trash"):
            p.add_argument("--json", action="store_true", help="print JSON instead of text")
        if name == "restore":
            p.add_argument("paths", nargs="*", metavar="PATH", help="as `ocrd trash` shows it")
            p.add_argument(
                "--all", action="store_true", help="every path's newest entry in the trash"
            )
            p.add_argument(
                "--since",
                type=_since,
                metavar="TIME",
                help="with --all: only files deleted since TIME, an ISO 8601 time (UTC if it "
                "has no zone) or a duration ago (2h, 7d)",
            )
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
        from ocrd.cli.show import iso  # noqa: PLC0415 — see the imports

        raise argparse.ArgumentTypeError(
            f"{text} is in the past (it is {iso(now)} now): give a later time, or +DURATION"
        )
    return Ahead(text, when.timestamp(), relative=False)


def _space(place: Place) -> Space | None:
    from ocrd.rules.budget import Space  # noqa: PLC0415 — see the imports

    try:
        return Space.of(os.statvfs(place.real))
    except OSError as exc:
        print(f"ocrd list: statvfs of model_dir failed: {exc.strerror}", file=sys.stderr)
        return None


def _engine_lists(config: Config) -> frozenset[bytes]:
    """The files the engine lists itself (list_local), relative to model_dir: an engine of our
    own for the question (it opens no model file), freed at once."""
    if not config.engine.enabled:
        return frozenset()
    from ocrd.daemon.engine import Supervisor  # noqa: PLC0415 — see the imports

    engine = Supervisor(config.engine, config.model_dir)
    root = os.fsencode(config.model_dir.absolute())
    try:
        with engine:
            return frozenset(os.path.relpath(p, root) for p in engine.listed())
    except (ImportError, OSError, RuntimeError) as exc:
        log.get().debug("engine_list_failed", error=repr(exc)[:300])
        return frozenset()


def _clean(config: Config, place: Place, *, dry_run: bool, as_json: bool) -> int:
    """One pass (ocrd.ops.passes.clean), then its report."""
    from ocrd.cli.show import print_report  # noqa: PLC0415 — see the imports
    from ocrd.ops import passes  # noqa: PLC0415
    from ocrd.ops.passes import Cleaned  # noqa: PLC0415

    cleaned = Cleaned()
    try:
        passes.clean(config, place, cleaned, dry_run=dry_run)
    except ModelDirMissing:
        # What was deleted before model_dir went is reported all the same; then the error.
        if cleaned.recorder.kept:
            print_report(cleaned.recorder, None, cleaned.mounts, dry_run=dry_run, as_json=as_json)
        raise
    print_report(
        cleaned.recorder, cleaned.refusal, cleaned.mounts, dry_run=dry_run, as_json=as_json
    )
    return 0


def _deleter() -> str:
    """Which deleter ``clean`` and the daemon use here (ocrd.ops.sweep): its compiled step is
    loaded as the deleter would load it, and nothing else of the deleter is."""
    try:
        import ocrd.ops._sweep  # noqa: F401, PLC0415
    except ImportError as exc:
        return (
            "the Python path: the compiled step was not built by this install (no C compiler "
            "or no Python headers then: apt-get install gcc python3-dev, then install again) "
            f"({exc})"
        )
    from ocrd.base.compiled import wanted  # noqa: PLC0415

    if not wanted():
        return "the Python path: OCRD_PURE_PYTHON=1 (the compiled step is built)"
    return "the compiled step for the common case, the Python path for every other"
