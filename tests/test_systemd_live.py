"""systemd/README.md, followed verbatim on a fresh Debian 12 under a real systemd.

A minimal Debian 12 root (tests/systemd_root.py, built once and cached) boots with
``systemd-nspawn --boot --volatile=overlay --private-network``: its own PID 1, pid, mount, network
and cgroup namespaces, a tmpfs over a read-only tree; this machine's own init and filesystems are
not touched. A copy of this repository is bound at /usr/local/src/ocrd, and a wheelhouse (built
once, cached beside the root) at /var/cache/ocrd-wheels, which the container's /etc/pip.conf
names: the container has no network, and the README's ``sudo make install`` runs for real.

The tests run the README's code blocks line by line as written (its ``apt-get install`` line is
checked against the root's package list instead, there being no network): install, start, drop
files, change the rules and reload, make a bad edit (``config_rejected``, and the rejection on
``systemctl status``'s Status: line), the jq recipes (``-f`` included), the metrics opt-in,
stop, and uninstall.

For more scenarios (the container is shared by the tests of this module, in order):
``box.run(argv, user="ocrd")`` runs a command as any user of the container,
``box.sh("script", user=...)`` a shell line, and ``box.background(argv, user=...)`` starts one
that keeps running (e.g. a process holding a model open) until ``stop()`` or the end of the
module. ``box.add_model(name, content)`` drops a model as the service user would.

Skipped, with the reason, only where the root can't be built or booted (not root, no debootstrap
or systemd-nspawn, no Debian mirror, nspawn refuses); OCRD_REQUIRE_SYSTEMD_LIVE=1 turns those
skips into failures. OCRD_LIVE_UNIT=PATH tests another unit file (e.g. a proposed change).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

import pytest

from tests import systemd_root
from tests.test_systemd import stated_exposure

REPO = Path(__file__).resolve().parent.parent
README = REPO / "systemd" / "README.md"
UNIT = Path(os.environ["OCRD_LIVE_UNIT"]) if os.environ.get("OCRD_LIVE_UNIT") else None
SRC = "/" + systemd_root.SOURCE  # the clone, in the container
WHEELS = "/" + systemd_root.WHEELS
MODELS = "/var/lib/ocrd/models"
CONFIG = "/etc/ocrd/config.toml"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_S = 90.0
WAIT_S = 30.0
PRIORITY = {"debug": "7", "info": "6", "warning": "4", "error": "3"}
# What the clone needs for `make install` (and nothing of this machine's: no .venv, no caches).
CLONE = (
    "Makefile",
    "pyproject.toml",
    "setup.py",
    "README.md",
    "config.toml",
    "ocrd",
    "requirements",
    "systemd",
)

RULES = f"""\
model_dir = "{MODELS}"

[retention]
prefixes = [{{prefixes}}]

[watch]
settle = "1s"
rescan = "10m"

[log]
format = "json"
"""


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("OCRD_REQUIRE_SYSTEMD_LIVE") == "1":
        pytest.fail(f"OCRD_REQUIRE_SYSTEMD_LIVE=1 but: {reason}")
    pytest.skip(f"no isolated systemd here: {reason}")


def _rules(*prefixes: str) -> str:
    return RULES.format(prefixes=", ".join(json.dumps(p) for p in prefixes))


def readme_block(heading: str, language: str = "sh") -> list[str]:
    """The lines of the first ```sh block under ``## heading`` in systemd/README.md."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = section.split(f"```{language}\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def _wait(what: str, check: Callable[[], Any], box: Container, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}{box.diagnosis()}"
            )
        time.sleep(0.25)
    return found


# -- the container ---------------------------------------------------------------------------


