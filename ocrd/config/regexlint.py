"""Which user regular expressions may run on names that others choose: a conservative static
check for the shapes whose matching can take exponential or high polynomial time.

Python's ``re`` backtracks, and ``retention.family`` is searched in every model file's path,
where any user who may write model_dir chooses the names. This module reads a pattern with a
scanner of its own (no private parser of the standard library) and refuses:

- a repeated group (``*``, ``+``, ``{n,}``, ``{n,m}`` with m > 1) that holds a repeat or an
  alternative: ``(a+)+``, ``(\\w+-?)+``, ``(a|a)*``, ``(?:[^/]+/)*`` — exponential;
- backreferences and conditionals (``\\1``, ``(?P=name)``, ``(?(1)a|b)``);
- a chain of three or more repeats that can take characters from each other: each can
  match some character the next can, and everything that must come between them. A search
  that is not anchored with ``^`` or ``\\A`` starts with such a repeat of its own (it tries
  every position). ``\\w+\\w+\\w+x`` takes over a second on a 255-byte name, and
  ``(.*)-(.*)-v`` seconds on a 1 KiB path; two (quadratic) are allowed, and bounded by the
  length of the text matched (ocrd.rules.families.MAX_MATCH_BYTES);
- inline verbose mode ``(?x)``, which this scanner does not read.

It errs on the side of refusing: a refused pattern can always be written as one that passes
(one character class instead of a repeated group, an anchor, a separator the repeat before
it cannot match)."""

from __future__ import annotations

import string
from dataclasses import dataclass, field

# Characters as the check sees them: ASCII code points, and one code for everything beyond,
# which every class that may match a non-ASCII character holds (so two such classes overlap).
_OTHER = 128
_ALL = frozenset(range(129))
_DIGITS = frozenset(map(ord, string.digits)) | {_OTHER}
_WORD = frozenset(map(ord, string.ascii_letters + string.digits + "_")) | {_OTHER}
_SPACE = frozenset(map(ord, " \t\n\r\f\v")) | {_OTHER}
_CLASSES = {
    "d": _DIGITS,
    "w": _WORD,
    "s": _SPACE,
    "D": (_ALL - _DIGITS) | {_OTHER},
    "W": (_ALL - _WORD) | {_OTHER},
    "S": (_ALL - _SPACE) | {_OTHER},
}
_ANCHORS = set("AbBZ")  # \A \b \B \Z: match no character
UNBOUNDED = 16  # a repeat of more than this many counts as unbounded
MAX_PATHS = 256  # ways through the alternatives of a pattern: more is refused as too complex


class Refused(Exception):
    """What is wrong with a pattern, and what to write instead."""


@dataclass
class _Unit:
    """One item of a sequence: a character set repeated ``low`` to ``high`` times (None: no
    bound), a group (``branches``), or a zero-width assertion (``chars`` empty)."""

    chars: frozenset[int] = frozenset()
    low: int = 1
    high: int | None = 1
    branches: list[list[_Unit]] = field(default_factory=list)
    group: bool = False
    at: int = 0
    anchor: bool = False  # ^ or \A: matches only where the text starts

    @property
    def repeats(self) -> bool:
        return self.high is None or self.high > UNBOUNDED


def backtracking(pattern: str) -> str | None:
    """Why matching ``pattern`` can take far longer than the text is long, with what to
    write instead; None if it has none of the shapes this module refuses."""
    try:
        scanner = _Scanner(pattern)
        branches = scanner.parse()
        for seq in branches:
            _nested(seq, pattern)
        for seq in branches:
            anchored = not scanner.multiline and _anchored(seq)
            for way in _paths(seq):
                _chain(way, anchored, pattern)
    except Refused as exc:
        return str(exc)
    return None


def _letters(code: int) -> frozenset[int]:
    """A character and its other case: the check ignores (?i) by always assuming it."""
    ch = chr(code)
    return frozenset({ord(ch.lower()), ord(ch.upper())}) if ch.isalpha() else frozenset({code})


