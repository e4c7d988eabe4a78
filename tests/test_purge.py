"""Purging the trash (ocrd/ops/purge.py): after the grace and not before, never a file in use,
oldest first for the budget. Its crash safety is tested with the trash's (tests/test_trash.py)."""

from __future__ import annotations

import time
from pathlib import Path

from structlog.testing import capture_logs

from ocrd.fs import trash
from ocrd.ops import purge
from tests.conftest import make_file
from tests.test_trash import GRACE, entries, put
from tests.worlds import held


def test_purge_after_grace_and_not_before(models: Path) -> None:
    make_file(models, b"old_a", b"x" * 10)
    e = put(models, b"old_a")
    assert purge.purge_due(models, now=e.deleted_at + GRACE - 1, grace=GRACE).entries == []
    assert entries(models) == [e]
    with capture_logs() as logs:
        freed = purge.purge_due(models, now=e.deleted_at + GRACE, grace=GRACE)
    assert freed.entries == [e]
    assert freed.bytes == 10
    assert entries(models) == []
    assert [x for x in (models / ".ocrd-trash").iterdir()] == []
    [line] = [x for x in logs if x["event"] == "trash_purged"]
    assert line["path"] == "old_a"
    assert line["reason"] == "grace"


def test_a_shortened_grace_purges_sooner(models: Path) -> None:
    make_file(models, b"old_a")
    e = put(models, b"old_a")
    assert purge.purge_due(models, now=e.deleted_at + 1, grace=0.0).entries == [e]


def test_a_held_entry_is_not_purged(models: Path) -> None:
    make_file(models, b"old_a", b"x" * 10)
    e = put(models, b"old_a")
    with held(models / e.rel().decode(), "open"), capture_logs() as logs:
        freed = purge.purge_due(models, now=e.purge_at + 1, grace=GRACE)
    assert freed.entries == []
    assert freed.skipped == 1
    assert entries(models) == [e]
    [line] = [x for x in logs if x["event"] == "trash_purge_skipped"]
    assert line["reason"] == "in_use"


def test_free_empties_oldest_first_up_to_what_is_asked(models: Path) -> None:
    now = time.time()
    for i, name in enumerate([b"old_1", b"old_2", b"old_3"]):
        make_file(models, name, b"x" * 100)
        put(models, name, now=now - 1000 + i)
    assert trash.usage(models) == trash.Usage(300, 3)
    freed = purge.free(models, 150)
    assert [e.path for e in freed.entries] == [b"old_1", b"old_2"]
    assert freed.bytes == 200
    assert [e.path for e in entries(models)] == [b"old_3"]