class Background:
    """A command running in the container (see Container.background)."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, sink: IO[bytes]) -> None:
        self.proc = proc
        self.out = out
        self._sink = sink

    def output(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Ends the process group this test started (nsenter and what runs under it)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._sink.close()


class Container:
    """One booted systemd-nspawn container over the cached root; commands run via nsenter."""

    def __init__(self, root: Path, binds: list[str], workdir: Path) -> None:
        self.name = f"ocrd-live-{os.getpid()}"
        self.workdir = workdir
        self.console = workdir / "console.log"
        self._console = self.console.open("wb")
        self._background: list[Background] = []
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            f"--directory={root}",
            "--volatile=overlay",  # a tmpfs over the read-only cached tree: nothing persists
            "--private-network",
            "--register=no",  # no systemd-machined on the host
            "--keep-unit",  # and no host systemd to ask for a scope
            f"--machine={self.name}",
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
            "--console=pipe",
            *binds,
        ]
        # Several runs may share the cached root: it is never written, so no image lock.
        env = {**os.environ, "SYSTEMD_NSPAWN_LOCK": "0"}
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._console, stderr=subprocess.STDOUT, env=env
        )
        self.leader = 0

    def console_tail(self, lines: int = 30) -> str:
        text = self.console.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _find_leader(self) -> int:
        """The container's PID 1 as seen from here: a child of nspawn (its subreaper) that is
        PID 1 in its own pid namespace; 0 while nspawn is still setting up."""
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    status = Path(f"/proc/{child}/status").read_text()
                    nspid = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
                    if nspid and nspid.group(1).split()[1:] == ["1"]:
                        return int(child)
        return 0

    def _leader_is_systemd(self) -> bool:
        """The boot race: nspawn's inner child is PID 1 of the new namespace *before* it
        executes systemd. Asked then, systemctl finds no manager and says "offline"."""
        try:
            return Path(f"/proc/{self.leader}/comm").read_text().strip() == "systemd"
        except OSError:
            return False

    def boot(self) -> str | None:
        """Wait for the container's systemd to finish booting; the reason if it did not."""
        deadline = time.monotonic() + BOOT_S
        state = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"systemd-nspawn exited {self.proc.returncode}: {self.console_tail()}"
            self.leader = self.leader or self._find_leader()
            if self.leader and self._leader_is_systemd():
                # Fails (empty stdout, or "offline") until systemd listens on its socket.
                left = max(1.0, deadline - time.monotonic())
                state = self.run(["systemctl", "is-system-running", "--wait"], timeout=left)
                answer = state.stdout.strip()
                if answer in ("running", "degraded"):
                    return None
                if answer and answer not in ("offline", "initializing", "starting"):
                    failed = self.run(["systemctl", "--failed", "--no-legend"]).stdout
                    return f"the container booted {answer!r}: {failed}"
            time.sleep(0.2)
        detail = f"{state.stdout.strip()!r} {state.stderr.strip()}" if state else "no systemd"
        return f"the container did not boot within {BOOT_S:.0f}s: {detail}"

    def _argv(self, argv: list[str], user: str, cwd: str) -> list[str]:
        enter = ["nsenter", f"--target={self.leader}", "-m", "-u", "-i", "-n", "-p", "-C", "-r"]
        env = ["env", "-i", f"PATH={CONTAINER_PATH}", "LANG=C.UTF-8", "SYSTEMD_PAGER=cat"]
        as_user = [] if user == "root" else ["runuser", "-u", user, "--"]
        # -w: the container's root as cwd; then cd where asked (as the user, like a login).
        inner = ["sh", "-c", 'cd "$0" && exec "$@"', cwd, *as_user, *argv]
        return [*enter, "-w", *env, *inner]

    def run(
        self,
        argv: list[str],
        *,
        user: str = "root",
        cwd: str = "/",
        input_text: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the container (all its namespaces, its root, a clean env) as ``user``."""
        return subprocess.run(
            self._argv(argv, user, cwd),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def sh(
        self, script: str, *, user: str = "root", cwd: str = "/", timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """A shell line (a README line) exactly as written."""
        return self.run(["sh", "-c", script], user=user, cwd=cwd, timeout=timeout)

    def background(self, argv: list[str], *, user: str = "root", cwd: str = "/") -> Background:
        """Start argv in the container as ``user`` and return at once; its stdout and stderr
        go to a file. Stopped by ``stop()`` or when the container closes."""
        out = self.workdir / f"background-{len(self._background)}.log"
        sink = out.open("wb")
        proc = subprocess.Popen(
            self._argv(argv, user, cwd),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends all of it
        )
        job = Background(proc, out, sink)
        self._background.append(job)
        return job

    def write(self, path: str, text: str) -> None:
        result = self.run(
            ["sh", "-c", f'mkdir -p "$(dirname {path})" && cat > {path}'], input_text=text
        )
        assert result.returncode == 0, result.stderr

    def read(self, path: str) -> str:
        result = self.run(["cat", path])
        assert result.returncode == 0, result.stderr
        return result.stdout

    def show(self, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", "ocrd.service", *(f"--property={p}" for p in props)])
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def add_model(self, name: str, content: str) -> None:
        """A model file in MODELS, written as the service user (as the OCR service that shares
        the directory would) and renamed into place whole, as a downloader does."""
        script = f'cd {MODELS} && printf %s "$1" > ".{name}.part" && mv ".{name}.part" "{name}"'
        made = self.run(["sh", "-c", script, "sh", content], user="ocrd")
        assert made.returncode == 0, made.stderr

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path]).returncode == 0

    def journal(self) -> list[dict[str, Any]]:
        """The service's own stdout/stderr entries, with every journal field."""
        out = self.run(
            [
                "journalctl",
                "_SYSTEMD_UNIT=ocrd.service",
                "_TRANSPORT=stdout",
                "--output=json",
                "--no-pager",
            ]
        )
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def diagnosis(self) -> str:
        status = self.run(["systemctl", "status", "--no-pager", "--lines=0", "ocrd.service"])
        log = self.run(["journalctl", "--unit=ocrd.service", "--output=cat", "--no-pager"])
        return f"\n{status.stdout}\n--- journalctl -u ocrd -o cat ---\n{log.stdout[-6000:]}"

    def close(self) -> None:
        """Halt the container (SIGTERM to nspawn = halt its systemd), then make sure it is gone."""
        for job in self._background:
            job.stop()
        for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait_s)
        self.proc.wait()
        self._console.close()


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A booted container with a clone of this repository and pip pointed at the wheelhouse;
    nothing of ocrd installed yet."""
    reason = systemd_root.missing_prerequisites()
    if reason:
        _unavailable(reason)
    try:
        root = systemd_root.build()
        wheels = systemd_root.wheelhouse()
    except (systemd_root.RootUnavailable, OSError, subprocess.SubprocessError) as exc:
        _unavailable(f"the Debian root cannot be built: {exc}")
    workdir = tmp_path_factory.mktemp("live")
    clone = workdir / "src"
    clone.mkdir()
    for name in CLONE:
        source = REPO / name
        if source.is_dir():
            # This machine's compiled steps stay here: the container's install builds its own.
            shutil.copytree(
                source, clone / name, ignore=shutil.ignore_patterns("__pycache__", "*.so")
            )
        else:
            shutil.copy2(source, clone / name)
    if UNIT is not None:
        shutil.copy2(UNIT, clone / "systemd" / "ocrd.service")
    # /var/lib/ocrd (the unit's StateDirectory, model_dir's parent) on this host's disk, as a
    # real host's would be: the container's root is overlayfs, where a lease does not see a
    # process that only maps a model, and ocrd as the unit runs it keeps every file there
    # (tests/test_inuse.py, "overlayfs").
    state = workdir / "state"
    state.mkdir()
    binds = [
        f"--bind={clone}:{SRC}",
        f"--bind-ro={wheels}:{WHEELS}",
        f"--bind={state}:/var/lib/ocrd",
    ]
    container = Container(root, binds, workdir)
    try:
        reason = container.boot()
        if reason:
            _unavailable(reason)
        # This host's pip configuration, as it were: no index, the wheelhouse instead.
        container.write("/etc/pip.conf", f"[global]\nno-index = true\nfind-links = {WHEELS}\n")
        yield container
    finally:
        container.close()


def _events(box: Container) -> list[dict[str, Any]]:
    """The daemon's lines from the journal, each parsed: JSON with timestamp, level and event
    first, filed at the priority of its level."""
    events = []
    for entry in box.journal():
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # journald encodes non-UTF-8 messages as byte arrays
            message = bytes(message).decode("utf-8", "replace")
        if not isinstance(message, str):
            raise AssertionError(f"a journal entry without a message: {entry}")
        try:
            event = json.loads(message)
        except (TypeError, ValueError):
            raise AssertionError(f"not a JSON line in the journal: {message!r}") from None
        assert isinstance(event, dict), message
        assert list(event)[:3] == ["timestamp", "level", "event"], message
        assert entry.get("PRIORITY") == PRIORITY[event["level"]], (entry.get("PRIORITY"), event)
        events.append(event)
    return events


def _has_event(box: Container, name: str, **keys: Any) -> bool:
    return any(
        e["event"] == name and all(e.get(k) == v for k, v in keys.items()) for e in _events(box)
    )


def _ok(result: subprocess.CompletedProcess[str], what: str, box: Container) -> str:
    assert result.returncode == 0, (
        f"{what}: exit {result.returncode}\n{result.stdout}\n{result.stderr}{box.diagnosis()}"
    )
    return result.stdout


def _status_line(box: Container) -> str:
    out = box.run(["systemctl", "status", "--no-pager", "--lines=0", "ocrd"]).stdout
    found = re.search(r"^\s*Status: \"(.*)\"$", out, re.MULTILINE)
    return found.group(1) if found else ""


# -- the tests, in the README's order ----------------------------------------------------------


def test_install_as_the_readme_says(box: Container) -> None:
    lines = readme_block("Install")
    apt = [line for line in lines if "apt-get install" in line]
    assert len(apt) == 1, lines
    wanted = apt[0].split("#", 1)[0].split("apt-get install", 1)[1].split()
    assert set(wanted) <= set(systemd_root.PACKAGES), "the root lacks what the README installs"
    for line in lines:
        if line in apt:
            continue  # no network in the container: the root has these packages already
        _ok(box.sh(line, cwd=SRC, timeout=300), line, box)
        if line.startswith("sudo make install"):
            # Right after the install, before any start: the config exists and is valid,
            # and so is the model directory it names.
            done = box.run(["ocrd", "check", "-c", CONFIG])
            check = _ok(done, "ocrd check", box)
            assert f"model_dir={MODELS}" in check, check
            # gcc and python3-dev were there: the install built the compiled steps, which the
            # unit's daemon then deletes with (under its system-call filter).
            deleter = "deleter: the compiled step for the common case"
            assert deleter in done.stderr, done.stderr

    assert box.run(["readlink", "/usr/local/bin/ocrd"]).stdout.strip() == (
        "/opt/ocrd/venv/bin/ocrd"
    )
    user = box.run(["getent", "passwd", "ocrd"]).stdout.strip().split(":")
    assert user[5:] == ["/var/lib/ocrd", "/usr/sbin/nologin"], user
    assert int(user[2]) < 1000, user  # a system user, as sysusers.d makes it
    models = box.run(["stat", "-c", "%U:%G %a", MODELS]).stdout.strip()
    assert models == "ocrd:ocrd 2750", models  # group ocrd reads; new files keep the group
    # What was tested is what was installed: every pin of the lock, exactly.
    frozen = _ok(box.run(["/opt/ocrd/venv/bin/python", "-m", "pip", "freeze"]), "freeze", box)
    assert _pins((REPO / "requirements/run.lock").read_text()) <= _pins(frozen), frozen
    # Installed, ocrd finds /etc/ocrd/config.toml without -c.
    check = _ok(box.run(["ocrd", "check"]), "ocrd check without -c", box)
    assert check.startswith(f"{CONFIG}: ok: "), check
    assert json.loads(_ok(box.run(["ocrd", "list", "--json"]), "ocrd list", box)) == []
    exec_start = box.show("ExecStart")["ExecStart"]
    assert "path=/usr/local/bin/ocrd" in exec_start, exec_start
    shown = box.show("ActiveState", "SubState", "NRestarts", "WatchdogUSec", "StatusText")
    assert (shown["ActiveState"], shown["SubState"]) == ("active", "running"), shown
    assert shown["NRestarts"] == "0", box.diagnosis()
    assert shown["WatchdogUSec"] == "30s", shown
    assert shown["StatusText"].startswith("0 files (0 bytes) in model_dir;"), shown
    verify = box.run(["systemd-analyze", "verify", "ocrd.service"])
    assert "ocrd.service" not in verify.stderr, verify.stderr
    assert _has_event(box, "daemon_started", config=CONFIG, model_dir=MODELS)
    assert _has_event(box, "engine_started", model_dir=MODELS)
    # The exposure systemd/README.md states for the unit as it runs is the measured one.
    security = _ok(box.run(["systemd-analyze", "security", "--no-pager", "ocrd.service"]), "", box)
    found = re.search(r"Overall exposure level for ocrd.service: (\d+\.\d+)", security)
    assert found, security
    assert found.group(1) == stated_exposure("live"), security[-3000:]


def _pins(text: str) -> set[tuple[str, str]]:
    """(normalised name, version) of each ``name==version`` line (a lock, or pip freeze)."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", text, re.MULTILINE)
    return {(re.sub(r"[-_.]+", "-", name).lower(), version) for name, version in pins}


