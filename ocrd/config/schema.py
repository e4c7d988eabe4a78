"""Turns config.toml into frozen typed objects, or one ConfigError that lists every problem."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import stat
import tomllib
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ocrd.base import log
from ocrd.base.errors import ConfigError
from ocrd.config.regexlint import backtracking
from ocrd.fs import access
from ocrd.fs.access import NoAccess
from ocrd.fs.procfs import Mount, mount_of

DEFAULT_CONFIG = "config.toml"
SYSTEM_CONFIG = Path("/etc/ocrd/config.toml")  # where `make install` puts it
MAX_BYTES = 1 << 20  # a real config is a few hundred bytes; this bounds what a wrong -c reads
MAX_DEPTH = 16  # tables and arrays inside each other; the schema itself needs 3
INT32_MAX = 2**31 - 1  # the engine's integers are .NET Int32: larger ones raise OverflowError

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_LONGEST = 100 * 365.25 * 86400.0  # beyond this a timer is meaningless (and float("inf") breaks)
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")


def parse_duration(text: object) -> float:
    """``"90s"``, ``"15m"``, ``"1h30m"`` → seconds. Bare numbers are refused: units matter."""
    if not isinstance(text, str):
        raise ValueError(f'{_show(text)} is not a duration: write a string with a unit, e.g. "30d"')
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
        raise ValueError(f"{_show(pattern)} is not a glob pattern: write a string")
    if not pattern or "\0" in pattern:
        raise ValueError(f"{quote(pattern)} is not a glob pattern: it is empty or holds a NUL byte")
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
        raise ValueError(f"{_show(prefix)} is not a prefix: write a string")
    if not prefix:
        raise ValueError('"" is not a prefix: it would match every file')
    if "/" in prefix or "\0" in prefix:
        raise ValueError(
            f'{quote(prefix)} is not a prefix: a file-name prefix cannot hold "/" or NUL'
        )
    return prefix


def _check_family(pattern: object) -> str:
    """A regular expression with a named group ``family``, searched in each relative path."""
    if not isinstance(pattern, str):
        raise ValueError(f"{_show(pattern)} is not a regular expression: write a string")
    if not pattern or "\0" in pattern:
        raise ValueError(f"{quote(pattern)} is not a family pattern: it is empty or holds NUL")
    try:
        compiled = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ValueError(f"{quote(pattern)} is not a regular expression: {exc}") from None
    if "family" not in compiled.groupindex:
        raise ValueError(
            f"{quote(pattern)} has no group named family: write the part that names the "
            r"family as (?P<family>...), e.g. '^(?P<family>.+)-v\d+\.gguf$'"
        )
    # Searched in names any user with write access to model_dir chooses: no shape whose
    # matching can take seconds on one of them (ocrd.config.regexlint).
    if (slow := backtracking(pattern)) is not None:
        raise ValueError(f"{quote(pattern)} can hang ocrd on a hostile file name: {slow}")
    return pattern


UID_MAX = 2**32 - 2  # (uid_t)-1 means "no change" to chown: no file is owned by it


def _check_owner(owner: object) -> int:
    """A user name (looked up now, in the passwd database) or a numeric uid → the uid."""
    if isinstance(owner, bool) or not isinstance(owner, (str, int)):
        raise ValueError(f"{_show(owner)} is not a user: write a user name or a numeric uid")
    if isinstance(owner, int):
        if not 0 <= owner <= UID_MAX:
            raise ValueError(f"{owner} is not a uid: between 0 and {UID_MAX}")
        return owner
    try:
        return pwd.getpwnam(owner).pw_uid
    except (KeyError, ValueError):  # ValueError: a name holding NUL
        raise ValueError(
            f"{quote(owner)} is no user on this host: write an existing user name "
            "(getent passwd) or a numeric uid"
        ) from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
Owner = Annotated[int, BeforeValidator(_check_owner)]


def parse_share(text: object) -> float:
    """``"50%"`` → 0.5; ``"100%"`` turns the guard off."""
    if not isinstance(text, str) or not re.fullmatch(r"\d+(\.\d+)?%", text.strip()):
        raise ValueError(f'{_show(text)} is not a share: write a percentage, e.g. "50%"')
    share = float(text.strip()[:-1]) / 100
    if not 0 < share <= 1:
        raise ValueError(f"{_show(text)} is not a share: between 0% and 100%, 0% excluded")
    return share


Share = Annotated[float, BeforeValidator(parse_share)]
Glob = Annotated[str, BeforeValidator(_check_glob)]
Prefix = Annotated[str, BeforeValidator(_check_prefix)]
FamilyPattern = Annotated[str, BeforeValidator(_check_family)]
MAX_KEEP = 1_000_000  # versions kept per family: beyond this, keep_newest is a typo for "off"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Retention(_Section):
    # TOML arrays arrive as lists; lax mode only here turns them into immutable tuples.
    prefixes: tuple[Prefix, ...] = Field(default=(), strict=False)
    max_age: Duration | None = Field(default=None, gt=0)
    age_by: Literal["mtime", "atime"] = "mtime"
    # Where a file's age counts from: "arrival" = the later of its age_by timestamp and its
    # arrival in model_dir (a copy or an archive keeps a vendor's old mtime, it is still new
    # here); "timestamp" = the age_by timestamp alone.
    age_from: Literal["arrival", "timestamp"] = "arrival"
    whitelist: tuple[Glob, ...] = Field(default=(), strict=False)
    dry_run: bool = False
    # When neither a lease nor /proc can tell whether a process holds a file: keep it (fail
    # closed), or, for a store whose other clients ocrd cannot see anyway, delete it.
    unknown_holders: Literal["keep", "delete"] = "keep"
    # A reload whose new rules would delete more than this share of the models (by count or
    # by bytes) beyond what the old rules delete is held until the operator confirms it.
    reload_guard: Share = 0.5
    # Keep the newest N versions of each family, delete the older ones; 0 = off. What a family
    # is and what "newest" means: ocrd.rules.families (by default, the path with digits ignored).
    keep_newest: int = Field(default=0, ge=0, le=MAX_KEEP)
    family: FamilyPattern | None = None
    # With families in use (keep_newest or family set), no rule deletes a family's last
    # version present; false lets every rule act alone again.
    keep_last_version: bool = True
    # A plan that would delete every model file under model_dir is refused unless this is true.
    allow_delete_all: bool = False
    # Users (names or uids) whose files may rank or vouch for anyone's, besides root and
    # model_dir's owner (ocrd.rules.trust); resolved to uids when the config is read.
    trusted_owners: tuple[Owner, ...] = Field(default=(), strict=False)


class Watch(_Section):
    settle: Duration = Field(default=5.0, ge=0)
    rescan: Duration = Field(default=600.0, ge=1)
    observer: Literal["auto", "inotify", "polling"] = "auto"


class Engine(_Section):
    enabled: bool = True
    gpu_layers: int = Field(default=0, ge=0, le=INT32_MAX)
    context_size: int | None = Field(default=None, gt=0, le=INT32_MAX)
    # Each free/start cycle costs the host a model reload. A deletion that becomes due while
    # the engine runs waits up to ``batch`` for others to share its cycle; once freed, the
    # engine starts again only after ``restart_after`` without deletions.
    batch: Duration = Field(default=2.0, ge=0)
    restart_after: Duration = Field(default=10.0, ge=0)


class Log(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console", "auto"] = "auto"


class Metrics(_Section):
    # Absolute after validate(); None: no metrics file.
    textfile: Path | None = None


class Config(_Section):
    """The whole configuration. ``model_dir`` is absolute; ``path`` is the file it came from."""

    path: Path
    model_dir: Path
    retention: Retention = Retention()
    watch: Watch = Watch()
    engine: Engine = Engine()
    log: Log = Log()
    metrics: Metrics = Metrics()

    def summary(self) -> str:
        r = self.retention
        rules = [f"prefixes=[{', '.join(quote(p) for p in r.prefixes)}]"]
        if r.max_age is not None:
            since = "in model_dir" if r.age_from == "arrival" else "alone"
            rules.append(f"max_age={format_duration(r.max_age)} by {r.age_by} ({since})")
        if r.keep_newest:
            rules.append(f"keep_newest={r.keep_newest}")
        rules.append(f"whitelist={len(r.whitelist)} pattern(s)")
        mode = "dry run" if r.dry_run else "deleting"
        engine = "engine on" if self.engine.enabled else "engine off"
        return (
            f"{plain(self.path)}: ok: model_dir={plain(self.model_dir)}, {', '.join(rules)}, "
            f"{mode}, {engine}"
        )


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
    data = _read(path, name)
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
        raise ConfigError([_too_deep(name)]) from exc
    if _depth(raw) > MAX_DEPTH:
        raise ConfigError([_too_deep(name)])
    return validate(raw, path)


def _read(path: Path, name: str) -> bytes:
    """The file's bytes, if it is a regular file (a symlink to one is fine) of at most MAX_BYTES.

    A FIFO would block the reader (and a daemon reloading it would stop answering signals), a
    device may never end (/dev/zero) or act on being opened: they are refused by stat() before
    any open(), and the opened file is checked again, so a swap in between is refused too.
    O_NONBLOCK makes even that racing open of a FIFO return at once."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError([_not_regular(name, st.st_mode)])
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError([_not_regular(name, st.st_mode)])
            untrusted = _untrusted(path, name, st)
            if untrusted:
                raise ConfigError(untrusted)
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_BYTES and (chunk := os.read(fd, MAX_BYTES + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror or exc}"]) from exc
    if size > MAX_BYTES:
        limit = MAX_BYTES >> 20
        raise ConfigError([f"{name}: larger than {limit} MiB: this is not an ocrd config file"])
    return b"".join(chunks)


def _untrusted(path: Path, name: str, st: os.stat_result) -> list[str]:
    """Why someone other than root and the user ocrd runs as could decide what it deletes
    (as sshd's StrictModes and logrotate refuse such files): the file is theirs, or they may
    write it, or they may replace it — a directory above it (as written, and as it resolves)
    that is theirs, or writable by group or others without the sticky bit (/tmp itself is fine
    for a file you own: the sticky bit keeps others from replacing it)."""
    me = os.geteuid()
    trusted = (0, me)
    problems = []
    if st.st_uid not in trusted:
        problems.append(
            f"{name}: owned by uid {st.st_uid}, neither root nor the user ocrd runs as "
            f"(uid {me}): its owner could make ocrd delete anything ocrd may; chown it"
        )
    if st.st_mode & 0o022:
        problems.append(
            f"{name}: writable by {_who(st.st_mode)} (mode {stat.S_IMODE(st.st_mode):04o}): "
            "anyone who may write it decides what ocrd deletes; chmod go-w it"
        )
    absolute = path.absolute()
    dirs = {*absolute.parents, *Path(os.path.realpath(absolute)).parents}
    for directory in sorted(dirs, key=lambda p: len(p.parts)):
        try:
            ds = os.stat(directory)
        except OSError:
            continue  # it resolved a moment ago; the open that follows will say what is wrong
        sticky = bool(ds.st_mode & stat.S_ISVTX)
        if ds.st_uid not in trusted:
            problems.append(
                f"{name}: the directory {plain(directory)} is owned by uid {ds.st_uid}, who "
                "could replace the file; move the config or chown the directory"
            )
        elif ds.st_mode & 0o022 and not sticky:
            problems.append(
                f"{name}: the directory {plain(directory)} is writable by "
                f"{_who(ds.st_mode)} without the sticky bit (mode "
                f"{stat.S_IMODE(ds.st_mode):04o}), so the file could be replaced; "
                "chmod go-w it or move the config"
            )
    return problems


def _who(mode: int) -> str:
    return " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if mode & bit)


SERVICE_USER = "ocrd"  # the user the shipped unit runs as (systemd/ocrd.sysusers)


def _trusted() -> tuple[frozenset[int], frozenset[int]]:
    """The uids and gids that may write where ocrd writes: root, the user and group ocrd runs
    as, and the service user and its group (so that ``ocrd check`` run as root judges as the
    daemon will)."""
    uids, gids = {0, os.geteuid()}, {0, os.getegid()}
    with suppress(KeyError):
        service = pwd.getpwnam(SERVICE_USER)
        uids.add(service.pw_uid)
        gids.add(service.pw_gid)
    return frozenset(uids), frozenset(gids)


def writers_beyond(st: os.stat_result) -> str | None:
    """Who, besides root and ocrd's own user, may create, rename or remove entries in the
    directory ``st`` describes (and so plant a link or a file where ocrd writes), or None.
    A group may write only if it is root's or ocrd's own, with no other user in it; the
    sticky bit does not help: it stops no one from creating a name ocrd is about to use."""
    uids, gids = _trusted()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in uids:
        return f"owned by uid {st.st_uid}, neither root nor ocrd's user"
    if mode & 0o002:
        return f"writable by others (mode {mode:04o})"
    if mode & 0o020:
        if st.st_gid not in gids:
            return f"writable by group {st.st_gid}, which is not ocrd's (mode {mode:04o})"
        if (other := _other_member(st.st_gid, uids)) is not None:
            return f"writable by group {st.st_gid}, which has {other} in it (mode {mode:04o})"
    return None


def _other_member(gid: int, uids: frozenset[int]) -> str | None:
    """A user in group ``gid`` (by the group's list, or as their own group) outside ``uids``."""
    try:
        members = grp.getgrgid(gid).gr_mem
    except KeyError:
        members = []
    for member in members:
        try:
            uid = pwd.getpwnam(member).pw_uid
        except KeyError:
            return f"the unknown user {member!r}"
        if uid not in uids:
            return f"user {member!r}"
    for user in pwd.getpwall():
        if user.pw_gid == gid and user.pw_uid not in uids:
            return f"user {user.pw_name!r}"
    return None


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _not_regular(name: str, mode: int) -> str:
    kind = _KINDS.get(stat.S_IFMT(mode), "not a file")
    return f"{name}: is {kind}, not a regular file: point -c or $OCRD_CONFIG at the config file"


def _too_deep(name: str) -> str:
    return (
        f"{name}: arrays or tables nested more than {MAX_DEPTH} levels deep: "
        "an ocrd config needs 3 at most"
    )


def _depth(value: object) -> int:
    """How many tables and arrays sit inside each other in ``value``; iterative, so any depth
    is measured without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Iterator[object] = iter(item.values())
        elif isinstance(item, list):
            children = iter(item)
        else:
            continue
        deepest = max(deepest, level + 1)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


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
        problems.append(f"{name}: at 'model_dir': {_show(model_dir)} is not a path: write a string")
        raw = {**raw, "model_dir": Path("/")}  # placeholder so the schema reports the rest only
    metrics = raw.get("metrics")
    if isinstance(metrics, dict) and "textfile" in metrics:
        textfile = metrics["textfile"]
        if isinstance(textfile, str):
            problems.extend(_textfile_problems(name, textfile, base))
            metrics = {**metrics, "textfile": _resolve(base, textfile)}
        else:
            problems.append(
                f"{name}: at 'metrics.textfile': {_show(textfile)} is not a path: write a string"
            )
            metrics = {k: v for k, v in metrics.items() if k != "textfile"}
        raw = {**raw, "metrics": metrics}
    try:
        config = Config.model_validate({**raw, "path": path})
    except ValidationError as exc:
        problems.extend(_describe(name, err) for err in exc.errors())
        config = None
    if config is not None and not problems and (atime := _atime_problem(config)) is not None:
        problems.append(f"{name}: at 'retention.age_by': {atime}")
    if denied is not None and problems == list(denied.problems):
        raise denied  # the config is fine, this user may not read model_dir: exit 77, not 78
    if problems:
        raise ConfigError(sorted(set(problems), key=problems.index))
    assert config is not None
    return config


def _model_dir_mount(model_dir: Path) -> Mount | None:
    return mount_of(os.fsencode(model_dir))


def _atime_problem(config: Config) -> str | None:
    """Ageing by atime on a noatime mount: atime never moves, so every file looks unread since
    it was created, and a model read all day would be deleted as unused."""
    r = config.retention
    if r.age_by != "atime" or r.max_age is None:
        return None
    mount = _model_dir_mount(config.model_dir)
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
    uids, _ = _trusted()
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
            who = f"writable by {_who(ds.st_mode)} without the sticky bit (mode {mode:04o})"
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


def _describe(name: str, err: Any) -> str:
    key = key_path(err["loc"])
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
    elif kind == "less_than_equal" and key == "retention.keep_newest":
        what = (
            f"{_show(value)} is more versions than any family holds (at most {MAX_KEEP}): "
            "write the number to keep, or 0 (or nothing) to turn the rule off"
        )
    elif kind == "greater_than_equal" and key == "retention.keep_newest":
        what = f"{_show(value)} is negative: write the number of versions to keep, 0 = off"
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
    """A value as it would be written in TOML, on one line, shortened if long. Every character
    that is not printable (controls, ESC, DEL, line and paragraph separators, bidi and other
    format characters, stray surrogates) is a TOML escape, so what is shown is what is there."""
    text = json.dumps(str(value), ensure_ascii=False)
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
    return text if len(text) <= limit else text[: limit - 2] + '…"'


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_path(loc: tuple[str | int, ...]) -> str:
    """A key path as TOML writes it: ``retention.whitelist[0]``, with any key that is not a
    bare key quoted and escaped as values are (``bogus."a\\nb"``)."""
    text = ""
    for p in loc:
        if isinstance(p, int):
            text += f"[{p}]"
        else:
            text += ("." if text else "") + (p if _BARE_KEY.fullmatch(p) else quote(p))
    return text


def plain(value: object) -> str:
    """A path or name as it is, unless it holds anything unprintable: then quoted and escaped."""
    text = str(value)
    return text if text.isprintable() else quote(text, limit=4096)


def _show(value: object) -> str:
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


# --- lint: valid rules that cannot mean what they say -----------------------------------------

DAY_S = 86_400.0
SHORT_AGE = 60.0  # a max_age under a minute deletes models as they arrive: a slip of a unit


class Lint(NamedTuple):
    """A warning about a valid config: reported by ``check``, at start-up and on reload."""

    key: str
    message: str

    def line(self, path: Path) -> str:
        return f"{plain(path)}: warning: at '{self.key}': {self.message}"


def lint(config: Config) -> list[Lint]:
    """Every rule in ``config`` that is valid but cannot do what it says, one Lint each."""
    found = [
        Lint(f"retention.whitelist[{i}]", why)
        for i, pattern in enumerate(config.retention.whitelist)
        if (why := _never_matches(pattern, config.model_dir)) is not None
    ]
    max_age, settle = config.retention.max_age, config.watch.settle
    if max_age is not None and settle > 0 and max_age <= settle:
        found.append(
            Lint(
                "retention.max_age",
                f"{format_duration(max_age)} is not longer than watch.settle "
                f"({format_duration(settle)}): every model is deleted as soon as it settles",
            )
        )
    elif max_age is not None and max_age < SHORT_AGE:
        found.append(
            Lint(
                "retention.max_age",
                f"{format_duration(max_age)} deletes every model under a minute after it last "
                'changed: check the unit ("1ms" is a millisecond, "1m" a minute, "1d" a day)',
            )
        )
    found.extend(_family_lints(config.retention))
    if max_age is not None and config.retention.age_by == "atime" and max_age < DAY_S:
        mount = _model_dir_mount(config.model_dir)
        if mount is not None and mount.atime == "relatime":
            found.append(
                Lint(
                    "retention.age_by",
                    f"model_dir is on {plain(os.fsdecode(mount.point))}, mounted relatime: a "
                    "read updates atime only if it is older than the last change or than a day, "
                    f"so a model read all the time can look unread for a day, longer than "
                    f"max_age ({format_duration(max_age)}): remount with strictatime, or use a "
                    "max_age of a day or more",
                )
            )
    return found


MANY_VERSIONS = 1000  # keep_newest beyond this keeps every version of any real family


def _family_lints(r: Retention) -> list[Lint]:
    found = []
    if r.family is not None and not r.keep_newest and not r.keep_last_version:
        found.append(
            Lint(
                "retention.family",
                "has no effect: families matter only to keep_newest and keep_last_version, "
                "and neither is on",
            )
        )
    if r.keep_newest > MANY_VERSIONS:
        found.append(
            Lint(
                "retention.keep_newest",
                f"{r.keep_newest} keeps more versions than a model directory holds of any "
                "model: it deletes nothing; did you mean a smaller number?",
            )
        )
    return found


def log_warnings(config: Config, warnings: list[Lint] | None = None) -> None:
    """One ``config_warning`` event per lint of ``config``."""
    for w in lint(config) if warnings is None else warnings:
        log.get().warning("config_warning", config=str(config.path), key=w.key, warning=w.message)


def _never_matches(pattern: str, model_dir: Path) -> str | None:
    """Why a whitelist pattern can match no file under model_dir, or None. Only patterns with
    "/" can fail this way: they match the path relative to model_dir, which never starts with
    "./" or the directory's own name, never ends in "/" and holds no "." or ".." component."""
    if "/" not in pattern:
        return None
    parts = pattern.split("/")
    shown = quote(pattern)
    if parts[0] == "." and len(parts) > 1:
        rest = quote("/".join(parts[1:]).lstrip("/"))
        return f'{shown} never matches: paths are relative to model_dir, without "./"; write {rest}'
    if parts[-1] == "":
        return (
            f"{shown} never matches: the whitelist matches files, not directories; "
            f"write {quote(pattern.rstrip('/') + '/*')} to protect everything under it"
        )
    if any(p in (".", "..") for p in parts):
        return f'{shown} never matches: paths under model_dir hold no "." or ".." component'
    if "" in parts:
        return f'{shown} never matches: paths under model_dir hold no empty component ("//")'
    own = {model_dir.name, os.path.basename(os.path.realpath(model_dir))}
    if parts[0] in own and not (model_dir / parts[0]).is_dir():
        rest = quote("/".join(parts[1:]))
        return (
            f"{shown} never matches: paths are relative to model_dir, so they do not start "
            f"with its own name {quote(parts[0])}; write {rest}"
        )
    return None
