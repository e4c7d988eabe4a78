"""Turns config.toml into frozen typed objects, or one ConfigError that lists every problem."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ocrd.errors import ConfigError

DEFAULT_CONFIG = "config.toml"

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_LONGEST = 100 * 365.25 * 86400.0  # beyond this a timer is meaningless (and float("inf") breaks)
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")


def parse_duration(text: object) -> float:
    """``"90s"``, ``"15m"``, ``"1h30m"`` → seconds. Bare numbers are refused: units matter."""
    if not isinstance(text, str):
        raise ValueError(f'{text!r} is not a duration: write a string with a unit, e.g. "30d"')
    compact = text.strip()
    if not _DURATION.fullmatch(compact):
        raise ValueError(
            f"{quote(text)} is not a duration: use a number and one of ms, s, m, h, d, w"
        )
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(compact))
    if not seconds < _LONGEST:
        raise ValueError(f"{quote(text)} is too long a duration: at most 100 years")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for summaries (``2592000`` → ``"30d"``)."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def approx_duration(seconds: float) -> str:
    """For reading, not parsing: days, hours or minutes once there are two (``41d``, ``3h``)."""
    if seconds < 0:
        return "future"
    for unit in ("d", "h", "m"):
        if seconds >= 2 * _UNIT_SECONDS[unit]:
            return f"{int(seconds // _UNIT_SECONDS[unit])}{unit}"
    return f"{int(seconds)}s"


def _check_glob(pattern: object) -> str:
    if not isinstance(pattern, str):
        raise ValueError(f"{pattern!r} is not a glob pattern: write a string")
    if not pattern or "\0" in pattern:
        raise ValueError(f"{pattern!r} is not a glob pattern: it is empty or holds a NUL byte")
    if pattern.startswith("/"):
        raise ValueError(f"{quote(pattern)} is not a glob: patterns are relative to model_dir")
    i = 0
    while (i := pattern.find("[", i)) >= 0:
        start = i + 1
        start += pattern[start : start + 1] == "!"
        start += pattern[start : start + 1] == "]"  # "[]]" and "[!]]" hold a literal "]"
        end = pattern.find("]", start)
        if end < 0:
            raise ValueError(f'{quote(pattern)} is not a glob: "[" at offset {i} is never closed')
        i = end + 1
    return pattern


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise ValueError(f"{prefix!r} is not a prefix: write a string")
    if not prefix:
        raise ValueError('"" is not a prefix: it would match every file')
    if "/" in prefix or "\0" in prefix:
        raise ValueError(
            f'{quote(prefix)} is not a prefix: a file-name prefix cannot hold "/" or NUL'
        )
    return prefix


Duration = Annotated[float, BeforeValidator(parse_duration)]
Glob = Annotated[str, BeforeValidator(_check_glob)]
Prefix = Annotated[str, BeforeValidator(_check_prefix)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Retention(_Section):
    # TOML arrays arrive as lists; lax mode only here turns them into immutable tuples.
    prefixes: tuple[Prefix, ...] = Field(default=(), strict=False)
    max_age: Duration | None = Field(default=None, gt=0)
    age_by: Literal["mtime", "atime"] = "mtime"
    whitelist: tuple[Glob, ...] = Field(default=(), strict=False)
    dry_run: bool = False
    # When neither a lease nor /proc can tell whether a process holds a file: keep it (fail
    # closed), or, for a store whose other clients ocrd cannot see anyway, delete it.
    unknown_holders: Literal["keep", "delete"] = "keep"


class Watch(_Section):
    settle: Duration = Field(default=5.0, ge=0)
    rescan: Duration = Field(default=600.0, ge=1)
    observer: Literal["auto", "inotify", "polling"] = "auto"


class Engine(_Section):
    enabled: bool = True
    gpu_layers: int = Field(default=0, ge=0)
    context_size: int | None = Field(default=None, gt=0)
    # Each free/start cycle costs the host a model reload. A deletion that becomes due while
    # the engine runs waits up to ``batch`` for others to share its cycle; once freed, the
    # engine starts again only after ``restart_after`` without deletions.
    batch: Duration = Field(default=2.0, ge=0)
    restart_after: Duration = Field(default=10.0, ge=0)


class Log(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console", "auto"] = "auto"


class Config(_Section):
    """The whole configuration. ``model_dir`` is absolute; ``path`` is the file it came from."""

    path: Path
    model_dir: Path
    retention: Retention = Retention()
    watch: Watch = Watch()
    engine: Engine = Engine()
    log: Log = Log()

    def summary(self) -> str:
        r = self.retention
        rules = [f"prefixes={list(r.prefixes)}"]
        if r.max_age is not None:
            rules.append(f"max_age={format_duration(r.max_age)} by {r.age_by}")
        rules.append(f"whitelist={len(r.whitelist)} pattern(s)")
        mode = "dry run" if r.dry_run else "deleting"
        engine = "engine on" if self.engine.enabled else "engine off"
        return f"{self.path}: ok: model_dir={self.model_dir}, {', '.join(rules)}, {mode}, {engine}"


def default_path() -> Path:
    """``$OCRD_CONFIG``, else ``config.toml`` in the working directory."""
    return Path(os.environ.get("OCRD_CONFIG") or DEFAULT_CONFIG)


def load(path: Path) -> Config:
    """Read and validate ``path``; a ConfigError names the file and every key path at fault."""
    name = str(path)
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        problem = f"{name}: not UTF-8 text (byte {exc.start}): TOML must be UTF-8"
        raise ConfigError([problem]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{name}: not valid TOML: {exc}"]) from exc
    return validate(raw, path)


def validate(raw: dict[str, Any], path: Path) -> Config:
    """Validate a parsed TOML document as if it were read from ``path``."""
    name = str(path)
    problems: list[str] = []
    if "path" in raw:
        problems.append(f"{name}: at 'path': unknown key")
        raw = {k: v for k, v in raw.items() if k != "path"}
    base = path.absolute().parent
    model_dir = raw.get("model_dir")
    if isinstance(model_dir, str):
        problems.extend(_model_dir_problems(name, model_dir, base))
        raw = {**raw, "model_dir": _resolve(base, model_dir)}
    elif "model_dir" in raw:
        problems.append(f"{name}: at 'model_dir': {_show(model_dir)} is not a path: write a string")
        raw = {**raw, "model_dir": Path("/")}  # placeholder so the schema reports the rest only
    try:
        config = Config.model_validate({**raw, "path": path})
    except ValidationError as exc:
        problems.extend(_describe(name, err) for err in exc.errors())
        config = None
    if problems:
        raise ConfigError(sorted(set(problems), key=problems.index))
    assert config is not None
    return config


def _resolve(base: Path, value: str) -> Path:
    # normpath, not resolve(): a symlinked model_dir is the operator's choice and stays as written.
    return Path(os.path.normpath(base / os.path.expanduser(value)))


def _model_dir_problems(name: str, value: str, base: Path) -> list[str]:
    where = f"{name}: at 'model_dir'"
    if not value or "\0" in value:
        return [f"{where}: {value!r} is not a path"]
    resolved = _resolve(base, value)
    if resolved == Path("/") or os.path.realpath(resolved) == "/":
        return [f"{where}: {quote(value)} is the root directory; ocrd will not manage /"]
    # The resolved path is shown whole (PATH_MAX bounds it): its last components are the very
    # thing the operator has to fix, and shortening would cut exactly those off.
    shown = quote(resolved, limit=4096)
    if not resolved.exists():
        return [f"{where}: {shown} does not exist; create it or fix the path"]
    if not resolved.is_dir():
        return [f"{where}: {shown} is not a directory"]
    return []


def _describe(name: str, err: Any) -> str:
    loc = err["loc"]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    kind = err["type"]
    value = err.get("input")
    if kind == "missing":
        what = "is required"
    elif kind == "extra_forbidden":
        what = "unknown key"
    elif kind in {"tuple_type", "list_type"}:
        what = f'{_show(value)} is not an array: write ["...", ...]'
    elif kind == "value_error":
        what = str(err["ctx"]["error"])
    elif kind in {"greater_than", "greater_than_equal"} and key in {
        "retention.max_age",
        "watch.settle",
        "watch.rescan",
    }:
        limit = err["ctx"].get("gt", err["ctx"].get("ge"))
        bound = "more than" if kind == "greater_than" else "at least"
        what = f"must be {bound} {format_duration(limit)}"
    else:
        what = f"{_show(value)}: {err['msg'][0].lower()}{err['msg'][1:]}"
    return f"{name}: at '{key}': {what}"


def quote(value: object, limit: int = 60) -> str:
    """A value as it would be written in TOML, on one line, shortened if long."""
    text = json.dumps(str(value), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 2] + '…"'


def _show(value: object) -> str:
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)
