"""Shared helpers: run the real ``ocrd`` command, write configs and model files under tmp_path."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import OcrdProcess, ocrd_argv

OcrdRunner = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def run_ocrd(tmp_path: Path) -> OcrdRunner:
    """Run ``ocrd *args`` as a subprocess; cwd is tmp_path unless given; $OCRD_CONFIG is unset
    unless ``env`` sets it, so the developer's own environment never leaks in."""

    def run(
        *args: str | os.PathLike[str],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if k != "OCRD_CONFIG"}
        full_env.update(env or {})
        return subprocess.run(
            [*ocrd_argv(), *map(str, args)],
            cwd=cwd or tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    return run


def write_config(directory: Path, body: str, name: str = "config.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(body, encoding="utf-8")
    return path


def make_file(root: Path | bytes, rel: bytes, data: bytes = b"x", age_s: float = 0.0) -> bytes:
    """Create ``root/rel`` (bytes, so any name works) with parents; backdate mtime and atime."""
    path = os.path.join(os.fsencode(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    if age_s:
        st = os.stat(path)
        os.utime(path, (st.st_atime - age_s, st.st_mtime - age_s))
    return path


Snapshot = dict[bytes, tuple[str, int, int, float, bytes]]


def snapshot(root: Path) -> Snapshot:
    """Every entry under ``root`` (root included), links not followed: kind, inode, size, mtime,
    and a link's target or a file's bytes."""
    top = os.fsencode(root)
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [b"", *dirnames, *filenames] if dirpath == top else [*dirnames, *filenames]:
            full = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(full)
            if os.path.islink(full):
                kind, data = "link", os.readlink(full)
            elif os.path.isdir(full):
                kind, data = "dir", b""
            else:
                kind = "file"
                with open(full, "rb") as fh:
                    data = fh.read()
            out[os.path.relpath(full, top)] = (kind, st.st_ino, st.st_size, st.st_mtime, data)
    return out


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """An empty ``models`` directory beside the test's config.toml."""
    d = tmp_path / "models"
    d.mkdir()
    return d


@pytest.fixture
def daemons() -> Iterator[list[OcrdProcess]]:
    """Collects the ``ocrd run`` processes a test starts; none outlives the test."""
    started: list[OcrdProcess] = []
    yield started
    for d in started:
        d.close()
