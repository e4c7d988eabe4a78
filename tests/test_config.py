"""ocrd/config/schema.py: config.toml becomes a frozen Config, or one ConfigError naming every
problem."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from ocrd.base.errors import EXIT_CONFIG, ConfigError
from ocrd.config import load as config_module
from ocrd.config.durations import INT32_MAX, format_duration, parse_duration
from ocrd.config.load import default_path, load
from ocrd.config.schema import Config
from ocrd.config.trusted import MAX_BYTES, MAX_DEPTH
from tests import configs
from tests.conftest import OcrdRunner, StartOcrd, needs_compiled_step, write_config

REPO = Path(__file__).resolve().parent.parent

# The example config of docs/contract.md: every config written for it keeps loading.
CONTRACT_EXAMPLE = """\
model_dir = "models"               # the directory that holds the model files

[retention]
prefixes  = ["old_"]               # delete models whose file name starts with one of these
max_age   = "30d"                  # delete models older than this; absent = no age rule
age_by    = "mtime"                # which timestamp ages a file: "mtime" or "atime"
whitelist = ["en_ocr_v1.bin", "*.keep"]   # glob patterns; a match is never deleted
dry_run   = false                  # decide and log, delete nothing

[watch]
settle   = "5s"                    # a file must be unchanged this long before any rule applies
rescan   = "10m"                   # full reconcile period: the safety net for lost events
observer = "auto"                  # "auto", "inotify" or "polling"

[engine]
enabled    = true                  # own an AsposeAI instance for this model directory
gpu_layers = 0
# context_size = 4096

[log]
level  = "info"                    # debug, info, warning, error
format = "auto"                    # "json", "console", or "auto": console on a TTY, JSON otherwise
"""


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A directory holding an existing ``models`` directory, ready for a config.toml."""
    (tmp_path / "conf" / "models").mkdir(parents=True)
    return tmp_path / "conf"


def problems_of(path: Path) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value.problems


def only_problem(conf_dir: Path, body: str) -> str:
    """Load ``model_dir = "models"`` plus ``body``; exactly one problem is expected."""
    path = write_config(conf_dir, 'model_dir = "models"\n' + body)
    problems = problems_of(path)
    assert len(problems) == 1, problems
    return problems[0]


# --- what loads ------------------------------------------------------------------------------


def test_only_model_dir_gives_the_documented_defaults(conf_dir: Path) -> None:
    config = load(write_config(conf_dir, 'model_dir = "models"\n'))
    assert config.model_dir == conf_dir / "models"
    r, w, e, lg = config.retention, config.watch, config.engine, config.log
    assert (r.prefixes, r.max_age, r.age_by, r.whitelist, r.dry_run) == (
        (),
        None,
        "mtime",
        (),
        False,
    )
    assert (w.settle, w.rescan, w.observer) == (5.0, 600.0, "auto")
    assert (e.enabled, e.gpu_layers, e.context_size) == (True, 0, None)
    assert (lg.level, lg.format) == ("info", "auto")


def test_the_contract_example_loads(conf_dir: Path) -> None:
    config = load(write_config(conf_dir, CONTRACT_EXAMPLE))
    assert config.retention.prefixes == ("old_",)
    assert config.retention.max_age == 30 * 86400
    assert config.retention.whitelist == ("en_ocr_v1.bin", "*.keep")
    assert (config.watch.settle, config.watch.rescan) == (5.0, 600.0)


def test_the_shipped_config_toml_loads(conf_dir: Path) -> None:
    """Old configs keep loading: the documented default file in the repository is valid."""
    shutil.copy(REPO / "config.toml", conf_dir / "config.toml")
    config = load(conf_dir / "config.toml")
    assert config.model_dir == conf_dir / "models"


@pytest.mark.parametrize(
    "budget",
    ["", '[budget]\nmax_size = "1 GiB"\nmin_free = "10%"\nheadroom = "0 B"\n'],
    ids=["defaults", "every-key"],
)
def test_a_config_dumps_as_json_without_a_warning(conf_dir: Path, budget: str) -> None:
    """A reload diffs two configs as JSON (ocrd.rules.reload): every value, the budget's sizes
    and shares too, is said in the config's own words, with no serializer warning in the log."""
    config = load(write_config(conf_dir, 'model_dir = "models"\n' + budget))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dumped = json.loads(config.model_dump_json())
    if budget:
        assert dumped["budget"] == {"max_size": "1 GiB", "min_free": "10%", "headroom": "0 B"}
    else:
        assert dumped["budget"] == {"max_size": None, "min_free": None, "headroom": "5%"}


