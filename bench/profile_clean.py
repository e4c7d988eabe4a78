"""Where ``ocrd clean`` spends its time: ``python -m bench.profile_clean [--n 100000]``.

On the standard tree (bench/tree.py) with the §2 rules (age 30d or prefix old_):

1. the whole command as a subprocess, and ``ocrd check`` (interpreter start, imports, config);
2. the phases in-process, one after the other: scan(), plan(), apply() (with its in-use check);
3. the floor for Python: an ``os.scandir`` walk that stats each entry and unlinks what is due
   with ``dir_fd=``, nothing else; and the safe floor in C (``bench/floor.c``: open, fstat,
   lease, unlink, close per due file) when there is a C compiler;
4. cProfile of ``ocrd.cli.main.main(["clean", …])`` in-process, top functions by own time.

Each step gets its own freshly generated tree, as in bench.run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import time
from pathlib import Path

from bench import floor as safe_floor
from bench.peers import retention_commands
from bench.tree import DAY, PREFIX, Tree, count_files, generate
from bench.workspace import Workspace, assert_targets, quiet, timed


def _fresh(ws: Workspace, n: int) -> tuple[Path, Tree, list[list[str]]]:
    scratch = ws.fresh("prof")
    tree = generate(scratch / "tree", n)
    argvs = retention_commands("ocrd", tree, scratch, prefix=True)
    for argv in argvs:
        assert_targets(argv, scratch, tree)
    quiet(1.0)
    return scratch, tree, argvs


def _check(tree: Tree, prefix: bool = True) -> str:
    left = count_files(tree.root)
    kept = tree.kept(prefix_rule=prefix)
    return "ok" if left == kept else f"WRONG: {len(kept - left)} lost, {len(left - kept)} left"


def floor(root: Path, now: float) -> int:
    """The least a Python deleter does: walk, stat, unlink what the rules name."""
    deleted = 0
    limit = now - 30 * DAY
    prefix = PREFIX.encode()
    stack = [os.fsencode(root)]
    while stack:
        path = stack.pop()
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if entry.name.startswith(prefix) or st.st_mtime < limit:
                        os.unlink(entry.name, dir_fd=fd)
                        deleted += 1
        finally:
            os.close(fd)
    return deleted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    from ocrd.cli import main as cli
    from ocrd.config.load import load
    from ocrd.fs.scan import scan
    from ocrd.ops.delete import apply
    from ocrd.rules.retention import Rules, plan

    ws = Workspace(None)
    try:
        scratch, tree, argvs = _fresh(ws, args.n)
        t = timed(argvs)
        print(f"ocrd clean (subprocess): {t.wall:.3f} s wall, {t.cpu:.3f} s CPU; {_check(tree)}")
        config_path = scratch / "ocrd.toml"
        t = timed([[*argvs[0][:-3], "check", "-c", str(config_path)]])
        print(f"ocrd check (start-up, imports, config): {t.wall:.3f} s wall")
        ws.remove(scratch)

        scratch, tree, argvs = _fresh(ws, args.n)
        config = load(scratch / "ocrd.toml")
        rules = Rules.from_config(config.retention, config.watch.settle)
        c0, t0 = time.process_time(), time.perf_counter()
        inventory = scan(config.model_dir)
        c1, t1 = time.process_time(), time.perf_counter()
        the_plan = plan(inventory, rules, time.time())
        c2, t2 = time.process_time(), time.perf_counter()
        outcomes = list(apply(the_plan, config.model_dir))
        c3, t3 = time.process_time(), time.perf_counter()
        print(f"scan():  {t1 - t0:.3f} s wall, {c1 - c0:.3f} s CPU ({inventory.file_count} files)")
        print(f"plan():  {t2 - t1:.3f} s wall, {c2 - c1:.3f} s CPU")
        print(
            f"apply(): {t3 - t2:.3f} s wall, {c3 - c2:.3f} s CPU ({len(outcomes)} outcomes); "
            f"{_check(tree)}"
        )
        ws.remove(scratch)

        scratch = ws.fresh("prof")
        tree = generate(scratch / "tree", args.n)
        quiet(1.0)
        c0, t0 = time.process_time(), time.perf_counter()
        deleted = floor(tree.root, time.time())
        c1, t1 = time.process_time(), time.perf_counter()
        print(f"floor (scandir + unlink): {t1 - t0:.3f} s wall, {c1 - c0:.3f} s CPU, {deleted}")
        print(f"  {_check(tree)}")
        ws.remove(scratch)

        built = safe_floor.build(ws)
        if isinstance(built, str):
            print(f"safe floor (C): not measured: {built}")
        else:
            scratch = ws.fresh("prof")
            tree = generate(scratch / "tree", args.n)
            command = safe_floor.argv(built, tree.root, prefix=True)
            assert_targets(command, scratch, tree)
            quiet(1.0)
            t = timed([command])
            print(f"safe floor (C): {t.wall:.3f} s wall, {t.cpu:.3f} s CPU; {_check(tree)}")
            ws.remove(scratch)

        scratch, tree, argvs = _fresh(ws, args.n)
        profiler = cProfile.Profile()
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            profiler.enable()
            cli.main(["clean", "-c", str(scratch / "ocrd.toml")])
            profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())
        print(f"  {_check(tree)}")
        ws.remove(scratch)
    finally:
        ws.close()


if __name__ == "__main__":
    main()
