"""ocrd/rules/leftovers.py (the interrupted rule) and the look for private names it shares with
ocrd/rules/selectors.py (named_private, versions): the quick look over a whole plan's paths
finds exactly the names the exact test of each name finds, whatever the names are."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ocrd.fs import private
from ocrd.fs.inventory import FileEntry
from ocrd.rules.families import Versions
from ocrd.rules.leftovers import InterruptedRule
from ocrd.rules.selectors import named_private, versions
from ocrd.rules.trust import Trust

NOW = 1_700_000_000.0
OURS = b".ocrd-deleting-cce882604d4f-77-0a1b2c3d-0000002a"  # in ocrd's format

# Pieces that make names in ocrd's format, imitations of it, the prefix cut in two (so that
# two neighbouring paths, joined, spell it out), and bytes that are no UTF-8.
_PIECES = [
    OURS,
    private.PREFIX,
    b".ocrd-",
    b"deleting-",
    b".ocrd-deleting",
    b"-",
    b"x",
    b"model.bin",
    b"\xff",
    b"\n",
    b"/",
    b".",
]
_path = (
    st.lists(st.sampled_from(_PIECES), min_size=1, max_size=5)
    .map(b"".join)
    .map(lambda p: p.strip(b"/").replace(b"//", b"/"))
    .filter(bool)
)


@st.composite
def files(draw: st.DrawFn) -> list[FileEntry]:
    paths = draw(st.lists(_path, max_size=12))
    return [
        FileEntry(
            path,
            10,
            NOW - 3600,
            NOW - 3600,
            NOW - draw(st.sampled_from([1.0, 30.0, 3600.0])),
            2049,
            ino,
            draw(st.booleans()),
        )
        for ino, path in enumerate(paths)
    ]


def name_of(f: FileEntry) -> bytes:
    """The last component, cut out independently of FileEntry.name."""
    return f.path.split(b"/")[-1]


@settings(max_examples=500, deadline=None)
@given(files())
@example([FileEntry(b"a/" + OURS, 1, NOW, NOW, NOW - 3600, 1, 1, False)])
@example([FileEntry(b"sub/.ocrd-", 1, NOW, NOW, NOW, 1, 1, False)] * 2)  # split across the join
@example([FileEntry(b"x.ocrd-deleting-", 1, NOW, NOW, NOW, 1, 1, False)])  # inside a name only
def test_the_quick_look_finds_exactly_the_names_that_look_private(
    entries: list[FileEntry],
) -> None:
    expected = [f for f in entries if name_of(f).startswith(private.PREFIX)]
    assert named_private(entries) == expected
    assert named_private(iter(entries)) == expected
    models = [f for f in entries if not f.is_link and not name_of(f).startswith(private.PREFIX)]
    assert versions(entries) == models
    assert versions(iter(entries)) == models


@settings(max_examples=500, deadline=None)
@given(files())
@example([FileEntry(b"d/" + OURS, 1, NOW, NOW, NOW - 3600, 1, 1, False)])
def test_the_interrupted_rule_judges_every_name_as_the_exact_parse_does(
    entries: list[FileEntry],
) -> None:
    rule = InterruptedRule(started=NOW - 10)
    ours = [f for f in entries if not f.is_link and private.parse(name_of(f)) is not None]
    leftover = [f for f in ours if f.ctime < rule.started or NOW - f.ctime >= rule.GRACE_S]
    assert [f for f, _ in rule.select(entries, NOW)] == leftover
    present = Versions([], Trust(frozenset({0}), 0.0), NOW)
    assert [f for f, _ in rule.due_among(entries, present)] == ours
    imitations = [f for f in entries if name_of(f).startswith(private.PREFIX) and f not in ours]
    held = {id(f) for f, _ in rule.held(entries, NOW)}
    assert held == {id(f) for f in ours if f not in leftover} | {id(f) for f in imitations}
    assert [f for f in entries if rule.due(f) is not None] == ours
