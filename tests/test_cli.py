"""ocrd/cli.py: the one-shot commands, run as the real ``ocrd`` command against tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OcrdRunner, make_file, snapshot, write_config

DAY = 86400

# The files are made now with old mtimes: "timestamp" ages them by mtime, as if they had been
# in model_dir that long (test_arrival.py covers the default, "arrival").
CONFIG = """\
model_dir = "models"
[retention]
prefixes = ["old_"]
max_age = "30d"
age_from = "timestamp"
whitelist = ["*.keep"]
[watch]
settle = "0s"
[engine]
enabled = false
"""

# raw name → (as displayed, verdict, rule, size)
FILES: dict[bytes, tuple[str, str, str | None, int]] = {
    b"old_a.bin": ("old_a.bin", "delete", "prefix", 4),
    b"ancient.bin": ("ancient.bin", "delete", "max_age", 7),
    b"fresh.bin": ("fresh.bin", "keep", None, 1),
    b"old_b.keep": ("old_b.keep", "protected", "whitelist", 2),
    b"link": ("link", "keep", None, len("old_a.bin")),
    b"sub/old_c.bin": ("sub/old_c.bin", "delete", "prefix", 3),
    b"bad\xff\n.bin": ("bad\\xff\\n.bin", "delete", "max_age", 5),
}
EXPECTED = {shown: (verdict, rule, size) for shown, verdict, rule, size in FILES.values()}
RAW = {shown: raw for raw, (shown, *_) in FILES.items()}
TO_DELETE = {p for p, (verdict, _, _) in EXPECTED.items() if verdict == "delete"}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    models = tmp_path / "conf" / "models"
    models.mkdir(parents=True)
    make_file(models, b"old_a.bin", b"aaaa")
    make_file(models, b"ancient.bin", b"ancient", age_s=40 * DAY)
    make_file(models, b"fresh.bin", b"f")
    make_file(models, b"old_b.keep", b"kk", age_s=40 * DAY)
    (models / "link").symlink_to("old_a.bin")
    make_file(models, b"sub/old_c.bin", b"ccc")
    make_file(models, b"bad\xff\n.bin", b"bad!!", age_s=40 * DAY)
    return write_config(tmp_path / "conf", CONFIG)


def models_of(config: Path) -> Path:
    return config.parent / "models"


def run_json(run_ocrd: OcrdRunner, *args: str | os.PathLike[str]) -> Any:
    result = run_ocrd(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    assert result.stdout.count("\n") == 1, "one JSON document on one line"
    return json.loads(result.stdout)


def test_list_text(config: Path, run_ocrd: OcrdRunner) -> None:
    result = run_ocrd("list", "-c", config)
    assert result.returncode == 0, result.stderr
    header, *rows, summary = result.stdout.splitlines()
    assert header.split()[:4] == ["VERDICT", "SIZE", "AGE", "RULE"]
    assert len(rows) == len(EXPECTED)
    for path, (verdict, rule, _) in EXPECTED.items():
        (row,) = [r for r in rows if f"  {path}  (" in r]
        assert row.split()[0] == verdict.upper()
        assert row.split()[4] == (rule or "-")  # VERDICT, size and unit, AGE, RULE
    assert summary.startswith(f"{len(EXPECTED)} file(s): ")
    assert "delete 4 " in summary


def test_list_json(config: Path, run_ocrd: OcrdRunner) -> None:
    rows = run_json(run_ocrd, "list", "-c", config, "--json")
    assert isinstance(rows, list)
    by_path = {row["path"]: row for row in rows}
    assert len(by_path) == len(rows) == len(EXPECTED)
    for path, (verdict, rule, size) in EXPECTED.items():
        row = by_path[path]
        assert {"path", "size", "mtime", "age_s", "verdict", "rule"} <= set(row)
        assert (row["verdict"], row["rule"], row["size"]) == (verdict, rule, size), path
        raw = os.path.join(os.fsencode(models_of(config)), RAW[path])
        assert row["mtime"] == os.lstat(raw).st_mtime
        assert isinstance(row["age_s"], float | int)
    assert abs(by_path["ancient.bin"]["age_s"] - 40 * DAY) < 600
    assert 0 <= by_path["fresh.bin"]["age_s"] < 600


def test_list_shows_settling_files(tmp_path: Path, run_ocrd: OcrdRunner) -> None:
    models = tmp_path / "models"
    make_file(models, b"old_new.bin")
    config = write_config(
        tmp_path, 'model_dir = "models"\n[retention]\nprefixes = ["old_"]\n[watch]\nsettle = "1h"\n'
    )
    (row,) = run_json(run_ocrd, "list", "-c", config, "--json")
    assert (row["path"], row["verdict"], row["rule"]) == ("old_new.bin", "settling", None)


def test_clean_json_deletes_and_reports(config: Path, run_ocrd: OcrdRunner) -> None:
    models = models_of(config)
    report = run_json(run_ocrd, "clean", "-c", config, "--json")
    assert set(report["deleted"]) == TO_DELETE
    assert len(report["deleted"]) == len(TO_DELETE)
    assert report["freed_bytes"] == sum(EXPECTED[p][2] for p in TO_DELETE)
    assert report["dry_run"] is False
    assert sorted(os.listdir(models)) == ["fresh.bin", "link", "old_b.keep"]  # sub/ emptied, gone

    again = run_json(run_ocrd, "clean", "-c", config, "--json")
    assert (again["deleted"], again["freed_bytes"]) == ([], 0)


def test_clean_text(config: Path, run_ocrd: OcrdRunner) -> None:
    result = run_ocrd("clean", "-c", config)
    assert result.returncode == 0, result.stderr
    *lines, summary = result.stdout.splitlines()
    assert sorted(lines) == sorted(f"deleted {p}" for p in TO_DELETE)
    assert summary.startswith(f"deleted {len(TO_DELETE)} file(s), ")


@pytest.mark.parametrize("as_json", [True, False])
def test_clean_dry_run_changes_nothing(config: Path, run_ocrd: OcrdRunner, as_json: bool) -> None:
    before = snapshot(models_of(config))
    result = run_ocrd("clean", "-c", config, "--dry-run", *(["--json"] if as_json else []))
    assert result.returncode == 0, result.stderr
    if as_json:
        report = json.loads(result.stdout)
        assert report["dry_run"] is True
        assert set(report["deleted"]) == TO_DELETE
        assert report["freed_bytes"] == sum(EXPECTED[p][2] for p in TO_DELETE)
    else:
        *lines, summary = result.stdout.splitlines()
        assert sorted(lines) == sorted(f"would delete {p}" for p in TO_DELETE)
        assert summary.startswith(f"would delete {len(TO_DELETE)} file(s)")
    assert snapshot(models_of(config)) == before


def test_clean_honours_dry_run_in_config(config: Path, run_ocrd: OcrdRunner) -> None:
    body = CONFIG.replace("[retention]\n", "[retention]\ndry_run = true\n")
    write_config(config.parent, body)
    before = snapshot(models_of(config))
    report = run_json(run_ocrd, "clean", "-c", config, "--json")
    assert report["dry_run"] is True
    assert set(report["deleted"]) == TO_DELETE
    assert snapshot(models_of(config)) == before


@pytest.mark.parametrize("command", [["list"], ["list", "--json"], ["clean"], ["clean", "--json"]])
def test_invalid_config_exits_78_and_touches_nothing(
    config: Path, run_ocrd: OcrdRunner, command: list[str]
) -> None:
    write_config(config.parent, "surprise = 1\n" + CONFIG)
    before = snapshot(models_of(config))
    result = run_ocrd(*command, "-c", config)
    assert result.returncode == 78
    assert result.stdout == ""
    assert result.stderr == f"{config}: at 'surprise': unknown key\n"
    assert snapshot(models_of(config)) == before


def test_version(run_ocrd: OcrdRunner) -> None:
    result = run_ocrd("--version")
    assert (result.returncode, result.stdout) == (0, f"ocrd {version('ocrd')}\n")


def test_python_dash_m_ocrd(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ocrd", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert (result.returncode, result.stdout) == (0, f"ocrd {version('ocrd')}\n")


# --- every column escaped ----------------------------------------------------------------------

HOSTILE = [
    b"m-v1.bin\nPROTECTED         0 B     0s  whitelist     1  forged.bin  (matches '*')  x",
    b"\x1b[31mred-v2.bin",  # ESC: a terminal would turn the rest red
    b"cr\rover-v3.bin",  # CR: a terminal would overwrite the line's start
    b"tab\there-v1.bin",
    "ls\u2028sep-v1.bin".encode(),  # a line separator to some viewers
    "bidi\u202eevil-v1.bin".encode(),  # right-to-left override
    b"\xff\x85-v1.bin",  # not UTF-8
    b"back\\nslash-v1.bin",  # a backslash and an n: must not read as the newline above
]


@pytest.mark.parametrize("family", [None, "^(?P<family>[^-]*)-v(?P<version>[0-9]+)"])
def test_every_column_of_the_audit_is_escaped(
    tmp_path: Path, run_ocrd: OcrdRunner, family: str | None
) -> None:
    """Hostile names in every field a line shows (path, family, reason, prefix, whitelist
    pattern): each file is one line, every line printable, no line forged."""
    models = tmp_path / "models"
    for name in HOSTILE:
        make_file(models, name, b"x", age_s=40 * DAY)
    make_file(models, b"old_\x1b]0;title\x07.bin", b"x")
    retention = (
        'keep_newest = 1\nallow_delete_all = true\nprefixes = ["old_", "cr\\r"]\n'
        'whitelist = ["\\u001b[[]31m*"]\n'
    )
    if family is not None:
        retention += f"family = '{family}'\n"
    path = write_config(
        tmp_path, f'model_dir = "models"\n[retention]\n{retention}[watch]\nsettle = "0s"\n'
    )
    listed = run_ocrd("list", "-c", path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    assert len(lines) == 1 + len(HOSTILE) + 1 + 1  # header, files, summary
    for line in lines:
        assert line.isprintable(), line
    protected = [x for x in lines if x.startswith("PROTECTED")]
    assert len(protected) == 1
    assert "\\x1b[31mred-v2.bin" in protected[0]
    rows = json.loads(run_ocrd("list", "--json", "-c", path).stdout)
    for row in rows:
        for key in ("path", "family", "reason", "rank_reason"):
            assert row[key] is None or row[key].isprintable(), (key, row[key])
    for args in (["--dry-run"], []):
        cleaned = run_ocrd("clean", *args, "-c", path)
        assert cleaned.returncode == 0, cleaned.stderr
        out = cleaned.stdout.split("\n")[:-1]
        assert all(line.isprintable() for line in out), out
        assert len(out) == len([x for x in lines if x.startswith("DELETE")]) + 1