def test_config_is_frozen(conf_dir: Path) -> None:
    config = load(write_config(conf_dir, 'model_dir = "models"\n'))
    with pytest.raises(ValidationError):
        config.retention.dry_run = True  # type: ignore[misc]
    assert isinstance(config, Config)


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("12h", 43200),
        ("30d", 2592000),
        ("2w", 1209600),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("500ms", 0.5),
    ],
)
def test_good_durations(conf_dir: Path, text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    body = f'model_dir = "models"\n[retention]\nmax_age = "{text}"\n[watch]\nsettle = "{text}"\n'
    config = load(write_config(conf_dir, body))
    assert config.retention.max_age == seconds
    assert config.watch.settle == seconds


@pytest.mark.parametrize(
    ("toml_value", "shown"),
    [
        ('"30 days"', '"30 days"'),
        ("30", "30"),
        ('""', '""'),
        ('"-5s"', '"-5s"'),
        ('"30"', '"30"'),
        ('"d"', '"d"'),
        ('"30D"', '"30D"'),
        ("true", "True"),
    ],
)
@pytest.mark.parametrize(
    "key", ["retention.max_age", "watch.settle", "watch.rescan", "trash.grace"]
)
def test_bad_durations(conf_dir: Path, key: str, toml_value: str, shown: str) -> None:
    section, name = key.split(".")
    problem = only_problem(conf_dir, f"[{section}]\n{name} = {toml_value}\n")
    assert problem.startswith(f"{conf_dir / 'config.toml'}: at '{key}': {shown} is not a duration")


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ('[retention]\nmax_age = "0s"\n', "retention.max_age", "must be more than 0s"),
        ('[watch]\nrescan = "500ms"\n', "watch.rescan", "must be at least 1s"),
    ],
)
def test_durations_out_of_range(conf_dir: Path, body: str, key: str, message: str) -> None:
    assert only_problem(conf_dir, body) == f"{conf_dir / 'config.toml'}: at '{key}': {message}"


@pytest.mark.parametrize(
    ("body", "grace"),
    [("", 0.0), ('[trash]\ngrace = "0s"\n', 0.0), ('[trash]\ngrace = "24h"\n', 86400.0)],
)
def test_trash_grace(conf_dir: Path, body: str, grace: float) -> None:
    config = load(write_config(conf_dir, 'model_dir = "models"\n' + body))
    assert config.trash.grace == grace


