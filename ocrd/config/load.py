"""config.toml into a Config: where it is looked for, read when it can be trusted, validated all
at once, and model_dir and the metrics file checked where they are."""

from __future__ import annotations

import os
import pwd
import stat
import tomllib
from contextlib import suppress
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ocrd.base.errors import ConfigError
from ocrd.config.schema import Config, describe
from ocrd.config.text import plain, quote, show
from ocrd.config.trusted import (
    MAX_DEPTH,
    depth,
    read_trusted,
    too_deep,
    trusted_by,
    writers,
    writers_beyond,
)
from ocrd.fs import access
from ocrd.fs.access import NoAccess
from ocrd.fs.procfs import Mount, mount_of

DEFAULT_CONFIG = "config.toml"


SYSTEM_CONFIG = Path("/etc/ocrd/config.toml")  # where `make install` puts it


def default_path() -> Path:
    """The config when no ``-c`` names one: ``$OCRD_CONFIG``, else ``config.toml`` in the
    working directory if there is one, else the installed SYSTEM_CONFIG if there is one, else
    ``config.toml`` (for the error message to name)."""
    if named := os.environ.get("OCRD_CONFIG"):
        return Path(named)
    here = Path(DEFAULT_CONFIG)
    if not os.path.lexists(here) and os.path.lexists(SYSTEM_CONFIG):
        return SYSTEM_CONFIG
    return here


