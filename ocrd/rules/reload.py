"""A reload's pure questions: which keys changed, and whether the new rules would delete so many
more models that the operator must confirm them first (retention.reload_guard)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from ocrd.config.schema import Config
from ocrd.fs.inventory import FileEntry, display
from ocrd.rules.decision import Decision
from ocrd.rules.retention import Rules, plan


def changed_keys(old: Config, new: Config) -> list[str]:
    a, b = old.model_dump(), new.model_dump()
    return sorted(_keys(a, b, ""))


def changed_values(old: Config, new: Config) -> dict[str, list[Any]]:
    """Each changed key with its old and new value, as JSON can carry them."""
    a = json.loads(old.model_dump_json())
    b = json.loads(new.model_dump_json())
    out = {}
    for key in changed_keys(old, new):
        va, vb = a, b
        for part in key.split("."):
            va = va.get(part) if isinstance(va, dict) else None
            vb = vb.get(part) if isinstance(vb, dict) else None
        out[key] = [va, vb]
    return out


def _keys(a: dict[str, Any], b: dict[str, Any], prefix: str) -> Iterable[str]:
    for key in a.keys() | b.keys():
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            yield from _keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            yield f"{prefix}{key}"


def widening(
    old: Config,
    new: Config,
    parts: Iterable[list[FileEntry]],
    in_force: Rules,
    rules: Rules,
    *,
    kin: Callable[[list[FileEntry]], list[FileEntry]],
    files: int,
    size: int,
    now: float,
) -> dict[str, Any] | None:
    """Why a reload must wait for the operator, or None: its ``rules`` would delete, beyond
    what the rules ``in_force`` delete, more than retention.reload_guard of the models
    (``files`` of them, ``size`` bytes) by count or by bytes (at least two files: one file is
    no mass deletion). A typo such as max_age = "1s" deletes everything within a second; this
    gives it a second look.

    The models are planned once, under ``rules``, in ``parts`` that each plan alone as all of
    them would (ocrd.rules.parts); the rules in force judge only what those would delete,
    with what ``kin`` adds to it (the other members of their families)."""
    guard = new.retention.reload_guard
    if guard >= 1 or new.retention.dry_run or not files:
        return None
    going: list[Decision] = []
    for part in parts:
        going.extend(plan(part, rules, now).deletions)
    before: set[bytes] = set()
    if going and not old.retention.dry_run:
        judged = kin([d.entry for d in going])
        before = {d.entry.path for d in plan(judged, in_force, now).deletions}
    extra = [d for d in going if d.entry.path not in before]
    extra_bytes = sum(d.entry.size for d in extra)
    if len(extra) < 2 or (len(extra) <= guard * files and extra_bytes <= guard * size):
        return None
    return {
        "would_delete": len(extra),
        "would_free": extra_bytes,
        "of_files": files,
        "of_bytes": size,
        "guard": f"{guard:.0%}",
        "changed": changed_keys(old, new),
        "values": changed_values(old, new),
        "sample": [display(d.entry.path) for d in extra[:5]],
        "action": "the rules in force stay; to apply the new ones, run 'ocrd clean -c "
        f"{new.path}' yourself (then reload), or raise retention.reload_guard",
    }
