"""The randomized campaign (tests/campaign.py), many seeds long: safety after every step,
liveness at the end of each seed, one ``ocrd run`` per seed, the engine on for some.

    python -m bench.campaign [--seeds 200] [--first 1] [--steps 90] [--engine-every 4]
                             [--off replace,...]

One line per seed, then the totals: seeds, steps, violations, crashes and the longest gap
between two WATCHDOG=1. Each failing seed is listed with the command that replays it. Exit
status 1 if any seed broke a promise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.campaign import OPS, Campaign, Result, replay_command


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser(prog="python -m bench.campaign")
    parser.add_argument("--seeds", type=int, default=200, help="how many seeds")
    parser.add_argument("--first", type=int, default=1, help="the first seed")
    parser.add_argument("--steps", type=int, default=90, help="operations per seed")
    parser.add_argument(
        "--engine-every", type=int, default=4, help="every Nth seed runs with [engine] on (0: none)"
    )
    parser.add_argument(
        "--dump",
        type=Path,
        default=Path("/tmp/ocrd-campaign"),
        help="where a failing seed leaves its operations and ocrd's log",
    )
    parser.add_argument(
        "--off", default="", help=f"operations switched off, comma-separated: {', '.join(OPS)}"
    )
    args = parser.parse_args()
    off = frozenset(filter(None, args.off.split(",")))
    unknown = off - set(OPS)
    if unknown:
        parser.error(f"unknown operations: {', '.join(sorted(unknown))}")
    print(
        f"{'seed':>6} {'engine':>6} {'steps':>5} {'deleted':>7} {'violations':>10} "
        f"{'watchdog gap':>12} {'stop s':>6} {'wall s':>6}  crash"
    )
    results: list[Result] = []
    for seed in range(args.first, args.first + args.seeds):
        engine = args.engine_every > 0 and seed % args.engine_every == 0
        r = Campaign(seed, args.steps, engine=engine, off=off, dump=args.dump).run()
        results.append(r)
        stop = f"{r.stop_s:.2f}" if r.stop_s is not None else "-"
        print(
            f"{seed:>6} {'on' if engine else 'off':>6} {r.steps:>5} {r.deletions:>7} "
            f"{len(r.violations):>10} {r.watchdog_gap:>11.2f}s {stop:>6} {r.seconds:>6.1f}  "
            f"{r.crash or ''}"
        )
        for v in r.violations[:5]:
            print(f"         {v}")
    failed = [r for r in results if not r.ok]
    stops = [r.stop_s for r in results if r.stop_s is not None]
    print()
    print(f"seeds        {len(results)} ({sum(r.engine for r in results)} with the engine on)")
    print(f"steps        {sum(r.steps for r in results)}")
    print(f"deletions    {sum(r.deletions for r in results)}")
    print(f"violations   {sum(len(r.violations) for r in results)} in {len(failed)} seed(s)")
    print(f"crashes      {sum(r.crash is not None for r in results)}")
    print(f"watch_failed {sum(r.watch_failed for r in results)} line(s)")
    print(f"longest watchdog gap {max((r.watchdog_gap for r in results), default=0):.2f}s")
    print(f"longest SIGTERM → exit {max(stops, default=0):.2f}s")
    if off:
        print(f"switched off: {', '.join(sorted(off))}")
    for r in failed:
        print(f"replay: {replay_command(r.seed, args.steps, r.engine, off)}")
    if failed:
        print(f"operations and logs of the failing seeds: {args.dump}/seed-N.ops, .log")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