def load(path: Path) -> Config:
    """Read and validate ``path``; a ConfigError names the file and every key path at fault.
    Nothing else escapes: any file, however hostile, is one ConfigError."""
    name = plain(path)
    data = read_trusted(path, name)
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problem = f"{name}: not UTF-8 text (byte {exc.start}): TOML must be UTF-8"
        raise ConfigError([problem]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{name}: not valid TOML: {exc}"]) from exc
    except ValueError as exc:  # an integer of more than 4300 digits (int()'s own limit)
        what = str(exc).partition(";")[0]
        raise ConfigError([f"{name}: not valid TOML: {what}"]) from exc
    except RecursionError as exc:  # tomllib recurses once per nested array or inline table
        raise ConfigError([too_deep(name)]) from exc
    if depth(raw) > MAX_DEPTH:
        raise ConfigError([too_deep(name)])
    return validate(raw, path)


def validate(raw: dict[str, Any], path: Path) -> Config:
    """Validate a parsed TOML document as if it were read from ``path``."""
    name = plain(path)
    problems: list[str] = []
    if "path" in raw:
        problems.append(f"{name}: at 'path': unknown key")
        raw = {k: v for k, v in raw.items() if k != "path"}
    base = path.absolute().parent
    model_dir = raw.get("model_dir")
    denied: NoAccess | None = None
    if isinstance(model_dir, str):
        try:
            problems.extend(_model_dir_problems(name, model_dir, base))
        except NoAccess as exc:  # the rest is still checked: a wrong key is worth knowing too
            denied = exc
            problems.extend(exc.problems)
        raw = {**raw, "model_dir": _resolve(base, model_dir)}
    elif "model_dir" in raw:
        problems.append(f"{name}: at 'model_dir': {show(model_dir)} is not a path: write a string")
        raw = {**raw, "model_dir": Path("/")}  # placeholder so the schema reports the rest only
    metrics = raw.get("metrics")
    if isinstance(metrics, dict) and "textfile" in metrics:
        textfile = metrics["textfile"]
        if isinstance(textfile, str):
            problems.extend(_textfile_problems(name, textfile, base))
            metrics = {**metrics, "textfile": _resolve(base, textfile)}
        else:
            problems.append(
                f"{name}: at 'metrics.textfile': {show(textfile)} is not a path: write a string"
            )
            metrics = {k: v for k, v in metrics.items() if k != "textfile"}
        raw = {**raw, "metrics": metrics}
    try:
        config = Config.model_validate({**raw, "path": path})
    except ValidationError as exc:
        problems.extend(describe(name, err) for err in exc.errors())
        config = None
    if config is not None and not problems and (atime := _atime_problem(config)) is not None:
        problems.append(f"{name}: at 'retention.age_by': {atime}")
    if denied is not None and problems == list(denied.problems):
        raise denied  # the config is fine, this user may not read model_dir: exit 77, not 78
    if problems:
        raise ConfigError(sorted(set(problems), key=problems.index))
    assert config is not None
    return config


def model_dir_mount(model_dir: Path) -> Mount | None:
    return mount_of(os.fsencode(model_dir))


def _atime_problem(config: Config) -> str | None:
    """Ageing by atime on a noatime mount: atime never moves, so every file looks unread since
    it was created, and a model read all day would be deleted as unused."""
    r = config.retention
    if r.age_by != "atime" or r.max_age is None:
        return None
    mount = model_dir_mount(config.model_dir)
    if mount is None or mount.atime != "noatime":
        return None
    return (
        f'"atime" cannot age files here: model_dir is on {plain(os.fsdecode(mount.point))}, '
        "mounted noatime, where reading a file never updates its atime (every model would look "
        'unread): use age_by = "mtime", or remount with relatime or strictatime'
    )


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
    if (system := _system_directory(resolved)) is not None:
        return [
            f"{where}: {quote(value)} is {system}, not a model directory; ocrd will not "
            "manage it: point model_dir at a directory that holds only models"
        ]
    # The resolved path is shown whole (PATH_MAX bounds it): its last components are the very
    # thing the operator has to fix, and shortening would cut exactly those off.
    shown = quote(resolved, limit=4096)
    # First: exists() cannot tell "absent" from "not yours to see".
    if (denial := access.denied(resolved)) is not None:
        raise NoAccess(
            f"{where}: {shown} cannot be read by {access.me()}: {denial.why()}: run ocrd as a "
            "user who may read it",
            denial,
        )
    if not resolved.exists():
        return [f"{where}: {shown} does not exist; create it or fix the path"]
    if not resolved.is_dir():
        return [f"{where}: {shown} is not a directory"]
    return []


def _textfile_problems(name: str, value: str, base: Path) -> list[str]:
    """The metrics file: node_exporter's textfile collector reads only ``*.prom`` files, and
    the file is renamed into place, so its directory must already exist."""
    where = f"{name}: at 'metrics.textfile'"
    if not value or "\0" in value:
        return [f"{where}: {value!r} is not a path"]
    resolved = _resolve(base, value)
    shown = quote(resolved, limit=4096)
    if not resolved.name.endswith(".prom") or resolved.name == ".prom":
        return [f"{where}: {shown} does not end in .prom: node_exporter reads only *.prom files"]
    if not resolved.parent.is_dir():
        return [f"{where}: directory {quote(resolved.parent, limit=4096)} does not exist"]
    if resolved.is_dir():
        return [f"{where}: {shown} is a directory; name the file, e.g. ocrd.prom"]
    return _textfile_dir_problems(where, resolved.parent)


def _textfile_dir_problems(where: str, directory: Path) -> list[str]:
    """ocrd writes the textfile as root, perhaps (the README's advice on overlayfs): no one
    else may be able to choose what that write lands on. The writer (ocrd.daemon.metrics) never
    follows a link at the directory or in it; here, the directory must be writable by root
    and ocrd only, and every directory above it that is looked up through (all but its
    parent, whose entry the writer opens without following a link) must be one only they can
    change, as for the config's own directories."""
    shown = quote(directory, limit=4096)
    if directory.is_symlink():
        real = quote(os.path.realpath(directory), limit=4096)
        return [
            f"{where}: the directory {shown} is a symbolic link (to {real}): ocrd writes "
            "through no link; name the directory itself"
        ]
    try:
        who = writers_beyond(os.stat(directory))
    except OSError as exc:
        return [f"{where}: cannot stat the directory {shown}: {exc.strerror or exc}"]
    problems = []
    if who is not None:
        problems.append(
            f"{where}: the directory {shown} is {who}: whoever may write it can plant links "
            "where ocrd writes; chown root:root and chmod 0755 the directory, or use a "
            "directory only root and ocrd's user can write"
        )
    uids, _ = trusted_by()
    above = {*directory.parent.parents, *Path(os.path.realpath(directory)).parent.parents}
    for parent in sorted(above, key=lambda p: len(p.parts)):
        try:
            ds = os.stat(parent)
        except OSError:
            continue
        if ds.st_uid not in uids:
            who = f"owned by uid {ds.st_uid}"
        elif ds.st_mode & 0o022 and not ds.st_mode & stat.S_ISVTX:
            mode = stat.S_IMODE(ds.st_mode)
            who = f"writable by {writers(ds.st_mode)} without the sticky bit (mode {mode:04o})"
        else:
            continue
        problems.append(
            f"{where}: the directory {plain(parent)} above it is {who}, who could swap the "
            "path for a link; chown root:root and chmod go-w it, or move the textfile"
        )
    return problems


_SYSTEM_DIRS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var",
)


def _system_directory(model_dir: Path) -> str | None:
    """What makes ``model_dir`` a directory ocrd must not manage, or None. Compared after
    realpath on both sides: "/bin" is "/usr/bin" on a merged-/usr system, a link is its target.
    A retention rule there (``max_age``, a prefix) would delete the system or a user's files."""
    candidates: list[tuple[str, str]] = [(d, f"the system directory {d}") for d in _SYSTEM_DIRS]
    with suppress(OSError):  # an unreadable / leaves the fixed list above
        lib = [d for d in os.listdir("/") if d.startswith("lib")]  # /lib*: lib32, libexec, ...
        candidates += [(f"/{d}", f"the system directory /{d}") for d in lib]
    home = os.environ.get("HOME", "")
    if os.path.isabs(home):
        candidates.append((home, "$HOME"))
    with suppress(KeyError):  # a uid with no passwd entry (containers) has no home to protect
        candidates.append((pwd.getpwuid(os.getuid()).pw_dir, "the home of the running user"))
    real = os.path.realpath(model_dir)
    for path, what in candidates:
        if real in (os.path.normpath(path), os.path.realpath(path)):
            return what
    return None