def test_the_ocr_service_reads_the_models_through_group_ocrd(box: Container) -> None:
    """The README's way for the OCR service's account: group ocrd. Before it, that account
    cannot even list model_dir; after, it reads a model ocrd's user made and one root made
    with a tight umask (setgid: the file has group ocrd). An admin outside the group who runs
    ``ocrd list`` is told in one line what to do (exit 77), not shown a traceback."""
    for user in ("ocr", "admin"):
        made = box.run(["useradd", "--system", "--no-create-home", user])
        assert made.returncode == 0 or "already exists" in made.stderr, made.stderr
    box.add_model("en_shared.bin", "s")
    made = box.sh(f"umask 027 && printf r > {MODELS}/en_root.bin")
    assert made.returncode == 0, made.stderr
    assert box.run(["stat", "-c", "%U:%G %a", f"{MODELS}/en_root.bin"]).stdout.split() == [
        "root:ocrd",
        "640",
    ]
    denied = box.run(["cat", f"{MODELS}/en_shared.bin"], user="ocr")
    assert denied.returncode != 0, denied.stdout
    assert "Permission denied" in denied.stderr, denied.stderr

    listed = box.run(["ocrd", "list", "-c", CONFIG], user="admin")
    assert listed.returncode == 77, listed
    (line,) = listed.stderr.splitlines()
    assert f"sudo -u ocrd ocrd list -c {CONFIG}" in line, line
    assert "join group ocrd: sudo usermod -aG ocrd admin" in line, line

    (join,) = readme_block("Let the OCR service read the models")
    _ok(box.sh(join), join, box)
    for name, content in (("en_shared.bin", "s"), ("en_root.bin", "r")):
        read = box.run(["cat", f"{MODELS}/{name}"], user="ocr")
        assert (read.returncode, read.stdout) == (0, content), read
    box.run(["rm", f"{MODELS}/en_shared.bin", f"{MODELS}/en_root.bin"])  # later tests count