def test_settle_zero_is_allowed(conf_dir: Path) -> None:
    config = load(write_config(conf_dir, 'model_dir = "models"\n[watch]\nsettle = "0s"\n'))
    assert config.watch.settle == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(2592000, "30d"), (1209600, "2w"), (90, "90s"), (5400, "90m"), (0.5, "0.5s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


# --- every error class, with its key path ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        # unknown keys, at the top and in every section
        ("bogus = 1\n", "bogus", "unknown key"),
        ('path = "x"\n', "path", "unknown key"),
        ("[extra]\na = 1\n", "extra", "unknown key"),
        ("[retention]\nextra = true\n", "retention.extra", "unknown key"),
        ("[watch]\nextra = true\n", "watch.extra", "unknown key"),
        ("[engine]\nextra = true\n", "engine.extra", "unknown key"),
        ("[log]\nextra = true\n", "log.extra", "unknown key"),
        ("[retention.nested]\na = 1\n", "retention.nested", "unknown key"),
        # wrong types
        ('[retention]\ndry_run = "yes"\n', "retention.dry_run", '"yes": input should be'),
        ("[engine]\nenabled = 1\n", "engine.enabled", "1: input should be"),
        ('[engine]\ngpu_layers = "0"\n', "engine.gpu_layers", '"0": input should be'),
        ("[engine]\ngpu_layers = 1.5\n", "engine.gpu_layers", "1.5: input should be"),
        ("[engine]\ngpu_layers = -1\n", "engine.gpu_layers", "-1: input should be greater"),
        ("[engine]\ncontext_size = 0\n", "engine.context_size", "0: input should be greater"),
        ('[retention]\nprefixes = "old_"\n', "retention.prefixes", '"old_" is not an array'),
        ('[retention]\nwhitelist = "*.keep"\n', "retention.whitelist", '"*.keep" is not an array'),
        ("retention = 3\n", "retention", "3: input should be"),
        ('[retention]\nage_by = "ctime"\n', "retention.age_by", '"ctime": input should be'),
        ('[watch]\nobserver = "fanotify"\n', "watch.observer", '"fanotify": input should be'),
        ('[log]\nlevel = "loud"\n', "log.level", '"loud": input should be'),
        ('[log]\nformat = "xml"\n', "log.format", '"xml": input should be'),
        # bad globs and prefixes
        ('[retention]\nwhitelist = ["[abc"]\n', "retention.whitelist[0]", "is not a glob"),
        ('[retention]\nwhitelist = ["ok", ""]\n', "retention.whitelist[1]", "is not a glob"),
        ('[retention]\nwhitelist = ["/abs"]\n', "retention.whitelist[0]", "is not a glob"),
        ('[retention]\nwhitelist = ["x[!]"]\n', "retention.whitelist[0]", "is not a glob"),
        ("[retention]\nwhitelist = [1]\n", "retention.whitelist[0]", "is not a glob"),
        ('[retention]\nprefixes = [""]\n', "retention.prefixes[0]", '"" is not a prefix'),
        ('[retention]\nprefixes = ["a", "b/c"]\n', "retention.prefixes[1]", "is not a prefix"),
        ("[retention]\nprefixes = [7]\n", "retention.prefixes[0]", "7 is not a prefix"),
    ],
)
def test_each_error_names_file_and_key(conf_dir: Path, body: str, key: str, message: str) -> None:
    problem = only_problem(conf_dir, body)
    where = f"{conf_dir / 'config.toml'}: at '{key}': "
    assert problem.startswith(where), problem
    assert message in problem.removeprefix(where), problem


@pytest.mark.parametrize("glob", ["[]]", "[!]]x", "a[bc]d", "*.keep", "sub/*.bin", "?"])
def test_good_globs(conf_dir: Path, glob: str) -> None:
    body = f"model_dir = \"models\"\n[retention]\nwhitelist = ['{glob}']\n"
    assert load(write_config(conf_dir, body)).retention.whitelist == (glob,)


def test_model_dir_is_required(conf_dir: Path) -> None:
    path = write_config(conf_dir, '[retention]\nprefixes = ["old_"]\n')
    assert problems_of(path) == (f"{path}: at 'model_dir': is required",)


@pytest.mark.parametrize("value", ["/", "/..", "//", "/tmp/../"])
def test_model_dir_root_is_rejected(conf_dir: Path, value: str) -> None:
    path = write_config(conf_dir, f'model_dir = "{value}"\n')
    assert problems_of(path) == (
        f"{path}: at 'model_dir': \"{value}\" is the root directory; ocrd will not manage /",
    )


def test_model_dir_symlink_to_root_is_rejected(conf_dir: Path) -> None:
    (conf_dir / "rootlink").symlink_to("/")
    path = write_config(conf_dir, 'model_dir = "rootlink"\n')
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: at 'model_dir': ")
    assert "root directory" in problem


def test_model_dir_symlink_to_a_directory_is_kept_as_written(conf_dir: Path) -> None:
    (conf_dir / "link").symlink_to(conf_dir / "models")
    config = load(write_config(conf_dir, 'model_dir = "link"\n'))
    assert config.model_dir == conf_dir / "link"


def test_model_dir_missing(conf_dir: Path) -> None:
    path = write_config(conf_dir, 'model_dir = "nowhere"\n')
    assert problems_of(path) == (
        f"{path}: at 'model_dir': \"{conf_dir / 'nowhere'}\" does not exist; "
        "create it or fix the path",
    )


def test_model_dir_is_a_regular_file(conf_dir: Path) -> None:
    (conf_dir / "afile").write_bytes(b"")
    path = write_config(conf_dir, 'model_dir = "afile"\n')
    assert problems_of(path) == (
        f"{path}: at 'model_dir': \"{conf_dir / 'afile'}\" is not a directory",
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "5 is not a path: write a string"),
        ("[]", "an array is not a path: write a string"),
        ('""', "'' is not a path"),
    ],
)
def test_model_dir_not_a_path(conf_dir: Path, value: str, message: str) -> None:
    path = write_config(conf_dir, f"model_dir = {value}\n")
    assert problems_of(path) == (f"{path}: at 'model_dir': {message}",)


