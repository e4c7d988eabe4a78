"""The daemon's packed index: what goes in comes out, and the totals follow every change."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ocrd.fs.inventory import FileEntry
from ocrd.watch.index import Index

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
    uid=st.integers(0, 2**32 - 1),
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
    owners: dict[int, int] = {}
    for e in kept:
        owners[e.uid] = owners.get(e.uid, 0) + 1
    assert index.owners == owners


def test_forget_under_drops_a_subtree_only() -> None:
    def e(p: bytes) -> FileEntry:
        return FileEntry(p, 1, 0.0, 0.0, 0.0, 1, 1, False)

    index = Index([e(b"a/x"), e(b"a/b/y"), e(b"ab/z"), e(b"a")])
    index.forget_under(b"a/")
    assert sorted(x.path for x in index.entries()) == [b"a", b"ab/z"]
    assert index.files == 2


paths = st.lists(st.sampled_from([b"a", b"b", b"/", b"c/"]), min_size=1, max_size=5).map(b"".join)


@given(
    st.lists(
        st.tuples(st.sampled_from(["put", "pop", "forget"]), paths, st.booleans()), max_size=60
    )
)
def test_any_sequence_matches_a_plain_dict_and_leaves_nothing_behind(
    ops: list[tuple[str, bytes, bool]],
) -> None:
    """Against an independent model (a dict scanned by prefix), with paths made to share
    directories; once everything is gone, no directory is kept for it either."""
    index = Index()
    model: dict[bytes, FileEntry] = {}
    for op, path, link in ops:
        if op == "put":
            e = FileEntry(path, len(path), 0.0, 0.0, 0.0, 1, 1, link)
            index.put(e)
            model[path] = e
        elif op == "pop":
            index.pop(path)
            model.pop(path, None)
        else:
            prefix = path if path.endswith(b"/") else path + b"/"
            index.forget_under(prefix)
            model = {p: e for p, e in model.items() if not p.startswith(prefix)}
    assert sorted(index.entries()) == sorted(model.values())
    assert len(index) == len(model)
    assert all(p in index for p in model)
    kept = [e for e in model.values() if not e.is_link]
    assert (index.files, index.bytes) == (len(kept), sum(e.size for e in kept))
    for path in list(model):
        index.pop(path)
    assert index._dirs == {}
    assert index._subdirs == {}
    assert index.owners == {}


def test_forgetting_an_unknown_directory_touches_nothing() -> None:
    index = Index([FileEntry(b"d%d/f" % i, 1, 0.0, 0.0, 0.0, 1, i, False) for i in range(100)])
    index.forget_under(b"new/")
    assert len(index) == 100