def test_deletes_reloads_and_tells(box: Container) -> None:
    first_ping = int(box.show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
    box.add_model("old_x.bin", "a")
    box.add_model("en_model.bin", "b")
    _wait("old_x.bin to be deleted", lambda: not box.exists(f"{MODELS}/old_x.bin"), box)
    assert box.exists(f"{MODELS}/en_model.bin")
    _wait("model_deleted", lambda: _has_event(box, "model_deleted", path="old_x.bin"), box)
    assert _has_event(box, "engine_freed", reason="deletion")
    _wait(
        "Status: to count the deletion",
        lambda: "since start: deleted 1 file (1 byte), 1 engine cycle" in _status_line(box),
        box,
    )

    # Change the rules, as the README says (the editor step is this write).
    edit, check, reload = readme_block("Change the rules")
    assert edit.startswith("sudoedit /etc/ocrd/config.toml"), edit
    box.write(CONFIG, _rules("old_", "stale_"))
    _ok(box.sh(check), check, box)
    _ok(box.sh(reload, timeout=60), reload, box)
    _wait("config_reloaded", lambda: _has_event(box, "config_reloaded"), box)
    box.add_model("stale_y.bin", "c")
    _wait(
        "stale_y.bin (new rule) to be deleted", lambda: not box.exists(f"{MODELS}/stale_y.bin"), box
    )
    assert box.exists(f"{MODELS}/en_model.bin")

    # A bad edit: check says so; the reload is rejected and the status says that until fixed.
    box.write(CONFIG, _rules("old_") + "bogus = 1\n")
    rejected_check = box.sh(check)
    assert rejected_check.returncode == 78, rejected_check
    assert "at 'log.bogus': unknown key" in rejected_check.stderr, rejected_check.stderr
    _ok(box.sh(reload, timeout=60), reload, box)
    _wait("config_rejected", lambda: _has_event(box, "config_rejected"), box)
    status = _wait("Status: to show the rejection", lambda: "REJECTED" in _status_line(box), box)
    assert status
    line = _status_line(box)
    assert "old rules in force: config.toml: at 'log.bogus': unknown key" in line, line
    assert re.search(r"since start: deleted 2 files \(2 bytes\), \d+ engine cycles?$", line), line
    box.add_model("stale_z.bin", "d")  # the old rules (old_, stale_) are still in force
    _wait("stale_z.bin to be deleted", lambda: not box.exists(f"{MODELS}/stale_z.bin"), box)

    box.write(CONFIG, _rules("old_"))
    _ok(box.sh(reload, timeout=60), reload, box)
    _wait("the rejection to leave Status:", lambda: "REJECTED" not in _status_line(box), box)

    # WATCHDOG=1 arrives at least every half WatchdogSec=30s.
    _wait(
        "a WATCHDOG=1 ping",
        lambda: (
            int(box.show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]) > first_ping
        ),
        box,
        timeout=20,
    )


