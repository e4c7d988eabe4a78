"""A model whose mtime is in the future (2100): settled from its ctime, deleted by its rules,
shown as "future" by list, and reported by the daemon once per file, not once per pass."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ocrd.daemon.skew import FutureMtimes
from ocrd.fs.inventory import FileEntry
from ocrd.rules.decision import Decision, Verdict
from tests.configs import config
from tests.conftest import OcrdRunner, StartOcrd

YEAR_2100 = 4_102_444_800.0


def skew_config(tmp_path: Path, rescan: str) -> Path:
    return config(tmp_path, retention={"max_age": "30d"}, watch={"settle": "1s", "rescan": rescan})


def from_the_future(path: Path, mtime: float = YEAR_2100) -> float:
    """Write ``path`` and set its mtime to ``mtime`` (atime too); its ctime, which only the
    kernel sets, is now."""
    path.write_bytes(b"m")
    os.utime(path, (mtime, mtime))
    return path.stat().st_ctime


def await_clock(wall: float) -> None:
    """The condition is the clock itself: settling ends when our clock passes ``wall``."""
    while (left := wall - time.time()) > 0:
        time.sleep(left)


def listed(run_ocrd: OcrdRunner, config: Path) -> dict[str, dict[str, object]]:
    result = run_ocrd("list", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    return {row["path"]: row for row in json.loads(result.stdout)}


def test_list_and_clean_apply_the_rules_to_a_file_from_2100_once_settled(
    tmp_path: Path, models: Path, run_ocrd: OcrdRunner
) -> None:
    config = skew_config(tmp_path, "10m")
    ctime = from_the_future(models / "old_future.bin")
    from_the_future(models / "future.bin")

    rows = listed(run_ocrd, config)
    if time.time() < ctime + 1.0:  # a loaded machine may already be past settle: fine too
        assert rows["old_future.bin"]["verdict"] == "settling"
        assert str(rows["old_future.bin"]["reason"]).startswith("mtime in the future; status ")
    await_clock(ctime + 1.0)

    rows = listed(run_ocrd, config)
    assert (rows["old_future.bin"]["verdict"], rows["old_future.bin"]["rule"]) == (
        "delete",
        "prefix",
    )
    # Its age would be negative: JSON says 0, the text column says "future"; max_age (30d) does
    # not apply to a file whose age has not begun, and nothing keeps it settling.
    assert rows["old_future.bin"]["age_s"] == 0.0
    assert rows["old_future.bin"]["mtime"] == YEAR_2100
    assert (rows["future.bin"]["verdict"], rows["future.bin"]["age_s"]) == ("keep", 0.0)
    text = run_ocrd("list", "-c", config)
    (line,) = [line for line in text.stdout.splitlines() if "old_future.bin" in line]
    assert line.split()[:4] == ["DELETE", "1", "B", "future"]

    result = run_ocrd("clean", "-c", config, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["deleted"] == ["old_future.bin"]
    assert not (models / "old_future.bin").exists()
    assert (models / "future.bin").exists()


def test_the_daemon_reports_a_future_mtime_once_per_file_not_once_per_pass(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    from_the_future(models / "future.bin")
    from_the_future(models / "old_future.bin")
    d = start_ocrd(skew_config(tmp_path, "1s"))
    d.note("READY=1")
    # Settled from its ctime one second later, then deleted by its prefix.
    deleted = d.event("model_deleted", path="old_future.bin")
    assert deleted["rule"] == "prefix"

    def future(path: str) -> list[dict[str, object]]:
        return [e for e in d.events if e.get("event") == "future_timestamp" and e["path"] == path]

    def rescans(n: int) -> None:
        start = d.names().count("scan_completed")
        d.wait_for(f"{n} rescans", lambda: d.names().count("scan_completed") >= start + n)

    rescans(3)
    (first,) = future("future.bin")
    assert (first["level"], first["mtime"]) == ("warning", YEAR_2100)
    assert len(future("old_future.bin")) == 1

    # Another future mtime is another report; so is the same file again once it was gone.
    from_the_future(models / "future.bin", YEAR_2100 + 86400)
    d.wait_for("a second report", lambda: len(future("future.bin")) == 2)
    assert future("future.bin")[1]["mtime"] == YEAR_2100 + 86400
    (models / "future.bin").unlink()
    rescans(2)  # the file is gone from a full scan: forgotten
    from_the_future(models / "future.bin", YEAR_2100 + 86400)
    d.wait_for("a third report", lambda: len(future("future.bin")) == 3)
    rescans(2)
    assert len(future("future.bin")) == 3
    assert d.stop()[0] == 0


def _decision(path: bytes, mtime: float) -> Decision:
    entry = FileEntry(path, 1, mtime, mtime, 1_700_000_000.0, 1, 1, False)
    return Decision(entry, Verdict.KEEP, None, "no rule applies")


def test_the_set_holds_only_files_whose_mtime_is_still_ahead_and_still_there() -> None:
    now = 1_700_000_000.0
    seen = FutureMtimes()
    seen.check([_decision(b"a", now + 10), _decision(b"b", now + 10), _decision(b"c", now)], now)
    assert len(seen) == 2
    seen.check([_decision(b"a", now + 10)], now + 11)  # its mtime has come: nothing to remember
    assert len(seen) == 1
    seen.keep_only({b"c"})  # b is gone
    assert len(seen) == 0
