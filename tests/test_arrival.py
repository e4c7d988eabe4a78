"""Age means time in model_dir: arrivals on real disks, under ``ocrd clean``, ``list`` and ``run``.

A ctime cannot be set back through the kernel's API (that is why it is the evidence of arrival),
so the files that "have really been there" for 60 days, or were extracted 60 days ago, are made
on an ext4 image whose inodes debugfs edits while it is unmounted: after mounting again the
kernel reports those ctimes as if the clock had read them. Everything ocrd does then (rename
into model_dir, stat, plan, delete) happens on the real mounted filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests import configs
from tests.conftest import OcrdRunner, StartOcrd
from tests.harness import OcrdProcess

DAY = 86400.0
OLD = time.time() - 60 * DAY

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a loop image: needs root")


class Image:
    """An ext4 loop image mounted at ``mnt``."""

    def __init__(self, image: Path, mnt: Path) -> None:
        self.image = image
        self.mnt = mnt

    def mount(self) -> None:
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mnt)], check=True)

    def umount(self) -> None:
        subprocess.run(["umount", str(self.mnt)], check=True)

    def set_times(self, rels: list[str], when: float) -> None:
        """Set ctime, mtime and atime of each path (relative to the mount) to ``when``."""
        self.umount()
        try:
            for rel in rels:
                for field in ("ctime", "mtime", "atime"):
                    subprocess.run(
                        [
                            "debugfs",
                            "-w",
                            "-R",
                            f"set_inode_field /{rel} {field} @{int(when)}",
                            str(self.image),
                        ],
                        check=True,
                        capture_output=True,
                    )
        finally:
            self.mount()


@contextmanager
def ext4_image(base: Path) -> Iterator[Image]:
    for tool in ("mkfs.ext4", "debugfs"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    image, mnt = base / "ext4.img", base / "fs"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    img = Image(image, mnt)
    img.mount()
    try:
        yield img
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        image.unlink()


def vendor_tarball(base: Path) -> Path:
    """A package of models as a vendor ships it: every member's mtime 60 days ago."""
    src = base / "vendor-src"
    for rel in ("pkg/a.bin", "pkg/sub/b.bin", "pkg/old_sentinel.bin"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"GGUF" + rel.encode())
    for p in src.rglob("*"):
        os.utime(p, (OLD, OLD))
    tarball = base / "pkg.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(src / "pkg", arcname="pkg")
    return tarball


def prepare(base: Path, img: Image) -> Path:
    """On the image: ``models/there.bin``, really there for 60 days (ctime 60 days ago), and
    ``staging/pkg``, extracted with ``tar -x`` 60 days ago (ctimes 60 days ago too).
    Returns ``models``."""
    models, staging = img.mnt / "models", img.mnt / "staging"
    models.mkdir()
    staging.mkdir()
    subprocess.run(["tar", "-x", "-f", str(vendor_tarball(base)), "-C", str(staging)], check=True)
    (models / "there.bin").write_bytes(b"GGUF there")
    img.set_times(
        [
            "models/there.bin",
            "staging/pkg",
            "staging/pkg/sub",
            "staging/pkg/a.bin",
            "staging/pkg/sub/b.bin",
            "staging/pkg/old_sentinel.bin",
        ],
        OLD,
    )
    # The premise: nothing in the package says it is new, not even its own ctime.
    for rel in ("pkg/a.bin", "pkg/sub/b.bin", "pkg"):
        st = os.stat(staging / rel)
        assert st.st_ctime < time.time() - 59 * DAY
        assert st.st_mtime < time.time() - 59 * DAY
    assert os.stat(models / "there.bin").st_ctime < time.time() - 59 * DAY
    return models


def install(base: Path, img: Image, models: Path) -> None:
    """What an operator does: move the extracted directory in, and ``cp -p`` one model."""
    vendor = base / "vendor.bin"
    vendor.write_bytes(b"GGUF vendor")
    os.utime(vendor, (OLD, OLD))
    os.rename(img.mnt / "staging" / "pkg", models / "pkg")
    subprocess.run(["cp", "-p", str(vendor), str(models / "vendor.bin")], check=True)
    assert os.stat(models / "vendor.bin").st_mtime < time.time() - 59 * DAY


