"""The tests' config.toml, built from keyword overrides over one documented default.

DEFAULT is what most tests want: ``model_dir = "models"`` beside the config, the prefix rule
``old_``, no settle time, a rescan far off, no AsposeAI engine, JSON logs. A test names only
what it is about::

    config(tmp_path, watch={"settle": "1s"}, engine={"enabled": True})

Each section's keys are merged over the default's; a key set to ``None`` is left out of the
file (``retention={"prefixes": None}``), and so is a section set to ``None``. Top-level keys
(``model_dir``) are plain keywords. The file is written with tomli_w, so any value TOML can
hold (lists, nested arrays, integers at the edges) goes in as itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

Section = dict[str, Any] | None

DEFAULT: dict[str, Any] = {
    "model_dir": "models",
    "retention": {"prefixes": ["old_"]},
    "watch": {"settle": "0s", "rescan": "10m"},
    "engine": {"enabled": False},
    "log": {"format": "json"},
}


def toml(**overrides: Any) -> str:
    """The text of a config: DEFAULT with ``overrides`` merged in (see the module's doc)."""
    merged: dict[str, Any] = {}
    for key in {**DEFAULT, **overrides}:
        base = DEFAULT.get(key)
        value = overrides.get(key, base)
        if isinstance(base, dict) and isinstance(value, dict):
            value = {**base, **value}
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        if value is not None:
            merged[key] = value
    return tomli_w.dumps(merged)


def config(directory: Path, name: str = "config.toml", **overrides: Any) -> Path:
    """Write ``directory/name`` (directories made as needed) from :func:`toml`; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(toml(**overrides), encoding="utf-8")
    return path
