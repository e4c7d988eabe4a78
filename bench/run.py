"""ocrd's benchmark against its peers: ``python -m bench.run [--quick] [--out PATH]``.

Sections (the method and its fairness rules are written into the report, under "Method"):

1. initial scan: ``ocrd.fs.scan.scan`` vs ``find -type f -printf``;
2. one retention pass: ``ocrd clean`` vs systemd-tmpfiles, tmpreaper and ``find -delete``, beside
   the safe floor (``bench/floor.c``), on the temp dir's disk, a tmpfs and an ext4 loop image
   without discard;
3. latency of a running ``ocrd run``: file created → ``model_deleted`` logged;
4. idle CPU and RSS per indexed file of ``ocrd run``;
5. a burst of ``old_`` files: anything left behind after the drain, and how long it took;
6. engine cycles: what each retention scenario costs the AsposeAI engine (``bench.engine_cycles``);
7. churn: RSS and CPU of ``ocrd run`` while files come and go (``bench.churn``);
8. name storm: the log a storm of hostile file names makes ocrd write (``bench.flood``);
9. holders: what the in-use checks cost with many processes (``bench.holders``).
11. events: ``ocrd run``'s CPU under event storms it has no work for (``bench.events``).

Every section writes its rows into the one report of the run, with the commit, the machine and
the method.

Every tool only ever sees its own tree, created under a fresh ``tempfile.mkdtemp()``; every
command that deletes is checked to target a path inside that directory before it runs, and
every deletion result is compared file by file with what the rules say must remain.

This module is the command line only. The rooms: ``bench.modes`` (quick and full sizes),
``bench.workspace`` (scratch directories, the guards on deleting commands, timing),
``bench.peers`` (each tool's command line for a retention pass), ``bench.sections`` (one module
per section; §3-5 share a running ``ocrd run`` from ``bench.sections.live``, started through
``tests.harness``), ``bench.report`` (rows, ratios, targets and the markdown report).
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import ocrd
from bench.churn import section_churn
from bench.engine_cycles import section_cycles
from bench.events import section_events
from bench.flood import section_storm
from bench.holders import section_holders
from bench.modes import FULL, QUICK
from bench.report import (
    Results,
    against_floor,
    code_digest,
    code_state,
    evaluate,
    floor_table,
    loadavg,
    machine,
    report,
    table,
)
from bench.sections.budget import section_budget
from bench.sections.clean import section_retention
from bench.sections.running import section_daemon
from bench.sections.scan import section_scan
from bench.workspace import Workspace

ALL = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small trees, 3 runs (for CI)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the report (default: bench/RESULTS.md; with --quick "
        "bench/out/RESULTS-quick.md, so CI never overwrites the full results)",
    )
    parser.add_argument("--sections", default=",".join(ALL), help="comma-separated, e.g. 1,2")
    parser.add_argument("--tmpdir", type=Path, default=None, help="parent of the scratch dirs")
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions per row (default: the mode's)"
    )
    parser.add_argument(
        "--lean",
        action="store_true",
        help="full-size trees, but only the rows with every rule (no age-only pass, no 100k-"
        "directory pass): for a quicker look at the same measures",
    )
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    if args.reps is not None:
        mode = dataclasses.replace(
            mode, reps=args.reps, fd_dirs=tuple((d, min(r, args.reps)) for d, r in mode.fd_dirs)
        )
    if args.lean:
        mode = dataclasses.replace(mode, age_only=False, fd_dirs=mode.fd_dirs[:1])
    here = Path(__file__).parent
    out: Path = args.out or (
        here / "out" / "RESULTS-quick.md" if args.quick else here / "RESULTS.md"
    )
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - set(ALL)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    ws = Workspace(args.tmpdir)
    res = Results(mode)
    started = time.monotonic()
    steps: list[tuple[set[str], Callable[[], None]]] = [
        ({"1"}, lambda: section_scan(mode, ws, res)),
        ({"2"}, lambda: section_retention(mode, ws, res)),
        ({"3", "4", "5"}, lambda: section_daemon(mode, ws, res, sections)),
        ({"6"}, lambda: section_cycles(mode, ws, res)),
        ({"7"}, lambda: section_churn(mode, ws, res)),
        ({"8"}, lambda: section_storm(mode, ws, res)),
        ({"9"}, lambda: section_holders(mode, ws, res)),
        ({"10"}, lambda: section_budget(mode, ws, res)),
        ({"11"}, lambda: section_events(mode, ws, res)),
    ]
    load_start = loadavg()
    # ocrd's bytecode, as an install has it (pip compiles it): with PYTHONDONTWRITEBYTECODE
    # set, every ``ocrd`` started here would compile its modules again (about 0.1 s a start).
    compileall.compile_dir(Path(ocrd.__file__).parent, quiet=1)
    try:
        machine_rows = machine(ws.parent)
        for keys, step in steps:
            if keys & sections:
                label = "§" + ", ".join(sorted(keys & sections))
                print(f"{label} …", flush=True)
                began = time.monotonic()
                before = code_digest()
                git, changed = code_state()
                step()
                dirty = f" + uncommitted changes in {', '.join(changed)}" if changed else ""
                res.notes.append(
                    f"{label} took {time.monotonic() - began:.0f} s, on ocrd git {git}{dirty}."
                )
                if code_digest() != before:
                    res.problems.append(
                        f"ocrd's code changed on disk while {label} ran: its rows mix two "
                        "versions; run again."
                    )
    finally:
        ws.close()
    machine_rows.append(
        ("load average (1, 5, 15 min)", f"{load_start} at start, {loadavg()} at end")
    )
    if float(load_start.split()[0]) > 0.5:
        res.notes.append(
            f"The machine was not idle at the start (load average {load_start}): other "
            "processes competed for the 2 CPUs and the disk, so spreads are wider than usual."
        )
    evaluate(res)
    text = report(res, machine_rows, time.monotonic() - started, sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print()
    print(table(res.rows))
    print()
    if against_floor(res):
        print(floor_table(res))
        print()
    for name, shown, verdict, _ in res.targets:
        print(f"{name}: {shown} — {verdict.strip('*')}")
    for problem in res.problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    print(f"\nwritten to {out}")
    # A tool that deleted the wrong set (or a scan that missed files) makes the comparison
    # meaningless: fail, so that CI notices. Targets not met are reported, not failed.
    return 1 if any(p.startswith(("§2", "§8", "scan")) for p in res.problems) else 0


if __name__ == "__main__":
    sys.exit(main())
