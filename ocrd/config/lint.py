"""Warnings about a valid config that may not mean what it says: rules that never match, ages
shorter than a download, families that keep too much."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from ocrd.base import log
from ocrd.config.durations import format_duration
from ocrd.config.load import model_dir_mount
from ocrd.config.schema import Config, Retention
from ocrd.config.text import plain, quote

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
        mount = model_dir_mount(config.model_dir)
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
