"""Which model files are versions of one model (a family), and how they rank, newest first."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ocrd.fs.inventory import FileEntry, display, display_text
from ocrd.rules.trust import Trust

_DIGITS = re.compile(r"[0-9]+")
# Stands for a run of digits in a default family's name. "#" is what `ocrd list` shows; the
# key itself holds NUL, which no path can hold, so "model-#.bin" is no kin of "model-1.bin".
_ANY_NUMBER = "\0"


class Member(NamedTuple):
    """A file's place in its family: the family's name (escaped as display() escapes paths);
    its rank (1 = newest), counting only
    the newer versions that may rank it (ocrd.rules.trust, and not the same version written
    otherwise); and ``newer``, how many versions are above it in the family's order, counted
    or not (its position: 0 = the first)."""

    family: str
    rank: int
    newer: int = 0
    key: str = ""  # the family as the ranking keys it (``family`` is how it is shown)


# A path longer than this is matched against no family pattern (and is in no family): a
# pattern that passes ocrd.config.regexlint may still take time quadratic in the text it searches,
# and a hostile name should cost microseconds, not seconds. Real model paths are far shorter.
MAX_MATCH_BYTES = 1024

# Ranking with no owner given: root's files (what a FileEntry made by hand is) rank anyone's.
DEFAULT_TRUST = Trust()


@dataclass(frozen=True)
class Families:
    """How files fall into families, and the order that makes one version newer.

    - ``pattern = None`` (the default): a family is the path relative to model_dir with every
      run of digits ignored, so ``llama-3.2-3b-q4-v3.gguf`` and ``llama-3.2-3b-q4-v4.gguf`` are
      one family, and so are ``snap-2026-01/model.gguf`` and ``snap-2026-02/model.gguf`` (one
      subdirectory per snapshot is the other way versions arrive). Every file is in one.
    - ``pattern``: a regular expression searched in the relative path (as text), if that is
      at most MAX_MATCH_BYTES long; its named group ``family`` is the family (ocrd.config.regexlint
      has refused the shapes that backtrack without end). A file it does not match, or
      whose path is longer, is in no family: neither
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

    def key(self, entry: FileEntry) -> str | None:
        """The family ``entry`` is in, or None (a symlink is in none)."""
        found = None if entry.is_link else self._key(entry)
        return None if found is None else found[0]

    def _key(self, entry: FileEntry) -> tuple[str, str] | None:
        """The family a file is in (its digits as NUL by default) and the text whose numbers
        are its version, or None if in no family."""
        text = entry.text
        if not text.isascii():
            text = unicodedata.normalize("NFC", text)
        if self.pattern is None:
            return _DIGITS.sub(_ANY_NUMBER, text), text
        if len(entry.path) > MAX_MATCH_BYTES:
            return None
        found = self.pattern.search(text)
        if found is None:
            return None
        family = found.group("family") or ""
        if "version" in self.pattern.groupindex:
            return family, found.group("version") or ""
        return family, text

    def rank(self, files: Iterable[FileEntry], trust: Trust, now: float) -> Ranking:
        """Each regular file's family and rank; symlinks are no version of anything.

        The order is by name, then by date, then by path (see the class's doc); a file's rank
        is 1 + the versions above it that may rank it (``trust.distrust``, judged at ``now``):
        settled, not dated in the future, owned by root, model_dir's owner, a trusted owner
        or its own owner; and not the same version written otherwise (``v04`` and ``v4``:
        which is newer, the name does not say). Counted in one pass per family, with running
        counts per owner: no pair of files is compared, whatever a family's size."""
        groups: dict[str, list[tuple[Version, tuple[str, ...], FileEntry, float]]] = {}
        arrival = self.age_from == "arrival"
        for f in files:
            if f.is_link:
                continue
            key = self._key(f)
            if key is None:
                continue
            family, version = key
            stamp = max(f.mtime, f.ctime) if arrival else f.mtime
            digits = tuple(_DIGITS.findall(version))
            groups.setdefault(family, []).append((_version(digits), digits, f, stamp))
        ranking = Ranking(trust, now)
        for family, members in groups.items():
            # As paths are shown: escaped, one line, whatever the name holds.
            shown = display_text(family.replace(_ANY_NUMBER, "#"))
            # Newest first: the largest numbers, then the latest stamp; ties by path, ascending.
            # A sort is stable also in reverse, so the path order set first survives the ties.
            members.sort(key=lambda m: m[2].path)
            members.sort(key=lambda m: (m[0], m[3]), reverse=True)
            ranking.add(family, shown, members)
        return ranking