def test_log_recipes_work_verbatim(box: Container) -> None:
    everything, follow, skipped, warnings = readme_block("Read what it did")
    out = _ok(box.sh(everything), everything, box)  # jq . fails on any line that is not JSON
    assert '"event": "daemon_started"' in out, out[-2000:]

    job = box.background(["sh", "-c", follow])
    box.add_model("old_followed.bin", "e")
    _wait(
        "the -f recipe to print the new deletion",
        lambda: '"path":"old_followed.bin"' in job.output(),
        box,
    )
    assert job.running(), job.output()  # jq did not die on a line it could not parse
    job.stop()
    for line in job.output().splitlines():
        assert json.loads(line)["event"] == "model_deleted", line

    # A model the OCR service (user ocrd) holds open is skipped as in use, and the recipe says
    # so. Opened under a name no rule selects, then renamed into one: no race with settle.
    box.add_model("held.bin", "h")
    holder = box.background(
        ["sh", "-c", f'exec 3<"{MODELS}/held.bin" && echo open && exec sleep 600'], user="ocrd"
    )
    _wait("the holder to open the model", lambda: "open" in holder.output(), box)
    renamed = box.run(["mv", f"{MODELS}/held.bin", f"{MODELS}/old_held.bin"], user="ocrd")
    assert renamed.returncode == 0, renamed.stderr
    _wait(
        "deletion_skipped in_use",
        lambda: _has_event(box, "deletion_skipped", path="old_held.bin", reason="in_use"),
        box,
    )
    assert "old_held.bin in_use" in _ok(box.sh(skipped), skipped, box).splitlines()
    assert box.exists(f"{MODELS}/old_held.bin")
    holder.stop()
    box.run(["rm", f"{MODELS}/old_held.bin"])  # the later tests count from a clean directory

    err = _ok(box.sh(warnings), warnings, box)
    assert '"event":"engine_model_not_loaded"' in err.replace(" ", ""), err
    assert '"event":"config_rejected"' in err.replace(" ", ""), err
    assert "model_deleted" not in err, err  # info lines are below -p warning


