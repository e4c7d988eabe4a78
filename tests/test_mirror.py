"""ocrd/watch/mirror.py: model_dir as the daemon knows it, brought up to date from the disk rather
than from what events claim; on real files, no subprocess."""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ocrd.base.clock import FakeClock
from ocrd.config.schema import Watch
from ocrd.fs.inventory import FileEntry
from ocrd.watch.mirror import Mirror, Root, Scan
from ocrd.watch.observer import Changes


@contextmanager
def polled(tmp_path: Path, clock: FakeClock) -> Iterator[Mirror]:
    """A Mirror of tmp_path/models (made here), polling, settle 0 s, stopped afterwards."""
    (tmp_path / "models").mkdir()
    m = Mirror(
        tmp_path / "models",
        Watch.model_validate({"settle": "0s", "observer": "polling"}),
        clock,
        wake=lambda: None,
        tick=lambda: False,
    )
    try:
        yield m
    finally:
        m.watching.stop()


@pytest.fixture
def mirror(tmp_path: Path, log_out: io.StringIO) -> Iterator[Mirror]:
    """Its log goes to ``log_out``, whatever stream an earlier test left the log on."""
    with polled(tmp_path, FakeClock()) as m:
        yield m


def _changes(files: set[bytes] | None = None, dirs: set[bytes] | None = None) -> Changes:
    c = Changes()
    c.files |= files or set()
    c.dirs |= dirs or set()
    return c


def test_a_path_reported_as_a_directory_that_is_a_file_is_indexed_as_a_file(
    tmp_path: Path, mirror: Mirror
) -> None:
    """Polling reports a reused inode as a move; directory d05 'moved' to file d09/old_9."""
    (tmp_path / "models" / "d09").mkdir()
    (tmp_path / "models" / "d09" / "old_9").write_bytes(b"x")
    done = mirror.refresh(_changes(dirs={b"d05", b"d09/old_9"}))
    assert done.touched == {b"d09/old_9"}
    entry = mirror.index.get(b"d09/old_9")
    assert entry is not None
    assert entry.size == 1


def test_a_path_reported_as_a_file_that_is_a_directory_is_walked(
    tmp_path: Path, mirror: Mirror
) -> None:
    sub = tmp_path / "models" / "new"
    (sub / "deeper").mkdir(parents=True)
    (sub / "deeper" / "m.bin").write_bytes(b"12")
    done = mirror.refresh(_changes(files={b"new"}))
    assert done.touched == {b"new/deeper/m.bin"}
    assert set(mirror.directories) == {b"new", b"new/deeper"}


def test_a_directory_that_vanished_takes_its_files_out_of_the_index(
    tmp_path: Path, mirror: Mirror
) -> None:
    sub = tmp_path / "models" / "gone"
    sub.mkdir()
    (sub / "a.bin").write_bytes(b"a")
    assert mirror.refresh(_changes(dirs={b"gone"})).touched == {b"gone/a.bin"}
    assert b"gone/a.bin" in mirror.index
    (sub / "a.bin").unlink()
    sub.rmdir()
    (tmp_path / "models" / "gone").write_bytes(b"now a file")  # same name, now a file
    done = mirror.refresh(_changes(files={b"gone"}))
    assert done.touched == {b"gone"}
    assert b"gone/a.bin" not in mirror.index
    assert b"gone" not in mirror.directories
    assert done.forgotten == 1  # the one file indexed below it went with the directory


def test_a_file_that_went_is_reported_gone(tmp_path: Path, mirror: Mirror) -> None:
    model = tmp_path / "models" / "m.bin"
    model.write_bytes(b"x")
    assert mirror.refresh(_changes(files={b"m.bin"})).touched == {b"m.bin"}
    model.unlink()
    done = mirror.refresh(_changes(files={b"m.bin"}))
    assert (done.touched, done.gone) == (set(), [b"m.bin"])
    assert b"m.bin" not in mirror.index