def config(
    base: Path,
    models: Path,
    *,
    settle: str = "0s",
    rescan: str = "10m",
    max_age: str | None = "30d",
    observer: str = "auto",
    **retention: object,
) -> Path:
    """Every model but the moved-in ones is old: these tests are about age, not about the
    refusal to empty model_dir (tests/test_newest.py), so allow_delete_all is on."""
    return configs.config(
        base / "conf",
        model_dir=str(models),
        retention={"max_age": max_age, "allow_delete_all": True, **retention},
        watch={"settle": settle, "rescan": rescan, "observer": observer},
    )


def listing(run_ocrd: OcrdRunner, cfg: Path) -> dict[str, dict[str, Any]]:
    result = run_ocrd("list", "-c", cfg, "--json")
    assert result.returncode == 0, result.stderr
    return {row["path"]: row for row in json.loads(result.stdout)}


MOVED = ("pkg/a.bin", "pkg/sub/b.bin", "vendor.bin")


@root_only
def test_moved_in_and_copied_models_are_not_deleted_by_their_vendor_mtime(
    tmp_path: Path, run_ocrd: OcrdRunner
) -> None:
    with ext4_image(tmp_path) as img:
        models = prepare(tmp_path, img)
        install(tmp_path, img, models)

        # Under the old rule every one of them goes: the premise of the test holds.
        old_rule = config(tmp_path, models, age_from="timestamp")
        rows = listing(run_ocrd, old_rule)
        for rel in (*MOVED, "there.bin"):
            assert (rows[rel]["verdict"], rows[rel]["rule"]) == ("delete", "max_age"), rows[rel]

        cfg = config(tmp_path, models)
        rows = listing(run_ocrd, cfg)
        for rel in MOVED:
            row = rows[rel]
            assert (row["verdict"], row["rule"]) == ("keep", None), row
            assert row["reason"].startswith("in model_dir "), row
            assert "(arrived 20" in row["reason"]
            assert row["reason"].endswith(") <= 30d, mtime age 60d"), row
            assert row["age_s"] > 59 * DAY  # the contract's age_s: still the mtime's age
            assert row["in_model_dir_s"] < DAY
        # pkg/a.bin's own ctime is 60 days old: only its directory's rename says it is new.
        assert os.stat(models / "pkg/a.bin").st_ctime < time.time() - 59 * DAY
        # A file that has really been there 60 days is deleted, its reason its mtime age.
        assert (rows["there.bin"]["verdict"], rows["there.bin"]["reason"]) == (
            "delete",
            "mtime age 60d > 30d",
        )

        result = run_ocrd("clean", "-c", cfg, "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert sorted(report["deleted"]) == ["pkg/old_sentinel.bin", "there.bin"]
        for rel in MOVED:
            assert (models / rel).exists(), rel


@root_only
def test_the_daemon_settles_a_moved_in_directory_and_keeps_its_old_models(
    tmp_path: Path, start_ocrd: StartOcrd
) -> None:
    with ext4_image(tmp_path) as img:
        models = prepare(tmp_path, img)
        cfg = config(tmp_path, models, settle="2s", rescan="3s")
        d = start_ocrd(cfg)
        # Really there for 60 days: deleted by max_age at start-up.
        d.event("model_deleted", path="there.bin", rule="max_age")
        d.note("READY=1")

        moved_at = time.time()
        install(tmp_path, img, models)
        # The prefix rule deletes the sentinel that came in the package, but only once it has
        # settled: from the directory's arrival, not from its own 60-day-old ctime.
        gone = d.event("model_deleted", path="pkg/old_sentinel.bin", rule="prefix")
        deleted_at = _timestamp(gone)
        assert deleted_at - moved_at >= 2.0 - 0.05, (moved_at, deleted_at)
        # That deletion made pkg's mtime equal its ctime: the directory no longer shows it was
        # moved in. The daemon saw it arrive, and a full rescan still keeps its files.
        st = os.stat(models / "pkg")
        assert st.st_mtime == st.st_ctime
        n = len(d.events)
        d.wait_for(
            "a rescan after the sentinel's deletion",
            lambda: any(
                e.get("event") == "scan_completed" and e.get("trigger") == "rescan"
                for e in d.events[n:]
            ),
        )
        for rel in MOVED:
            assert (models / rel).exists(), rel
        deleted = {e["path"] for e in d.events if e.get("event") == "model_deleted"}
        assert deleted == {"there.bin", "pkg/old_sentinel.bin"}
        code, _ = d.stop()
        assert code == 0


@root_only
@pytest.mark.parametrize("seen_by", ["event", "rescan"])
def test_a_package_moved_in_and_changed_at_once_keeps_its_arrival(
    tmp_path: Path, start_ocrd: StartOcrd, seen_by: str
) -> None:
    """A download tool moves an extracted package in and writes its marker into it at once:
    when the daemon looks, the package's mtime equals its ctime again, and nothing on disk says
    it was moved in. The daemon saw it arrive, by the event or by the full scan that took the
    event's place (a reload here), and that arrival holds: the sentinel settles from it, and
    max_age counts from it."""
    with ext4_image(tmp_path) as img:
        models = prepare(tmp_path, img)
        # Polling: what the daemon keeps once it saw the package is the point here, not how
        # it saw it (the polling observer's events take the same path as inotify's).
        cfg = config(tmp_path, models, settle="2s", rescan="3s", observer="polling")
        d = start_ocrd(cfg)
        d.event("model_deleted", path="there.bin", rule="max_age")
        d.note("READY=1")

        # Stopped, the daemon looks only once both are done: the sign is gone by then.
        d.send(signal.SIGSTOP)
        try:
            moved_at = time.time()
            install(tmp_path, img, models)
            (models / "pkg" / ".complete").write_bytes(b"")
            st = os.stat(models / "pkg")
            assert st.st_mtime == st.st_ctime
            if seen_by == "rescan":
                d.send(signal.SIGHUP)  # the reload's full scan, not the event, finds pkg
        finally:
            d.send(signal.SIGCONT)
        if seen_by == "rescan":
            d.event("scan_completed", trigger="reload")
        gone = d.event("model_deleted", path="pkg/old_sentinel.bin", rule="prefix")
        assert _timestamp(gone) - moved_at >= 2.0 - 0.05, (moved_at, gone)
        _after_a_rescan(d)
        for rel in (*MOVED, "pkg/.complete"):
            assert (models / rel).exists(), rel
        deleted = {e["path"] for e in d.events if e.get("event") == "model_deleted"}
        assert deleted == {"there.bin", "pkg/old_sentinel.bin"}
        assert d.stop()[0] == 0


@root_only
def test_a_reload_that_adds_max_age_counts_from_the_arrival_the_daemon_saw(
    tmp_path: Path, start_ocrd: StartOcrd
) -> None:
    """The rules in force judge by name only, so when the package arrived nothing depended on
    when it did; full scans came and went. A reload adding max_age must still count from the
    arrival the daemon saw, not from the files' 60-day-old timestamps."""
    with ext4_image(tmp_path) as img:
        models = prepare(tmp_path, img)
        # reload_guard 100%: the reload's deletions happen, or not, as ruled
        rules = {"settle": "1s", "rescan": "1s", "reload_guard": "100%", "observer": "polling"}
        cfg = config(tmp_path, models, max_age=None, **rules)
        d = start_ocrd(cfg)
        d.note("READY=1")
        install(tmp_path, img, models)
        # The prefix rule's deletion makes pkg's mtime equal its ctime: only the daemon's
        # sighting says pkg is new now.
        d.event("model_deleted", path="pkg/old_sentinel.bin", rule="prefix")
        st = os.stat(models / "pkg")
        assert st.st_mtime == st.st_ctime
        _after_a_rescan(d)

        config(tmp_path, models, max_age="30d", **rules)
        d.send(signal.SIGHUP)
        d.event("config_reloaded")
        # Really there for 60 days: deleted at once under the new rule.
        d.event("model_deleted", path="there.bin", rule="max_age")
        _after_a_rescan(d)
        for rel in MOVED:
            assert (models / rel).exists(), rel
        deleted = {e["path"] for e in d.events if e.get("event") == "model_deleted"}
        assert deleted == {"there.bin", "pkg/old_sentinel.bin"}
        assert d.stop()[0] == 0


def _after_a_rescan(d: OcrdProcess) -> None:
    """Wait for a periodic full scan that started after now."""
    n = len(d.events)
    d.wait_for(
        "a periodic rescan",
        lambda: any(
            e.get("event") == "scan_completed" and e.get("trigger") == "rescan"
            for e in d.events[n:]
        ),
    )


def _timestamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


# -- atime on noatime and relatime mounts ---------------------------------------------------------


@contextmanager
def tmpfs(base: Path, options: str) -> Iterator[Path]:
    mnt = base / f"tmpfs-{options.replace(',', '-')}"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=4m,{options}", "ocrd-test", str(mnt)], check=True
    )
    try:
        (mnt / "models").mkdir()
        yield mnt / "models"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def atime_config(tmp_path: Path, models: Path, max_age: str, age_by: str) -> Path:
    return configs.config(
        tmp_path,
        model_dir=str(models),
        retention={"prefixes": None, "max_age": max_age, "age_by": age_by},
        watch=None,
    )


