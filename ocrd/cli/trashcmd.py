"""``ocrd trash`` and ``ocrd restore``: the trash listed, and files put back (docs/trash.md)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from ocrd.base.human import size
from ocrd.config.durations import parse_duration
from ocrd.fs.inventory import display, printable
from ocrd.fs.place import Place
from ocrd.fs.restore import Refused
from ocrd.fs.restore import restore as restore_file
from ocrd.fs.trash import Entry, Trash, Unusable, iso, taken

EXIT_OK = 0
EXIT_UNUSABLE = 1  # .ocrd-trash is not a directory ocrd may use: nothing was read or changed
EXIT_REFUSED = 3  # something is at a PATH (or a link or file on its way): not replaced
EXIT_NOT_IN_TRASH = 4  # a PATH has no entry in the trash


def since(text: str, now: float | None = None) -> float:
    """``--since``: an ISO 8601 time (UTC if no zone), or a duration ago (``2h``, ``-2h``)."""
    ago = text[1:] if text.startswith("-") else text
    if re.fullmatch(r"[0-9].*[a-z]", ago):
        try:
            return (time.time() if now is None else now) - parse_duration(ago)
        except ValueError:
            pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration ago (2h, 7d) nor an ISO 8601 time "
            "(2026-12-06T02:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def show(place: Place, *, as_json: bool, grace: float, out: TextIO = sys.stdout) -> int:
    """``ocrd trash``: every entry, oldest first; JSON: an array of {path, size, rule,
    deleted_at, purge_at}."""
    try:
        t = Trash.open(place, create=False)
    except Unusable as exc:
        print(f"ocrd: {exc}; nothing is trashed there", file=sys.stderr)
        return EXIT_UNUSABLE
    entries: list[Entry] = []
    if t is not None:
        with t:
            entries = t.entries()
    if as_json:
        rows = [
            {**e.as_json(), "purge_at": iso(e.due(e.deleted_at, grace), up=True)} for e in entries
        ]
        json.dump(rows, out)
        out.write("\n")
        return EXIT_OK
    print(f"{'DELETED':20}  {'PURGE AT':20}  {'SIZE':>9}  {'RULE':10}  PATH", file=out)
    for e in entries:
        path = "(record unreadable)" if e.path is None else display(e.path)
        rule = printable(e.rule or "-")
        purge_at = iso(e.due(e.deleted_at, grace), up=True)
        print(
            f"{iso(e.deleted_at):20}  {purge_at:20}  {size(e.size):>9}  {rule:10}  {path}", file=out
        )
    total = sum(e.size for e in entries)
    print(f"{len(entries)} file(s) in the trash, {size(total)}", file=out)
    return EXIT_OK


def restore(
    place: Place,
    paths: Sequence[bytes],
    *,
    everything: bool,
    after: float | None,
    grace: float,
    now: float | None = None,
    err: TextIO = sys.stderr,
) -> int:
    """``ocrd restore PATH… | --all [--since TIME]``: the newest entry of each PATH (every
    path's newest, with ``--all``) back where it was. If any PATH has no entry or something
    is at it now, nothing at all is restored (EXIT_NOT_IN_TRASH, EXIT_REFUSED)."""
    now = time.time() if now is None else now
    try:
        t = Trash.open(place, create=False)
    except Unusable as exc:
        print(f"ocrd: {exc}; nothing restored", file=err)
        return EXIT_UNUSABLE
    if t is None:
        if everything:
            return EXIT_OK
        for p in paths:
            print(f"ocrd: {display(p)}: not in the trash", file=err)
        return EXIT_NOT_IN_TRASH
    with t:
        newest: dict[bytes, Entry] = {}
        for e in t.entries():  # oldest first: the last one of a path is its newest
            if e.path is not None and (after is None or e.deleted_at >= after):
                newest[e.path] = e
        # A PATH as the kernel has it, or as ``ocrd trash`` shows it (escaped).
        shown = {display(p): p for p in newest}
        wanted = [p.strip(b"/") for p in paths]
        wanted = [p if p in newest else shown.get(os.fsdecode(p), p) for p in wanted]
        chosen = list(newest.values()) if everything else []
        missing = [p for p in wanted if p not in newest]
        if not everything:
            chosen = [newest[p] for p in dict.fromkeys(wanted) if p in newest]
        for p in missing:
            print(f"ocrd: {display(p)}: not in the trash; nothing restored", file=err)
        if missing:
            return EXIT_NOT_IN_TRASH
        blocked = [e for e in chosen if e.path is not None and taken(t.root_fd, e.path)]
        for e in blocked:
            assert e.path is not None
            print(f"ocrd: {display(e.path)}: something is there now; nothing restored", file=err)
        if blocked:
            return EXIT_REFUSED
        status = EXIT_OK
        for e in chosen:
            try:
                restore_file(t, e, now=now, grace=grace)
            except Refused as exc:
                print(f"ocrd: {exc}; not restored", file=err)
                status = EXIT_REFUSED
        return status
