"""Sizes in the config: ``"200 GiB"`` to bytes and back, and amounts that are a size or a share
(``min_free = "10%"``), each refusal naming the spelling to use."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

from ocrd.config.text import show

_UNITS = {
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "pib": 1 << 50,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
}
_AMBIGUOUS = {"k", "m", "g", "t", "p"}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]+)")
_LARGEST = 1 << 62  # beyond any filesystem; keeps every sum an exact int in SQLite and JSON
_UNIT_HELP = (
    "write a number and a unit: B, KiB, MiB, GiB, TiB (powers of 1024) "
    "or KB, MB, GB, TB (powers of 1000)"
)


def parse_size(text: object, *, allow_zero: bool = False) -> int:
    """``"200 GiB"`` → bytes. Bare numbers are refused (units matter), and so are ``"G"`` and
    its kin, which some tools read as 1000³ and others as 1024³."""
    if not isinstance(text, str):
        raise ValueError(f'{show(text)} is not a size: write a string with a unit, e.g. "200 GiB"')
    compact = text.strip()
    if compact.endswith("%"):
        raise ValueError(
            f'{show(text)} is a percentage: this key takes a size with a unit, e.g. "200 GiB"'
        )
    match = _SIZE.fullmatch(compact)
    if match is None:
        raise ValueError(f"{show(text)} is not a size: {_UNIT_HELP}")
    number, unit = match.group(1), match.group(2).lower()
    if unit in _AMBIGUOUS:
        raise ValueError(
            f'{show(text)} is ambiguous: write "{unit.upper()}iB" (powers of 1024) or '
            f'"{unit.upper()}B" (powers of 1000)'
        )
    if unit not in _UNITS:
        raise ValueError(f"{show(text)} is not a size: {_UNIT_HELP}")
    try:
        value = int(Decimal(number) * _UNITS[unit])
    except InvalidOperation as exc:  # pragma: no cover — the pattern admits only decimals
        raise ValueError(f"{show(text)} is not a size: {_UNIT_HELP}") from exc
    if value > _LARGEST:
        raise ValueError(f"{show(text)} is too large a size: at most 4 EiB")
    if value == 0 and not allow_zero:
        raise ValueError(f"{show(text)} is no room at all: a size must be more than 0 B")
    return value


def format_size(n: int) -> str:
    """Bytes for people, in powers of 1024, as the config spells them: ``"1.5 GiB"``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n} B"


class Amount(NamedTuple):
    """A size in bytes, or a share of something (the filesystem, or a limit for headroom)."""

    size: int | None = None
    share: float | None = None

    def of(self, whole: int) -> int:
        if self.size is not None:
            return self.size
        return int((self.share or 0.0) * whole)

    def text(self) -> str:
        """As the config spells it: ``"1 GiB"``, ``"10%"``."""
        if self.size is not None:
            return format_size(self.size)
        return f"{(self.share or 0.0) * 100:.6g}%"

    def __str__(self) -> str:
        if self.size is not None:
            return format_size(self.size)
        return f"{(self.share or 0.0) * 100:g}%"


def parse_amount(text: object, *, allow_zero: bool = False) -> Amount:
    """``"50 GiB"`` or ``"10%"`` (a share, between 0 % and 100 % both excluded; ``allow_zero``
    admits 0 of either)."""
    if isinstance(text, str) and text.strip().endswith("%"):
        number = text.strip()[:-1].strip()
        try:
            share = float(number) / 100 if re.fullmatch(r"\d+(\.\d+)?", number) else math.nan
        except ValueError:  # pragma: no cover — the pattern admits only decimals
            share = math.nan
        low_ok = share >= 0 if allow_zero else share > 0
        if not (low_ok and share < 1):
            low = "0% allowed" if allow_zero else "both excluded"
            raise ValueError(f"{show(text)} is not a share: between 0% and 100%, {low}")
        return Amount(share=share)
    try:
        return Amount(size=parse_size(text, allow_zero=allow_zero))
    except ValueError as exc:
        if isinstance(text, str) and _SIZE.fullmatch(text.strip()) is None:
            raise ValueError(
                f'{show(text)} is not an amount: write a size ("50 GiB") or a share ("10%")'
            ) from exc
        raise