@root_only
def test_atime_ageing_is_refused_on_a_noatime_mount(
    tmp_path: Path, run_ocrd: OcrdRunner, start_ocrd: StartOcrd
) -> None:
    with tmpfs(tmp_path, "noatime") as models:
        cfg = atime_config(tmp_path, models, "30d", "atime")
        result = run_ocrd("check", "-c", cfg)
        assert result.returncode == 78, result
        out = result.stdout + result.stderr
        assert "at 'retention.age_by'" in out, out
        assert "noatime" in out, out
        d = start_ocrd(cfg)
        assert d.wait() == 78
        # By mtime the same mount is fine.
        atime_config(tmp_path, models, "30d", "mtime")
        assert run_ocrd("check", "-c", cfg).returncode == 0
        # A daemon running by mtime keeps its rules when a reload asks for atime there.
        d = start_ocrd(cfg)
        d.note("READY=1")
        atime_config(tmp_path, models, "30d", "atime")
        d.send(signal.SIGHUP)
        rejected = d.event("config_rejected")
        assert any("noatime" in e for e in rejected["errors"]), rejected
        assert d.stop()[0] == 0


@root_only
@pytest.mark.parametrize(
    ("options", "max_age", "warned"),
    [
        ("relatime", "12h", True),
        ("relatime", "1d", False),
        ("strictatime", "12h", False),
    ],
)
def test_atime_ageing_under_a_day_is_warned_about_on_relatime(
    tmp_path: Path, run_ocrd: OcrdRunner, options: str, max_age: str, warned: bool
) -> None:
    with tmpfs(tmp_path, options) as models:
        cfg = atime_config(tmp_path, models, max_age, "atime")
        result = run_ocrd("check", "-c", cfg)
        assert result.returncode == 0, result
        out = result.stdout + result.stderr
        assert ("mounted relatime" in out) is warned, out


