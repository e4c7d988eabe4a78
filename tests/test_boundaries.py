"""Boundaries, provoked for real: mount points inside model_dir, a model_dir swapped for a
symlink or configured as one, trees deeper than Python's recursion limit and PATH_MAX, fd limits,
and start-up scans long enough for systemd's watchdog to notice. Mounts are made as root inside
the test's own temporary directory and always unmounted."""

from __future__ import annotations

import itertools
import json
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ocrd.fs.walk import walk_dirs
from tests import configs
from tests.conftest import OcrdRunner, StartOcrd, make_file
from tests.harness import ocrd_argv

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root (CI runs as root)")


def config(
    tmp_path: Path, model_dir: str = "models", settle: str = "0s", observer: str = "auto"
) -> Path:
    return configs.config(
        tmp_path, model_dir=model_dir, watch={"settle": settle, "observer": observer}
    )


@contextmanager
def mounted(*args: str) -> Iterator[None]:
    """``mount ARGS``; the last argument is the mount point, unmounted afterwards."""
    subprocess.run(["mount", *args], check=True, capture_output=True)
    try:
        yield
    finally:
        if subprocess.run(["umount", args[-1]], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "-l", args[-1]], check=True)


def remove_tree(top: Path) -> None:
    """Remove a tree of any depth without recursion (shutil.rmtree recurses: pytest's own
    clean-up of old temporary directories would die of RecursionError on a 5000-deep tree):
    each grandchild directory is moved up to ``top`` until none is left."""
    moved = 0
    while True:
        subdirs = [e.path for e in os.scandir(top) if e.is_dir(follow_symlinks=False)]
        if not subdirs:
            break
        for path in subdirs:
            for entry in os.scandir(path):
                if entry.is_dir(follow_symlinks=False):
                    moved += 1
                    os.rename(entry.path, top / f".flat{moved}")
                else:
                    os.unlink(entry.path)
            os.rmdir(path)


@pytest.fixture(autouse=True)
def _flattened(tmp_path: Path) -> Iterator[None]:
    """Every test here leaves its temporary directory shallow (after its mounts are gone)."""
    yield
    remove_tree(tmp_path)