def _skipped_in_use(box: Container, name: str) -> Callable[[], bool]:
    return lambda: _has_event(box, "deletion_skipped", path=name, reason="in_use")


def test_models_held_by_any_user_are_in_use_under_the_shipped_unit(box: Container) -> None:
    """The unit grants CAP_LEASE (and no private user namespace), so the kernel answers for
    every holder: a model mapped by a process of user ocrd, and one held open by another user
    (the OCR application's, here "app", in group ocrd to reach the directory), are both
    skipped as in_use — not in_use_unknown — and a free one is deleted."""
    made = box.run(["useradd", "--system", "--no-create-home", "--groups", "ocrd", "app"])
    assert made.returncode == 0 or "already exists" in made.stderr, made.stderr
    box.add_model("mapped.bin", "m" * 4096)
    made = box.sh(
        f"cd {MODELS} && printf x > app.bin && chown app:ocrd app.bin && chmod 0640 app.bin"
    )
    assert made.returncode == 0, made.stderr
    mapper = box.background(
        [
            "python3",
            "-c",
            # libc's mmap (Python's mmap module keeps a dup of the fd): after the close only
            # the mapping holds the model, as llama.cpp does with GGUF files.
            "import ctypes, mmap, os, sys\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "libc.mmap.restype = ctypes.c_void_p\n"
            "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + [ctypes.c_int] * 3"
            " + [ctypes.c_long]\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "addr = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)\n"
            "assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()\n"
            "os.close(fd)\n"
            "print('mapped', flush=True)\n"
            "import time; time.sleep(600)\n",
            f"{MODELS}/mapped.bin",
        ],
        user="ocrd",
    )
    reader = box.background(
        ["sh", "-c", f'exec 3<"{MODELS}/app.bin" && echo open && exec sleep 600'], user="app"
    )
    try:
        _wait("the mapping", lambda: "mapped" in mapper.output(), box)
        _wait("the app's open file", lambda: "open" in reader.output(), box)
        for name in ("mapped.bin", "app.bin"):  # renamed into a name the rules select
            _ok(box.run(["mv", f"{MODELS}/{name}", f"{MODELS}/old_{name}"]), name, box)
        box.add_model("old_free.bin", "f")
        _wait("old_free.bin deleted", lambda: not box.exists(f"{MODELS}/old_free.bin"), box)
        for name in ("old_mapped.bin", "old_app.bin"):
            _wait(f"{name} skipped as in use", _skipped_in_use(box, name), box)
            assert box.exists(f"{MODELS}/{name}")
        assert not _has_event(box, "deletion_skipped", reason="in_use_unknown")
        assert not _has_event(box, "in_use_check_limited")
    finally:
        mapper.stop()
        reader.stop()
    for name in ("old_mapped.bin", "old_app.bin"):
        box.run(["rm", "-f", f"{MODELS}/{name}"])  # the later tests count from a clean directory