def test_a_full_scan_yields_batches_and_replaces_what_the_mirror_held(
    tmp_path: Path, mirror: Mirror
) -> None:
    models = tmp_path / "models"
    (models / "a" / "b").mkdir(parents=True)
    for rel in ("top.bin", "a/one.bin", "a/b/two.bin"):
        (models / rel).write_bytes(b"12")
    mirror.index.put(_stale())
    mirror.pending.add(b"stale.bin")
    scan = mirror.scan()
    assert mirror.pending == set()
    batches = list(scan)
    assert sorted(len(b) for b in batches) == [1, 1, 1]  # one directory's files at a time
    assert b"stale.bin" in mirror.index  # nothing replaced until adopted
    mirror.adopt(scan)
    assert sorted(e.path for e in mirror.entries()) == [b"a/b/two.bin", b"a/one.bin", b"top.bin"]
    assert set(mirror.directories) == {b"", b"a", b"a/b"}
    assert mirror.index.files == 3


def test_the_root_vanishing_and_returning_is_noticed_once_each(
    tmp_path: Path, mirror: Mirror
) -> None:
    models = tmp_path / "models"
    (models / "m.bin").write_bytes(b"x")
    mirror.arm()
    mirror.adopt(_scanned(mirror))
    assert mirror.check_root() is Root.OK
    os.rename(models, tmp_path / "away")
    assert mirror.check_root() is Root.VANISHED
    assert (mirror.missing, mirror.index.files) == (True, 0)
    assert mirror.check_root() is Root.MISSING
    # A symlink put in its place is not model_dir, whatever it points to.
    os.symlink(tmp_path / "away", models)
    assert mirror.check_root() is Root.MISSING
    models.unlink()
    os.rename(tmp_path / "away", models)
    assert mirror.check_root() is Root.RETURNED
    assert not mirror.missing
    assert mirror.check_root() is Root.OK


def _scanned(mirror: Mirror) -> Scan:
    scan = mirror.scan()
    for _ in scan:
        pass
    return scan


def _stale() -> FileEntry:
    return FileEntry(b"stale.bin", 1, 0.0, 0.0, 0.0, 1, 1, False)


# -- arrivals: what the mirror saw arrive, kept whatever happens inside ---------------------------


@pytest.fixture
def later(tmp_path: Path, log_out: io.StringIO) -> Iterator[Mirror]:
    """A mirror whose clock reads a day ahead: what it saw arrive dates a file later than its
    own ctime, visibly."""
    with polled(tmp_path, FakeClock(wall=time.time() + 86_400)) as m:
        yield m


def _ctimes(mirror: Mirror) -> dict[bytes, float]:
    return {e.path: e.ctime for e in mirror.entries()}


def test_a_directory_seen_arriving_keeps_its_arrival_whatever_changes_inside(
    tmp_path: Path, later: Mirror
) -> None:
    models = tmp_path / "models"
    later.arm()
    later.adopt(_scanned(later))
    (models / "pkg" / "sub").mkdir(parents=True)
    (models / "pkg" / "sub" / "a.bin").write_bytes(b"a")
    (models / "empty").mkdir()
    seen_at = later.clock.time()
    later.refresh(_changes(dirs={b"pkg", b"empty"}))
    assert _ctimes(later)[b"pkg/sub/a.bin"] == seen_at
    assert later.arrivals.dirs == {b"pkg": seen_at}  # an empty directory costs nothing
    assert isinstance(later.clock, FakeClock)
    later.clock.advance(60)
    later.refresh(_changes(dirs={b"pkg"}))  # named again, the same inode: it did not arrive again
    assert later.arrivals.dirs == {b"pkg": seen_at}
    # Its contents change (a marker written, a file deleted): the sign on disk is gone.
    (models / "pkg" / ".complete").write_bytes(b"")
    st = os.stat(models / "pkg")
    assert st.st_mtime == st.st_ctime
    for _ in range(3):  # full scans, months apart, whatever the rules: it stays
        later.clock.advance(40 * 86_400)
        later.adopt(_scanned(later))
        assert _ctimes(later)[b"pkg/sub/a.bin"] == seen_at
    shutil.rmtree(models / "pkg")
    later.adopt(_scanned(later))
    assert later.arrivals.dirs == {}  # gone: forgotten


