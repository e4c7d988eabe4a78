"""Whom ocrd takes its rules from: a config someone else owns, may write or may replace is
refused (as sshd and logrotate refuse them), and a reload that would suddenly delete most of
the models waits for the operator."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.configs import config
from tests.conftest import OcrdRunner, StartOcrd

OTHER_UID = 4343
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chowns files to another user")


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory we own, mode 0755, outside pytest's private tree (its modes are tested)."""
    base = Path(tempfile.mkdtemp(prefix="ocrd-trust-", dir="/tmp"))
    base.chmod(0o755)
    (base / "models").mkdir()
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def config_in(directory: Path, **retention: object) -> Path:
    path = config(directory, retention=retention, watch={"rescan": None}, engine=None, log=None)
    path.chmod(0o644)
    return path


def test_a_config_we_own_in_a_safe_place_is_trusted(place: Path, run_ocrd: OcrdRunner) -> None:
    result = run_ocrd("check", "-c", config_in(place))
    assert result.returncode == 0, result.stderr


def test_a_config_others_may_write_is_refused(place: Path, run_ocrd: OcrdRunner) -> None:
    path = config_in(place)
    path.chmod(0o666)
    result = run_ocrd("check", "-c", path)
    assert result.returncode == 78
    assert "writable by group and others (mode 0666)" in result.stderr
    assert "chmod go-w" in result.stderr


@root_only
def test_a_config_owned_by_another_user_is_refused(place: Path, run_ocrd: OcrdRunner) -> None:
    path = config_in(place)
    os.chown(path, OTHER_UID, OTHER_UID)
    result = run_ocrd("clean", "-c", path)
    assert result.returncode == 78
    assert f"owned by uid {OTHER_UID}" in result.stderr


def test_a_config_in_a_directory_others_may_write_is_refused(
    place: Path, run_ocrd: OcrdRunner
) -> None:
    shared = place / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "models").mkdir()
    result = run_ocrd("check", "-c", config_in(shared))
    assert result.returncode == 78
    assert "without the sticky bit" in result.stderr


def test_a_sticky_directory_like_tmp_is_fine_for_a_file_we_own(
    place: Path, run_ocrd: OcrdRunner
) -> None:
    sticky = place / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "models").mkdir()
    result = run_ocrd("check", "-c", config_in(sticky))
    assert result.returncode == 0, result.stderr


def test_a_symlinked_config_is_judged_where_the_link_lives_too(
    place: Path, run_ocrd: OcrdRunner
) -> None:
    target = config_in(place)
    shared = place / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "config.toml").symlink_to(target)
    result = run_ocrd("check", "-c", shared / "config.toml")
    assert result.returncode == 78
    assert "without the sticky bit" in result.stderr


def test_a_reload_that_would_delete_most_models_is_held(
    place: Path, run_ocrd: OcrdRunner, start_ocrd: StartOcrd
) -> None:
    models = place / "models"
    for i in range(10):
        (models / f"m_{i}.bin").write_bytes(b"x" * 100)
    config = config_in(place)
    d = start_ocrd(config)
    d.note("READY=1")
    config_in(place, prefixes=["old_", "m_"])
    d.send(signal.SIGHUP)
    held = d.event("reload_held")
    assert held["would_delete"] == 10
    assert held["of_files"] == 10
    assert held["values"] == {"retention.prefixes": [["old_"], ["old_", "m_"]]}
    assert "ocrd clean" in held["action"]
    d.note("READY=1", count=2)
    status = [n for _, n in d.notes if n.startswith("STATUS=")][-1]
    assert "reload HELD at " in status, status  # systemctl status says so until a good reload
    assert "it would delete 10 of 10 models more" in status, status
    assert len(os.listdir(models)) == 10
    (models / "old_x.bin").write_bytes(b"x")  # the rules in force still work
    d.event("model_deleted", path="old_x.bin")
    assert "config_reloaded" not in d.names()
    # The operator confirms by applying the new rules once, then reloads.
    result = run_ocrd("clean", "-c", config)
    assert result.returncode == 0, result.stderr
    assert os.listdir(models) == []
    d.send(signal.SIGHUP)
    reloaded = d.event("config_reloaded")
    assert reloaded["values"] == {"retention.prefixes": [["old_"], ["old_", "m_"]]}
    assert d.stop()[0] == 0


def test_a_reload_guard_of_100_percent_is_off(place: Path, start_ocrd: StartOcrd) -> None:
    models = place / "models"
    for i in range(4):
        (models / f"m_{i}.bin").write_bytes(b"x")
    config = config_in(place, reload_guard="100%")
    d = start_ocrd(config)
    d.note("READY=1")
    config_in(place, reload_guard="100%", prefixes=["m_"])
    d.send(signal.SIGHUP)
    d.event("config_reloaded")
    d.wait_for("4 deletions", lambda: d.names().count("model_deleted") >= 4)
    assert d.stop()[0] == 0


@pytest.mark.parametrize("text", ["0%", "150%", "half", "50"])
def test_reload_guard_must_be_a_share(place: Path, run_ocrd: OcrdRunner, text: str) -> None:
    result = run_ocrd("check", "-c", config_in(place, reload_guard=text))
    assert result.returncode == 78
    assert "at 'retention.reload_guard'" in result.stderr
