"""ocrd/fs/private.py: private names unique per process, and claimed without replacing anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocrd.fs import private
from tests.worlds import as_user, root_only

ONE = "from ocrd.fs import private; print(private.make().decode())"


def test_a_name_carries_boot_pid_and_two_random_parts() -> None:
    name = private.make()
    parts = private.parse(name)
    assert parts is not None
    boot = Path(private.BOOT_ID).read_bytes().strip().replace(b"-", b"")
    assert parts.boot == boot[:12]
    assert parts.pid == os.getpid()
    assert private.is_mine(name)
    assert private.looks_private(name)
    again = private.parse(private.make())
    assert again is not None
    assert again.process == parts.process  # drawn once per process
    assert again.token != parts.token  # drawn per name


def test_names_are_never_made_twice() -> None:
    names = {private.make() for _ in range(10_000)}
    assert len(names) == 10_000


def test_a_forked_child_makes_names_of_its_own() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report a name and leave at once
        os.write(write, private.make())
        os._exit(0)
    os.close(write)
    child = os.read(read, 256)
    os.close(read)
    os.waitpid(pid, 0)
    parts = private.parse(child)
    assert parts is not None
    assert parts.pid == pid
    assert parts.process != private.parse(private.make()).process  # type: ignore[union-attr]
    assert not private.is_mine(child)


@root_only
def test_two_processes_with_the_same_pid_make_different_names() -> None:
    """Every container's first process is PID 1: the PID alone would give both one name."""
    names = [
        subprocess.run(
            [*as_user(None, pid_ns=True), sys.executable, "-c", ONE],
            capture_output=True,
            check=True,
            text=True,
        ).stdout.strip()
        for _ in range(2)
    ]
    parsed = [private.parse(n.encode()) for n in names]
    assert [p.pid for p in parsed if p is not None] == [1, 1]
    assert names[0] != names[1]
    assert parsed[0] is not None
    assert parsed[1] is not None
    assert parsed[0].process != parsed[1].process


@pytest.mark.parametrize(
    "name",
    [
        b".ocrd-deleting-1-0",
        b".ocrd-deleting-cce882604d4f-1-0a1b2c3d",
        b".ocrd-deleting-cce882604d4f-1-0a1b2c3d-0a1b2c3d-0",
        b".ocrd-deleting-CCE882604D4F-1-0A1B2C3D-0A1B2C3D",
        b".ocrd-deleting-cce882604d4f-01234567890-0a1b2c3d-0a1b2c3d",
        b"x.ocrd-deleting-cce882604d4f-1-0a1b2c3d-0a1b2c3d",
    ],
)
def test_only_ocrds_own_format_parses(name: bytes) -> None:
    assert private.parse(name) is None
    assert private.looks_private(name) == name.startswith(b".ocrd-deleting-")
    assert not private.is_mine(name)


@pytest.fixture(params=["renameat2", "look, then rename"])
def claim_by(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a name is claimed: RENAME_NOREPLACE, and the fallback without it."""
    if request.param != "renameat2":
        monkeypatch.setattr(private, "_renameat2", None)
    return str(request.param)


def _claim(directory: Path, src: str, dst: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        private.claim(fd, src.encode(), fd, dst.encode())
    finally:
        os.close(fd)


def test_a_free_name_is_claimed(tmp_path: Path, claim_by: str) -> None:
    (tmp_path / "model.bin").write_bytes(b"model")
    _claim(tmp_path, "model.bin", "mine")
    assert os.listdir(tmp_path) == ["mine"]
    assert (tmp_path / "mine").read_bytes() == b"model"


@pytest.mark.parametrize("kind", ["file", "directory", "link", "dangling link"])
def test_a_taken_name_is_never_replaced(tmp_path: Path, claim_by: str, kind: str) -> None:
    (tmp_path / "model.bin").write_bytes(b"model")
    (tmp_path / "target").write_bytes(b"target")
    taken = tmp_path / "taken"
    if kind == "file":
        taken.write_bytes(b"theirs")
    elif kind == "directory":
        taken.mkdir()
    else:
        taken.symlink_to(tmp_path / ("target" if kind == "link" else "nowhere"))
    with pytest.raises(FileExistsError):
        _claim(tmp_path, "model.bin", "taken")
    assert (tmp_path / "model.bin").read_bytes() == b"model"
    assert (tmp_path / "target").read_bytes() == b"target"
    if kind == "file":
        assert taken.read_bytes() == b"theirs"
    assert taken.is_dir() == (kind == "directory")
    assert taken.is_symlink() == kind.endswith("link")


def test_a_missing_source_is_file_not_found(tmp_path: Path, claim_by: str) -> None:
    with pytest.raises(FileNotFoundError):
        _claim(tmp_path, "gone.bin", "mine")
