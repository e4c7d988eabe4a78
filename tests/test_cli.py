"""ocrd/cli/main.py: the one-shot commands, run as the real ``ocrd`` command against tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from ocrd.base import log
from ocrd.base.errors import EXIT_NOPERM
from ocrd.cli import main as cli
from ocrd.config import load as config_module
from tests import configs
from tests.conftest import OcrdRunner, make_file, snapshot, write_config
from tests.worlds import APP_UID, OCRD_UID, as_user, held, make_world, root_only

DAY = 86400


# The files are made now with old mtimes: "timestamp" ages them by mtime, as if they had been
# in model_dir that long (test_arrival.py covers the default, "arrival").
RULES = {"prefixes": ["old_"], "max_age": "30d", "age_from": "timestamp", "whitelist": ["*.keep"]}


def cli_config(directory: Path, **retention: object) -> Path:
    """RULES, and ``retention`` over them; the log format and rescan are the defaults."""
    return configs.config(
        directory, retention={**RULES, **retention}, watch={"rescan": None}, log=None
    )


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
    return cli_config(tmp_path / "conf")


def models_of(config: Path) -> Path:
    return config.parent / "models"


def run_json(run_ocrd: OcrdRunner, *args: str | os.PathLike[str], **how: Any) -> Any:
    result = run_ocrd(*args, **how)
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
    cli_config(config.parent, dry_run=True)
    before = snapshot(models_of(config))
    report = run_json(run_ocrd, "clean", "-c", config, "--json")
    assert report["dry_run"] is True
    assert set(report["deleted"]) == TO_DELETE
    assert snapshot(models_of(config)) == before


@pytest.mark.parametrize("command", [["list"], ["list", "--json"], ["clean"], ["clean", "--json"]])
def test_invalid_config_exits_78_and_touches_nothing(
    config: Path, run_ocrd: OcrdRunner, command: list[str]
) -> None:
    configs.config(config.parent, surprise=1)
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


# -- one verdict for one question: ``list`` and ``clean --dry-run`` --------------------------


@pytest.mark.parametrize(
    "extra",
    [{}, {"family": "^(?P<family>)"}],  # one family: the last-version floor weighs them all
    ids=["per-file rules", "rules over the whole plan"],
)
def test_list_and_clean_dry_run_agree_on_a_file_in_use(
    config: Path, run_ocrd: OcrdRunner, extra: dict[str, str]
) -> None:
    cli_config(config.parent, **extra)
    listed_free = {
        r["path"]: r["verdict"] for r in run_json(run_ocrd, "list", "-c", config, "--json")
    }
    models = models_of(config)
    with held(models / "old_a.bin", "open"):
        rows = run_json(run_ocrd, "list", "-c", config, "--json")
        report = run_json(run_ocrd, "clean", "-c", config, "--dry-run", "--json")
        text = run_ocrd("clean", "-c", config, "--dry-run")
    verdicts = {r["path"]: r["verdict"] for r in rows}
    assert verdicts["old_a.bin"] == "in_use"
    assert {"path": "old_a.bin", "reason": "in_use"} in report["skipped"]
    assert "old_a.bin" not in report["deleted"]
    # Every other file: "delete" in the list exactly when "would delete" in the dry run.
    assert set(report["deleted"]) == {p for p, v in verdicts.items() if v == "delete"}
    assert set(report["deleted"]) == {p for p, v in listed_free.items() if v == "delete"} - {
        "old_a.bin"
    }
    assert "skipped old_a.bin (in_use)" in text.stdout.splitlines()
    assert "would delete old_a.bin" not in text.stdout.splitlines()
    assert (models / "old_a.bin").exists()


# -- a user who cannot read model_dir --------------------------------------------------------


@root_only
@pytest.mark.parametrize("closed", ["model_dir", "its parent"])
@pytest.mark.parametrize(
    "command", [["check"], ["list"], ["list", "--json"], ["clean"], ["clean", "--dry-run"]]
)
def test_a_user_who_cannot_read_model_dir_is_told_what_to_do(
    closed: str, command: list[str]
) -> None:
    with make_world() as world:
        state = world.base / "state"
        models = state / "models"
        models.mkdir(parents=True)
        for directory in (state, models):
            os.chown(directory, OCRD_UID, OCRD_UID)
        (models if closed == "model_dir" else state).chmod(0o750)
        (models / "old_a.bin").write_bytes(b"a")
        config = world.config(model_dir=str(models))
        result = subprocess.run(
            [*as_user(APP_UID), *world.python, "-m", "ocrd", *command, "-c", str(config)],
            capture_output=True,
            text=True,
            env=world.env,
            cwd=world.base,
            timeout=60,
            check=False,
        )
        assert (models / "old_a.bin").exists()
    assert result.returncode == EXIT_NOPERM, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "Traceback" not in line
    assert str(models) in line
    # What to do: run it as the owner (sudo -u, the very command), or join the group.
    assert f"sudo -u '#{OCRD_UID}' ocrd {command[0]} -c {config}" in line, line
    assert f"gid {OCRD_UID}" in line, line


def test_exit_statuses_are_in_the_help(run_ocrd: OcrdRunner) -> None:
    text = run_ocrd("--help").stdout
    assert "\n  77  " in text
    assert "\n  78  " in text


# -- which config, without -c ------------------------------------------------------------


def test_without_c_the_config_is_ocrd_config_then_cwd_then_etc(
    config: Path,
    run_ocrd: OcrdRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    elsewhere = tmp_path / "elsewhere"
    other = write_config(elsewhere, 'model_dir = "."\n[engine]\nenabled = false\n')
    # ./config.toml, where there is one: the one in config's directory.
    rows = run_json(run_ocrd, "list", "--json", cwd=config.parent)
    assert {r["path"] for r in rows} == set(EXPECTED)
    # $OCRD_CONFIG before it.
    rows = run_json(run_ocrd, "list", "--json", cwd=config.parent, env={"OCRD_CONFIG": str(other)})
    assert {r["path"] for r in rows} == {"config.toml"}
    # Neither: the installed one (its path is a module constant, patched here in-process).
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", config)
    monkeypatch.delenv("OCRD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no config.toml here
    try:
        assert cli.main(["check"]) == 0
        assert capsys.readouterr().out.startswith(f"{config}: ok: ")
        assert cli.main(["list", "--json"]) == 0
        assert {r["path"] for r in json.loads(capsys.readouterr().out)} == set(EXPECTED)
    finally:
        # main() configured this process's log for a command: at warning, on a stderr that
        # pytest closes after this test. The tests after it log at info to their own streams.
        log.configure("info", "json")


@root_only
def test_list_says_why_a_deletion_would_fail_as_clean_dry_run_does() -> None:
    """A member of group ocrd may read model_dir but not delete from it: ``list`` keeps the
    verdict the rules give and says why it would fail, where ``clean --dry-run`` reports it."""
    with make_world() as world:
        os.chown(world.models, OCRD_UID, OCRD_UID)
        world.models.chmod(0o2750)
        world.model("old_a.bin", owner=OCRD_UID)
        config = world.config()
        member = ["setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", f"--groups={OCRD_UID}"]

        def ocrd(*args: str) -> Any:
            result = subprocess.run(
                [*member, *world.python, "-m", "ocrd", *args, "--json", "-c", str(config)],
                capture_output=True,
                text=True,
                env=world.env,
                cwd=world.base,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        (row,) = ocrd("list")
        report = ocrd("clean", "--dry-run")
    why = "Permission denied: the directory is not writable"
    assert report["failed"] == [{"path": "old_a.bin", "error": why}]
    assert report["deleted"] == []
    assert (row["verdict"], row["rule"]) == ("delete", "prefix")
    assert row["reason"].endswith(f", but {why}"), row["reason"]


def test_a_reader_that_goes_away_costs_no_traceback(tmp_path: Path) -> None:
    """`ocrd list | head -1`: the pipe closes long before the listing ends."""
    models = tmp_path / "models"
    for i in range(5000):
        make_file(models, f"m{i:05d}.bin".encode())
    config = write_config(tmp_path, 'model_dir = "models"\n[engine]\nenabled = false\n')
    from tests.harness import ocrd_argv

    listing = subprocess.Popen(
        [*ocrd_argv(), "list", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert listing.stdout is not None
    assert listing.stderr is not None
    assert listing.stdout.readline().startswith(b"VERDICT")
    listing.stdout.close()
    with listing.stderr:
        stderr = listing.stderr.read()
    assert listing.wait(timeout=30) == 141
    assert b"Traceback" not in stderr, stderr


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


# What a one-shot command must not load: the daemon, its watch and the engine (the .NET runtime
# behind aspose) unless the engine is on, SQLite (`list` asks the state file), structlog while no
# line is written at the command's level (warning); and for `check`, no planner or deleter.
NOT_LOADED = {
    "check": (
        "aspose",
        "watchdog",
        "sqlite3",
        "structlog",
        "ocrd.daemon",
        "ocrd.watch",
        "ocrd.ops",
        "ocrd.rules",
    ),
    "clean": (
        "aspose",
        "watchdog",
        "sqlite3",
        "structlog",
        "ocrd.daemon",
        "ocrd.watch.lastuse",
        "ocrd.rules.budget",
        "ocrd.rules.eviction",
    ),
    "list": ("aspose", "watchdog", "ocrd.daemon.run", "ocrd.daemon.engine"),
}
LOADED = (
    "import json, sys\n"
    "from ocrd.cli.main import main\n"
    "main(sys.argv[1:])\n"
    "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
)


@pytest.mark.parametrize("command", sorted(NOT_LOADED))
def test_a_one_shot_command_loads_only_what_it_needs(tmp_path: Path, command: str) -> None:
    """Start-up is most of a small pass's time (docs/performance.md): each command imports
    what it alone needs, and an engine that is off is never loaded."""
    config = cli_config(tmp_path / "conf")
    (tmp_path / "conf" / "models").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", LOADED, command, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = json.loads(done.stderr.splitlines()[-1])
    # check loads the deleter's compiled step alone, to say whether it is there.
    loaded = [m for m in loaded if m not in ("ocrd.ops", "ocrd.ops._sweep")]
    for name in NOT_LOADED[command]:
        assert not [m for m in loaded if m == name or m.startswith(name + ".")], name
