"""ocrd/ops/outcomes.py: each deletion outcome becomes one log line and one count, the same for
``ocrd clean`` and the daemon."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from ocrd.config.schema import Retention
from ocrd.fs.inventory import FileEntry
from ocrd.fs.scan import scan
from ocrd.ops.delete import apply
from ocrd.ops.outcomes import Outcome, Recorder, Status
from ocrd.rules.decision import Decision, Verdict
from ocrd.rules.retention import Rules, plan
from tests.conftest import make_file


def _decision(path: bytes, size: int = 7) -> Decision:
    entry = FileEntry(path, size, 0.0, 0.0, 0.0, 1, 1, False)
    return Decision(entry, Verdict.DELETE, "prefix", "name starts with 'old_'")


def test_each_status_is_one_line_and_one_count() -> None:
    recorder = Recorder()
    outcomes = [
        Outcome(_decision(b"old_a"), Status.DELETED, freed=7),
        Outcome(_decision(b"old_b"), Status.WOULD_DELETE),
        Outcome(_decision(b"old_c"), Status.SKIPPED, "in_use"),
        Outcome(_decision(b"old_d"), Status.SKIPPED, "engine_busy"),
        Outcome(_decision(b"old_\n"), Status.FAILED, "[Errno 1] Operation not permitted"),
    ]
    with capture_logs() as logs:
        for o in outcomes:
            recorder.record(o)
    assert [(e["event"], e["log_level"], e["path"]) for e in logs] == [
        ("model_deleted", "info", "old_a"),
        ("model_would_be_deleted", "info", "old_b"),
        ("deletion_skipped", "info", "old_c"),
        ("deletion_skipped", "warning", "old_d"),
        ("deletion_failed", "error", "old_\\n"),  # any name, on one unambiguous line
    ]
    assert (logs[0]["size"], logs[0]["rule"], logs[1]["size"]) == (7, "prefix", 7)
    assert (logs[2]["reason"], logs[4]["error"]) == ("in_use", "[Errno 1] Operation not permitted")
    assert all("attempt" not in e for e in logs)
    t = recorder.totals.since_start
    assert (t.deleted, t.freed, t.would_delete, t.would_free, t.failed) == (1, 7, 1, 7, 1)
    assert t.skipped == {"in_use": 1, "engine_busy": 1}
    assert recorder.totals.deleted_by_rule == {"prefix": 1}
    assert recorder.kept == []  # counts only, unless asked to keep


def test_a_retry_is_said_with_the_outcome() -> None:
    recorder = Recorder()
    with capture_logs() as logs:
        recorder.record(Outcome(_decision(b"x"), Status.SKIPPED, "in_use"), retry=(2, 60.0))
        recorder.record(Outcome(_decision(b"y"), Status.FAILED, "EPERM"), retry=(1, 30.0))
    assert [(e["attempt"], e["retry_in_s"]) for e in logs] == [(2, 60.0), (1, 30.0)]


def test_a_real_pass_is_recorded_as_clean_reports_it(tmp_path: Path) -> None:
    """apply() on real files: one file deleted, one gone before its turn (vanished)."""
    models = tmp_path / "models"
    models.mkdir()
    make_file(models, b"old_a.bin", b"12345", age_s=3600)
    make_file(models, b"old_b.bin", b"123", age_s=3600)
    make_file(models, b"keep.bin", b"1", age_s=3600)
    the_plan = plan(scan(models), Rules.from_config(Retention(prefixes=["old_"]), 0.0), 0.0)
    (models / "old_b.bin").unlink()
    recorder = Recorder(keep=True)
    with capture_logs() as logs:
        for o in apply(the_plan, str(models)):
            recorder.record(o)
    assert sorted((e["event"], e["path"]) for e in logs) == [
        ("deletion_skipped", "old_b.bin"),
        ("model_deleted", "old_a.bin"),
    ]
    assert sorted((o.decision.entry.path, o.status) for o in recorder.kept) == [
        (b"old_a.bin", Status.DELETED),
        (b"old_b.bin", Status.SKIPPED),
    ]
    t = recorder.totals.since_start
    assert (t.deleted, t.freed, dict(t.skipped)) == (1, 5, {"vanished": 1})
    assert sorted(p.name for p in models.iterdir()) == ["keep.bin"]