class Ranking:
    """The Member of each ranked file (by id of its FileEntry), and why it ranks there."""

    __slots__ = ("_members", "_orders", "now", "trust")

    def __init__(self, trust: Trust, now: float) -> None:
        self.trust = trust
        self.now = now
        self._members: dict[int, Member] = {}
        # family key → its versions newest first: (version, its digits as written, file, stamp)
        self._orders: dict[str, list[Ranked]] = {}

    def get(self, key: int) -> Member | None:
        return self._members.get(key)

    def position(self, entry: FileEntry) -> int:
        """How many versions are above ``entry`` in its family's order (Member.newer)."""
        return self._members[id(entry)].newer

    def __contains__(self, key: object) -> bool:
        return key in self._members

    def __len__(self) -> int:
        return len(self._members)

    def add(self, key: str, family: str, members: list[Ranked]) -> None:
        """Rank family ``key`` (shown as ``family``), given newest first as (version, its
        digits as written, file, stamp)."""
        self._orders[key] = members
        trusted, doubt, now = self.trust.owners, self.trust.doubt, self.now
        put = self._members.__setitem__
        # The versions above the one at hand that count for anyone's (of trusted owners),
        # and per other owner those that count only for that owner's; within a run of equal
        # numbers, the same per spelling of them ([anyone's, per owner]).
        above_any = 0
        above_own: dict[int, int] = {}
        i, n = 0, len(members)
        while i < n:
            version = members[i][0]
            j = i + 1
            while j < n and members[j][0] == version:
                j += 1
            counts: list[int] = []  # of the run's versions, which count (1) or not (0)
            spelt: dict[tuple[str, ...], tuple[list[int], dict[int, int]]] = {}
            for k in range(i, j):
                _, digits, f, _ = members[k]
                uid = f.uid
                count = above_any
                if uid not in trusted:
                    count += above_own.get(uid, 0)
                if j > i + 1:  # a run: only the same spelling counts
                    run_any, run_own = spelt.setdefault(digits, ([0], {}))
                    count += run_any[0] + (run_own.get(uid, 0) if uid not in trusted else 0)
                put(id(f), Member(family, count + 1, k, key))
                ok = doubt(f, now) is None
                counts.append(ok)
                if ok and j > i + 1:
                    if uid in trusted:
                        run_any[0] += 1
                    else:
                        run_own[uid] = run_own.get(uid, 0) + 1
            for k in range(i, j):
                if counts[k - i]:
                    uid = members[k][2].uid
                    if uid in trusted:
                        above_any += 1
                    else:
                        above_own[uid] = above_own.get(uid, 0) + 1
            i = j

    def uncounted(self, entry: FileEntry, limit: int = 3, look: int = 64) -> list[str]:
        """Up to ``limit`` of the newer versions that do not count against ``entry``, nearest
        first, each as "path (why)"; at most ``look`` of them are looked at."""
        member = self._members.get(id(entry))
        if member is None:
            return []
        order = self._orders[member.key]
        mine = order[member.newer][1]
        found: list[str] = []
        for _, digits, g, _ in order[max(0, member.newer - look) : member.newer][::-1]:
            why = self.trust.distrust(g, entry, self.now)
            if why is None and digits != mine and _version(digits) == _version(mine):
                why = "the same version, written otherwise"
            if why is not None:
                found.append(f"{display(g.path)} ({why})")
                if len(found) == limit:
                    break
        return found

    def notable(self, entry: FileEntry) -> bool:
        """Whether why() says more than how many newer versions there are: some do not count,
        or this one does not count for others."""
        member = self._members.get(id(entry))
        if member is None:
            return False
        return (
            member.newer != member.rank - 1
            or entry.uid not in self.trust.owners
            or self.trust.doubt(entry, self.now) is not None
        )

    def counted_from(self, entry: FileEntry, count: int) -> float | None:
        """From when at least ``count`` newer versions count against ``entry`` (ocrd.rules.trust:
        each from when it is trusted), as far as time alone can make them; None if never."""
        member = self._members.get(id(entry))
        if member is None:
            return None
        order = self._orders[member.key]
        mine = order[member.newer][1]
        trust = self.trust
        times = sorted(
            trust.trusted_from(g)
            for _, digits, g, _ in order[: member.newer]
            if trust.stranger(g, entry) is None
            and not (digits != mine and _version(digits) == _version(mine))
        )
        return times[count - 1] if len(times) >= count else None

    def why(self, entry: FileEntry) -> str | None:
        """Why ``entry`` ranks where it does, for ``ocrd list``; None if it is in no family."""
        member = self._members.get(id(entry))
        if member is None:
            return None
        counted = member.rank - 1
        text = "newest version" if member.newer == 0 else f"{counted} newer version(s) count"
        left = member.newer - counted
        if left:
            shown = self.uncounted(entry)
            more = ", …" if len(shown) < left else ""
            text += f"; {left} newer not counted: {', '.join(shown)}{more}"
        own = self.trust.doubt(entry, self.now)
        if own is not None:
            text += f"; ranks no other version ({own})"
        elif entry.uid not in self.trust.owners:
            text += f"; ranks only versions of its own owner (uid {entry.uid})"
        return text


Version = tuple[tuple[int, str], ...]
# A version as ranked: (its version, its digits as written, the file, its date).
Ranked = tuple[Version, tuple[str, ...], FileEntry, float]


def _version(digits: tuple[str, ...]) -> Version:
    """Runs of digits, each as (digit count, digits) without leading zeros: compared as
    numbers, whatever their length (int() refuses more than 4300 digits)."""
    return tuple((len(n), n) for n in (d.lstrip("0") for d in digits))


class Versions:
    """The versions present in one plan (ocrd.rules.selectors.versions), ranked at most once per
    Families however many rules and floors ask: ranking sorts every family. ``trust`` and
    ``now``: whose versions count against whose (ocrd.rules.trust)."""

    __slots__ = ("_ranked", "files", "now", "trust")

    def __init__(self, files: list[FileEntry], trust: Trust, now: float) -> None:
        self.files = files
        self.trust = trust
        self.now = now
        self._ranked: dict[Families, Ranking] = {}

    def ranked(self, families: Families) -> Ranking:
        found = self._ranked.get(families)
        if found is None:
            found = self._ranked[families] = families.rank(self.files, self.trust, self.now)
        return found
