"""ocrd/config/schema.py's lint and system-directory refusal: rules that cannot mean what they
say."""

from __future__ import annotations

import os
import pwd
import signal
from pathlib import Path

import pytest

from ocrd.base.errors import EXIT_CONFIG, ConfigError
from ocrd.config.lint import Lint, lint
from ocrd.config.load import load
from tests import configs
from tests.conftest import OcrdRunner, StartOcrd, write_config


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    (tmp_path / "conf" / "models").mkdir(parents=True)
    return tmp_path / "conf"


def lints(conf_dir: Path, body: str) -> list[Lint]:
    return lint(load(write_config(conf_dir, 'model_dir = "models"\n' + body)))


def whitelist(*patterns: str) -> str:
    quoted = ", ".join(f"'{p}'" for p in patterns)
    return f"[retention]\nwhitelist = [{quoted}]\n"


# --- whitelist patterns that can never match ---------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("./en.bin", 'paths are relative to model_dir, without "./"; write "en.bin"'),
        ("./sub/*.bin", 'without "./"; write "sub/*.bin"'),
        ("sub/", 'the whitelist matches files, not directories; write "sub/*"'),
        ("a/b/", 'write "a/b/*" to protect everything under it'),
        ("models/en.bin", 'do not start with its own name "models"; write "en.bin"'),
        ("../models/en.bin", 'hold no "." or ".." component'),
        ("sub/../en.bin", 'hold no "." or ".." component'),
        ("sub/./en.bin", 'hold no "." or ".." component'),
        ("*/../x", 'hold no "." or ".." component'),
        ("sub//en.bin", 'hold no empty component ("//")'),
    ],
)
def test_patterns_that_can_never_match_are_warned_about(
    conf_dir: Path, pattern: str, says: str
) -> None:
    (warning,) = lints(conf_dir, whitelist("fine.bin", pattern))
    assert warning.key == "retention.whitelist[1]"
    assert warning.message.startswith(f'"{pattern}" never matches: ')
    assert says in warning.message


@pytest.mark.parametrize(
    "pattern", ["en.bin", "*.keep", "sub/*.bin", "*/x.bin", "..hidden", ".keep", "a./b", "sub/*"]
)
def test_patterns_that_can_match_are_not_warned_about(conf_dir: Path, pattern: str) -> None:
    assert lints(conf_dir, whitelist(pattern)) == []


def test_model_dirs_own_name_is_fine_when_it_also_holds_a_directory_of_that_name(
    conf_dir: Path,
) -> None:
    (conf_dir / "models" / "models").mkdir()
    assert lints(conf_dir, whitelist("models/en.bin")) == []


def test_the_own_name_of_a_symlinked_model_dir_is_found_by_either_name(conf_dir: Path) -> None:
    (conf_dir / "link").symlink_to(conf_dir / "models")
    config = load(write_config(conf_dir, 'model_dir = "link"\n' + whitelist("link/a", "models/b")))
    assert [w.key for w in lint(config)] == ["retention.whitelist[0]", "retention.whitelist[1]"]


# --- ages --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_age", "settle", "says"),
    [
        ("5s", "5s", "5s is not longer than watch.settle (5s): every model is deleted as soon"),
        ("1m", "1h", "1m is not longer than watch.settle (1h)"),
        ("1ms", "5s", "0.001s is not longer than watch.settle (5s)"),
        (
            "1ms",
            "0s",
            "0.001s deletes every model under a minute after it last changed: check "
            'the unit ("1ms" is a millisecond, "1m" a minute, "1d" a day)',
        ),
        ("30s", "0s", "30s deletes every model under a minute"),
    ],
)
def test_ages_under_settle_or_under_a_minute_are_warned_about(
    conf_dir: Path, max_age: str, settle: str, says: str
) -> None:
    body = f'[retention]\nmax_age = "{max_age}"\n[watch]\nsettle = "{settle}"\n'
    (warning,) = lints(conf_dir, body)
    assert warning.key == "retention.max_age"
    assert warning.message.startswith(says)


@pytest.mark.parametrize(("max_age", "settle"), [("1m", "5s"), ("30d", "5s"), ("1h", "0s")])
def test_sensible_ages_are_not_warned_about(conf_dir: Path, max_age: str, settle: str) -> None:
    body = f'[retention]\nmax_age = "{max_age}"\n[watch]\nsettle = "{settle}"\n'
    assert lints(conf_dir, body) == []


# --- model_dir that is a system directory: refused ---------------------------------------------

SYSTEM = [
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/boot",
    "/var",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/home",
    "/root",
    "/lib",
    "/lib64",
]


