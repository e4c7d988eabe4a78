"""Worlds other users can reach: a scratch area outside pytest's private (0700) tree, and how
to run this checkout's Python in it as another user, with or without CAP_LEASE, in a PID
namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

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

    def config(self, extra: str = "", model_dir: str = "models") -> Path:
        path = self.base / "config.toml"
        path.write_text(
            f'model_dir = "{model_dir}"\n[retention]\nprefixes = ["old_"]\n{extra}\n'
            '[watch]\nsettle = "0s"\n[engine]\nenabled = false\n'
        )
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
    mounted: Path | None = None
    probe = [*as_user(OCRD_UID), sys.executable, "-c", "import ocrd"]
    if subprocess.run(probe, capture_output=True, check=False, env=env).returncode != 0:
        # The checkout sits below a directory other users cannot enter (a 0700 mktemp -d):
        # show it to them through a bind mount in the world-readable scratch area.
        mounted = base / "repo"
        mounted.mkdir()
        subprocess.run(["mount", "--bind", str(repo), str(mounted)], check=True)
        python = [str(mounted / Path(sys.executable).relative_to(repo))]
        env["PYTHONPATH"] = str(mounted)
    try:
        yield World(base, python, env)
    finally:
        if mounted is not None:
            subprocess.run(["umount", "-l", str(mounted)], check=False)
        shutil.rmtree(base, ignore_errors=True)
