"""A model some process holds is never deleted: provoked for real with ``ocrd clean``, in the
worlds where the /proc check used to be blind — holders of another user, ocrd unprivileged with
and without CAP_LEASE (as the shipped unit runs it), PID namespaces on either side, a writer,
a mapping whose fd is closed, btrfs, an fd limit, and a hung FUSE mount."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ocrd.fs.holders import Answer, file_id, take
from tests.conftest import StartOcrd
from tests.harness import ocrd_argv
from tests.worlds import APP_UID, OCRD_UID, World, as_user, held, make_world, root_only


@pytest.fixture
def world() -> Iterator[World]:
    with make_world() as w:
        yield w


@contextmanager
def held_by(
    world: World, path: Path, how: str, *, uid: int | None = None, pid_ns: bool = False
) -> Iterator[subprocess.Popen[str]]:
    """``held`` in this world: as user ``uid``, in a PID namespace of its own if asked."""
    with held(
        path, how, prefix=as_user(uid, pid_ns=pid_ns), python=world.python, env=world.env
    ) as proc:
        yield proc


def clean(
    world: World,
    *,
    uid: int | None = None,
    lease_cap: bool = False,
    pid_ns: bool = False,
    retention: dict[str, Any] | None = None,
    timeout: float = 60,
    model_dir: str = "models",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``ocrd clean --json`` in the given world; its report and its log lines (stderr)."""
    config = world.config(model_dir, retention=retention or {})
    argv = [*as_user(uid, lease_cap=lease_cap, pid_ns=pid_ns), *world.python, "-m", "ocrd"]
    if world.python == [sys.executable]:
        argv = [*as_user(uid, lease_cap=lease_cap, pid_ns=pid_ns), *ocrd_argv()]
    result = subprocess.run(
        [*argv, "clean", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=world.env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    logs = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return json.loads(result.stdout), logs


def skipped(report: dict[str, Any]) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in report["skipped"]}


# -- ocrd as root (CAP_LEASE): the kernel answers for every holder ------------------------------


@root_only
@pytest.mark.parametrize("how", ["open", "mmap", "write"])
def test_holders_of_another_user_are_seen(world: World, how: str) -> None:
    held_model = world.model("old_held.gguf", owner=APP_UID)
    world.model("old_free.gguf", owner=APP_UID)
    with held_by(world, held_model, how, uid=APP_UID):
        report, _ = clean(world)
    assert report["deleted"] == ["old_free.gguf"]
    assert skipped(report) == {"old_held.gguf": "in_use"}
    assert held_model.exists()


@root_only
def test_a_holder_in_another_pid_namespace_is_seen(world: World) -> None:
    held_model = world.model("old_held.gguf", owner=APP_UID)
    with held_by(world, held_model, "mmap", uid=APP_UID, pid_ns=True):
        report, _ = clean(world)
    assert skipped(report) == {"old_held.gguf": "in_use"}
    assert held_model.exists()


@root_only
def test_ocrd_in_a_pid_namespace_still_sees_holders_outside_it(world: World) -> None:
    held_model = world.model("old_held.gguf", owner=APP_UID)
    world.model("old_free.gguf", owner=APP_UID)
    with held_by(world, held_model, "mmap", uid=APP_UID):
        report, _ = clean(world, pid_ns=True)
    assert report["deleted"] == ["old_free.gguf"]
    assert skipped(report) == {"old_held.gguf": "in_use"}


# -- ocrd unprivileged, as the unit runs it ---------------------------------------------------


@root_only
def test_unprivileged_with_cap_lease_sees_every_users_holders(world: World) -> None:
    app_model = world.model("old_app.gguf", owner=APP_UID)
    own_model = world.model("old_own.gguf", owner=OCRD_UID)
    world.model("old_free.gguf", owner=APP_UID)
    with (
        held_by(world, app_model, "mmap", uid=APP_UID),
        held_by(world, own_model, "open", uid=OCRD_UID),
    ):
        report, logs = clean(world, uid=OCRD_UID, lease_cap=True)
    assert report["deleted"] == ["old_free.gguf"]
    assert skipped(report) == {"old_app.gguf": "in_use", "old_own.gguf": "in_use"}
    assert not [e for e in logs if e["event"] == "in_use_check_limited"]


@root_only
def test_unprivileged_without_cap_lease_keeps_what_it_cannot_judge_and_says_so_first(
    world: World,
) -> None:
    """Another user's file cannot be leased without CAP_LEASE, held or not, and that user's
    /proc entries cannot be read: whether it is held is unknown, so it is kept, with a warning
    that names why and the fix. Its own files are still leased and deleted."""
    app_model = world.model("old_app.gguf", owner=APP_UID)
    world.model("old_app_free.gguf", owner=APP_UID)
    world.model("old_own.gguf", owner=OCRD_UID)
    with held_by(world, app_model, "mmap", uid=APP_UID):
        report, logs = clean(world, uid=OCRD_UID)
    assert report["deleted"] == ["old_own.gguf"]
    assert skipped(report) == {
        "old_app.gguf": "in_use_unknown",
        "old_app_free.gguf": "in_use_unknown",
    }
    warning = next(e for e in logs if e["event"] == "in_use_check_limited")
    assert warning["why"]
    assert "CAP_LEASE" in warning["fix"]


@root_only
def test_unknown_holders_delete_is_an_explicit_opt_in(world: World) -> None:
    world.model("old_app_free.gguf", owner=APP_UID)
    report, logs = clean(world, uid=OCRD_UID, retention={"unknown_holders": "delete"})
    assert report["deleted"] == ["old_app_free.gguf"]
    assert "deleting them anyway" in next(
        e["action"] for e in logs if e["event"] == "in_use_check_limited"
    )


# -- filesystems and limits ---------------------------------------------------------------------


@contextmanager
def loop_mount(base: Path, fstype: str) -> Iterator[Path]:
    mkfs = shutil.which(f"mkfs.{fstype}")
    if mkfs is None:
        pytest.skip(f"mkfs.{fstype} is not installed")
    image, mnt = base / f"{fstype}.img", base / "models"
    with open(image, "wb") as fh:
        fh.truncate(160 * 1024 * 1024)
    subprocess.run([mkfs, "-q", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        mnt.chmod(0o777)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        image.unlink()


@root_only
def test_a_mapped_model_on_btrfs_is_in_use(world: World) -> None:
    with loop_mount(world.base, "btrfs"):
        subprocess.run(
            ["btrfs", "subvolume", "create", str(world.models / "snap")],
            check=True,
            capture_output=True,
        )
        held_model = world.model("snap/old_held.gguf", owner=APP_UID)
        world.model("snap/old_free.gguf", owner=APP_UID)
        with held_by(world, held_model, "mmap", uid=APP_UID):
            # model_dir is the subvolume: one below it would be another filesystem (its own
            # st_dev), which ocrd does not enter (tests/test_boundaries.py).
            report, _ = clean(world, model_dir="models/snap")
            fd = os.open(held_model, os.O_RDONLY)
            try:
                fid = file_id(fd)
            finally:
                os.close(fd)
            assert fid is not None
            assert fid[0] != held_model.stat().st_dev  # btrfs: the subvolume's device, not maps'
            assert take().answer(fid) is Answer.HELD  # the fallback sees the mapping too
        assert report["deleted"] == ["old_free.gguf"]
        assert skipped(report) == {"old_held.gguf": "in_use"}
        assert held_model.exists()


@root_only
def test_at_the_fd_limit_a_held_model_is_never_deleted(world: World) -> None:
    """Under an fd limit too low for the pass, files the pass cannot open fail (and stay);
    none is deleted without its lease."""
    for i in range(40):
        (world.models / f"d{i:02d}").mkdir()
        world.model(f"d{i:02d}/old_{i:02d}.gguf")
    held_model = world.model("d07/old_held.gguf")
    config = world.config()
    with held_by(world, held_model, "mmap"):
        script = (
            "import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))\n"
            "from ocrd.cli.main import main\n"
            "sys.exit(main(['clean', '--json', '-c', sys.argv[1]]))\n"
        )
        result = subprocess.run(
            [*world.python, "-c", script, str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=world.env,
            check=False,
        )
    assert held_model.exists(), result.stdout + result.stderr
    if result.returncode == 0:
        report = json.loads(result.stdout)
        assert "d07/old_held.gguf" not in report["deleted"]


@contextmanager
def overlay(world: World, shipped: tuple[str, ...] = ()) -> Iterator[None]:
    """world.models becomes an overlayfs, as a container's root is: a writable upper layer
    over a lower one that holds the models ``shipped`` (the image's, owned by the app user)."""
    layers = {name: world.base / name for name in ("lower", "upper", "work")}
    for d in layers.values():
        d.mkdir()
    for name in shipped:
        path = layers["lower"] / name
        path.write_bytes(b"GGUF" + b"\0" * 8192)
        os.chown(path, APP_UID, APP_UID)
    options = "lowerdir={lower},upperdir={upper},workdir={work}".format_map(layers)
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(world.models)], check=True
    )
    try:
        world.models.chmod(0o777)
        yield
    finally:
        subprocess.run(["umount", str(world.models)], check=False)


@root_only
def test_on_overlayfs_a_mapping_whose_fd_is_closed_is_in_use(world: World) -> None:
    """overlayfs maps the file of the layer below: a lease on the overlay file is granted
    while another process has it mapped (fd closed, as llama.cpp does). So on overlayfs /proc
    must show no mapping as well. A mapping found there is ``in_use`` whatever else /proc could
    not see; a file with none is deleted if every process could be inspected, else kept as
    ``in_use_unknown`` unless the operator opted in (here: a sandbox whose PID 1 even root
    may not inspect)."""
    held_names = {"old_low_held.gguf": "in_use", "old_up_held.gguf": "in_use"}
    free_names = ["old_low_free.gguf", "old_up_free.gguf"]
    with overlay(world, shipped=("old_low_held.gguf", "old_low_free.gguf")):
        world.model("old_up_held.gguf", owner=APP_UID)
        world.model("old_up_free.gguf", owner=APP_UID)
        with (
            held_by(world, world.models / "old_low_held.gguf", "mmap", uid=APP_UID),
            held_by(world, world.models / "old_up_held.gguf", "mmap", uid=APP_UID),
        ):
            complete = take().complete
            report, logs = clean(world)
            if complete:
                assert sorted(report["deleted"]) == free_names
                assert skipped(report) == held_names
                assert not [e for e in logs if e["event"] == "in_use_check_limited"]
            else:
                assert report["deleted"] == []
                assert skipped(report) == held_names | dict.fromkeys(free_names, "in_use_unknown")
                report, logs = clean(world, retention={"unknown_holders": "delete"})
                assert sorted(report["deleted"]) == free_names
                assert skipped(report) == held_names
            assert all((world.models / name).exists() for name in held_names)


@root_only
def test_on_overlayfs_ocrd_that_cannot_read_every_process_keeps_the_files(world: World) -> None:
    """As the shipped unit runs it (its own user, CAP_LEASE only), ocrd cannot read another
    user's mappings: on overlayfs no file can be judged, so each is kept, after a warning that
    says why and what to do."""
    with overlay(world):
        world.model("old_app_free.gguf", owner=APP_UID)
        world.model("old_own_free.gguf", owner=OCRD_UID)
        report, logs = clean(world, uid=OCRD_UID, lease_cap=True)
        check = subprocess.run(
            [*world.python, "-m", "ocrd", "check", "-c", str(world.config())],
            capture_output=True,
            text=True,
            timeout=60,
            env=world.env,
            check=False,
        )
        assert check.returncode == 0, check.stderr
        assert "on overlay a lease does not see a process that only maps a model" in check.stderr
    assert report["deleted"] == []
    assert skipped(report) == {
        "old_app_free.gguf": "in_use_unknown",
        "old_own_free.gguf": "in_use_unknown",
    }
    warning = next(e for e in logs if e["event"] == "in_use_check_limited")
    assert "overlayfs" in warning["why"][0]
    assert "overlayfs" in warning["fix"]


# -- a hung FUSE mount that some unrelated process holds a file on ------------------------------


@contextmanager
def hung_fuse(base: Path) -> Iterator[Path]:
    bindfs = shutil.which("bindfs")
    if bindfs is None:
        pytest.skip("bindfs is not installed (apt-get install bindfs)")
    source, mnt = base / "fuse-src", base / "fuse"
    source.mkdir()
    mnt.mkdir()
    (source / "data.bin").write_bytes(b"x" * 4096)
    subprocess.run([bindfs, str(source), str(mnt)], check=True)
    server = int(
        subprocess.run(
            ["pgrep", "-n", "-f", f"bindfs {source}"], capture_output=True, text=True, check=True
        ).stdout
    )
    holder = subprocess.Popen(
        ["sh", "-c", f'exec 3<"{mnt}/data.bin"; echo ready; exec sleep 600'],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "ready\n"
        os.kill(server, signal.SIGSTOP)  # from now on every request to the mount hangs
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        os.kill(server, signal.SIGCONT)
        os.kill(server, signal.SIGTERM)
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


@root_only
def test_a_hung_fuse_mount_neither_freezes_the_pass_nor_the_fallback(world: World) -> None:
    world.model("old_a.gguf", owner=APP_UID)
    world.model("old_b.gguf", owner=APP_UID)
    with hung_fuse(world.base):
        began = time.monotonic()
        view = take()  # reads fdinfo, never stat() through the hung mount
        assert time.monotonic() - began < 5
        assert view.processes > 0
        report, _ = clean(world, timeout=30)
        assert sorted(report["deleted"]) == ["old_a.gguf", "old_b.gguf"]
        world.model("old_c.gguf", owner=APP_UID)  # not ocrd's: only /proc can judge it
        report, _ = clean(world, uid=OCRD_UID, timeout=30)
        assert skipped(report) == {"old_c.gguf": "in_use_unknown"}


@root_only
def test_with_a_hung_fuse_mount_the_daemon_deletes_and_stops_within_5s(
    world: World, start_ocrd: StartOcrd
) -> None:
    with hung_fuse(world.base):
        world.model("old_a.gguf", owner=APP_UID)
        d = start_ocrd(world.config(), env=world.env, command=[*world.python, "-m", "ocrd"])
        d.note("READY=1")
        d.event("model_deleted", path="old_a.gguf")
        world.model("old_b.gguf", owner=APP_UID)
        d.event("model_deleted", path="old_b.gguf")
        code, took = d.stop(signal.SIGTERM)
        assert (code, took < 5.0) == (0, True), took


@root_only
def test_list_shows_held_and_unjudgeable_files_with_their_own_verdict(world: World) -> None:
    app_held = world.model("old_held.gguf", owner=APP_UID)
    world.model("old_free.gguf", owner=OCRD_UID)
    config = world.config()
    argv = [*as_user(OCRD_UID), *world.python, "-m", "ocrd", "list", "--json", "-c", str(config)]
    with held_by(world, app_held, "mmap", uid=APP_UID):
        as_root = subprocess.run(
            [*world.python, "-m", "ocrd", "list", "--json", "-c", str(config)],
            capture_output=True,
            text=True,
            env=world.env,
            check=True,
            timeout=60,
        )
        unprivileged = subprocess.run(
            argv, capture_output=True, text=True, env=world.env, check=True, timeout=60
        )
    verdicts = {r["path"]: r["verdict"] for r in json.loads(as_root.stdout)}
    assert verdicts == {"old_held.gguf": "in_use", "old_free.gguf": "delete"}
    verdicts = {r["path"]: r["verdict"] for r in json.loads(unprivileged.stdout)}
    assert verdicts == {"old_held.gguf": "in_use_unknown", "old_free.gguf": "delete"}
    assert os.path.exists(app_held)
