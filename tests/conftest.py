"""Shared helpers: run the real ``ocrd`` command, write configs and model files under tmp_path."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ocrd.base import log
from tests.harness import OcrdProcess, ocrd_argv

OcrdRunner = Callable[..., "subprocess.CompletedProcess[str]"]
StartOcrd = Callable[..., OcrdProcess]


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


@pytest.fixture
def start_ocrd(daemons: list[OcrdProcess]) -> StartOcrd:
    """Start ``ocrd run -c CONFIG`` as :class:`tests.harness.OcrdProcess` does (same arguments:
    ``env``, ``prefix``, ``notify_buffer``, ``command``), closed with the test; with
    ``ready=True`` it is returned once it sent READY=1."""

    def start(
        config: Path, env: dict[str, str] | None = None, *, ready: bool = False, **kw: Any
    ) -> OcrdProcess:
        d = OcrdProcess(config, env, **kw)
        daemons.append(d)
        if ready:
            d.note("READY=1")
        return d

    return start


@pytest.fixture
def log_out() -> io.StringIO:
    """ocrd's log, configured in this process at debug level as JSON lines into a buffer
    (read it with :func:`logged`)."""
    out = io.StringIO()
    log.configure("debug", "json", stream=out)
    return out


def logged(out: io.StringIO, name: str | None = None) -> list[dict[str, Any]]:
    """The events written to ``out``; only those named ``name`` if given."""
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    return [e for e in events if name is None or e["event"] == name]


@pytest.fixture(params=["compiled", "python"])
def deleter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test twice: deleting through the compiled step (ocrd/ops/sweep.c) and through the
    Python path, its reference (``OCRD_PURE_PYTHON=1``, which subprocesses inherit too). On
    CI the compiled step must have been built: there a missing one fails the test."""
    if request.param == "compiled":
        needs_compiled_step()
        monkeypatch.setenv("OCRD_PURE_PYTHON", "0")
    else:
        monkeypatch.setenv("OCRD_PURE_PYTHON", "1")
    return str(request.param)


def needs_compiled_step() -> None:
    """Skip where the compiled step was not built (no C compiler); on CI, where it must have
    been, fail instead: a build that fell back quietly would hide here."""
    from ocrd.ops import sweep

    if sweep.compiled is None:
        if os.environ.get("CI"):
            pytest.fail("the compiled step (ocrd/ops/sweep.c) was not built")
        pytest.skip("the compiled step (ocrd/ops/sweep.c) was not built here")
