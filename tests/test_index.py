"""The daemon's packed index: what goes in comes out, and the totals follow every change."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ocrd.index import Index
from ocrd.inventory import FileEntry

entries = st.builds(
    FileEntry,
    path=st.binary(min_size=1, max_size=12),
    size=st.integers(0, 2**62),
    mtime=st.floats(-1e12, 1e12),
    atime=st.floats(-1e12, 1e12),
    ctime=st.floats(-1e12, 1e12),
    dev=st.integers(0, 2**64 - 1),
    ino=st.integers(0, 2**64 - 1),
    is_link=st.booleans(),
)


@given(st.lists(entries, max_size=30), st.lists(st.binary(min_size=1, max_size=12), max_size=10))
def test_round_trip_and_totals(items: list[FileEntry], removed: list[bytes]) -> None:
    index = Index(items)
    expected = {e.path: e for e in items}  # the last put for a path wins
    for path in removed:
        index.pop(path)
        expected.pop(path, None)
    assert len(index) == len(expected)
    for path, e in expected.items():
        assert index.get(path) == e
        assert path in index
    assert sorted(index.entries()) == sorted(expected.values())
    kept = [e for e in expected.values() if not e.is_link]
    assert (index.files, index.bytes) == (len(kept), sum(e.size for e in kept))


def test_forget_under_drops_a_subtree_only() -> None:
    def e(p: bytes) -> FileEntry:
        return FileEntry(p, 1, 0.0, 0.0, 0.0, 1, 1, False)

    index = Index([e(b"a/x"), e(b"a/b/y"), e(b"ab/z"), e(b"a")])
    index.forget_under(b"a/")
    assert sorted(x.path for x in index.entries()) == [b"a", b"ab/z"]
    assert index.files == 2