class _Scanner:
    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0
        self.multiline = False

    def parse(self) -> list[list[_Unit]]:
        branches = self._alternatives()
        if self.i < len(self.p):  # an unbalanced ")": re.compile has refused it already
            raise Refused(f"unexpected ')' at offset {self.i}")
        return branches

    def _alternatives(self) -> list[list[_Unit]]:
        branches = [self._sequence()]
        while self.i < len(self.p) and self.p[self.i] == "|":
            self.i += 1
            branches.append(self._sequence())
        return branches

    def _sequence(self) -> list[_Unit]:
        seq: list[_Unit] = []
        while self.i < len(self.p) and self.p[self.i] not in "|)":
            unit = self._atom()
            if unit is None:
                continue
            self._quantifier(unit)
            seq.append(unit)
        return seq

    def _atom(self) -> _Unit | None:
        p, at = self.p, self.i
        ch = p[at]
        self.i += 1
        if ch == "(":
            return self._group(at)
        if ch == "[":
            return _Unit(self._class(), at=at)
        if ch == "\\":
            return self._escape(at)
        if ch in "^$":
            return _Unit(low=0, high=0, at=at, anchor=ch == "^")
        if ch == ".":
            return _Unit(_ALL, at=at)
        return _Unit(_letters(ord(ch)) if ord(ch) < 128 else frozenset({_OTHER}), at=at)

    def _group(self, at: int) -> _Unit | None:
        p = self.p
        look = False
        if p.startswith("?", self.i):
            rest = p[self.i + 1 :]
            if rest.startswith("#"):
                end = p.find(")", self.i)
                self.i = len(p) if end < 0 else end + 1
                return None
            if rest.startswith(("P=", "(")):
                raise Refused(
                    f"a backreference or conditional at offset {at}: matching one can take "
                    "exponential time; name the family with a plain group"
                )
            if rest.startswith("P<"):
                self.i = p.index(">", self.i) + 1
            elif rest.startswith(("<=", "<!")):
                self.i += 3
                look = True
            elif rest.startswith(("=", "!")):
                self.i += 2
                look = True
            elif rest.startswith(":") or rest.startswith(">"):
                self.i += 2
            else:  # inline flags: (?aiLmsux) or (?flags:...)
                j = self.i + 1
                while j < len(p) and p[j] not in ":)":
                    j += 1
                flags = p[self.i + 1 : j].partition("-")[0]
                self.multiline = self.multiline or "m" in flags
                if "x" in flags:
                    raise Refused(
                        "(?x) verbose mode is not read by this check: write the pattern "
                        "without it (no spaces or comments inside)"
                    )
                self.i = j + 1
                if j >= len(p) or p[j] == ")":
                    return None
        branches = self._alternatives()
        self.i += 1  # the ")"
        if look:
            if len(branches) > 1 or any(map(_has_repeat_or_choice, branches)):
                raise Refused(
                    f"a lookahead or lookbehind at offset {at} holds a repeat or an "
                    "alternative: it runs again at every position tried; match the family "
                    "without it"
                )
            return _Unit(frozenset(), 0, 0, at=at)  # matches no character of its own
        return _Unit(branches=branches, group=True, at=at)

    def _escape(self, at: int) -> _Unit:
        p = self.p
        ch = p[self.i] if self.i < len(p) else "\\"
        self.i += 1
        if ch in _CLASSES:
            return _Unit(_CLASSES[ch], at=at)
        if ch in _ANCHORS:
            return _Unit(low=0, high=0, at=at, anchor=ch == "A")
        if ch.isdigit() and ch != "0":
            raise Refused(
                f"a backreference (\\{ch}) at offset {at}: matching one can take exponential "
                "time; name the family with a plain group"
            )
        if ch in "xuUN0":  # \x41, \u0041, \U00000041, \N{...}, \0: some one character
            if ch == "N" and p.startswith("{", self.i):
                self.i = p.index("}", self.i) + 1
            else:
                width = {"x": 2, "u": 4, "U": 8, "0": 2}[ch]
                while width and self.i < len(p) and p[self.i] in string.hexdigits:
                    self.i += 1
                    width -= 1
            return _Unit(_ALL, at=at)
        return _Unit(_letters(ord(ch)) if ord(ch) < 128 else frozenset({_OTHER}), at=at)

    def _class(self) -> frozenset[int]:
        p = self.p
        negate = p.startswith("^", self.i)
        self.i += negate
        chars: set[int] = set()
        first = True
        while self.i < len(p) and (p[self.i] != "]" or first):
            first = False
            ch = p[self.i]
            self.i += 1
            if ch == "\\" and self.i < len(p):
                esc = p[self.i]
                self.i += 1
                if esc in _CLASSES:
                    chars |= _CLASSES[esc]
                    continue
                if esc in "xuUN0123456789":
                    chars |= _ALL  # some one character: as any, to be safe
                    continue
                ch = esc
            if p.startswith("-", self.i) and self.i + 1 < len(p) and p[self.i + 1] != "]":
                end = p[self.i + 1]
                self.i += 2
                if end == "\\":
                    chars |= _ALL
                    self.i += 1
                    continue
                low, high = ord(ch), ord(end)
                chars.update(c for code in range(low, min(high, 127) + 1) for c in _letters(code))
                if high >= 128:
                    chars.add(_OTHER)
                continue
            chars |= _letters(ord(ch)) if ord(ch) < 128 else {_OTHER}
        self.i += 1  # the "]"
        if negate:
            return frozenset((_ALL - chars) | {_OTHER})
        return frozenset(chars)

    def _quantifier(self, unit: _Unit) -> None:
        p = self.p
        if self.i >= len(p):
            return
        ch = p[self.i]
        if ch in "*+?":
            self.i += 1
            unit.low, unit.high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        elif ch == "{":
            end = p.find("}", self.i)
            body = p[self.i + 1 : end] if end > 0 else ""
            low, comma, high = body.partition(",")
            if end < 0 or not (low.isdigit() or (comma and high.isdigit())):
                return  # not a quantifier: a literal "{"
            if (low and not low.isdigit()) or (high and not high.isdigit()):
                return
            self.i = end + 1
            unit.low = int(low or 0)
            unit.high = (int(high) if high else None) if comma else unit.low
        else:
            return
        if self.i < len(p) and p[self.i] in "?+":  # lazy or possessive: the same for this
            self.i += 1


