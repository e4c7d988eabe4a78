"""The config's schema: frozen typed sections, each value checked where it is declared, and the
text of each problem a value can have."""

from __future__ import annotations

import pwd
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
)

from ocrd.config.durations import INT32_MAX, format_duration, parse_duration
from ocrd.config.regexlint import backtracking
from ocrd.config.sizes import Amount, parse_amount, parse_size
from ocrd.config.text import key_path, plain, quote, show


def _check_glob(pattern: object) -> str:
    if not isinstance(pattern, str):
        raise ValueError(f"{show(pattern)} is not a glob pattern: write a string")
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
        raise ValueError(f"{show(prefix)} is not a prefix: write a string")
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
        raise ValueError(f"{show(pattern)} is not a regular expression: write a string")
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
        raise ValueError(f"{show(owner)} is not a user: write a user name or a numeric uid")
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
        raise ValueError(f'{show(text)} is not a share: write a percentage, e.g. "50%"')
    share = float(text.strip()[:-1]) / 100
    if not 0 < share <= 1:
        raise ValueError(f"{show(text)} is not a share: between 0% and 100%, 0% excluded")
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


def _size(text: object) -> Amount:
    return Amount(size=parse_size(text))


def _headroom(text: object) -> Amount:
    return parse_amount(text, allow_zero=True)


# Said in the config's own words wherever a config is dumped (a reload's diff).
_AS_TEXT = PlainSerializer(Amount.text, return_type=str)


class Budget(_Section):
    """The disk budget (docs/budget.md): absent limits are no limits."""

    # Model files under model_dir (each inode once) may take at most this.
    max_size: Annotated[Amount, PlainValidator(_size), _AS_TEXT] | None = None
    # Keep this much free on model_dir's filesystem: a size, or a share of the filesystem.
    min_free: Annotated[Amount, PlainValidator(parse_amount), _AS_TEXT] | None = None
    # Once a limit is crossed, free this much past it: a size, or a share of the limit.
    headroom: Annotated[Amount, PlainValidator(_headroom), _AS_TEXT] = Amount(share=0.05)

    @property
    def active(self) -> bool:
        return self.max_size is not None or self.min_free is not None


class State(_Section):
    # Where last use is kept (absolute after validate()); None: the default place
    # (ocrd.fs.statefile.default_path).
    path: Path | None = None


class Trash(_Section):
    # How long a deleted file stays in model_dir/.ocrd-trash, restorable, before it is purged
    # (docs/trash.md); 0: a deletion unlinks at once.
    grace: Duration = Field(default=0.0, ge=0)


class Config(_Section):
    """The whole configuration. ``model_dir`` is absolute; ``path`` is the file it came from."""

    path: Path
    model_dir: Path
    retention: Retention = Retention()
    watch: Watch = Watch()
    engine: Engine = Engine()
    log: Log = Log()
    metrics: Metrics = Metrics()
    budget: Budget = Budget()
    state: State = State()
    trash: Trash = Trash()

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


# --- lint: valid rules that cannot mean what they say -----------------------------------------


def describe(name: str, err: Any) -> str:
    key = key_path(err["loc"])
    kind = err["type"]
    value = err.get("input")
    if kind == "missing":
        what = "is required"
    elif kind == "extra_forbidden":
        what = "unknown key"
    elif kind in {"tuple_type", "list_type"}:
        what = f'{show(value)} is not an array: write ["...", ...]'
    elif kind == "value_error":
        what = str(err["ctx"]["error"])
    elif kind == "less_than_equal" and key == "retention.keep_newest":
        what = (
            f"{show(value)} is more versions than any family holds (at most {MAX_KEEP}): "
            "write the number to keep, or 0 (or nothing) to turn the rule off"
        )
    elif kind == "greater_than_equal" and key == "retention.keep_newest":
        what = f"{show(value)} is negative: write the number of versions to keep, 0 = off"
    elif kind in {"greater_than", "greater_than_equal"} and key in {
        "retention.max_age",
        "watch.settle",
        "watch.rescan",
    }:
        limit = err["ctx"].get("gt", err["ctx"].get("ge"))
        bound = "more than" if kind == "greater_than" else "at least"
        what = f"must be {bound} {format_duration(limit)}"
    else:
        what = f"{show(value)}: {err['msg'][0].lower()}{err['msg'][1:]}"
    return f"{name}: at '{key}': {what}"
