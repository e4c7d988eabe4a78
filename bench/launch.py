"""``ocrd run`` for the small benches: a config in a scratch directory, our own NOTIFY_SOCKET,
and a return once the daemon said READY=1."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import IO, Any

from bench.run import ocrd_argv


def start(
    scratch: Path,
    config: str,
    *,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    text: bool = False,
) -> tuple[subprocess.Popen[Any], socket.socket]:
    """Write ``config`` to scratch/config.toml and start ``ocrd run`` on it; the notify socket
    is returned bound and already past READY=1 (the caller closes it)."""
    path = scratch / "config.toml"
    path.write_text(config)
    sock_path = str(scratch / "n.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(60)
    env = {k: v for k, v in os.environ.items() if k not in ("OCRD_CONFIG", "WATCHDOG_USEC")}
    env["NOTIFY_SOCKET"] = sock_path
    proc = subprocess.Popen(
        [*ocrd_argv(), "run", "-c", str(path)],
        stdout=stdout,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
        text=text,
    )
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
    except BaseException:
        proc.kill()
        proc.wait()
        sock.close()
        raise
    return proc, sock
