"""The daemon's reconciliation of watcher hints with the disk, on real files, no subprocess."""

from __future__ import annotations

from pathlib import Path

from ocrd.config import validate
from ocrd.daemon import Daemon
from ocrd.notify import Notifier
from ocrd.watch import Changes


def _daemon(tmp_path: Path) -> Daemon:
    (tmp_path / "models").mkdir()
    config = validate(
        {"model_dir": "models", "engine": {"enabled": False}, "watch": {"settle": "0s"}},
        tmp_path / "config.toml",
    )
    return Daemon(config, notifier=Notifier(env={}))


def _changes(files: set[bytes] | None = None, dirs: set[bytes] | None = None) -> Changes:
    c = Changes()
    c.files |= files or set()
    c.dirs |= dirs or set()
    return c


def test_a_path_reported_as_a_directory_that_is_a_file_is_indexed_as_a_file(
    tmp_path: Path,
) -> None:
    """Polling reports a reused inode as a move; directory d05 'moved' to file d09/old_9."""
    d = _daemon(tmp_path)
    (tmp_path / "models" / "d09").mkdir()
    (tmp_path / "models" / "d09" / "old_9").write_bytes(b"x")
    touched = d._refresh(_changes(dirs={b"d05", b"d09/old_9"}))
    assert touched == {b"d09/old_9"}
    entry = d.index.get(b"d09/old_9")
    assert entry is not None
    assert entry.size == 1


def test_a_path_reported_as_a_file_that_is_a_directory_is_walked(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    sub = tmp_path / "models" / "new"
    (sub / "deeper").mkdir(parents=True)
    (sub / "deeper" / "m.bin").write_bytes(b"12")
    touched = d._refresh(_changes(files={b"new"}))
    assert touched == {b"new/deeper/m.bin"}
    assert set(d.dirs) == {b"new", b"new/deeper"}


def test_a_directory_that_vanished_takes_its_files_out_of_the_index(tmp_path: Path) -> None:
    d = _daemon(tmp_path)
    sub = tmp_path / "models" / "gone"
    sub.mkdir()
    (sub / "a.bin").write_bytes(b"a")
    d._refresh(_changes(dirs={b"gone"}))
    assert b"gone/a.bin" in d.index
    (sub / "a.bin").unlink()
    sub.rmdir()
    (tmp_path / "models" / "gone").write_bytes(b"now a file")  # same name, now a file
    touched = d._refresh(_changes(files={b"gone"}))
    assert touched == {b"gone"}
    assert b"gone/a.bin" not in d.index
    assert b"gone" not in d.dirs
