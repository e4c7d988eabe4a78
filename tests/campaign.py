"""A seeded, stateful randomized campaign against a real ``ocrd run``, and the oracle that judges
it: for tests/test_campaign.py (a few short seeds) and bench/campaign.py (many long ones).

One seed is one ``ocrd run`` over a fresh model_dir, driven through random filesystem operations
(creates with old and plain names and backdated mtimes, slow writes, renames, aged packages
moved in and changed at once, deep mkdirs, directories replaced by others under their name,
symlink swaps, holders of two users, tmpfs and bind mounts, valid, invalid and held reloads,
stray SIGHUPs). The oracle keeps its own record of every file it put there: when it entered
model_dir, when it last changed, what held it and when. After every step it checks safety:

- nothing outside model_dir changed;
- every file gone from model_dir went by a ``model_deleted`` line, and that deletion was due
  under the rules in force when it was logged: not a symlink, not inside a mount, not
  whitelisted, not held open, settled, and named by a prefix or older than ``max_age`` counted
  from its arrival in model_dir (a reload never makes a file due earlier than that);
- every line on stdout is JSON; the process is alive and logged no ``daemon_failed``.

At the end (liveness): every holder let go, a reload (which resets the back-off of skipped
deletions), then every due file must go within ``settle + rescan`` and a margin; ``WATCHDOG=1``
came within ``WATCHDOG_USEC`` all along; SIGTERM exits 0 within 5 s after ``daemon_stopped``.

The random choices depend on the seed only, but what ocrd deletes in between depends on timing:
a replayed seed runs the same kind of scenario, not always the very same one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from tests.harness import OcrdProcess
from tests.worlds import APP_UID, as_user, held, make_world

DAY = 86_400.0
INF = float("inf")
# The kernel stamps ctime and mtime from its coarse clock, up to one tick (10 ms at HZ=100)
# behind time.time() read just before the call: a move's ctime may precede the "before" taken.
EPS = 0.012
WATCHDOG_USEC = 4_000_000
WHITELIST = ("*.keep",)

# Operations, with their weights. Each can be switched off by name (OCRD_CAMPAIGN_OFF or
# bench --off): "replace" is a directory replaced by another under its name.
OPS: dict[str, int] = {
    "create": 10,
    "write": 4,
    "slow_write": 3,
    "rename": 5,
    "move_in": 6,
    "mkdir_deep": 3,
    "replace": 2,
    "swap_link": 3,
    "hold": 5,
    "mount": 2,
    "umount": 1,
    "reload": 3,
    "reload_invalid": 2,
    "sighup": 2,
    "chmod": 2,
    "remove": 2,
    "wait": 6,
}


@dataclass(frozen=True)
class RuleSet:
    """The rules of one config, as the oracle reads them."""

    prefixes: tuple[str, ...]
    max_age: float | None
    settle: float

    def toml(self, models: Path, rescan: float, engine: bool) -> str:
        age = f'max_age = "{self.max_age:g}s"\n' if self.max_age is not None else ""
        prefixes = ", ".join(f'"{p}"' for p in self.prefixes)
        whitelist = ", ".join(f'"{p}"' for p in WHITELIST)
        engine_lines = 'batch = "500ms"\nrestart_after = "1s"\n' if engine else ""
        return (
            f'model_dir = "{models}"\n[retention]\nprefixes = [{prefixes}]\n{age}'
            f"whitelist = [{whitelist}]\nallow_delete_all = true\n"
            f'[watch]\nsettle = "{self.settle * 1000:g}ms"\nrescan = "{rescan:g}s"\n'
            f"[engine]\nenabled = {str(engine).lower()}\n{engine_lines}"
            '[log]\nformat = "json"\n'
        )

    def why_not(self, m: Model, at: float) -> str | None:
        """Why ``m`` must not have been deleted at ``at`` under these rules; None if it was due."""
        if m.kind == "link":
            return "a symlink"
        if m.kind == "mounted":
            return "inside a mount"
        name = m.path.rpartition("/")[2]
        if any(fnmatchcase(name, p) for p in WHITELIST):
            return "whitelisted"
        for opened, released in m.holds:
            if opened <= at <= released:
                return f"held open since {opened:.3f}"
        if at - m.changed_lb < self.settle - EPS:
            return f"settling: changed {at - m.changed_lb:.3f}s before, settle {self.settle}s"
        if name.startswith(self.prefixes):
            return None
        if self.max_age is not None:
            age = at - max(m.mtime_lb, m.arrived_lb)
            if age > self.max_age - EPS:
                return None
            return f"in model_dir {age:.3f}s <= max_age {self.max_age}s"
        return "no rule names it"

    def due_surely(self, m: Model, at: float) -> bool:
        """Whether ocrd must find ``m`` due at ``at``, however it dates the file: every time
        is taken at its latest (after the operation that last touched it or a directory above
        it), and nothing holds it any more."""
        if self.why_not(m, at) is not None or m.holds_open():
            return False
        if at - m.touched_ub < self.settle + EPS:
            return False
        name = m.path.rpartition("/")[2]
        if name.startswith(self.prefixes):
            return True
        return self.max_age is not None and at - m.touched_ub > self.max_age + EPS


@dataclass
class Model:
    """A file (or symlink) the campaign put under model_dir, and what the oracle knows of it."""

    id: int
    path: str  # relative to model_dir: where it is, or was last
    kind: str  # "file", "link" or "mounted"
    arrived_lb: float  # before the operation that brought it into model_dir
    changed_lb: float  # before the last operation that changed it
    mtime_lb: float  # its mtime, or a time no later
    touched_ub: float  # after the last operation on it or a directory above it
    holds: list[list[float]] = field(default_factory=list)  # [opened after, released before]
    stays: list[list[Any]] = field(default_factory=list)  # [path, in from, out at]
    deleted: float | None = None  # by ocrd, when logged

    @property
    def present(self) -> bool:
        return bool(self.stays) and self.stays[-1][2] == INF

    def holds_open(self) -> bool:
        return any(r == INF for _, r in self.holds)

    def leave(self, at: float) -> None:
        if self.present:
            self.stays[-1][2] = at

    def enter(self, path: str, at: float) -> None:
        self.leave(at)
        self.path = path
        self.stays.append([path, at, INF])


@dataclass
class Result:
    seed: int
    steps: int = 0
    engine: bool = False
    ops: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    crash: str | None = None
    deletions: int = 0
    watchdog_gap: float = 0.0
    stop_s: float | None = None
    watch_failed: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations and self.crash is None


def replay_command(seed: int, steps: int, engine: bool, off: frozenset[str]) -> str:
    env = [f"OCRD_CAMPAIGN_SEED={seed}", f"OCRD_CAMPAIGN_STEPS={steps}"]
    if engine:
        env.append("OCRD_CAMPAIGN_ENGINE=1")
    if off:
        env.append(f"OCRD_CAMPAIGN_OFF={','.join(sorted(off))}")
    return " ".join(env) + " .venv/bin/pytest -q tests/test_campaign.py"


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


class SlowWriter:
    """Holds a file open for writing and appends to it every ``every`` seconds until stopped:
    more often than settle (it never settles), or less (it settles while still being written)."""

    def __init__(self, path: Path, every: float) -> None:
        self.every = every
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # never creates: ocrd may be first
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.every):
            with contextlib.suppress(OSError):
                os.write(self.fd, b".")

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        os.close(self.fd)


@dataclass
class Holder:
    model: Model
    release_step: int
    stack: contextlib.ExitStack | None = None
    writer: SlowWriter | None = None

    def release(self) -> None:
        if self.writer is not None:
            self.writer.stop()
        if self.stack is not None:
            self.stack.close()


class Campaign:
    """One seed: a world, a daemon, ``steps`` random operations, the oracle after each."""

    def __init__(
        self,
        seed: int,
        steps: int,
        *,
        engine: bool = False,
        off: frozenset[str] = frozenset(),
        rescan: float = 3.0,
        log: Callable[[str], None] | None = None,
        dump: Path | None = None,
    ) -> None:
        """``dump``: a directory where a seed that fails leaves its operations (seed-N.ops)
        and ocrd's stdout (seed-N.log)."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = steps
        self.engine = engine
        self.off = off
        self.rescan = rescan
        self.say = log or (lambda _: None)
        self.root = os.geteuid() == 0
        self.result = Result(seed, engine=engine)
        self.models: list[Model] = []
        self.holders: list[Holder] = []
        self.mounts: list[Path] = []
        self.next_id = 0
        self.step = 0
        self.seen = 0  # events looked at
        self.rules_log: list[tuple[int, RuleSet]] = []  # (event index from which, rules)
        self.file_rules: RuleSet = self._random_rules()
        self.d: OcrdProcess | None = None
        self.dump = dump
        self.trace: list[str] = []

    # -- the world -------------------------------------------------------------------------

    def run(self) -> Result:
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            if self.root:
                world = stack.enter_context(make_world())
                self.base, self.python, self.env = world.base, world.python, world.env
            else:
                self.base = Path(tempfile.mkdtemp(prefix="ocrd-campaign-"))
                stack.callback(shutil.rmtree, self.base, True)
                (self.base / "models").mkdir()
                self.python, self.env = [sys.executable], dict(os.environ)
            stack.callback(self._unmount_all)  # before the world's rmtree: never into a mount
            stack.callback(self._release_all)
            self.models_dir = self.base / "models"
            self._make_outside()
            self._make_staging()
            try:
                self._campaign(stack)
            except _Crash as exc:
                self.result.crash = str(exc).splitlines()[0][:300]
            if self.dump is not None and not self.result.ok:
                self._dump(self.dump)
        self.result.seconds = time.monotonic() - started
        return self.result

    def note(self, text: str) -> None:
        self.trace.append(f"{time.time():.3f} step {self.step} {text}")

    def _dump(self, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        (where / f"seed-{self.seed}.ops").write_text("\n".join(self.trace) + "\n")
        if self.d is not None:
            with self.d.cond:
                lines = "".join(self.d.lines)
            (where / f"seed-{self.seed}.log").write_text(lines)

    def _make_outside(self) -> None:
        out = self.base / "outside"
        for rel in ("f1.bin", "old_f2.bin", "tree/old_x.bin", "tree/y.bin", "bind/old_b.bin"):
            p = out / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"GGUF outside " + rel.encode())
            os.utime(p, (time.time() - 60 * DAY,) * 2)
        self.outside = out
        self.outside_before = _snapshot(out)

    def _make_staging(self) -> None:
        """Packages extracted "long ago": old mtimes, and ctimes from now, before the daemon
        starts, so that by the time one is moved in its own ctimes may be older than max_age."""
        self.staging = self.base / "staging"
        self.staging.mkdir()
        self.packages: list[Path] = []
        old = time.time() - 60 * DAY
        for i in range(12):
            pkg = self.staging / f"pkg{i}"
            for rel in ("a.bin", "sub/b.bin", "old_s.bin", "sub/deeper/c.gguf"):
                p = pkg / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"GGUF " + rel.encode())
                os.utime(p, (old, old))
            self.packages.append(pkg)

    def _campaign(self, stack: contextlib.ExitStack) -> None:
        for _ in range(self.rng.randint(2, 6)):
            self.op_create()
        cfg = self.base / "config.toml"
        self.config_path = cfg
        self._write_config(self.file_rules)
        self.d = d = OcrdProcess(cfg, env={"WATCHDOG_USEC": str(WATCHDOG_USEC)})
        stack.callback(d.close)
        self.rules_log.append((0, self.file_rules))
        try:
            d.wait_ready()
        except Exception as exc:  # NotReady, or the harness's AssertionError on its timeout
            raise _Crash(f"no READY=1: {exc}") from exc
        self.check()
        names = [n for n in OPS if n not in self.off]
        weights = [OPS[n] for n in names]
        for step in range(1, self.steps + 1):
            self.step = step
            op = self.rng.choices(names, weights)[0]
            self.result.ops[op] = self.result.ops.get(op, 0) + 1
            self.note(op)
            getattr(self, f"op_{op}")()
            for h in [h for h in self.holders if h.release_step <= self.step]:
                self._release(h)
            self.check()
            self.result.steps = self.step
        self._finish()

    # -- the oracle ------------------------------------------------------------------------

    def violation(self, text: str) -> None:
        self.note(f"VIOLATION {text}")
        self.say(f"seed {self.seed} step {self.step}: VIOLATION {text}")
        self.result.violations.append(f"step {self.step}: {text}")

    def rules_at(self, index: int) -> RuleSet:
        rules = self.rules_log[0][1]
        for at, r in self.rules_log:
            if at <= index:
                rules = r
        return rules

    def check(self) -> None:
        """Safety after a step: the new log lines, the disk, and what is outside model_dir."""
        d = self.d
        assert d is not None
        self._read_events()
        for m in self.models:
            if not m.present:
                continue
            try:
                os.lstat(self.models_dir / m.path)
            except FileNotFoundError:
                pass
            else:
                continue
            # Gone: its model_deleted line may be on its way.
            with contextlib.suppress(AssertionError):
                d.wait_for(f"model_deleted {m.path}", self._gone_by_line(m), timeout=3.0)
            if m.present:
                m.leave(time.time())
                self.violation(f"{m.path} ({m.kind}) is gone without a model_deleted line")
        if _snapshot(self.outside) != self.outside_before:
            self.violation("something outside model_dir changed")
            self.outside_before = _snapshot(self.outside)
        if d.proc.poll() is not None:
            raise _Crash(f"ocrd exited with {d.proc.returncode}: {d.last_error()}")

    def _gone_by_line(self, m: Model) -> Callable[[], bool]:
        def check() -> bool:
            self._read_events()
            return not m.present

        return check

    def _read_events(self) -> bool:
        d = self.d
        assert d is not None
        with d.cond:
            new = d.events[self.seen :]
            first = self.seen
            self.seen = len(d.events)
        for i, e in enumerate(new, first):
            name = e.get("event")
            if name == "<not json>":
                self.violation(f"a line that is not JSON: {str(e.get('line'))[:200]!r}")
            elif name == "daemon_failed":
                raise _Crash(f"daemon_failed: {e.get('error')}")
            elif name == "watch_failed":
                self.result.watch_failed += 1
            elif name == "config_reloaded":
                self.rules_log.append((i, self.file_rules))
            elif name == "model_deleted":
                self.result.deletions += 1
                self._judge(e, i)
            elif name == "log_summary" and e.get("of") == "model_deleted":
                self.violation(f"deletions summed up, not judged one by one: {e}")
        return False

    def _judge(self, e: dict[str, Any], index: int) -> None:
        path, at = str(e.get("path")), _ts(e)
        rules = self.rules_at(index)
        candidates = [
            m
            for m in self.models
            if m.deleted is None
            and any(p == path and t_in - EPS <= at <= t_out + EPS for p, t_in, t_out in m.stays)
        ]
        if not candidates:
            self.violation(f"deleted {path} at {at:.3f}, which the campaign did not put there")
            return
        reasons = [(m, rules.why_not(m, at)) for m in candidates]
        m, why = next(((m, w) for m, w in reasons if w is None), reasons[-1])
        m.deleted = at
        if m.present and m.path == path:
            m.leave(at)
        if why is not None:
            self.violation(f"deleted {path} ({e.get('rule')}) at {at:.3f}: {why}")

    # -- operations ------------------------------------------------------------------------

    def _new(self, path: str, kind: str, before: float, mtime: float | None = None) -> Model:
        self.next_id += 1
        m = Model(self.next_id, path, kind, before, before, mtime or before, time.time())
        m.stays.append([path, before, INF])
        self.models.append(m)
        return m

    def _present(self, kind: str = "file") -> list[Model]:
        return [m for m in self.models if m.present and m.kind == kind]

    def _dirs(self, *, plain: bool = False) -> list[str]:
        """Directories under model_dir (not model_dir itself, no mount point or link, not
        under one); ``plain``: also none with a mount point below it."""
        mounted = {str(p.relative_to(self.models_dir)) for p in self.mounts}
        found: list[str] = []
        for dirpath, dirnames, _ in os.walk(self.models_dir):
            rel = os.path.relpath(dirpath, self.models_dir)
            dirnames[:] = sorted(
                n
                for n in dirnames
                if os.path.normpath(os.path.join(rel, n)) not in mounted
                and not os.path.islink(os.path.join(dirpath, n))
            )
            if rel != ".":
                found.append(rel)
        if plain:
            found = [d for d in found if not any(m.startswith(d + "/") for m in mounted)]
        return found

    def _name(self, prefix: str | None = None) -> str:
        self.next_id += 1
        if prefix is None:
            prefix = self.rng.choice(["old_", "old_", "", "", "tmp_"])
        suffix = self.rng.choice([".bin", ".bin", ".gguf", ".keep"])
        return f"{prefix}m{self.next_id}{suffix}"

    def op_create(self, where: str | None = None, prefix: str | None = None) -> Model | None:
        d = where if where is not None else self.rng.choice(["", "", *self._dirs()])
        rel = os.path.join(d, self._name(prefix))
        back = self.rng.choice([0.0, 0.0, 3600.0, 60 * DAY])
        before = time.time()
        path = self.models_dir / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"GGUF" + os.urandom(16))
            path.chmod(0o644)
            if back:
                os.utime(path, (before - back, before - back))
        except OSError:
            return None  # its directory went (ocrd removes what it emptied)
        return self._new(rel, "file", before, before - back if back else before)

    def op_write(self) -> None:
        files = self._present()
        if not files:
            return
        m = self.rng.choice(files)
        before = time.time()
        try:
            with open(self.models_dir / m.path, "r+b") as fh:
                fh.seek(0, os.SEEK_END)
                fh.write(b"more")
        except OSError:
            return
        m.changed_lb = m.mtime_lb = before
        m.touched_ub = time.time()

    def op_slow_write(self) -> None:
        m = self.op_create(prefix=self.rng.choice(self.file_rules.prefixes))  # a rule names it
        if m is None:
            return
        try:
            writer = SlowWriter(self.models_dir / m.path, self.rng.choice([0.05, 3.0]))
        except OSError:
            return
        m.holds.append([time.time(), INF])
        m.changed_lb = m.mtime_lb = m.arrived_lb
        self.holders.append(Holder(m, self.step + self.rng.randint(1, 6), writer=writer))

    def op_rename(self) -> None:
        files = self._present() + self._present("link")
        if not files:
            return
        m = self.rng.choice(files)
        d = self.rng.choice(["", *self._dirs()])
        rel = os.path.join(d, self._name())
        before = time.time()
        try:
            os.rename(self.models_dir / m.path, self.models_dir / rel)
        except OSError:
            return
        m.enter(rel, before)
        m.touched_ub = time.time()

    def op_move_in(self, changed: bool | None = None) -> None:
        if not self.packages:
            return
        pkg = self.packages.pop(0)
        d = self.rng.choice(["", "", *self._dirs(plain=True)])
        rel = os.path.join(d, pkg.name)
        inside = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.is_file())
        before = time.time()
        try:
            os.rename(pkg, self.models_dir / rel)
        except OSError:
            return
        self.note(f"moved {pkg.name} in as {rel}")
        if changed if changed is not None else self.rng.random() < 0.6:
            # A download tool's marker, written at once: the package's mtime is its ctime again.
            marker = self.models_dir / rel / ".complete"
            with contextlib.suppress(OSError):
                marker.write_bytes(b"")
                self._new(os.path.join(rel, ".complete"), "file", before)
        after = time.time()
        old = time.time() - 60 * DAY - 3600
        for f in inside:
            m = self._new(os.path.join(rel, f), "file", before, old)
            m.touched_ub = after

    def op_mkdir_deep(self) -> None:
        base = self.rng.choice(["", *self._dirs()])
        depth = self.rng.randint(3, 14)
        self.next_id += 1
        rel = os.path.join(base, *(f"d{self.next_id}_{i}" for i in range(depth)))
        try:
            os.makedirs(self.models_dir / rel)
        except OSError:
            return
        self.note(f"made {rel}")
        if self.rng.random() < 0.7:
            self.op_create(rel)

    def _under(self, d: str) -> list[Model]:
        return [m for m in self.models if m.present and m.path.startswith(d + "/")]

    def op_replace(self) -> None:
        """Directories P and Q leave model_dir, and Q comes back as P."""
        dirs = self._dirs(plain=True)
        pairs = [
            (p, q)
            for p in dirs
            for q in dirs
            if p != q and not p.startswith(q + "/") and not q.startswith(p + "/")
        ]
        if not pairs:
            return
        p, q = self.rng.choice(pairs)
        self.next_id += 1
        away_p, away_q = (
            self.staging / f"away{self.next_id}p",
            self.staging / f"away{self.next_id}q",
        )
        before = time.time()
        try:
            os.rename(self.models_dir / p, away_p)
        except OSError:
            return
        for m in self._under(p):
            m.leave(time.time())
        try:
            os.rename(self.models_dir / q, away_q)
        except OSError:
            return
        left = time.time()
        moving = self._under(q)
        for m in moving:
            m.leave(left)
        before = time.time()
        try:
            os.rename(away_q, self.models_dir / p)
        except OSError:
            return
        after = time.time()
        for m in moving:
            m.enter(p + m.path[len(q) :], before)
            m.arrived_lb = m.changed_lb = before
            m.touched_ub = after

    def op_swap_link(self) -> None:
        if self.rng.random() < 0.5:
            # A directory swapped for a link to a tree outside model_dir.
            dirs = self._dirs(plain=True)
            if not dirs:
                return
            d = self.rng.choice(dirs)
            self.next_id += 1
            before = time.time()
            try:
                os.rename(self.models_dir / d, self.staging / f"away{self.next_id}l")
            except OSError:
                return
            for m in self._under(d):
                m.leave(time.time())
            try:
                os.symlink(self.outside / "tree", self.models_dir / d)
            except OSError:
                return
            self._new(d, "link", before)
            return
        # A link's target swapped under its name (a new link renamed over it).
        links = [m for m in self._present("link") if not os.path.isdir(self.models_dir / m.path)]
        target = self.outside / self.rng.choice(["f1.bin", "old_f2.bin"])
        if links and self.rng.random() < 0.6:
            m = self.rng.choice(links)
            tmp = self.models_dir / f".swap{self.next_id}"
            try:
                os.symlink(target, tmp)
                os.rename(tmp, self.models_dir / m.path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            return
        rel = os.path.join(self.rng.choice(["", *self._dirs()]), "old_" + self._name())
        before = time.time()
        try:
            os.symlink(target, self.models_dir / rel)
        except OSError:
            return
        self._new(rel, "link", before)

    def op_hold(self) -> None:
        files = self._present()
        if not files:
            return
        m = self.rng.choice(files)
        try:
            readable = os.lstat(self.models_dir / m.path).st_mode & 0o004
        except OSError:
            return
        other = self.root and readable and self.rng.random() < 0.5
        how = self.rng.choice(["open", "mmap"] if other else ["open", "mmap", "write"])
        with contextlib.suppress(OSError):
            if how == "mmap" and os.lstat(self.models_dir / m.path).st_size == 0:
                how = "open"  # an empty file cannot be mapped
        stack = contextlib.ExitStack()
        before = time.time()
        try:
            stack.enter_context(
                held(
                    self.models_dir / m.path,
                    how,
                    prefix=_as_app() if other else (),
                    python=self.python,
                    env=self.env,
                )
            )
        except (AssertionError, OSError):
            stack.close()
            return  # gone before the holder opened it
        m.holds.append([time.time(), INF])
        if how == "write":
            m.changed_lb = m.mtime_lb = before
        self.holders.append(Holder(m, self.step + self.rng.randint(1, 8), stack=stack))

    def _release(self, h: Holder) -> None:
        released = time.time()
        for hold in h.model.holds:
            if hold[1] == INF:
                hold[1] = released
                break
        h.release()
        h.model.touched_ub = time.time()
        self.holders.remove(h)

    def _release_all(self) -> None:
        for h in list(self.holders):
            self._release(h)

    def op_mount(self) -> None:
        if not self.root:
            return
        d = self.rng.choice(["", *self._dirs(plain=True)])
        self.next_id += 1
        point = self.models_dir / d / f"mnt{self.next_id}"
        bind = self.rng.random() < 0.4
        try:
            point.mkdir()
            if bind:
                argv = ["mount", "--bind", str(self.outside / "bind"), str(point)]
            else:
                argv = ["mount", "-t", "tmpfs", "-o", "size=1m", "ocrd-campaign", str(point)]
            subprocess.run(argv, check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            return
        self.mounts.append(point)
        if not bind:
            before = time.time()
            for name in ("old_t.bin", "u.bin"):
                (point / name).write_bytes(b"GGUF mounted")
                os.utime(point / name, (before - 60 * DAY,) * 2)
                self._new(str((point / name).relative_to(self.models_dir)), "mounted", before)

    def op_umount(self) -> None:
        if not self.mounts:
            return
        point = self.rng.choice(self.mounts)
        rel = str(point.relative_to(self.models_dir))
        inside = self._under(rel)
        done = subprocess.run(["umount", str(point)], capture_output=True, check=False)
        if done.returncode == 0:
            self.mounts.remove(point)
            for m in inside:
                m.leave(time.time())

    def _unmount_all(self) -> None:
        for point in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
        self.mounts.clear()

    def _random_rules(self) -> RuleSet:
        prefixes = self.rng.choice([("old_",), ("old_",), ("old_", "tmp_"), ("tmp_",)])
        max_age = self.rng.choice([None, None, 7.0, 12.0, 3600.0])
        settle = self.rng.choice([0.5, 1.0])
        return RuleSet(prefixes, max_age, settle)

    def _write_config(self, rules: RuleSet) -> None:
        self.config_path.write_text(rules.toml(self.models_dir, self.rescan, self.engine))
        self.config_path.chmod(0o644)

    def _reload(self, expect: tuple[str, ...]) -> str:
        d = self.d
        assert d is not None
        with d.cond:
            n = len(d.events)
        d.send(signal.SIGHUP)
        outcomes = ("config_reloaded", "config_rejected", "reload_held")
        try:
            e = d.wait_for(
                "a reload's outcome",
                lambda: next((e for e in d.events[n:] if e.get("event") in outcomes), None),
            )
        except AssertionError as exc:
            raise _Crash(f"no outcome of a reload: {str(exc)[:300]}") from exc
        outcome = str(e["event"])
        if outcome not in expect:
            self.violation(f"a reload ended in {outcome}, expected one of {expect}: {e}")
        return outcome

    def op_reload(self) -> None:
        new = self._random_rules()
        self.file_rules = new
        self._write_config(new)
        self._reload(("config_reloaded", "reload_held"))

    def op_reload_invalid(self) -> None:
        text = self.file_rules.toml(self.models_dir, self.rescan, self.engine)
        bad = self.rng.choice(
            [
                text.replace("[retention]\n", '[retention]\nmax_age = "7 parsecs"\n', 1)
                if "max_age" not in text
                else text.replace("max_age = ", "max_age = 7 #", 1),
                text + "\n[retention.unknown]\nkey = 1\n",
                text.replace("[watch]\n", '[watch]\nobserver = "psychic"\n', 1),
            ]
        )
        self.config_path.write_text(bad)
        try:
            self._reload(("config_rejected",))
        finally:
            self._write_config(self.file_rules)

    def op_sighup(self) -> None:
        # The file may hold rules a reload was held for: held again, then.
        self._reload(("config_reloaded", "reload_held"))

    def op_chmod(self) -> None:
        files = self._present()
        if not files:
            return
        m = self.rng.choice(files)
        with contextlib.suppress(OSError):
            os.chmod(self.models_dir / m.path, self.rng.choice([0o600, 0o644, 0o444]))
        m.touched_ub = time.time()

    def op_remove(self) -> None:
        files = [m for m in self._present() if not m.holds_open()]
        if not files:
            return
        m = self.rng.choice(files)
        before = time.time()
        try:
            os.unlink(self.models_dir / m.path)
        except OSError:
            return
        m.leave(before)

    def op_wait(self) -> None:
        time.sleep(self.rng.uniform(0.05, 1.0))

    # -- the end ---------------------------------------------------------------------------

    def _finish(self) -> None:
        """Liveness: with nothing held, after a reload, every due file goes within a bound;
        the watchdog was fed; SIGTERM stops it cleanly."""
        d = self.d
        assert d is not None
        self._release_all()
        self.check()
        # The rules in force, in the file again (a held reload's rules may be there), reloaded:
        # a reload resets the back-off of deletions skipped while files were held.
        self.file_rules = self.rules_log[-1][1]
        self._write_config(self.file_rules)
        if self._reload(("config_reloaded",)) != "config_reloaded":
            return
        rules = self.file_rules
        started = time.time()
        bound = started + rules.settle + self.rescan + 3.0
        due_at = started + rules.settle + 0.5
        while True:
            self.check()
            now = time.time()
            due = [
                m
                for m in self._present()
                if rules.due_surely(m, due_at) and os.path.lexists(self.models_dir / m.path)
            ]
            if not due and now >= due_at:
                break
            if now > bound:
                for m in due:
                    self.violation(
                        f"{m.path} was due by {due_at:.3f} and is still there at {now:.3f}"
                    )
                break
            time.sleep(0.2)
        with d.cond:
            pings = [t for t, n in d.notes if n == "WATCHDOG=1"]
            ready = next((t for t, n in d.notes if n == "READY=1"), None)
        if ready is not None:
            marks = sorted([ready, *pings, time.monotonic()])
            self.result.watchdog_gap = max(b - a for a, b in itertools.pairwise(marks))
            if self.result.watchdog_gap > WATCHDOG_USEC / 2e6:  # the contract: half of it
                self.violation(f"no WATCHDOG=1 for {self.result.watchdog_gap:.2f}s")
        try:
            code, took = d.stop(signal.SIGTERM, timeout=10)
        except subprocess.TimeoutExpired:
            raise _Crash("SIGTERM: still running after 10 s") from None
        self.result.stop_s = took
        self._read_events()
        if code != 0:
            raise _Crash(f"SIGTERM: exit {code}: {d.last_error()}")
        if took > 5.0:
            self.violation(f"SIGTERM took {took:.2f}s")
        if not any(e.get("event") == "daemon_stopped" for e in d.events[-3:]):
            self.violation("no daemon_stopped as the last lines")


class _Crash(Exception):
    """The daemon died, failed, or stopped answering."""


def _as_app() -> list[str]:
    return as_user(APP_UID)


def _snapshot(root: Path) -> dict[str, tuple[str, int, int, float, bytes]]:
    """Every entry under ``root``, links not followed: kind, inode, size, mtime, contents."""
    out: dict[str, tuple[str, int, int, float, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if os.path.islink(full):
                kind, data = "link", os.readlink(full).encode()
            elif os.path.isdir(full):
                kind, data = "dir", b""
            else:
                kind = "file"
                with open(full, "rb") as fh:
                    data = fh.read()
            out[os.path.relpath(full, root)] = (kind, st.st_ino, st.st_size, st.st_mtime, data)
    return out


def seeds_from_env(default: Iterator[int] | list[int]) -> list[int]:
    one = os.environ.get("OCRD_CAMPAIGN_SEED")
    return [int(one)] if one else list(default)
