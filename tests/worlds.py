"""Worlds other users can reach: a scratch area outside pytest's private (0700) tree, and how
to run this checkout's Python in it as another user, with or without CAP_LEASE, in a PID
namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import configs

OCRD_UID = 4242  # the daemon's user, as the unit's User=ocrd
APP_UID = 4343  # the OCR application's user

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="switches users and mounts: needs root")


@dataclass
class World:
    """A world-readable scratch area other users can reach, and how to run Python there."""

    base: Path
    python: list[str]  # argv prefix for an interpreter that imports this checkout's ocrd
    env: dict[str, str]

    @property
    def models(self) -> Path:
        return self.base / "models"

    def config(self, model_dir: str = "models", **overrides: Any) -> Path:
        """base/config.toml, readable by the world's users: tests/configs.py's default (the
        log format and rescan left at theirs) with ``overrides``."""
        settings: dict[str, Any] = {"watch": {"rescan": None}, "log": None, **overrides}
        path = configs.config(self.base, model_dir=model_dir, **settings)
        path.chmod(0o644)
        return path

    def model(self, name: str, owner: int = 0, data: bytes = b"GGUF" + b"\0" * 8192) -> Path:
        path = self.models / name
        path.write_bytes(data)
        os.chown(path, owner, owner)
        path.chmod(0o644)
        return path


def as_user(uid: int | None, *, lease_cap: bool = False, pid_ns: bool = False) -> list[str]:
    argv: list[str] = []
    if pid_ns:
        argv += ["unshare", "--pid", "--fork", "--mount-proc"]
    if uid is not None:
        argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        if lease_cap:
            argv += ["--inh-caps=+lease", "--ambient-caps=+lease"]
    return argv


@contextmanager
def make_world() -> Iterator[World]:
    base = Path(tempfile.mkdtemp(prefix="ocrd-inuse-", dir="/tmp"))
    base.chmod(0o755)
    (base / "models").mkdir()
    os.chown(base / "models", OCRD_UID, OCRD_UID)
    (base / "models").chmod(0o777)  # the app's user may write models too
    repo = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "OCRD_CONFIG"}
    python = [sys.executable]
    mounted: list[Path] = []
    probe = [*as_user(OCRD_UID), sys.executable, "-c", "import ocrd"]
    if subprocess.run(probe, capture_output=True, check=False, env=env).returncode != 0:
        # The checkout itself may be a directory other users cannot enter (a 0700 mktemp -d
        # clone): bind-mount the package and the venv's site-packages, which are readable, into
        # the world-readable scratch area, and run the venv's base interpreter on them.
        site = Path(sysconfig.get_paths()["purelib"])
        for source, target in ((repo / "ocrd", base / "pkg" / "ocrd"), (site, base / "site")):
            target.mkdir(parents=True)
            subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
            mounted.append(target)
        python = [os.path.realpath(sys.executable)]
        env["PYTHONPATH"] = f"{base / 'pkg'}:{base / 'site'}"
    try:
        yield World(base, python, env)
    finally:
        for target in mounted:
            subprocess.run(["umount", "-l", str(target)], check=False)
        shutil.rmtree(base, ignore_errors=True)


HOLD = """\
import ctypes, mmap, os, sys
path, how = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_WRONLY | os.O_APPEND if how == "write" else os.O_RDONLY)
if how == "write":
    os.write(fd, b"more")
elif how == "mmap":
    # libc's mmap, not the mmap module (which keeps a dup of the fd): after os.close only the
    # mapping holds the file, as with llama.cpp and GGUF files.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + [ctypes.c_int] * 3 + [ctypes.c_long]
    addr = libc.mmap(None, os.fstat(fd).st_size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    os.close(fd)
    fds = [os.path.join("/proc/self/fd", n) for n in os.listdir("/proc/self/fd")]
    assert not any(os.path.exists(f) and os.path.samefile(f, path) for f in fds)
print("ready", flush=True)
sys.stdin.read()
"""


@contextmanager
def held(
    path: Path,
    how: str,
    *,
    prefix: Sequence[str] = (),
    python: Sequence[str] = (sys.executable,),
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """A separate process holds ``path`` until the block ends: ``how`` is "open", "write"
    (open for appending, one write done) or "mmap" (only mapped, its fd closed). ``prefix``
    runs it as another user or in another namespace (see as_user)."""
    proc = subprocess.Popen(
        [*prefix, *python, "-c", HOLD, str(path), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
