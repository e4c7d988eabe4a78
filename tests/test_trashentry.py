"""ocrd/fs/trashentry.py: one entry of the trash on disk, its record and its file, on real files."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocrd.fs.place import DIR_FLAGS
from ocrd.fs.trashentry import (
    DATA,
    ENTRY,
    MAX_RECORD,
    RECORD,
    clear_entry,
    iso,
    load_record,
    new_id,
    read_entry,
    taken,
    write_record,
)


class Keeper:
    """Gives records to no one (the trash's own() when ocrd's user owns it)."""

    def own(self, fd: int) -> None:
        pass


@pytest.fixture
def entry_dir(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "e").mkdir()
    fd = os.open(tmp_path / "e", DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def test_a_record_written_is_read_back(tmp_path: Path, entry_dir: int) -> None:
    write_record(entry_dir, RECORD, {"v": 1, "rule": "max_age"}, Keeper())
    assert load_record(entry_dir, RECORD) == {"v": 1, "rule": "max_age"}
    assert (tmp_path / "e/entry.json").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):  # a record is never written over
        write_record(entry_dir, RECORD, {}, Keeper())


@pytest.mark.parametrize("damage", ["missing", "not json", "a list", "too large", "a symlink"])
def test_a_damaged_record_reads_as_empty(tmp_path: Path, entry_dir: int, damage: str) -> None:
    path = tmp_path / "e/entry.json"
    if damage == "not json":
        path.write_bytes(b"{")
    elif damage == "a list":
        path.write_text("[1]")
    elif damage == "too large":
        text = json.dumps({"pad": ""})  # valid JSON, one byte over the bound
        path.write_text(json.dumps({"pad": "x" * (MAX_RECORD + 1 - len(text))}))
    elif damage == "a symlink":
        (tmp_path / "real.json").write_text('{"v": 1}')
        path.symlink_to(tmp_path / "real.json")
    assert load_record(entry_dir, RECORD) == {}


def test_an_entry_is_its_data_and_its_record(tmp_path: Path, entry_dir: int) -> None:
    (tmp_path / "e/data").write_bytes(b"12345")
    record = {"path": "ZC9vbGRfYQ==", "rule": "max_age", "deleted_at": 10.0, "purge_at": 70.0}
    write_record(entry_dir, RECORD, record, Keeper())
    e = read_entry(b"id", entry_dir)
    assert e is not None
    assert (e.path, e.size, e.rule, e.deleted_at, e.purge_at) == (b"d/old_a", 5, "max_age", 10, 70)
    assert e.due(0, grace=30) == 40  # a shortened grace brings the purge forward
    assert e.rel() == b".ocrd-trash/id/data"


def test_an_unreadable_record_keeps_the_file_and_never_names_a_path(
    tmp_path: Path, entry_dir: int
) -> None:
    (tmp_path / "e/data").write_bytes(b"x")
    (tmp_path / "e/entry.json").write_text('{"path": "not base64!", "rule": 3}')
    e = read_entry(b"id", entry_dir)
    assert e is not None
    assert (e.path, e.rule, e.purge_at) == (None, None, math.inf)


def test_an_entry_without_its_data_is_debris_and_cleared(tmp_path: Path, entry_dir: int) -> None:
    write_record(entry_dir, RECORD, {"v": 1}, Keeper())
    assert read_entry(b"e", entry_dir) is None
    trash_fd = os.open(tmp_path, DIR_FLAGS)
    try:
        clear_entry(entry_dir, trash_fd, b"e")
    finally:
        os.close(trash_fd)
    assert not (tmp_path / "e").exists()


def test_an_entry_with_its_data_is_never_cleared(tmp_path: Path, entry_dir: int) -> None:
    (tmp_path / "e/data").write_bytes(b"x")
    write_record(entry_dir, RECORD, {"v": 1}, Keeper())
    trash_fd = os.open(tmp_path, DIR_FLAGS)
    try:
        clear_entry(entry_dir, trash_fd, b"e")
    finally:
        os.close(trash_fd)
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["data", "entry.json"]


def test_taken_looks_without_following_links(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f").write_bytes(b"")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    fd = os.open(tmp_path, DIR_FLAGS)
    try:
        assert taken(fd, b"d/f")
        assert not taken(fd, b"d/g")
        assert not taken(fd, b"nowhere/g")
        assert taken(fd, b"link/g")  # a link on the way is something in the way
    finally:
        os.close(fd)


def test_ids_match_the_entry_name_and_times_read_as_utc() -> None:
    assert ENTRY.fullmatch(new_id(1796524560.123456))
    assert new_id(1796524560.5).startswith(b"20261206T023600.500000Z-")
    assert iso(1796524560.5) == "2026-12-06T02:36:00Z"
    assert iso(1796524560.5, up=True) == "2026-12-06T02:36:01Z"
    assert DATA == b"data"