def test_metrics_opt_in(box: Container) -> None:
    directory = "/var/lib/prometheus/node-exporter"
    # What the prometheus-node-exporter package would have made.
    _ok(box.run(["install", "-d", "-m", "0755", directory]), "textfile directory", box)
    script = "\n".join(readme_block("Metrics for Prometheus"))
    _ok(box.sh(script, timeout=120), script, box)
    prom = f"{directory}/ocrd.prom"
    _wait("the metrics file", lambda: box.exists(prom), box)
    text = box.read(prom)
    assert 'ocrd_model_files{verdict="keep"} 1.0' in text, text
    assert box.run(["stat", "-c", "%a", prom]).stdout.strip() == "644"
    box.add_model("old_counted.bin", "ff")
    _wait(
        "the metrics file to count the deletion",
        lambda: 'ocrd_deleted_bytes_total{rule="prefix"} 2.0' in box.read(prom),
        box,
    )
    assert box.run(["ls", directory]).stdout.split() == ["ocrd.prom"]  # no temp file left


def _budget_rules(max_size: str) -> str:
    """The live rules with a disk budget; the earlier tests' en_model.bin is whitelisted."""
    rules = _rules("old_").replace("[retention]\n", '[retention]\nwhitelist = ["en_model.bin"]\n')
    state = '\n[state]\npath = "/var/lib/ocrd/state.db"\n'  # as `sudo make install` writes it
    return rules + f'\n[budget]\nmax_size = "{max_size}"\nheadroom = "0%"\n' + state


def _last_used(box: Container) -> dict[str, str]:
    listed = json.loads(_ok(box.run(["ocrd", "list", "--json"]), "ocrd list --json", box))
    return {row["path"]: row["last_used"] for row in listed}


def test_the_budget_keeps_what_was_read_and_its_state_under_the_state_directory(
    box: Container,
) -> None:
    """[budget] under the shipped unit: last use is kept in the state directory
    (StateDirectory=ocrd: /var/lib/ocrd), the service user's, 0600, where `ocrd list` run by
    root reads it (the installed config names it); when max_size is crossed,
    the model the OCR service read outlives the older unused one (rule budget); `ocrd list`
    run by root leaves nothing of root's in the state directory."""
    before = box.read(CONFIG)  # with the metrics opt-in, which uninstall reads later
    try:
        box.write(CONFIG, _budget_rules("1 GiB"))
        _ok(box.run(["systemctl", "restart", "ocrd"], timeout=60), "systemctl restart", box)
        state = "/var/lib/ocrd/state.db"
        _wait("the state file", lambda: box.exists(state), box)
        assert box.run(["stat", "-c", "%U:%G %a", state]).stdout.split() == ["ocrd:ocrd", "600"]
        box.add_model("used.bin", "u" * 700)
        box.add_model("stale.bin", "s" * 700)  # arrives after used.bin: older only by use

        def read_is_recorded() -> bool:
            read = box.run(["cat", f"{MODELS}/used.bin"], user="ocr")
            assert read.returncode == 0, read.stderr
            used = _last_used(box)
            return used["used.bin"] > used["stale.bin"]

        _wait("the read to be recorded as used.bin's last use", read_is_recorded, box)
        box.write(CONFIG, _budget_rules("1 KiB"))  # 1401 bytes of models: one must go
        _ok(box.run(["systemctl", "reload", "ocrd"], timeout=60), "systemctl reload", box)
        _wait("stale.bin evicted", lambda: not box.exists(f"{MODELS}/stale.bin"), box)
        assert _has_event(box, "model_deleted", path="stale.bin", rule="budget")
        assert box.exists(f"{MODELS}/used.bin")
        assert box.exists(f"{MODELS}/en_model.bin")
        roots = box.run(["find", "/var/lib/ocrd", "-maxdepth", "1", "-user", "root"]).stdout
        assert roots == "", roots
    finally:  # the later tests run on the config as it was, from a clean directory
        box.write(CONFIG, before)
        _ok(box.run(["systemctl", "restart", "ocrd"], timeout=60), "systemctl restart", box)
        box.run(["rm", "-f", f"{MODELS}/used.bin", f"{MODELS}/stale.bin"])