def test_every_problem_is_reported_at_once(conf_dir: Path) -> None:
    path = write_config(
        conf_dir,
        """\
model_dir = "nowhere"
bogus = 1
[retention]
max_age = "30 days"
prefixes = [""]
whitelist = ["[abc", "/abs"]
extra = 1
[watch]
settle = 30
[engine]
gpu_layers = -1
[log]
level = "loud"
""",
    )
    problems = problems_of(path)
    keys = [p.removeprefix(f"{path}: at '").partition("'")[0] for p in problems]
    assert all(p.startswith(f"{path}: at '") for p in problems), problems
    assert sorted(keys) == sorted(
        [
            "model_dir",
            "bogus",
            "retention.max_age",
            "retention.prefixes[0]",
            "retention.whitelist[0]",
            "retention.whitelist[1]",
            "retention.extra",
            "watch.settle",
            "engine.gpu_layers",
            "log.level",
        ]
    )


def test_unreadable_file_problems(conf_dir: Path) -> None:
    missing = conf_dir / "absent.toml"
    assert problems_of(missing) == (f"{missing}: cannot read: No such file or directory",)
    not_toml = write_config(conf_dir, "model_dir = \n", name="broken.toml")
    (problem,) = problems_of(not_toml)
    assert problem.startswith(f"{not_toml}: not valid TOML: ")
    latin1 = conf_dir / "latin1.toml"
    latin1.write_bytes(b'model_dir = "mod\xe8les"\n')
    (problem,) = problems_of(latin1)
    assert problem.startswith(f"{latin1}: not UTF-8 text")


# --- where paths resolve ---------------------------------------------------------------------


def test_relative_model_dir_resolves_against_the_config_file(
    conf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "models").mkdir(parents=True)  # a decoy: cwd also has a "models"
    write_config(conf_dir, 'model_dir = "models"\n')
    monkeypatch.chdir(elsewhere)
    config = load(Path("../conf/config.toml"))
    assert config.model_dir == conf_dir / "models"
    assert config.model_dir.is_absolute()


def test_relative_model_dir_is_missing_even_if_cwd_has_it(
    conf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "only_in_cwd").mkdir()
    path = write_config(conf_dir, 'model_dir = "only_in_cwd"\n')
    monkeypatch.chdir(tmp_path)
    (problem,) = problems_of(path)
    assert f'"{conf_dir / "only_in_cwd"}" does not exist' in problem


