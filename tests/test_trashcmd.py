"""``ocrd trash`` and ``ocrd restore`` as functions (ocrd/cli/trashcmd.py); tests/test_cli.py runs
them as commands."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from ocrd.cli import trashcmd
from ocrd.fs.place import pin
from tests.conftest import make_file
from tests.test_trash import GRACE, put


def test_show_json_has_the_contract_keys(models: Path) -> None:
    make_file(models, b"a/old_\n.bin", b"x" * 7)
    put(models, b"a/old_\n.bin", rule="max_age")
    out = io.StringIO()
    assert trashcmd.show(pin(models), as_json=True, grace=GRACE, out=out) == 0
    [row] = json.loads(out.getvalue())
    assert set(row) == {"path", "size", "rule", "deleted_at", "purge_at"}
    assert row["path"] == "a/old_\\n.bin"
    assert row["size"] == 7
    assert row["rule"] == "max_age"


def test_restore_is_all_or_nothing(models: Path) -> None:
    make_file(models, b"old_a", b"a")
    make_file(models, b"old_b", b"b")
    put(models, b"old_a")
    put(models, b"old_b")
    make_file(models, b"old_b", b"new b")
    err = io.StringIO()
    status = trashcmd.restore(
        pin(models), [b"old_a", b"old_b"], everything=False, after=None, grace=GRACE, err=err
    )
    assert status == trashcmd.EXIT_REFUSED
    assert not (models / "old_a").exists()
    assert (models / "old_b").read_bytes() == b"new b"
    assert "old_b" in err.getvalue()
    status = trashcmd.restore(
        pin(models), [b"old_a", b"nope"], everything=False, after=None, grace=GRACE, err=err
    )
    assert status == trashcmd.EXIT_NOT_IN_TRASH
    assert not (models / "old_a").exists()


def test_restore_takes_the_newest_entry_of_a_path(models: Path) -> None:
    make_file(models, b"old_a", b"first")
    put(models, b"old_a", now=time.time() - 100)
    make_file(models, b"old_a", b"second")
    put(models, b"old_a")
    assert trashcmd.restore(pin(models), [b"old_a"], everything=False, after=None, grace=GRACE) == 0
    assert (models / "old_a").read_bytes() == b"second"


def test_restore_all_since(models: Path) -> None:
    now = time.time()
    make_file(models, b"old_a", b"a")
    put(models, b"old_a", now=now - 7200)
    make_file(models, b"old_b", b"b")
    put(models, b"old_b", now=now - 60)
    after = trashcmd.since("1h", now=now)
    assert trashcmd.restore(pin(models), [], everything=True, after=after, grace=GRACE) == 0
    assert (models / "old_b").exists()
    assert not (models / "old_a").exists()


def test_since_reads_durations_and_times() -> None:
    assert trashcmd.since("-2h", now=10000.0) == 10000.0 - 7200
    assert trashcmd.since("2026-12-06T00:00:00Z") == 1796515200.0
    with pytest.raises(ValueError, match="neither"):
        trashcmd.since("yesterday")