@pytest.mark.parametrize("directory", [d for d in SYSTEM if os.path.isdir(d)])
def test_a_system_directory_as_model_dir_is_refused(conf_dir: Path, directory: str) -> None:
    path = write_config(conf_dir, f'model_dir = "{directory}"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: at 'model_dir': \"{directory}\" is ")
    assert problem.endswith(
        "ocrd will not manage it: point model_dir at a directory that holds only models"
    )


def test_a_link_to_a_system_directory_is_refused_after_realpath(conf_dir: Path) -> None:
    (conf_dir / "usr").symlink_to("/usr")
    (conf_dir / "etc").symlink_to("/usr/../etc")
    for name, system in (("usr", "/usr"), ("etc", "/etc")):
        path = write_config(conf_dir, f'model_dir = "{name}"\n')
        with pytest.raises(ConfigError) as info:
            load(path)
        assert f"is the system directory {system}," in info.value.problems[0]


def test_home_and_the_running_users_home_are_refused_but_not_what_they_hold(
    conf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for value, what in (("~", "$HOME"), (str(home), "$HOME")):
        with pytest.raises(ConfigError) as info:
            load(write_config(conf_dir, f'model_dir = "{value}"\n'))
        assert f"is {what}, not a model directory" in info.value.problems[0]
    assert load(write_config(conf_dir, 'model_dir = "~/models"\n')).model_dir == home / "models"
    own = pwd.getpwuid(os.getuid()).pw_dir
    if os.path.isdir(own):
        with pytest.raises(ConfigError) as info:
            load(write_config(conf_dir, f'model_dir = "{own}"\n'))
        assert "not a model directory" in info.value.problems[0]


def test_check_and_run_refuse_a_system_directory_with_78(
    conf_dir: Path, run_ocrd: OcrdRunner, start_ocrd: StartOcrd
) -> None:
    path = write_config(conf_dir, 'model_dir = "/etc"\n[engine]\nenabled = false\n')
    result = run_ocrd("check", "-c", path)
    assert (result.returncode, result.stdout) == (EXIT_CONFIG, "")
    assert len(result.stderr.splitlines()) == 1
    d = start_ocrd(path)
    assert d.wait() == EXIT_CONFIG
    invalid = d.event("config_invalid")  # ocrd run says it as a JSON line
    assert any("is the system directory /etc" in e for e in invalid["errors"]), invalid


# --- where warnings show: check, start-up, reload ----------------------------------------------


def linted(
    conf_dir: Path, whitelist: tuple[str, ...] = ("./en.bin", "sub/"), max_age: str = "1ms"
) -> Path:
    """A config whose whitelist and max_age draw warnings (lint), beside a clean fine.bin."""
    return configs.config(
        conf_dir,
        retention={"whitelist": [*whitelist, "fine.bin"], "max_age": max_age},
        watch={"settle": "5s", "rescan": None},
    )


def test_check_prints_each_warning_on_its_own_line_and_exits_0(
    conf_dir: Path, run_ocrd: OcrdRunner
) -> None:
    path = linted(conf_dir)
    result = run_ocrd("check", "-c", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok: ")
    lines = [line for line in result.stderr.splitlines() if ": warning: " in line]
    assert len(lines) == 3, result.stderr
    assert [line.partition(": at '")[2].partition("'")[0] for line in lines] == [
        "retention.whitelist[0]",
        "retention.whitelist[1]",
        "retention.max_age",
    ]
    assert all(line.startswith(f"{path}: warning: at '") for line in lines)


def test_a_clean_config_prints_no_warning(conf_dir: Path, run_ocrd: OcrdRunner) -> None:
    path = write_config(conf_dir, 'model_dir = "models"\n' + whitelist("en.bin", "sub/*"))
    result = run_ocrd("check", "-c", path)
    assert result.returncode == 0
    assert "warning" not in result.stderr


def test_run_logs_config_warning_at_start_and_on_reload(
    conf_dir: Path, start_ocrd: StartOcrd
) -> None:
    path = linted(conf_dir)
    d = start_ocrd(path)
    d.note("READY=1")

    def warnings() -> list[tuple[str, str]]:
        return [(e["key"], e["level"]) for e in d.events if e.get("event") == "config_warning"]

    d.wait_for("the start-up warnings", lambda: len(warnings()) >= 3)
    assert warnings() == [
        ("retention.whitelist[0]", "warning"),
        ("retention.whitelist[1]", "warning"),
        ("retention.max_age", "warning"),
    ]
    assert all(e["config"] == str(path) for e in d.events if e.get("event") == "config_warning")
    linted(conf_dir, whitelist=(), max_age="2s")
    d.send(signal.SIGHUP)
    d.event("config_reloaded")
    d.note("READY=1", count=2)
    # Log lines and notify datagrams travel apart: wait for the line, not for READY=1.
    d.wait_for("the reload's warning", lambda: len(warnings()) > 3)
    assert warnings()[3:] == [("retention.max_age", "warning")]  # 2s is still under settle
    assert d.stop()[0] == 0