def test_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$OCRD_CONFIG, else ./config.toml if there is one, else the installed one."""
    system = write_config(tmp_path / "etc", 'model_dir = "/"\n')
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", system)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OCRD_CONFIG", raising=False)
    assert default_path() == system
    monkeypatch.setenv("OCRD_CONFIG", "")
    assert default_path() == system
    write_config(tmp_path, 'model_dir = "."\n')
    assert default_path() == Path("config.toml")
    monkeypatch.setenv("OCRD_CONFIG", "/elsewhere/ocrd.toml")
    assert default_path() == Path("/elsewhere/ocrd.toml")
    monkeypatch.delenv("OCRD_CONFIG")
    (tmp_path / "config.toml").unlink()
    system.unlink()
    assert default_path() == Path("config.toml")  # none at all: the message names ./config.toml


# --- through the real `ocrd check` -----------------------------------------------------------


def test_check_invalid_exits_78_listing_every_problem(conf_dir: Path, run_ocrd: OcrdRunner) -> None:
    path = write_config(
        conf_dir, 'model_dir = "models"\nbogus = 1\n[retention]\nmax_age = "30 days"\n'
    )
    result = run_ocrd("check", "-c", path)
    assert result.returncode == EXIT_CONFIG == 78
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}: at 'retention.max_age': \"30 days\" is not a duration: "
        "use a number and one of ms, s, m, h, d, w",
        f"{path}: at 'bogus': unknown key",
    ]


def test_check_valid_prints_one_line_and_exits_0(conf_dir: Path, run_ocrd: OcrdRunner) -> None:
    path = write_config(conf_dir, CONTRACT_EXAMPLE)
    result = run_ocrd("check", "--config", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert "in-use check: file leases on" in result.stderr
    assert f"{path}: deleter: " in result.stderr
    assert result.stdout.startswith(f"{path}: ok: model_dir={conf_dir / 'models'}")
    assert "max_age=30d by mtime (in model_dir)" in result.stdout


def test_check_resolves_model_dir_against_config_not_cwd(
    conf_dir: Path, tmp_path: Path, run_ocrd: OcrdRunner
) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "models").mkdir(parents=True)
    write_config(conf_dir, 'model_dir = "models"\n')
    result = run_ocrd("check", "-c", os.path.join("..", "conf", "config.toml"), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert f"model_dir={conf_dir / 'models'}," in result.stdout


def test_check_reads_ocrd_config_env(conf_dir: Path, tmp_path: Path, run_ocrd: OcrdRunner) -> None:
    good = write_config(conf_dir, 'model_dir = "models"\n')
    bad = write_config(conf_dir, "bogus = 1\n", name="bad.toml")
    cwd = tmp_path / "cwd"
    write_config(cwd, 'model_dir = "."\nunknown_in_cwd = 1\n')  # must not be read

    result = run_ocrd("check", cwd=cwd, env={"OCRD_CONFIG": str(good)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{good}: ok:")

    result = run_ocrd("check", cwd=cwd, env={"OCRD_CONFIG": str(bad)})
    assert result.returncode == 78
    assert f"{bad}: at 'bogus': unknown key" in result.stderr

    result = run_ocrd("check", "-c", good, cwd=cwd, env={"OCRD_CONFIG": str(bad)})
    assert result.returncode == 0, "-c must win over $OCRD_CONFIG"


def test_check_defaults_to_config_toml_in_cwd(tmp_path: Path, run_ocrd: OcrdRunner) -> None:
    cwd = tmp_path / "cwd"
    (cwd / "models").mkdir(parents=True)
    write_config(cwd, 'model_dir = "models"\n')
    result = run_ocrd("check", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config.toml: ok: ")

    result = run_ocrd("check", cwd=tmp_path)  # no config.toml here
    assert result.returncode == 78
    assert result.stderr.startswith("config.toml: cannot read")


# --- hostile files: not regular, too large, too deep, too big a number ------------------------


def _one_line_each(problems: tuple[str, ...] | list[str]) -> None:
    for problem in problems:
        assert problem.isprintable(), problem  # escaped: no newline, ESC, separator or bidi mark


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (os.mkfifo, "a FIFO (named pipe)"),
        (lambda p: p.mkdir(), "a directory"),
        (lambda p: p.symlink_to("/dev/zero"), "a character device"),
        (lambda p: p.symlink_to("/dev/null"), "a character device"),
    ],
)
def test_a_config_that_is_not_a_regular_file_is_one_clear_line_and_never_blocks(
    conf_dir: Path, run_ocrd: OcrdRunner, make: Callable[[Path], None], kind: str
) -> None:
    path = conf_dir / "config.toml"
    make(path)
    # A subprocess with a timeout: opening a FIFO for reading used to block check forever.
    result = run_ocrd("check", "-c", path)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert result.stderr == (
        f"{path}: is {kind}, not a regular file: point -c or $OCRD_CONFIG at the config file\n"
    )


def test_a_socket_as_config_is_refused(conf_dir: Path) -> None:
    path = conf_dir / "config.toml"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        assert problems_of(path) == (
            f"{path}: is a socket, not a regular file: point -c or $OCRD_CONFIG at the config file",
        )


def test_a_symlinked_config_is_followed(conf_dir: Path) -> None:
    real = write_config(conf_dir, 'model_dir = "models"\n', name="real.toml")
    (conf_dir / "config.toml").symlink_to(real)
    assert load(conf_dir / "config.toml").model_dir == conf_dir / "models"


def test_size_is_capped_at_one_mib(conf_dir: Path) -> None:
    body = 'model_dir = "models"\n'
    padding = "#" * 99 + "\n"
    exactly = body + padding * ((MAX_BYTES - len(body)) // len(padding))
    exactly += "#" * (MAX_BYTES - len(exactly) - 1) + "\n"
    path = write_config(conf_dir, exactly)
    assert path.stat().st_size == MAX_BYTES
    assert load(path).model_dir == conf_dir / "models"
    path.write_text(exactly + "\n")
    assert problems_of(path) == (f"{path}: larger than 1 MiB: this is not an ocrd config file",)


@pytest.mark.parametrize(
    "value",
    [
        "[" * 600 + "]" * 600,  # tomllib recursed into RecursionError here
        "{a = " * 600 + "1" + "}" * 600,
        "[{a = [" * 200 + "]}]" * 200,
        "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
    ],
)
@pytest.mark.parametrize("key", ["bogus", "engine.gpu_layers", "retention.whitelist"])
def test_any_nesting_depth_is_one_line(conf_dir: Path, value: str, key: str) -> None:
    section, _, name = key.rpartition(".")
    table = f"[{section}]\n" if section else ""
    path = write_config(conf_dir, f'model_dir = "models"\n{table}{name} = {value}\n')
    assert problems_of(path) == (
        f"{path}: arrays or tables nested more than {MAX_DEPTH} levels deep: "
        "an ocrd config needs 3 at most",
    )


def test_nesting_within_the_limit_is_an_ordinary_error(conf_dir: Path) -> None:
    depth = MAX_DEPTH - 2  # the document table and [engine] are two levels
    body = "[engine]\ngpu_layers = " + "[" * depth + "]" * depth + "\n"
    assert only_problem(conf_dir, body).endswith(
        "at 'engine.gpu_layers': an array: input should be a valid integer"
    )


@pytest.mark.parametrize("key", ["gpu_layers", "context_size"])
def test_engine_integers_are_bounded_by_the_engines_int32(conf_dir: Path, key: str) -> None:
    ok = load(write_config(conf_dir, f'model_dir = "models"\n[engine]\n{key} = {INT32_MAX}\n'))
    assert getattr(ok.engine, key) == 2**31 - 1
    for value in (2**31, 99999999999999, 2**63 - 1):
        problem = only_problem(conf_dir, f"[engine]\n{key} = {value}\n")
        assert problem.endswith(
            f"at 'engine.{key}': {value}: input should be less than or equal to 2147483647"
        )


def test_an_integer_of_5000_digits_is_one_line(conf_dir: Path) -> None:
    path = write_config(conf_dir, 'model_dir = "models"\nbogus = ' + "9" * 5000 + "\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: not valid TOML: Exceeds the limit (4300 digits)")
    _one_line_each([problem])


@pytest.mark.parametrize(
    ("toml_key", "shown"),
    [
        ('"a\\nb"', '"a\\nb"'),
        ('"esc\\u001b[31mred"', '"esc\\u001b[31mred"'),
        ('"line\\u2028sep"', '"line\\u2028sep"'),
        ('"bidi\\u202eevil"', '"bidi\\u202eevil"'),
        ('"del\\u007f"', '"del\\u007f"'),
        ('"quote\\"and\\\\"', '"quote\\"and\\\\"'),
        ('"dotted.key"', '"dotted.key"'),
        ("plain-key_1", "plain-key_1"),
    ],
)
@pytest.mark.parametrize("section", ["", "retention", "engine"])
def test_keys_are_shown_escaped_like_values(
    conf_dir: Path, toml_key: str, shown: str, section: str
) -> None:
    table = f"[{section}]\n" if section else ""
    problem = only_problem(conf_dir, f"{table}{toml_key} = 1\n")
    where = f"{section}.{shown}" if section else shown
    assert problem == f"{conf_dir / 'config.toml'}: at '{where}': unknown key"
    _one_line_each([problem])


def test_values_are_shown_escaped(conf_dir: Path) -> None:
    body = '[retention]\nmax_age = "1\\u001b[2J\\u2028d"\nprefixes = ["a/\\u0085"]\n'
    path = write_config(conf_dir, 'model_dir = "models"\n' + body)
    problems = problems_of(path)
    assert sorted(problems) == sorted(
        [
            f"{path}: at 'retention.max_age': \"1\\u001b[2J\\u2028d\" is not a duration: "
            "use a number and one of ms, s, m, h, d, w",
            f"{path}: at 'retention.prefixes[0]': \"a/\\u0085\" is not a prefix: "
            'a file-name prefix cannot hold "/" or NUL',
        ]
    )
    _one_line_each(problems)


def test_a_nested_value_in_an_error_is_named_not_printed(conf_dir: Path) -> None:
    problem = only_problem(conf_dir, '[retention]\nwhitelist = [["x", ["y"]]]\n')
    assert problem.endswith(
        "at 'retention.whitelist[0]': an array is not a glob pattern: write a string"
    )


# --- through the real `ocrd run`: hostile files at start and on reload --------------------------


def run_config(conf_dir: Path, **engine: object) -> Path:
    return configs.config(conf_dir, watch={"rescan": None}, engine={"enabled": False, **engine})


def test_run_with_the_largest_engine_integers_starts_the_real_engine(
    conf_dir: Path, start_ocrd: StartOcrd
) -> None:
    """Past Int32 the engine raised OverflowError and run died; at the bound it starts."""
    path = run_config(conf_dir, enabled=True, gpu_layers=INT32_MAX, context_size=INT32_MAX)
    d = start_ocrd(path)
    d.note("READY=1")
    assert d.event("engine_started")["model_dir"] == str(conf_dir / "models")
    assert d.stop()[0] == 0
    assert "daemon_failed" not in d.names()


@pytest.mark.parametrize(
    "body",
    [
        "[" * 600 + "]" * 600,
        "{a = " * 600 + "1" + "}" * 600,
    ],
)
def test_run_refuses_any_nesting_depth_with_78_and_one_line(
    conf_dir: Path, start_ocrd: StartOcrd, body: str
) -> None:
    path = write_config(conf_dir, f'model_dir = "models"\nbogus = {body}\n')
    d = start_ocrd(path)
    assert d.wait() == EXIT_CONFIG
    [invalid] = d.events  # one JSON line, like every line of `ocrd run`
    assert invalid["event"] == "config_invalid", invalid
    [problem] = invalid["errors"]
    assert "nested more than" in problem
    assert d.stderr == ""


def test_reload_of_hostile_files_is_config_rejected_and_the_daemon_stays_up(
    conf_dir: Path, start_ocrd: StartOcrd
) -> None:
    """Each of these killed the daemon or hung its reload (and then SIGTERM) before."""
    path = run_config(conf_dir)
    good = path.read_text()
    d = start_ocrd(path)
    d.note("READY=1")

    def replace(make: Callable[[Path], object]) -> None:
        new = conf_dir / "new"
        make(new)
        os.replace(new, path)

    hostile: list[tuple[Callable[[Path], object], str]] = [
        (os.mkfifo, "is a FIFO (named pipe), not a regular file"),
        (lambda p: p.symlink_to("/dev/zero"), "is a character device, not a regular file"),
        (lambda p: p.write_text(good + "bogus = " + "[" * 600 + "]" * 600 + "\n"), "nested"),
        (
            lambda p: p.write_text(good.replace("enabled = false", "gpu_layers = 99999999999999")),
            "at 'engine.gpu_layers': 99999999999999: input should be less than or equal to",
        ),
        (lambda p: p.write_text(good + '"a\\nb" = 1\n'), "at 'log.\"a\\nb\"': unknown key"),
    ]
    for n, (make, text) in enumerate(hostile, start=1):
        replace(make)
        d.send(signal.SIGHUP)

        def rejected_n(n: int = n) -> bool:
            return d.names().count("config_rejected") == n

        d.wait_for(f"config_rejected #{n}", rejected_n)
        rejected = [e for e in d.events if e.get("event") == "config_rejected"][-1]
        (error,) = rejected["errors"]
        assert text in error, error
        assert error.isprintable()
        d.note("READY=1", count=n + 1)
    # Still at work under the old rules, and stops as promised.
    (conf_dir / "models" / "old_after.bin").write_bytes(b"x")
    d.event("model_deleted", path="old_after.bin")
    assert "config_reloaded" not in d.names()
    code, took = d.stop()
    assert (code, d.events[-1]["event"]) == (0, "daemon_stopped")
    assert took < 5.0


@pytest.mark.parametrize("pure", ["0", "1"])
def test_check_says_which_deleter_deletes(conf_dir: Path, run_ocrd: OcrdRunner, pure: str) -> None:
    needs_compiled_step()
    path = write_config(conf_dir, CONTRACT_EXAMPLE)
    result = run_ocrd("check", "--config", path, env={"OCRD_PURE_PYTHON": pure})
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith(f"{path}: deleter: ")]
    if pure == "1":
        assert line.endswith("the Python path: OCRD_PURE_PYTHON=1 (the compiled step is built)")
    else:
        assert line.endswith(
            "the compiled step for the common case, the Python path for every other"
        )