def test_a_full_scan_dates_a_directory_it_finds_new(tmp_path: Path, later: Mirror) -> None:
    """A directory that arrived while no event said so (lost, or taken by the scan itself)."""
    models = tmp_path / "models"
    (models / "there" / "x").mkdir(parents=True)
    (models / "there" / "x" / "old.bin").write_bytes(b"o")
    later.arm()
    later.adopt(_scanned(later))  # the first scan: nothing is new to a mirror that held nothing
    assert later.arrivals.dirs == {}
    (models / "pkg").mkdir()
    (models / "pkg" / "a.bin").write_bytes(b"a")
    found_at = later.clock.time()
    scan = later.scan()
    planned = {e.path: e.ctime for batch in scan for e in batch}  # as the pass plans them
    assert planned[b"pkg/a.bin"] == found_at
    assert planned[b"there/x/old.bin"] < found_at
    later.adopt(scan)
    assert later.arrivals.dirs == {b"pkg": found_at}


def test_a_directory_arriving_below_one_named_late_is_dated(tmp_path: Path, later: Mirror) -> None:
    """Events come late: the walk for ``a`` found ``a/b`` already, and ``a/b``'s own event
    arrives with that of a package moved into it since. Walking ``a/b`` again (no arrival:
    the mirror holds it as this inode) finds the package, which did arrive."""
    models = tmp_path / "models"
    later.arm()
    later.adopt(_scanned(later))
    (models / "a" / "b").mkdir(parents=True)
    later.refresh(_changes(dirs={b"a"}))
    assert later.arrivals.dirs == {}  # empty: nothing to date
    (models / "a" / "b" / "pkg" / "sub").mkdir(parents=True)
    (models / "a" / "b" / "pkg" / "sub" / "m.bin").write_bytes(b"m")
    seen_at = later.clock.time()
    later.refresh(_changes(dirs={b"a/b", b"a/b/pkg"}))
    assert later.arrivals.dirs == {b"a/b/pkg": seen_at}  # the topmost new one holding a file
    assert _ctimes(later)[b"a/b/pkg/sub/m.bin"] == seen_at


def test_a_file_whose_directory_came_unannounced_is_dated_with_that_directory(
    tmp_path: Path, mirror: Mirror
) -> None:
    """Polling reports a tree's files before its directories: a package moved in and written
    into at once (its directory's mtime past its ctime, so the directory itself no longer says
    it was moved) is dated at its sighting even when only a file's event has come so far."""
    models = tmp_path / "models"
    mirror.adopt(_scanned(mirror))
    staged = tmp_path / "staging" / "pkg"
    staged.mkdir(parents=True)
    (staged / "old_a.bin").write_bytes(b"a")
    os.utime(staged / "old_a.bin", (1_000_000, 1_000_000))
    os.rename(staged, models / "pkg")
    (models / "pkg" / "marker").write_bytes(b"m")  # the package's mtime moves past its ctime
    st = os.stat(models / "pkg")
    os.utime(models / "pkg", ns=(st.st_atime_ns, st.st_ctime_ns + 1_000_000_000))
    assert isinstance(mirror.clock, FakeClock)
    mirror.clock.wall = time.time() + 1000  # a sighting is told from the file's own times
    done = mirror.refresh(_changes(files={b"pkg/old_a.bin"}))
    assert done.touched == {b"pkg/old_a.bin", b"pkg/marker"}  # the directory was walked whole
    (entry,) = mirror.entries({b"pkg/old_a.bin"})
    assert entry.ctime >= mirror.clock.time()  # dated at its sighting, not by its own times
