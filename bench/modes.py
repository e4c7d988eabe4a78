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
    tmpfs_dir: str | None  # also a pass (ocrd, find, the floor) on this tmpfs: unlink never waits
    ext4_loop: bool  # also a pass on a fresh loop-mounted ext4 image without discard (root only)
    # Also a pass over this many directories under ulimit -n 256, this many times (mkdir is
    # slow here: 10k directories take ~10 s to make).
    fd_dirs: tuple[tuple[int, int], ...]
    cycle_scenarios: tuple[str, ...]  # §6: engine-cycle scenarios (bench/engine_cycles.py)
    churn_s: float  # §7: how long files are created and removed under ocrd run
    churn_rate: float  # files/s
    churn_life_s: float  # each file is removed this long after it was made
    churn_sample_s: float  # RSS and CPU are sampled this often
    churn_warmup_s: float  # samples before this are not compared
    storm_files: int  # §8: files with 255-byte control-byte names
    holder_procs: tuple[int, ...]  # §9: extra processes holding the file


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
    tmpfs_dir="/dev/shm",
    ext4_loop=True,
    fd_dirs=((10_000, 1),),
    cycle_scenarios=("trickle",),
    churn_s=20.0,
    churn_rate=200.0,
    churn_life_s=3.0,
    churn_sample_s=2.0,
    churn_warmup_s=6.0,
    storm_files=1_000,
    holder_procs=(0, 100),
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
    ext4_loop=True,
    fd_dirs=((10_000, 5), (100_000, 1)),
    cycle_scenarios=("trickle", "burst", "held", "immutable"),
    churn_s=600.0,
    churn_rate=2000.0,
    churn_life_s=7.0,
    churn_sample_s=10.0,
    churn_warmup_s=60.0,
    storm_files=20_000,
    holder_procs=(0, 500, 2000),
)
