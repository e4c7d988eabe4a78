"""Numbers as an operator reads them: sizes in binary units, counts with the right noun."""

from __future__ import annotations


def size(n: float, *, short: bool = False) -> str:
    """``1 byte``, ``512 bytes``, ``1.0 KiB``, ``4.1 GiB``; ``short``: ``1 B``, ``512 B`` (the
    columns of ``ocrd list``)."""
    if n < 1024:
        return f"{n:.0f} B" if short else count(int(n), "byte")
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 file``, ``2 files``, ``0 files``."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
