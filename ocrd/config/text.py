"""How a config problem names its key and shows a value: escaped, quoted, never raw."""

from __future__ import annotations

import json
import re


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


def show(value: object) -> str:
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)