def _has_repeat_or_choice(seq: list[_Unit]) -> bool:
    for u in seq:
        if u.low != u.high:
            return True
        if u.group and (len(u.branches) > 1 or any(map(_has_repeat_or_choice, u.branches))):
            return True
    return False


def _nested(seq: list[_Unit], pattern: str) -> None:
    """Refused: a repeated group that holds a repeat or an alternative."""
    for u in seq:
        if not u.group:
            continue
        if (u.high is None or u.high > 1) and (
            len(u.branches) > 1 or any(map(_has_repeat_or_choice, u.branches))
        ):
            raise Refused(
                f"nested repeats: the group at offset {u.at} is repeated and holds a repeat "
                "or an alternative, so a name that almost matches is tried in exponentially "
                "many ways; repeat one character class instead, e.g. [\\w-]+ for (\\w+-?)+"
            )
        for branch in u.branches:
            _nested(branch, pattern)


def _chars(seq: list[_Unit]) -> frozenset[int]:
    out: frozenset[int] = frozenset()
    for u in seq:
        out |= u.chars if not u.group else frozenset().union(*map(_chars, u.branches))
    return out


def _paths(seq: list[_Unit]) -> list[list[_Unit]]:
    """Every way through ``seq`` as a flat sequence: a group matched once is one of its
    branches; an optional group one of them or nothing; a repeated group (which holds no
    repeat or alternative: _nested) one item of all the characters it may match."""
    ways: list[list[_Unit]] = [[]]
    for u in seq:
        if not u.group:
            options = [[u]]
        elif u.high is not None and u.high <= 1:
            options = [way for b in u.branches for way in _paths(b)]
            if u.low == 0:
                options.append([])
        else:
            chars = frozenset().union(*map(_chars, u.branches))
            high = None if u.high is None or u.high > UNBOUNDED else u.high
            options = [[_Unit(chars, u.low, high, at=u.at)]]
        ways = [way + option for way in ways for option in options]
        if len(ways) > MAX_PATHS:
            raise Refused(
                f"more than {MAX_PATHS} ways through the alternatives up to offset {u.at}: "
                "too many to check; write the family with fewer alternatives"
            )
    return ways


def _anchored(seq: list[_Unit]) -> bool:
    """Whether the branch starts with ^ or \\A (with (?m), ^ also matches after a newline, and
    a name may hold one: the scanner then marks no ^ as an anchor)."""
    return bool(seq) and seq[0].anchor


def _chain(units: list[_Unit], anchored: bool, pattern: str) -> None:
    """Refused: three or more repeats, each of which can take characters from the next."""
    repeats = [i for i, u in enumerate(units) if u.repeats and u.chars]
    longest: dict[int, int] = {}
    for n, j in enumerate(repeats):
        # A search not anchored tries every start: a repeat of any character before it all.
        best = 1 if anchored else 2
        for i in repeats[:n]:
            a, b = units[i], units[j]
            between = units[i + 1 : j]
            if a.chars & b.chars and all(a.chars & u.chars for u in between if u.low > 0):
                best = max(best, longest[i] + 1)
        longest[j] = best
        if best >= 3:
            raise Refused(
                f"{best} repeats can take characters from each other up to offset {units[j].at}"
                f"{'' if anchored else ' (a search not anchored is one)'}, so a hostile name "
                "is tried in polynomially many ways; anchor the pattern with ^, and put "
                "between two repeats a character the first cannot match, e.g. "
                "'^(?P<family>[\\w.-]+)-v(?P<version>\\d+)\\.gguf$'"
            )
