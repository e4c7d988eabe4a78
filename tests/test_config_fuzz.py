"""Config fuzzing: no TOML document, however hostile, makes ocrd answer with a traceback."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocrd.config import Config, load
from ocrd.errors import ConfigError
from tests.daemon_harness import ocrd_argv

KEYS: dict[str, list[str]] = {
    "": ["model_dir", "retention", "watch", "engine", "log", "bogus"],
    "retention": ["prefixes", "max_age", "age_by", "whitelist", "dry_run", "extra"],
    "watch": ["settle", "rescan", "observer"],
    "engine": ["enabled", "gpu_layers", "context_size"],
    "log": ["level", "format"],
}

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
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
    for key in draw(st.lists(st.sampled_from(KEYS[""]), unique=True)):
        if key in KEYS and draw(st.booleans()):
            doc[key] = {
                k: draw(values) for k in draw(st.lists(st.sampled_from(KEYS[key]), unique=True))
            }
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
        assert answer.problems
        for problem in answer.problems:
            assert problem.startswith(f"{path}: "), problem
            assert "\n" not in problem
    else:
        assert answer.model_dir.is_dir()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_arbitrary_bytes_never_raise_anything_but_config_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(raw)
    answer = _answer(path)
    assert isinstance(answer, Config | ConfigError)


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
        assert f"{path}: " in result.stderr
    else:
        assert "ok" in result.stdout