def watched(pid: int) -> set[tuple[int, int]]:
    """(device, inode) of every directory process ``pid`` has an inotify watch on."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("inotify wd:"):
                fields = dict(part.split(":", 1) for part in line.split()[1:])
                sdev = int(fields["sdev"], 16)  # the kernel's encoding: major << 20 | minor
                dev = os.makedev(sdev >> 20, sdev & 0xFFFFF)
                found.add((dev, int(fields["ino"], 16)))
    return found


def ident(path: Path | bytes) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


# -- 1. one filesystem --------------------------------------------------------------------------


@pytest.fixture
def crossings(tmp_path: Path, models: Path) -> Iterator[dict[str, Path]]:
    """models/sub is a tmpfs, models/bind a bind mount of a directory outside model_dir; both
    hold old_* files (and a subdirectory) that no rule may reach."""
    outside = tmp_path / "outside"
    make_file(outside, b"old_precious.txt", b"p")
    make_file(outside, b"deeper/old_deep.txt", b"d")
    (models / "sub").mkdir()
    (models / "bind").mkdir()
    make_file(models, b"old_own.bin", b"o")
    with (
        mounted("-t", "tmpfs", "-o", "size=4m", "ocrd-test", str(models / "sub")),
        mounted("--bind", str(outside), str(models / "bind")),
    ):
        make_file(models / "sub", b"old_tmpfs.bin", b"t")
        make_file(models / "sub", b"inner/old_inner.bin", b"i")
        yield {"outside": outside, "sub": models / "sub", "bind": models / "bind"}


def mount_files(c: dict[str, Path]) -> list[Path]:
    return [
        c["outside"] / "old_precious.txt",
        c["outside"] / "deeper" / "old_deep.txt",
        c["sub"] / "old_tmpfs.bin",
        c["sub"] / "inner" / "old_inner.bin",
    ]


def test_clean_and_list_do_not_cross_mount_points(
    tmp_path: Path, models: Path, crossings: dict[str, Path], run_ocrd: OcrdRunner
) -> None:
    cfg = config(tmp_path)
    listed = run_ocrd("list", "-c", cfg, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["path"]: r for r in json.loads(listed.stdout)}
    assert rows["old_own.bin"]["verdict"] == "delete"
    assert rows["sub"]["verdict"] == rows["bind"]["verdict"] == "skipped"
    assert not [p for p in rows if p.startswith(("sub/", "bind/"))], rows
    text = run_ocrd("list", "-c", cfg)
    assert "not entered: bind" in text.stdout, text.stdout
    assert "not entered: sub" in text.stdout, text.stdout

    cleaned = run_ocrd("clean", "-c", cfg, "--json")
    assert cleaned.returncode == 0, cleaned.stderr
    out = json.loads(cleaned.stdout)
    assert out["deleted"] == ["old_own.bin"], out
    assert {m["path"] for m in out["mounts_skipped"]} == {"sub", "bind"}
    warned = [json.loads(line) for line in cleaned.stderr.splitlines()]
    assert {w["path"] for w in warned if w["event"] == "mount_skipped"} == {"sub", "bind"}
    for f in mount_files(crossings):
        assert f.exists(), f


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_the_daemon_neither_enters_nor_watches_nor_deletes_across_mount_points(
    tmp_path: Path,
    models: Path,
    crossings: dict[str, Path],
    start_ocrd: StartOcrd,
    observer: str,
) -> None:
    d = start_ocrd(config(tmp_path, observer=observer))
    d.event("model_deleted", path="old_own.bin")
    d.note("READY=1")
    # Files arriving on the other filesystems are not seen; one in model_dir is.
    make_file(crossings["sub"], b"old_late.bin")
    make_file(crossings["outside"], b"deeper/old_late.bin")
    make_file(models, b"old_trigger.bin")
    d.event("model_deleted", path="old_trigger.bin")
    d.send(signal.SIGHUP)  # a reload is a full pass: the mounts are met again, not logged again
    d.event("config_reloaded")
    d.wait_for("the reload's pass", lambda: d.names().count("scan_completed") >= 2)
    skipped = [e for e in d.events if e["event"] == "mount_skipped"]
    assert sorted(e["path"] for e in skipped) == ["bind", "sub"], skipped
    sub_dev = os.stat(crossings["sub"]).st_dev
    assert {e["device"] for e in skipped if e["path"] == "sub"} == {
        f"{os.major(sub_dev)}:{os.minor(sub_dev)}"
    }
    # watchdog's inotify walks into every directory below its root, mounts included: with
    # mount points inside model_dir, polling (whose walk stays on one filesystem) watches.
    if observer == "inotify":
        fallback = d.event("watch_fallback", failed="inotify")
        assert "mount points inside model_dir" in fallback["why"]
    assert d.event("watch_armed")["observer"] == "polling"
    watches = watched(d.proc.pid)
    assert ident(models) not in watches
    inside_mounts = [
        crossings["sub"],
        crossings["sub"] / "inner",
        crossings["outside"],
        crossings["outside"] / "deeper",
    ]
    assert not [p for p in inside_mounts if ident(p) in watches]
    assert d.stop()[0] == 0
    deleted = {e["path"] for e in d.events if e["event"] == "model_deleted"}
    assert deleted == {"old_own.bin", "old_trigger.bin"}
    for f in [*mount_files(crossings), crossings["sub"] / "old_late.bin"]:
        assert f.exists(), f


@pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="needs btrfs-progs")
def test_a_btrfs_subvolume_is_a_boundary_too(tmp_path: Path, run_ocrd: OcrdRunner) -> None:
    # A subvolume is on the same mount, with its own st_dev: treated as another filesystem,
    # as `find -xdev` treats it.
    image = tmp_path / "btrfs.img"
    with image.open("wb") as fh:
        fh.truncate(128 << 20)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    top = tmp_path / "fs"
    top.mkdir()
    with mounted("-o", "loop", str(image), str(top)):
        models = top / "models"
        models.mkdir()
        subprocess.run(["btrfs", "subvolume", "create", str(models / "vol")], check=True)
        make_file(models, b"old_own.bin")
        make_file(models / "vol", b"old_in_subvolume.bin")
        out = run_ocrd("clean", "-c", config(tmp_path, model_dir=str(models)), "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["deleted"] == ["old_own.bin"]
        assert (models / "vol" / "old_in_subvolume.bin").exists()


# -- 2. model_dir's identity is pinned ----------------------------------------------------------


def test_a_model_dir_swapped_for_a_symlink_is_missing_not_followed(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    outside = tmp_path / "outside"
    make_file(outside, b"old_precious.txt", b"p")
    make_file(outside, b"sub/old_deep.txt", b"d")
    d = start_ocrd(config(tmp_path))
    d.note("READY=1")
    models.rename(tmp_path / "models.orig")
    models.symlink_to("outside")
    make_file(tmp_path / "models.orig", b"old_nudge.bin")  # an event on the watched inode
    d.event("model_dir_missing", model_dir=str(models))
    # Nothing at the pinned path is a directory until a real one returns: then it is used.
    models.unlink()
    models.mkdir()
    make_file(models, b"old_back.bin")
    d.event("model_dir_returned")
    d.event("model_deleted", path="old_back.bin")
    assert d.stop()[0] == 0
    assert (outside / "old_precious.txt").exists()
    assert (outside / "sub" / "old_deep.txt").exists()
    assert (tmp_path / "models.orig" / "old_nudge.bin").exists()
    assert "watch_rearmed" not in d.names()


def test_a_symlinked_model_dir_is_watched_at_its_target(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    (tmp_path / "link").symlink_to("models")
    make_file(models, b"sub/keep.bin")
    d = start_ocrd(config(tmp_path, model_dir="link"), {"WATCHDOG_USEC": "400000"})
    d.note("READY=1")
    make_file(models, b"sub/old_x.bin")
    d.event("model_deleted", path="sub/old_x.bin")
    watches = watched(d.proc.pid)
    assert {ident(models), ident(models / "sub")} <= watches
    # The loop checks the watch's coverage 1 s after a pass; pings every 0.1 s show it ran on.
    d.note("WATCHDOG=1", count=30)
    assert "watch_limit" not in d.names()
    assert "watch_fallback" not in d.names()
    assert d.stop()[0] == 0


# -- 3. any tree --------------------------------------------------------------------------------


def deep_tree(top: Path, depth: int, leaf: list[bytes]) -> None:
    """``top/d/d/…/d`` ``depth`` levels deep, with ``leaf`` files at the bottom. Made with
    directory fds: the path is far longer than PATH_MAX."""
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        for name in leaf:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def deep_name(depth: int, name: str) -> str:
    return "d/" * depth + name


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_a_5000_deep_tree_at_start_and_moved_in_at_run_time(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd, observer: str
) -> None:
    depth = 5000
    deep_tree(models / "a", depth, [b"old_bottom.bin", b"keep.bin"])
    d = start_ocrd(config(tmp_path, observer=observer))
    d.note("READY=1", timeout=120)
    d.event("model_deleted", path="a/" + deep_name(depth, "old_bottom.bin"))
    # Moved in whole while the daemon runs: walked, watched and cleaned like the rest.
    deep_tree(tmp_path / "staging" / "b", depth, [b"old_moved.bin", b"keep.bin"])
    (tmp_path / "staging" / "b").rename(models / "b")
    d.event("model_deleted", path="b/" + deep_name(depth, "old_moved.bin"), timeout=120)
    # The bottom of the moved tree is watched (or polled): a file created there is seen.
    fd = os.open(models / "b", os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("old_new.bin", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    os.close(fd)
    d.event("model_deleted", path="b/" + deep_name(depth, "old_new.bin"), timeout=120)
    names = d.names()
    assert not {"daemon_failed", "watch_failed", "watch_limit", "watch_rearmed"} & set(names)
    assert d.stop()[0] == 0


def limit_fds(n: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def test_clean_under_ulimit_256_deletes_every_eligible_file(tmp_path: Path, models: Path) -> None:
    # 3000 directories (one fd each for the whole pass made "Too many open files" past ~240),
    # and a 5000-deep chain (one fd per level in the walk).
    for i in range(3000):
        make_file(models, b"d%04d/old_%04d.bin" % (i, i))
        make_file(models, b"d%04d/keep.bin" % i)
    deep_tree(models / "deep", 5000, [b"old_bottom.bin", b"keep.bin"])
    deep_tree(models / "chain", 5000, [b"old_only.bin"])  # emptied: removed to the top
    out = subprocess.run(
        [*ocrd_argv(), "clean", "-c", str(config(tmp_path)), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=lambda: limit_fds(256),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["failed"] == [], result
    assert result["skipped"] == [], result
    assert len(result["deleted"]) == 3002
    assert not (models / "chain").exists()
    assert "deep/" + deep_name(5000, "old_bottom.bin") in result["deleted"]
    assert not [p for p in models.glob("d*/old_*")]


def test_the_daemon_under_ulimit_256_deletes_every_eligible_file(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    # The real engine (the .NET runtime holds fds of its own), the watcher, apply's threads.
    for i in range(3000):
        make_file(models, b"d%04d/old_%04d.bin" % (i, i))
        make_file(models, b"d%04d/keep.bin" % i)
    cfg = configs.config(tmp_path, engine={"enabled": True})
    d = start_ocrd(cfg, prefix=["prlimit", "--nofile=256:256", "--"])
    d.note("READY=1", timeout=120)
    assert d.stop()[0] == 0
    names = d.names()
    assert d.deletions() == 3000, [n for n in names if n != "model_deleted"]
    assert not {"deletion_failed", "scan_unreadable", "daemon_failed"} & set(names)
    assert not list(models.glob("d*/old_*"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_walk_dirs_keeps_its_fds_bounded_and_reopens_ancestors(tmp_path: Path) -> None:
    deep_tree(tmp_path / "t", 300, [b"f"])
    for i in range(20):
        (tmp_path / "t" / f"s{i}").mkdir()  # siblings met after the deep branch is done
    before = open_fds()
    peak = 0
    seen = []
    for here in walk_dirs(os.open(tmp_path / "t", os.O_RDONLY | os.O_DIRECTORY), max_fds=8):
        peak = max(peak, open_fds() - before)
        seen.append(here.path)
        with os.scandir(here.fd) as it:
            here.subdirs.extend(e.name for e in it if e.is_dir())
    assert open_fds() == before
    assert peak <= 8 + 1  # and the scandir in hand
    assert len(seen) == 1 + 300 + 20
    assert os.fsencode(deep_name(299, "d")) in seen


def test_walk_dirs_refuses_an_ancestor_that_was_replaced(tmp_path: Path) -> None:
    # The walk climbs back to "a" (its fd long closed) through ".." of the branch below it,
    # and must find the very directory it left; here "a" was replaced and the branch moved
    # away, so neither way leads back to it: "a" is left unread, not read from elsewhere.
    deep_tree(tmp_path / "t" / "a", 20, [b"f"])
    (tmp_path / "t" / "a" / "z").mkdir()
    unreadable: list[tuple[bytes, str]] = []
    seen = []
    root = os.open(tmp_path / "t", os.O_RDONLY | os.O_DIRECTORY)
    for here in walk_dirs(root, max_fds=4, unreadable=unreadable):
        seen.append(here.path)
        if here.path == os.fsencode("a/" + deep_name(19, "d")):
            (tmp_path / "t" / "a").rename(tmp_path / "elsewhere")
            (tmp_path / "elsewhere" / "d").rename(tmp_path / "branch")
            (tmp_path / "t" / "a").mkdir()
            (tmp_path / "t" / "a" / "z").mkdir()
        with os.scandir(here.fd) as it:
            here.subdirs.extend(sorted((e.name for e in it if e.is_dir()), reverse=True))
    assert b"a/z" not in seen
    assert (b"a", "directory was replaced during the walk") in unreadable


def test_walk_dirs_climbs_back_from_the_root_when_a_branch_moved(tmp_path: Path) -> None:
    # The branch below "a" moved away: its ".." is no longer "a", but "a" itself is still in
    # place, so it is reopened from the root, checked, and its other subdirectory is read.
    deep_tree(tmp_path / "t" / "a", 20, [b"f"])
    (tmp_path / "t" / "a" / "z").mkdir()
    seen = []
    root = os.open(tmp_path / "t", os.O_RDONLY | os.O_DIRECTORY)
    for here in walk_dirs(root, max_fds=4):
        seen.append(here.path)
        if here.path == os.fsencode("a/" + deep_name(19, "d")):
            (tmp_path / "t" / "a" / "d").rename(tmp_path / "branch")
        with os.scandir(here.fd) as it:
            here.subdirs.extend(sorted((e.name for e in it if e.is_dir()), reverse=True))
    assert seen[-1] == b"a/z"


# -- 4. responsive always -----------------------------------------------------------------------


def test_long_startup_scan_pings_the_watchdog_and_yields_to_sigterm(
    tmp_path: Path, start_ocrd: StartOcrd
) -> None:
    # 400k directories on a tmpfs of the test's own: several seconds of walking on this
    # machine (the polling observer's first snapshot, then the scan), without a fake.
    models = tmp_path / "models"
    models.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=2g,nr_inodes=0", "ocrd-test", str(models)):
        fd = os.open(models, os.O_RDONLY | os.O_DIRECTORY)
        for i in range(400):
            os.mkdir(f"d{i}", dir_fd=fd)
            sub = os.open(f"d{i}", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            for j in range(1000):
                os.mkdir(f"e{j}", dir_fd=sub)
            os.close(sub)
        os.close(fd)
        cfg = config(tmp_path, settle="1h", observer="polling")
        d = start_ocrd(cfg, {"WATCHDOG_USEC": "2000000"})  # pings due every 0.5 s
        d.event("daemon_started")
        times = d.note("WATCHDOG=1", count=8)  # about 3.5 s into start-up
        # Eight pings while start-up still runs: READY=1 before them means the pings were not
        # sent during the scan (or the tree is too small to show it).
        assert not [n for _, n in d.notes if n.startswith("READY=1")], "READY=1 before 8 pings"
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) < 1.0, gaps  # under half of WATCHDOG_USEC
        code, took = d.stop(signal.SIGTERM)
        assert code == 0, d.stderr[-2000:]
        assert took < 5.0
        assert d.names()[-1] == "daemon_stopped"
        assert "READY=1" not in [n for _, n in d.notes]
