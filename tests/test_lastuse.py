"""The last-use store on real files: identity and content stamp, restarts, renames, and every
way the state file can be unusable (an event and a fresh start, never a crash)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ocrd.base.clock import FakeClock
from ocrd.fs.inventory import FileEntry, entry_from_stat
from ocrd.fs.statefile import SCHEMA, default_path
from ocrd.watch.lastuse import LastUse


def _model(root: Path, rel: str, data: bytes = b"x" * 100) -> FileEntry:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return entry_from_stat(rel.encode(), path.lstat())


def _entry(root: Path, rel: str) -> FileEntry:
    return entry_from_stat(rel.encode(), (root / rel).lstat())


def _identify(root: Path) -> Any:
    def identify(rel: bytes) -> FileEntry | None:
        try:
            return entry_from_stat(rel, os.lstat(root / os.fsdecode(rel)))
        except FileNotFoundError:
            return None

    return identify


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    return root


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ocrd" / "state.db"


def test_default_path_prefers_systemd_then_xdg_then_home() -> None:
    assert default_path({"STATE_DIRECTORY": "/var/lib/ocrd:/var/lib/other"}) == Path(
        "/var/lib/ocrd/state.db"
    )
    assert default_path({"XDG_STATE_HOME": "/x/state", "HOME": "/h"}) == Path(
        "/x/state/ocrd/state.db"
    )
    # A relative XDG_STATE_HOME is invalid by the XDG spec: ignored.
    assert default_path({"XDG_STATE_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.local/state/ocrd/state.db"
    )
    assert default_path({"HOME": "/h"}) == Path("/h/.local/state/ocrd/state.db")


def test_missing_state_is_created_private_and_said(state: Path) -> None:
    with capture_logs() as logs:
        uses = LastUse.open(state)
    try:
        assert uses.on_disk
        assert state.is_file()
        assert state.stat().st_mode & 0o777 == 0o600
        assert state.parent.stat().st_mode & 0o777 == 0o700
        assert [e["event"] for e in logs] == ["state_created"]
    finally:
        uses.close()


def test_last_use_survives_a_restart(models: Path, state: Path) -> None:
    a = _model(models, "a.gguf")
    b = _model(models, "sub/b.gguf")
    clock = FakeClock()
    uses = LastUse.open(state, clock=clock)
    uses.saw(b"a.gguf", 1_000.0)
    uses.saw(b"a.gguf", 1_500.0)  # the latest wins
    assert uses.flush(_identify(models)) == 1
    assert uses.last_used(a) == 1_500.0
    uses.close()

    again = LastUse.open(state, clock=clock)
    try:
        assert again.last_used(a) == 1_500.0
        assert again.last_used(b) is None  # never seen used: the caller takes its arrival
    finally:
        again.close()


def test_a_rename_keeps_history(models: Path, state: Path) -> None:
    _model(models, "a.gguf")
    uses = LastUse.open(state)
    uses.saw(b"a.gguf", 1_000.0)
    uses.flush(_identify(models))
    uses.close()
    os.rename(models / "a.gguf", models / "renamed.gguf")
    again = LastUse.open(state)
    try:
        assert again.last_used(_entry(models, "renamed.gguf")) == 1_000.0
    finally:
        again.close()


def test_a_new_file_at_an_old_path_does_not_inherit(models: Path, state: Path) -> None:
    old = _model(models, "a.gguf")
    uses = LastUse.open(state)
    try:
        uses.saw(b"a.gguf", 1_000.0)
        uses.flush(_identify(models))
        # Another file takes the name (a new inode)...
        _model(models, "tmp", b"y" * 100)
        os.replace(models / "tmp", models / "a.gguf")
        new = _entry(models, "a.gguf")
        assert new.ino != old.ino
        assert uses.last_used(new) is None
        # ... and a file that reuses the very inode with other contents does not either.
        reused = old._replace(size=old.size + 1, mtime=old.mtime + 1)
        assert uses.last_used(reused) is None
    finally:
        uses.close()


def test_own_opens_are_discounted_and_notes_expire(models: Path, state: Path) -> None:
    a = _model(models, "a.gguf")
    clock = FakeClock()
    uses = LastUse.open(state, clock=clock)
    try:
        uses.own(b"a.gguf")  # ocrd is about to open it itself
        uses.saw(b"a.gguf", 1_000.0)  # ... and its own close comes back as an event
        uses.flush(_identify(models))
        assert uses.last_used(a) is None
        uses.saw(b"a.gguf", 2_000.0)  # someone else's: counts
        uses.flush(_identify(models))
        assert uses.last_used(a) == 2_000.0
        # A note whose event never came (lost) does not eat a later real use.
        uses.own(b"a.gguf")
        clock.advance(60)
        uses.saw(b"a.gguf", 3_000.0)
        uses.flush(_identify(models))
        assert uses.last_used(a) == 3_000.0
    finally:
        uses.close()


def test_prune_and_forget(models: Path, state: Path) -> None:
    a = _model(models, "a.gguf")
    b = _model(models, "b.gguf")
    uses = LastUse.open(state)
    uses.saw(b"a.gguf", 1.0)
    uses.saw(b"b.gguf", 2.0)
    uses.flush(_identify(models))
    uses.prune({(b.dev, b.ino)})
    uses.forget([b])
    uses.flush(_identify(models))
    uses.close()
    again = LastUse.open(state)
    try:
        assert again.last_used(a) is None
        assert again.last_used(b) is None
        assert len(again) == 0
    finally:
        again.close()


def test_a_corrupt_state_is_moved_aside_and_started_afresh(models: Path, state: Path) -> None:
    state.parent.mkdir(parents=True, mode=0o700)
    state.parent.parent.chmod(0o755)
    state.write_bytes(b"this is not a database" * 100)
    state.chmod(0o600)
    a = _model(models, "a.gguf")
    with capture_logs() as logs:
        uses = LastUse.open(state)
    try:
        problem = [e for e in logs if e["event"] == "state_unusable"]
        assert problem, logs
        assert problem[0]["reason"] == "corrupt"
        assert problem[0]["log_level"] == "warning"
        assert (state.parent / "state.db.corrupt").read_bytes().startswith(b"this is not")
        assert uses.on_disk
        uses.saw(b"a.gguf", 5.0)
        uses.flush(_identify(models))
        assert uses.last_used(a) == 5.0
    finally:
        uses.close()


def test_a_newer_schema_is_left_alone_and_kept_in_memory(models: Path, state: Path) -> None:
    state.parent.mkdir(parents=True, mode=0o700)
    db = sqlite3.connect(state)
    db.execute(f"PRAGMA user_version = {SCHEMA + 1}")
    db.execute("CREATE TABLE future (x)")
    db.commit()
    db.close()
    state.chmod(0o600)
    before = state.read_bytes()
    a = _model(models, "a.gguf")
    with capture_logs() as logs:
        uses = LastUse.open(state)
    try:
        assert [(e["event"], e["reason"]) for e in logs] == [("state_unusable", "newer_version")]
        assert not uses.on_disk
        uses.saw(b"a.gguf", 5.0)
        uses.flush(_identify(models))
        assert uses.last_used(a) == 5.0  # still recorded, for this run
    finally:
        uses.close()
    assert state.read_bytes() == before


def test_a_state_another_ocrd_holds_is_locked(state: Path) -> None:
    first = LastUse.open(state)
    try:
        with capture_logs() as logs:
            second = LastUse.open(state)
        assert [(e["event"], e["reason"]) for e in logs] == [("state_unusable", "locked")]
        assert not second.on_disk
        second.close()
    finally:
        first.close()


def test_a_locked_database_at_flush_keeps_the_batch(models: Path, state: Path) -> None:
    a = _model(models, "a.gguf")
    uses = LastUse.open(state)
    try:
        blocker = sqlite3.connect(state, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        uses.saw(b"a.gguf", 7.0)
        with capture_logs() as logs:
            uses.flush(_identify(models), timeout=0.05)
        assert [e["event"] for e in logs if e["event"] != "use_recorded"] == ["state_write_failed"]
        assert uses.last_used(a) == 7.0  # in memory meanwhile
        blocker.execute("ROLLBACK")
        blocker.close()
        uses.flush(_identify(models))
    finally:
        uses.close()
    assert LastUse.read(state).last_used(a) == 7.0


@pytest.mark.parametrize("how", ["symlink", "others_write_dir", "others_write_file", "fifo"])
def test_an_unsafe_state_is_never_used(tmp_path: Path, state: Path, how: str) -> None:
    state.parent.mkdir(parents=True, mode=0o700)
    target = tmp_path / "elsewhere.db"
    target.write_bytes(b"precious")
    if how == "symlink":
        state.symlink_to(target)
    elif how == "others_write_dir":
        state.parent.chmod(0o777)
    elif how == "others_write_file":
        LastUse.open(state).close()
        state.chmod(0o666)
    else:
        os.mkfifo(state)
    with capture_logs() as logs:
        uses = LastUse.open(state)
    uses.close()
    assert [(e["event"], e["reason"]) for e in logs] == [("state_unusable", "unsafe")]
    assert not uses.on_disk
    assert target.read_bytes() == b"precious"


def test_read_only_never_creates_and_reads_while_the_daemon_holds_it(
    models: Path, state: Path
) -> None:
    a = _model(models, "a.gguf")
    absent = LastUse.read(state)
    assert absent.last_used(a) is None
    assert not state.exists()
    writer = LastUse.open(state)
    try:
        writer.saw(b"a.gguf", 9.0)
        writer.flush(_identify(models))
        # the daemon keeps its flock; a reader (ocrd list) still reads
        reader = LastUse.read(state)
        assert reader.last_used(a) == 9.0
        reader.saw(b"a.gguf", 10.0)
        with pytest.raises(RuntimeError):
            reader.flush(_identify(models))
    finally:
        writer.close()


def test_flock_is_on_the_state_file_itself(state: Path) -> None:
    uses = LastUse.open(state)
    try:
        fd = os.open(state, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        uses.close()


def test_cost_per_use_event_is_small(models: Path, state: Path) -> None:
    """1000 distinct files used once each, flushed in one batch: well under a millisecond
    per event (bench.budget measures it properly)."""
    for i in range(1000):
        _model(models, f"m{i}.gguf", b"")
    uses = LastUse.open(state)
    try:
        t0 = time.perf_counter()
        for i in range(1000):
            uses.saw(f"m{i}.gguf".encode(), float(i))
        uses.flush(_identify(models))
        per_event = (time.perf_counter() - t0) / 1000
    finally:
        uses.close()
    assert per_event < 1e-3
