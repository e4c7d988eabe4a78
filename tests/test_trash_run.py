"""The trash as operators meet it: ``ocrd run`` and ``ocrd clean`` as real subprocesses with
``[trash] grace``, ``ocrd trash`` and ``ocrd restore`` beside them, and ocrd killed (SIGKILL)
in the middle of trashing and of purging (docs/trash.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from ocrd.fs import trash
from tests.configs import config as write_config
from tests.conftest import OcrdRunner, StartOcrd, make_file
from tests.harness import ocrd_argv
from tests.test_trash import strace_kill
from tests.worlds import held


def config(tmp_path: Path, grace: str = "1h", **retention: object) -> Path:
    """The tests' config (tests/configs.py) with ``[trash] grace`` and ``retention`` keys."""
    return write_config(tmp_path, trash={"grace": grace}, retention=retention)


def when(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def in_trash(models: Path) -> list[Path]:
    top = models / ".ocrd-trash"
    return sorted(top.glob("*/data")) if top.is_dir() else []


def listed(run_ocrd: OcrdRunner, cfg: Path) -> list[dict[str, object]]:
    proc = run_ocrd("trash", "-c", cfg, "--json")
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, object]] = json.loads(proc.stdout)
    return rows


def test_deleted_listed_restored_and_held(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd, run_ocrd: OcrdRunner
) -> None:
    """With the daemon running: the file goes into the trash, is listed, comes back the very
    file, and no rule takes it again while it is held (``ocrd list`` says so)."""
    data = os.urandom(5000)
    path = Path(os.fsdecode(make_file(models, b"sub/old_a.gguf", data, age_s=86400)))
    path.chmod(0o640)
    before = path.stat()
    cfg = config(tmp_path)
    d = start_ocrd(cfg)
    d.note("READY=1")
    deleted = d.event("model_deleted", path="sub/old_a.gguf")
    assert deleted["trash"] is True
    assert deleted["rule"] == "prefix"
    assert not path.exists()
    [row] = listed(run_ocrd, cfg)
    assert row["path"] == "sub/old_a.gguf"
    assert row["size"] == 5000
    assert row["rule"] == "prefix"
    assert row["purge_at"] == deleted["purge_at"]
    restored = run_ocrd("restore", "-c", cfg, "sub/old_a.gguf")
    assert restored.returncode == 0, restored.stderr
    assert "model_restored" in restored.stderr
    after = path.stat()
    assert path.read_bytes() == data
    assert (after.st_ino, after.st_mode, after.st_uid, after.st_mtime_ns) == (
        before.st_ino,
        before.st_mode,
        before.st_uid,
        before.st_mtime_ns,
    )
    # The daemon saw it come back: a rescan (SIGHUP reloads and plans everything) keeps it.
    d.proc.send_signal(signal.SIGHUP)
    d.event("config_reloaded")
    d.event("scan_completed", trigger="reload")
    assert path.exists()
    assert d.names().count("model_deleted") == 1
    audit = run_ocrd("list", "-c", cfg, "--json")
    [entry] = [r for r in json.loads(audit.stdout) if r["path"] == "sub/old_a.gguf"]
    assert (entry["verdict"], entry["rule"]) == ("protected", "restored")
    assert listed(run_ocrd, cfg) == []
    assert d.stop()[0] == 0


def test_restore_onto_an_existing_file_changes_nothing(
    tmp_path: Path, models: Path, run_ocrd: OcrdRunner
) -> None:
    make_file(models, b"old_a", b"the old one")
    cfg = config(tmp_path)
    assert run_ocrd("clean", "-c", cfg).returncode == 0
    [was] = in_trash(models)
    make_file(models, b"old_a", b"a new one")
    proc = run_ocrd("restore", "-c", cfg, "old_a")
    assert proc.returncode == 3
    assert "old_a: something is there now; nothing restored" in proc.stderr
    assert (models / "old_a").read_bytes() == b"a new one"
    assert in_trash(models) == [was]
    assert was.read_bytes() == b"the old one"
    assert run_ocrd("restore", "-c", cfg, "nothing_like_it").returncode == 4
    assert run_ocrd("restore", "-c", cfg).returncode == 2


