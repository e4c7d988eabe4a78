"""ocrd/inventory.py: the walk over real files under tmp_path, and display() of any name."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocrd.inventory import FileEntry, Inventory, ModelDirMissing, display, scan
from tests.conftest import make_file


def by_path(inventory: Inventory) -> dict[bytes, FileEntry]:
    paths = [f.path for f in inventory.files]
    assert len(paths) == len(set(paths)), "a file was listed twice"
    return {f.path: f for f in inventory.files}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


def test_nested_directories(model_dir: Path) -> None:
    make_file(model_dir, b"top.bin", b"12345", age_s=3600)
    make_file(model_dir, b"a/b/c/deep.gguf", b"1" * 100)
    make_file(model_dir, b"a/side.bin")
    (model_dir / "empty" / "dir").mkdir(parents=True)
    files = by_path(scan(model_dir))
    assert set(files) == {b"top.bin", b"a/b/c/deep.gguf", b"a/side.bin"}
    top = files[b"top.bin"]
    st = os.lstat(model_dir / "top.bin")
    assert top == FileEntry(
        b"top.bin", 5, st.st_mtime, st.st_atime, st.st_ctime, st.st_dev, st.st_ino, False
    )
    assert files[b"a/b/c/deep.gguf"].size == 100
    inv = scan(str(model_dir))
    assert (inv.file_count, inv.total_bytes, inv.unreadable) == (3, 106, ())


def test_empty_model_dir(model_dir: Path) -> None:
    assert scan(model_dir) == Inventory((), (), ((b"", model_dir.stat().st_ino),))


def test_every_directory_is_reported_with_its_inode(model_dir: Path) -> None:
    (model_dir / "a" / "b").mkdir(parents=True)
    (model_dir / "c").mkdir()
    found = dict(scan(model_dir).dirs)
    assert found == {
        rel: (model_dir / os.fsdecode(rel)).stat().st_ino for rel in (b"", b"a", b"a/b", b"c")
    }


def test_symlinks_are_recorded_and_never_followed(model_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_file(outside, b"secret.bin")
    make_file(outside, b"deeper/more.bin")
    make_file(model_dir, b"real.bin", b"abc")
    (model_dir / "to_file").symlink_to(model_dir / "real.bin")
    (model_dir / "to_outside_dir").symlink_to(outside)
    (model_dir / "sub").mkdir()
    (model_dir / "sub" / "to_parent").symlink_to("..")  # a loop, if it were followed
    (model_dir / "dangling").symlink_to(tmp_path / "nothing here")

    inv = scan(model_dir)
    files = by_path(inv)
    assert set(files) == {b"real.bin", b"to_file", b"to_outside_dir", b"sub/to_parent", b"dangling"}
    assert not files[b"real.bin"].is_link
    for link in (b"to_file", b"to_outside_dir", b"sub/to_parent", b"dangling"):
        f = files[link]
        st = os.lstat(os.path.join(os.fsencode(model_dir), link))
        assert f.is_link
        assert (f.ino, f.size) == (st.st_ino, st.st_size)  # the link itself, not its target
    assert (inv.file_count, inv.total_bytes) == (1, 3)


def test_only_regular_files_and_links_are_models(model_dir: Path) -> None:
    os.mkfifo(model_dir / "a_fifo")
    make_file(model_dir, b"m.bin")
    assert set(by_path(scan(model_dir))) == {b"m.bin"}


def test_names_are_bytes_newlines_and_invalid_utf8_included(model_dir: Path) -> None:
    names = [b"new\nline.bin", b"bad\xff\xfe.bin", b"dir\xff/x\n.bin", b"\\x41", b"caf\xc3\xa9"]
    for name in names:
        make_file(model_dir, name)
    assert set(by_path(scan(model_dir))) == set(names)


def test_model_dir_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelDirMissing, match="does not exist"):
        scan(tmp_path / "nope")


def test_model_dir_not_a_directory(tmp_path: Path) -> None:
    make_file(tmp_path, b"afile")
    with pytest.raises(ModelDirMissing, match="is not a directory"):
        scan(tmp_path / "afile")
    with pytest.raises(ModelDirMissing):  # a parent on the way became a file: ENOTDIR
        scan(tmp_path / "afile" / "models")


def test_model_dir_may_be_a_symlink(model_dir: Path, tmp_path: Path) -> None:
    make_file(model_dir, b"m.bin")
    (tmp_path / "link").symlink_to(model_dir)
    (f,) = scan(tmp_path / "link").files
    assert (f.path, f.is_link) == (b"m.bin", False)


# --- display ---------------------------------------------------------------------------------

TRICKY = [
    b"plain.bin",
    b"sub/dir/model.gguf",
    b"caf\xc3\xa9.bin",
    b"new\nline",
    b"new\\nline",
    b"tab\there",
    b"tab\\there",
    b"cr\rhere",
    b"a\\x41",  # a backslash then "x41", literally
    b"aA",
    b"a\\\\x41",
    b"\xff",
    b"\\xff",
    b"\xc3\xbf",  # U+00FF, printable
    b"\xc2\x85",  # U+0085, a line break that is valid UTF-8
    b"\x85",  # the lone byte 0x85, not UTF-8
    b"\\x85",
    b"\\u0085",
    b"\xc2\xa0",  # U+00A0, no-break space
    b"\xa0",
    b"\xe2\x80\xa8",  # U+2028 LINE SEPARATOR
    b"\xee\x80\x80" + b"1",  # U+E000 then "1"
    b"\xf3\xa0\x80\x81",  # U+E0001
    b"\xed\xa0\x80",  # an encoded surrogate: not UTF-8
    b"\x1b[31mred",
    b"\x7f",
]


def test_display_plain_names_are_unchanged() -> None:
    assert display(b"sub/dir/model.gguf") == "sub/dir/model.gguf"
    assert display("caf\u00e9 \u6a21\u578b.bin".encode()) == "caf\u00e9 \u6a21\u578b.bin"


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (b"new\nline", "new\\nline"),
        (b"tab\t", "tab\\t"),
        (b"a\\x41", "a\\\\x41"),
        (b"bad\xff", "bad\\xff"),
        (b"\x1b", "\\x1b"),
    ],
)
def test_display_escapes(name: bytes, shown: str) -> None:
    assert display(name) == shown


def test_display_is_one_line_and_distinct_for_distinct_names() -> None:
    shown = [display(n) for n in TRICKY]
    for s in shown:
        assert s.isprintable()
        assert len(s.splitlines()) == 1
    assert len(set(shown)) == len(TRICKY), [s for s in shown if shown.count(s) > 1]


_ESCAPE = re.compile(r"\\(?:(\\)|(n)|(t)|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))")


def undisplay(shown: str) -> bytes:
    """Invert display(): if this recovers every name, no two names can share a display."""
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(shown):
        out += shown[pos : m.start()].encode("utf-8")
        backslash, nl, tab, byte, bmp, astral = m.groups()
        if backslash:
            out += b"\\"
        elif nl:
            out += b"\n"
        elif tab:
            out += b"\t"
        elif byte:
            out.append(int(byte, 16))
        else:
            out += chr(int(bmp or astral, 16)).encode("utf-8")
        pos = m.end()
    tail = shown[pos:]
    assert "\\" not in tail
    out += tail.encode("utf-8")
    return bytes(out)


_names = st.one_of(
    st.binary(min_size=1, max_size=20),
    st.text(min_size=1, max_size=10).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@given(_names)
def test_display_round_trips_so_it_is_unambiguous(name: bytes) -> None:
    shown = display(name)
    assert shown.isprintable()
    assert undisplay(shown) == name


@pytest.mark.parametrize("name", TRICKY)
def test_display_round_trips_tricky_names(name: bytes) -> None:
    assert undisplay(display(name)) == name
