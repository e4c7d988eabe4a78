"""The compiled step of ocrd.ops.sweep (ocrd/ops/sweep.c)."""

TAKEN: int
STOP_BEFORE: int
STOP_AFTER: int

def step(
    parent: int,
    dir_fd: int,
    private: bytes,
    waiting_fd: int,
    dev: int,
    waiting_ino: int,
    euid: int,
    name: bytes,
    ino: int,
    size: int,
    mtime: float,
    ours_only: bool,
    /,
) -> tuple[int, int]: ...
