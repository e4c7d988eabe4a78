"""How big and how often: the quick mode (CI) and the full one (the published results)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    reps: int
    scan_sizes: tuple[int, ...]
    retention_n: int
    age_only: bool  # also the age-only pass, where every peer is native
    daemon_tree: int  # files already in model_dir while latency, idle CPU and bursts are measured
    latency_files: int
    idle_s: float
    rss_sizes: tuple[int, ...]
    rss_reps: int
    burst_n: int
    burst_reps: int
    rescan: str  # for the burst daemon: short, so that a lost event is recovered within the run
    drain_timeout_s: float
    pause_s: float  # quiet time after sync(), before each timed deletion
    tmpfs_dir: str | None  # also a pass (ocrd and find) on this tmpfs, where unlink never waits
    # Also a pass over this many directories under ulimit -n 256, this many times (mkdir is
    # slow here: 10k directories take ~10 s to make).
    fd_dirs: tuple[tuple[int, int], ...]


QUICK = Mode(
    name="quick",
    reps=3,
    scan_sizes=(2_000,),
    retention_n=2_000,
    age_only=False,
    daemon_tree=2_000,
    latency_files=50,
    idle_s=5.0,
    rss_sizes=(0, 1_000, 2_000),
    rss_reps=1,
    burst_n=5_000,
    burst_reps=1,
    rescan="10s",
    drain_timeout_s=20.0,
    pause_s=0.2,
    tmpfs_dir=None,
    fd_dirs=((10_000, 1),),
)
FULL = Mode(
    name="full",
    reps=5,
    scan_sizes=(10_000, 100_000),
    retention_n=100_000,
    age_only=True,
    daemon_tree=10_000,
    latency_files=500,
    idle_s=60.0,
    rss_sizes=(0, 10_000, 100_000),
    rss_reps=3,
    burst_n=50_000,
    burst_reps=3,
    rescan="1m",
    drain_timeout_s=90.0,
    pause_s=1.0,
    tmpfs_dir="/dev/shm",
    fd_dirs=((10_000, 5), (100_000, 1)),
)
