"""Which model files are versions of one model (a family), and how they rank, newest first."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ocrd.inventory import FileEntry

_DIGITS = re.compile(r"[0-9]+")
# Stands for a run of digits in a default family's name. "#" is what `ocrd list` shows; the
# key itself holds NUL, which no path can hold, so "model-#.bin" is no kin of "model-1.bin".
_ANY_NUMBER = "\0"


class Member(NamedTuple):
    """A file's place in its family: the family's name, and its rank (1 = newest)."""

    family: str
    rank: int


@dataclass(frozen=True)
class Families:
    """How files fall into families, and the order that makes one version newer.

    - ``pattern = None`` (the default): a family is the path relative to model_dir with every
      run of digits ignored, so ``llama-3.2-3b-q4-v3.gguf`` and ``llama-3.2-3b-q4-v4.gguf`` are
      one family, and so are ``snap-2026-01/model.gguf`` and ``snap-2026-02/model.gguf`` (one
      subdirectory per snapshot is the other way versions arrive). Every file is in one.
    - ``pattern``: a regular expression searched in the relative path (as text); its named
      group ``family`` is the family. A file it does not match is in no family: neither
      keep_newest nor the last-version floor looks at it. If it also has a group named
      ``version``, only the numbers in that group order the family's versions.

    Newest first is decided by, in turn: the numbers in the relative path (or in the group
    ``version``), compared as numbers from left to right (``v10`` is newer than ``v9``,
    ``2026-02`` than ``2026-01``);
    then the later of mtime and (with ``age_from = "arrival"``) arrival in model_dir, as the
    age rule counts it but never by atime (reading a file makes it no newer a version); then
    the path, so that ties are broken the same way on every pass.
    """

    pattern: re.Pattern[str] | None = None
    age_from: Literal["arrival", "timestamp"] = "arrival"

    def _key(self, entry: FileEntry) -> tuple[str, str] | None:
        """The family a file is in (its digits as NUL by default) and the text whose numbers
        are its version, or None if in no family."""
        text = entry.text
        if not text.isascii():
            text = unicodedata.normalize("NFC", text)
        if self.pattern is None:
            return _DIGITS.sub(_ANY_NUMBER, text), text
        found = self.pattern.search(text)
        if found is None:
            return None
        family = found.group("family") or ""
        if "version" in self.pattern.groupindex:
            return family, found.group("version") or ""
        return family, text

    def rank(self, files: Iterable[FileEntry]) -> dict[int, Member]:
        """id(entry) → its family and rank, for every regular file in a family; symlinks are
        no version of anything."""
        groups: dict[str, list[tuple[Version, float, FileEntry]]] = {}
        arrival = self.age_from == "arrival"
        for f in files:
            if f.is_link:
                continue
            key = self._key(f)
            if key is None:
                continue
            family, version = key
            stamp = max(f.mtime, f.ctime) if arrival else f.mtime
            groups.setdefault(family, []).append((_version(version), stamp, f))
        ranked: dict[int, Member] = {}
        for family, members in groups.items():
            shown = family.replace(_ANY_NUMBER, "#")
            # Newest first: the largest numbers, then the latest stamp; ties by path, ascending.
            # A sort is stable also in reverse, so the path order set first survives the ties.
            members.sort(key=lambda m: m[2].path)
            members.sort(key=lambda m: (m[0], m[1]), reverse=True)
            for i, m in enumerate(members, 1):
                ranked[id(m[2])] = Member(shown, i)
        return ranked


Version = tuple[tuple[int, str], ...]


def _version(text: str) -> Version:
    """The numbers in ``text``, each as (digit count, digits) without leading zeros: compared
    as numbers, whatever their length (int() refuses more than 4300 digits)."""
    return tuple((len(n), n) for n in (d.lstrip("0") for d in _DIGITS.findall(text)))


class Versions:
    """The versions present in one plan (ocrd.retention.versions), ranked at most once per
    Families however many rules and floors ask: ranking sorts every family."""

    __slots__ = ("_ranked", "files")

    def __init__(self, files: list[FileEntry]) -> None:
        self.files = files
        self._ranked: dict[Families, dict[int, Member]] = {}

    def ranked(self, families: Families) -> dict[int, Member]:
        found = self._ranked.get(families)
        if found is None:
            found = self._ranked[families] = families.rank(self.files)
        return found