def test_purged_after_grace_and_not_before(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    make_file(models, b"old_a", b"x" * 10)
    d = start_ocrd(config(tmp_path, grace="2s"))
    deleted = d.event("model_deleted", path="old_a")
    purged = d.event("trash_purged", path="old_a")
    assert when(purged) - when(deleted) >= 2.0 - 0.01
    assert purged["reason"] == "grace"
    assert in_trash(models) == []
    assert d.stop()[0] == 0


def test_a_trashed_file_in_use_is_not_purged(
    tmp_path: Path, models: Path, run_ocrd: OcrdRunner
) -> None:
    make_file(models, b"old_a", b"x" * 10)
    assert run_ocrd("clean", "-c", config(tmp_path, grace="1h")).returncode == 0
    [data] = in_trash(models)
    cfg = config(tmp_path, grace="0s")  # the grace shortened: everything is due
    with held(data, "open"):
        assert run_ocrd("clean", "-c", cfg).returncode == 0
        assert in_trash(models) == [data]
    assert run_ocrd("clean", "-c", cfg).returncode == 0
    assert in_trash(models) == []


def test_the_trash_is_no_model(tmp_path: Path, models: Path, run_ocrd: OcrdRunner) -> None:
    """Not listed, not planned, not counted by the refusal to delete every model."""
    make_file(models, b"old_a", b"a")
    cfg = config(tmp_path, max_age="1d")
    assert run_ocrd("clean", "-c", cfg).returncode == 0
    make_file(models, b"ancient.bin", b"b", age_s=5 * 86400)
    audit = json.loads(run_ocrd("list", "-c", cfg, "--json").stdout)
    assert [r["path"] for r in audit] == ["ancient.bin"]
    # The last model is not deleted: the file in the trash does not count as one.
    assert run_ocrd("clean", "-c", cfg).returncode == 0
    assert (models / "ancient.bin").exists()


def test_a_squatted_trash_keeps_the_file(
    tmp_path: Path, models: Path, run_ocrd: OcrdRunner
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    models.chmod(0o1777)
    (models / ".ocrd-trash").symlink_to(elsewhere)
    make_file(models, b"old_a", b"a")
    proc = run_ocrd("clean", "-c", config(tmp_path), "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["deleted"] == []
    assert "trash_unusable" in proc.stderr
    assert (models / "old_a").exists()
    assert list(elsewhere.iterdir()) == []
    assert run_ocrd("trash", "-c", config(tmp_path)).returncode == 1


def test_killed_while_trashing_then_started_again(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd, run_ocrd: OcrdRunner
) -> None:
    """SIGKILL between the record and the rename, and just after the rename: after a restart
    the file is in the trash once, listed, and nowhere else."""
    cfg = config(tmp_path)
    for point in ("put:recorded", "put:renamed"):
        make_file(models, b"old_a", point.encode())
        d = start_ocrd(cfg, {trash.FAULT_ENV: point})
        assert d.proc.wait(timeout=30) == -9
        d = start_ocrd(cfg)
        d.note("READY=1")
        assert d.stop()[0] == 0
        assert not (models / "old_a").exists()
        mine = [p for p in in_trash(models) if p.read_bytes() == point.encode()]
        assert len(mine) == 1, point
        assert sorted(os.listdir(mine[0].parent)) == ["data", "entry.json"]
    assert len(listed(run_ocrd, cfg)) == 2
    debris = [p for p in (models / ".ocrd-trash").iterdir() if not (p / "data").exists()]
    assert debris == []


def test_killed_while_purging_then_started_again(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd, run_ocrd: OcrdRunner
) -> None:
    for point, left in (("purge:locked", 1), ("purge:deleted", 0)):
        make_file(models, b"old_a", b"x")
        assert run_ocrd("clean", "-c", config(tmp_path, grace="1h")).returncode == 0
        assert len(in_trash(models)) == 1
        cfg = config(tmp_path, grace="0s")
        d = start_ocrd(cfg, {trash.FAULT_ENV: point})
        assert d.proc.wait(timeout=30) == -9
        assert len(in_trash(models)) == left
        assert len(listed(run_ocrd, cfg)) == left
        d = start_ocrd(cfg)
        d.note("READY=1")
        d.wait_for("an empty trash", lambda: not in_trash(models))
        assert d.stop()[0] == 0
        assert [p for p in (models / ".ocrd-trash").iterdir()] == []


def test_restore_without_the_daemon_holds_for_the_next_pass(
    tmp_path: Path, models: Path, run_ocrd: OcrdRunner
) -> None:
    make_file(models, b"old_a", b"a")
    cfg = config(tmp_path)
    assert run_ocrd("clean", "-c", cfg).returncode == 0
    assert not (models / "old_a").exists()
    assert run_ocrd("restore", "-c", cfg, "--all").returncode == 0
    assert run_ocrd("clean", "-c", cfg).returncode == 0
    assert (models / "old_a").read_bytes() == b"a"
    assert listed(run_ocrd, cfg) == []


def clean_under(cfg: Path, prefix: list[str]) -> bool:
    """``ocrd clean`` (behind ``prefix``); whether it ran to its end."""
    env = {k: v for k, v in os.environ.items() if k != "OCRD_CONFIG"}
    proc = subprocess.run(
        [*prefix, *ocrd_argv(), "clean", "-c", str(cfg)],
        capture_output=True,
        env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, -9, 137), proc.stderr.decode()
    return proc.returncode == 0


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("name", ["renameat2", "unlinkat", "mkdirat", "flock"])
@pytest.mark.parametrize("grace", ["1h", "0s"])
def test_ocrd_clean_killed_at_any_call(tmp_path: Path, models: Path, name: str, grace: str) -> None:
    """``ocrd clean`` SIGKILLed as it enters each rename, unlink, mkdir and flock in turn, then
    run again: trashing (grace 1h), the model is in the trash once and nowhere else; purging
    (grace 0s, the model trashed before), it is gone and no entry is left half."""
    n = 1
    while True:
        shutil.rmtree(models)
        models.mkdir()
        make_file(models, b"d/old_a", b"the model")
        if grace == "0s":
            assert clean_under(config(tmp_path, grace="1h"), [])
        cfg = config(tmp_path, grace=grace)
        finished = clean_under(cfg, strace_kill(name, n))
        assert clean_under(cfg, [])
        assert not (models / "d/old_a").exists()
        top = models / ".ocrd-trash"
        entries = [p for p in top.iterdir() if p.name != "held"] if top.exists() else []
        assert all(sorted(os.listdir(p)) == ["data", "entry.json"] for p in entries), n
        assert len(in_trash(models)) == (1 if grace == "1h" else 0), n
        if finished:
            # Each sweep killed it at least once (a purge makes no directory).
            assert n > 1 or (name, grace) == ("mkdirat", "0s")
            return
        n += 1
        assert n < 200


def test_dry_run_purges_nothing(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd, run_ocrd: OcrdRunner
) -> None:
    make_file(models, b"old_a", b"a")
    assert run_ocrd("clean", "-c", config(tmp_path)).returncode == 0
    cfg = config(tmp_path, grace="0s", dry_run=True)
    assert run_ocrd("clean", "-c", cfg).returncode == 0
    d = start_ocrd(cfg)
    d.note("READY=1")
    assert d.stop()[0] == 0
    assert "trash_purged" not in d.names()
    assert len(in_trash(models)) == 1
