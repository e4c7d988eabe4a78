"""What ``ocrd check`` says of the in-use check: whether the kernel's answer (a lease) will be
there for model_dir's files, tried on one of them."""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from ocrd.fs.holders import STACKED, take
from ocrd.fs.procfs import filesystem_type

CAP_LEASE = 28  # linux/capability.h


def lease_report(model_dir: os.PathLike[str] | str) -> str:
    """One line for ``ocrd check``: whether the kernel's answer (a lease) will be there for the
    files of model_dir, and what happens where it will not."""
    fs = filesystem_type(os.fsencode(model_dir)) or "unknown filesystem"
    cap = _has_capability(CAP_LEASE)
    enabled = _read(f"{'/proc'}/sys/fs/leases-enable") != "0"
    probe = "no file to try a lease on yet"
    sample = _first_file(os.fsencode(model_dir))
    if sample is not None:
        probe = _try_lease(*sample)
    if not enabled:
        leases = "leases are disabled (fs.leases-enable = 0)"
    elif cap:
        leases = f"file leases on {fs} for files of every owner (CAP_LEASE)"
    else:
        leases = (
            f"file leases on {fs} only for files owned by uid {os.geteuid()} "
            "(no CAP_LEASE; the shipped unit grants it)"
        )
    view = take()
    fallback = "complete" if view.complete else f"limited, so such files are kept: {view.limits[0]}"
    if fs.partition(".")[0].encode() in STACKED:
        leases += (
            f"; on {fs} a lease does not see a process that only maps a model, so /proc must "
            "show no mapping of it either"
        )
    return f"{leases}; {probe}; /proc fallback for the rest: {fallback}"


def _has_capability(bit: int) -> bool:
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _try_lease(parent: int, name: bytes) -> str:
    """What a lease on the file ``name`` in directory ``parent`` (closed here) says."""
    import fcntl  # noqa: PLC0415 — only ``check`` asks
    import signal  # noqa: PLC0415

    try:
        fd = os.open(name, SAMPLE_FLAGS, dir_fd=parent)
    except OSError as exc:
        return f"cannot open a model file to try: {exc.strerror}"
    finally:
        os.close(parent)
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "cannot try a lease: the model file was just replaced by something else"
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return "a lease was granted on a model file"
    except OSError as exc:
        return {
            errno.EAGAIN: "a lease was refused because the file is in use: leases work",
            errno.EACCES: "a lease was refused: the file is another user's",
            errno.EINVAL: "this filesystem grants no leases",
        }.get(exc.errno or 0, f"a lease failed: {exc.strerror}")
    finally:
        os.close(fd)
        signal.signal(signal.SIGIO, previous)


# Read-only, and through directory fds opened without following links: ``ocrd check`` may run
# as root, and a directory of model_dir swapped for a link must not lead this open elsewhere.
SAMPLE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


WALK_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _first_file(root: bytes, budget: int = 1000) -> tuple[int, bytes] | None:
    """A regular file under ``root`` to try a lease on, looking at most ``budget`` entries:
    its directory, open (the caller closes it), and its name there."""
    try:
        pending = [os.open(root, WALK_FLAGS & ~os.O_NOFOLLOW)]  # model_dir as configured
    except OSError:
        return None
    found: tuple[int, bytes] | None = None
    while pending and budget > 0 and found is None:
        fd = pending.pop()
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    budget -= 1
                    name = os.fsencode(entry.name)
                    if entry.is_file(follow_symlinks=False):
                        found = (os.dup(fd), name)
                        break
                    if entry.is_dir(follow_symlinks=False):
                        with contextlib.suppress(OSError):
                            pending.append(os.open(name, WALK_FLAGS, dir_fd=fd))
                    if budget <= 0:
                        break
        except OSError:
            pass
        finally:
            os.close(fd)
    for fd in pending:
        os.close(fd)
    return found
