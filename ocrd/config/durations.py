"""Durations as config.toml writes them ("30d", "1h30m") and as people read them back."""

from __future__ import annotations

import re

from ocrd.config.text import quote, show

INT32_MAX = 2**31 - 1  # the engine's integers are .NET Int32: larger ones raise OverflowError


_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


_LONGEST = 100 * 365.25 * 86400.0  # beyond this a timer is meaningless (and float("inf") breaks)


_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")


def parse_duration(text: object) -> float:
    """``"90s"``, ``"15m"``, ``"1h30m"`` → seconds. Bare numbers are refused: units matter."""
    if not isinstance(text, str):
        raise ValueError(f'{show(text)} is not a duration: write a string with a unit, e.g. "30d"')
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