def test_stop(box: Container) -> None:
    stop = box.run(["systemctl", "stop", "ocrd.service"], timeout=60)
    assert stop.returncode == 0, stop.stderr
    shown = box.show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus", "NRestarts")
    assert shown["ActiveState"] == "inactive", shown
    assert shown["Result"] == "success", f"{shown}{box.diagnosis()}"
    assert (shown["ExecMainCode"], shown["ExecMainStatus"]) == ("1", "0"), shown  # exited, 0
    assert shown["NRestarts"] == "0", box.diagnosis()
    events = _events(box)
    names = [e["event"] for e in events]
    assert names[-1] == "daemon_stopped", names
    # The engine is not left running: freed at shutdown, or still freed since its last deletion
    # (it restarts only after engine.restart_after without deletions).
    engine = [n for n in names if n in ("engine_started", "engine_freed")]
    assert engine[-1] == "engine_freed", names


def test_reinstall_restarts_keeps_the_config_and_uninstall_keeps_the_data(box: Container) -> None:
    before = hashlib.sha256(box.read(CONFIG).encode()).hexdigest()
    # Over a stopped service: installed, and said so; not started.
    again = _ok(box.sh("sudo make install", cwd=SRC, timeout=300), "make install again", box)
    assert "ocrd.service is not running, so not restarted" in again, again
    assert box.show("ActiveState")["ActiveState"] == "inactive"
    # Over a running one: restarted onto the new code.
    _ok(box.run(["systemctl", "start", "ocrd"], timeout=60), "systemctl start", box)
    pid = box.show("MainPID")["MainPID"]
    again = _ok(box.sh("sudo make install", cwd=SRC, timeout=300), "make install over it", box)
    assert "ocrd.service restarted" in again, again
    shown = box.show("ActiveState", "MainPID")
    assert shown["ActiveState"] == "active", shown
    assert shown["MainPID"] not in (pid, "0"), (pid, shown)
    assert hashlib.sha256(box.read(CONFIG).encode()).hexdigest() == before

    prom = "/var/lib/prometheus/node-exporter/ocrd.prom"
    drop_in = "/etc/systemd/system/ocrd.service.d/metrics.conf"
    assert box.exists(prom)  # the metrics opt-in, above
    assert box.exists(drop_in)
    _ok(box.sh("sudo make uninstall", cwd=SRC, timeout=120), "make uninstall", box)
    for gone in (
        "/usr/local/bin/ocrd",
        "/opt/ocrd",
        "/etc/systemd/system/ocrd.service",
        "/etc/systemd/system/ocrd.service.d",
        "/usr/local/lib/sysusers.d/ocrd.conf",
        "/usr/local/lib/tmpfiles.d/ocrd.conf",
        prom,
    ):
        assert not box.exists(gone), gone
    for kept in (CONFIG, f"{MODELS}/en_model.bin", "/var/lib/prometheus/node-exporter"):
        assert box.exists(kept), kept
    assert box.run(["getent", "passwd", "ocrd"]).returncode == 0

    # Another program's /usr/local/bin/ocrd (OCR-D's) is never replaced.
    box.write("/usr/local/bin/ocrd", "#!/bin/sh\necho OCR-D\n")
    refused = box.sh("sudo make install", cwd=SRC, timeout=120)
    assert refused.returncode != 0, refused.stdout
    assert "BINDIR=" in refused.stderr, refused.stderr
    assert box.read("/usr/local/bin/ocrd") == "#!/bin/sh\necho OCR-D\n"
    assert not box.exists("/opt/ocrd/venv")
