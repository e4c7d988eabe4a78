"""Config fuzzing: no TOML document, however hostile, makes ocrd answer with a traceback."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocrd.base.errors import ConfigError
from ocrd.config.durations import INT32_MAX
from ocrd.config.load import load
from ocrd.config.schema import Config
from ocrd.config.trusted import MAX_BYTES, MAX_DEPTH
from tests.harness import ocrd_argv

KEYS: dict[str, list[str]] = {
    "": ["model_dir", "retention", "watch", "engine", "log", "bogus"],
    "retention": ["prefixes", "max_age", "age_by", "age_from", "whitelist", "dry_run", "extra"],
    "watch": ["settle", "rescan", "observer"],
    "engine": ["enabled", "gpu_layers", "context_size"],
    "log": ["level", "format"],
}

# Keys as hostile as values: newlines, ESC, DEL, separators, bidi marks, dots, quotes.
hostile_keys = st.text(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\n", "\x1b", "\x7f", "\x85", "\u2028", "\u202e", ".", '"', "\\"]),
    ),
    min_size=1,
    max_size=8,
)

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(10**300), max_value=10**300),  # past Int64: tomllib reads any size
    st.sampled_from([INT32_MAX, INT32_MAX + 1, 2**63 - 1, -(2**31) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "30d",
            "0s",
            "5s",
            "1h30m",
            "99999999999999999999w",
            "old_",
            "[x",
            "/",
            "models",
            "json",
            "inotify",
            "mtime",
            "*.keep",
            "..",
            "~",
            "",
            "\x00",
        ]
    ),
    st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1)),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    top = st.one_of(st.sampled_from(KEYS[""]), hostile_keys)
    for key in draw(st.lists(top, unique=True, max_size=6)):
        if key in KEYS and draw(st.booleans()):
            inner = st.one_of(st.sampled_from(KEYS[key]), hostile_keys)
            doc[key] = {k: draw(values) for k in draw(st.lists(inner, unique=True, max_size=6))}
        elif key == "model_dir":
            doc[key] = draw(st.one_of(st.sampled_from(["models", ".", "/", "nope", ""]), values))
        else:
            doc[key] = draw(values)
    return doc


def _answer(path: Path) -> Config | ConfigError:
    try:
        return load(path)
    except ConfigError as exc:
        return exc


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(doc=documents())
def test_structured_documents_load_or_fail_with_key_paths(
    tmp_path: Path, doc: dict[str, Any]
) -> None:
    (tmp_path / "models").mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(doc))
    answer = _answer(path)
    if isinstance(answer, ConfigError):
        _one_printable_line_each(answer, path)
    else:
        assert answer.model_dir.is_dir()


def _one_printable_line_each(error: ConfigError, path: Path) -> None:
    assert error.problems
    for problem in error.problems:
        assert problem.startswith(f"{path}: "), problem
        # Printable: no newline, ESC, DEL, line separator or bidi mark got through unescaped.
        assert problem.isprintable(), problem


_OPEN = {"[": "]", "{a = ": "}"}


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    brackets=st.lists(st.sampled_from(sorted(_OPEN)), min_size=1, max_size=3000),
    key=st.sampled_from(["bogus", "model_dir", "retention.whitelist", "engine.gpu_layers"]),
)
def test_any_nesting_depth_is_one_error_line(tmp_path: Path, brackets: list[str], key: str) -> None:
    """Arrays and inline tables inside each other, as deep as 3000: one line, never a
    RecursionError (tomllib recurses once per level)."""
    (tmp_path / "models").mkdir(exist_ok=True)
    section, _, name = key.rpartition(".")
    inner = "1" if brackets[-1] != "[" else ""
    value = "".join(brackets) + inner + "".join(_OPEN[b] for b in reversed(brackets))
    head = 'model_dir = "models"\n' if key != "model_dir" else ""
    path = tmp_path / "config.toml"
    path.write_text(head + (f"[{section}]\n" if section else "") + f"{name} = {value}\n")
    answer = _answer(path)
    if len(brackets) + 1 + bool(section) > MAX_DEPTH:
        assert isinstance(answer, ConfigError)
        assert len(answer.problems) == 1, answer.problems
        assert "nested more than" in answer.problems[0]
    if isinstance(answer, ConfigError):
        _one_printable_line_each(answer, path)
    else:
        assert answer.retention.whitelist == ()  # "whitelist = []" is the one valid shape


_names = (f"c{n}" for n in itertools.count())


def _make_fifo(p: Path) -> None:
    os.mkfifo(p)


def _make_dir(p: Path) -> None:
    p.mkdir()


def _make_socket(p: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(p))


def _make_big(p: Path) -> None:
    p.write_bytes(b'model_dir = "models"\n' + b"#" * MAX_BYTES)


def _make_link_to_fifo(p: Path) -> None:
    _make_fifo(p.with_suffix(".fifo"))
    p.symlink_to(p.name + ".fifo")


NOT_CONFIGS: dict[str, Callable[[Path], object]] = {
    "fifo": _make_fifo,
    "directory": _make_dir,
    "socket": _make_socket,
    "too large": _make_big,
    "/dev/zero": lambda p: p.symlink_to("/dev/zero"),
    "/dev/null": lambda p: p.symlink_to("/dev/null"),
    "/dev/tty": lambda p: p.symlink_to("/dev/tty"),
    "dangling": lambda p: p.symlink_to(p.with_name("nowhere")),
    "link loop": lambda p: p.symlink_to(p),
    "link to fifo": _make_link_to_fifo,
}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kind=st.sampled_from(sorted(NOT_CONFIGS)))
def test_what_is_not_a_config_file_is_one_line_and_never_blocks(tmp_path: Path, kind: str) -> None:
    path = tmp_path / next(_names)
    NOT_CONFIGS[kind](path)
    answer = _answer(path)  # a FIFO or a tty that blocked would hang the test here
    assert isinstance(answer, ConfigError)
    assert len(answer.problems) == 1
    _one_printable_line_each(answer, path)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_arbitrary_bytes_never_raise_anything_but_config_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(raw)
    answer = _answer(path)
    assert isinstance(answer, Config | ConfigError)
    if isinstance(answer, ConfigError):
        _one_printable_line_each(answer, path)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(doc=documents())
def test_ocrd_check_answers_0_or_78_never_a_traceback(tmp_path: Path, doc: dict[str, Any]) -> None:
    (tmp_path / "models").mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(doc))
    env = {k: v for k, v in os.environ.items() if k != "OCRD_CONFIG"}
    result = subprocess.run(
        [*ocrd_argv(), "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode in (0, 78), result.stderr
    assert "Traceback" not in result.stderr
    if result.returncode == 78:
        assert all(line.startswith(f"{path}: ") for line in result.stderr.splitlines())
    else:
        assert "ok" in result.stdout