# -- directory evidence, without mounts -----------------------------------------------------------


def _scan(models: Path) -> dict[bytes, Any]:
    from ocrd.fs.arrival import Arrivals
    from ocrd.fs.scan import scan

    return {e.path: e for e in Arrivals(models).apply(scan(models).files)}


def test_a_directory_whose_status_changed_after_its_contents_dates_the_files_in_it(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    (models / "pkg" / "sub").mkdir(parents=True)
    (models / "pkg" / "sub" / "f.bin").write_bytes(b"f")
    (models / "top.bin").write_bytes(b"t")
    before = {p: os.stat(models / os.fsdecode(p)).st_ctime for p in (b"pkg/sub/f.bin", b"top.bin")}
    # Contents changed last: mtime == ctime on every directory, no evidence; own ctimes stand.
    assert {p: e.ctime for p, e in _scan(models).items()} == before
    # A status change after the contents' last change (here utime, which sets ctime to now
    # and mtime to what it is told; a rename or chmod does the same to ctime): the files
    # below count as arrived then, at any depth. model_dir's own ctime is never evidence.
    os.utime(models / "pkg", (OLD, OLD))
    os.utime(models, (OLD, OLD))
    pkg = os.stat(models / "pkg")
    assert pkg.st_ctime > pkg.st_mtime
    found = _scan(models)
    assert found[b"pkg/sub/f.bin"].ctime == max(pkg.st_ctime, before[b"pkg/sub/f.bin"])
    assert found[b"top.bin"].ctime == before[b"top.bin"]


def test_each_file_gets_its_own_directorys_evidence_in_any_order(tmp_path: Path) -> None:
    """Files of several directories, interleaved and repeated, in one call and across calls
    sharing a cache: each gets the evidence of its own directory and its own sighting."""
    from ocrd.fs.arrival import Arrivals
    from ocrd.fs.inventory import FileEntry

    models = tmp_path / "models"
    for d in ("moved", "moved/deeper", "plain"):
        (models / d).mkdir(parents=True)
    os.utime(models / "moved", (OLD, OLD))  # a status change after its contents: evidence
    moved = os.stat(models / "moved").st_ctime
    arrivals = Arrivals(models)
    arrivals.saw(b"plain", moved + 50)
    arrivals.files[b"top.bin"] = moved + 100

    def entry(path: bytes) -> FileEntry:
        return FileEntry(path, 1, OLD, OLD, OLD, 1, 1, False)

    order = [b"moved/a", b"plain/b", b"top.bin", b"moved/deeper/c", b"moved/d", b"other.bin"]
    order += [b"plain/e", b"moved/a", b"x/y/z"]
    want = {
        b"moved/a": moved,
        b"plain/b": moved + 50,
        b"top.bin": moved + 100,
        b"moved/deeper/c": moved,
        b"moved/d": moved,
        b"other.bin": OLD,
        b"plain/e": moved + 50,
        b"x/y/z": OLD,  # gone or never there: no evidence
    }
    cache: dict[bytes, float] = {}
    for half in (order[:4], order[4:]):
        got = arrivals.apply([entry(p) for p in half], cache)
        assert [(e.path, e.ctime) for e in got] == [(p, want[p]) for p in half]
    assert [e.ctime for e in arrivals.apply(map(entry, reversed(order)))] == [
        want[p] for p in reversed(order)
    ]


def test_directory_evidence_is_found_at_any_depth(tmp_path: Path) -> None:
    """Deeper than Python's recursion limit: the lookup is iterative."""
    models = tmp_path / "models"
    models.mkdir()
    fd = os.open(models, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1100):
        os.mkdir("d", dir_fd=fd)
        sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = sub
    os.close(os.open("f.bin", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    os.close(fd)
    try:
        os.utime(models / "d", (OLD, OLD))
        (entry,) = _scan(models).values()
        assert entry.ctime == os.stat(models / "d").st_ctime
    finally:
        # pytest's own clean-up of old tmp_paths recurses, and cannot remove this tree.
        subprocess.run(["rm", "-rf", "--", str(models / "d")], check=True)


@root_only
def test_mount_options_are_read_for_a_mount_point_with_a_space(tmp_path: Path) -> None:
    from ocrd.fs.procfs import mount_of

    mnt = tmp_path / "with space"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,noatime", "x", str(mnt)], check=True)
    try:
        (mnt / "models").mkdir()
        found = mount_of(os.fsencode(mnt / "models"))
        assert found is not None
        assert (found.point, found.fstype, found.atime) == (os.fsencode(mnt), "tmpfs", "noatime")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
