"""ocrd/fs/inventory.py: the plain values, and display() of any name."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ocrd.fs.inventory import FileEntry, display, display_all, entry_from_stat


def test_an_entry_from_lstat_says_what_the_file_is(tmp_path: Path) -> None:
    (tmp_path / "m.bin").write_bytes(b"12345")
    (tmp_path / "link").symlink_to("m.bin")
    for name, is_link in ((b"m.bin", False), (b"link", True)):
        st_ = os.lstat(os.path.join(os.fsencode(tmp_path), name))
        e = entry_from_stat(b"sub/" + name, st_)
        assert e == FileEntry(
            b"sub/" + name,
            st_.st_size,
            st_.st_mtime,
            st_.st_atime,
            st_.st_ctime,
            st_.st_dev,
            st_.st_ino,
            is_link,
        )
        assert (e.name, e.text, e.is_link) == (name, "sub/" + name.decode(), is_link)


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


# Plain names (the fast path) and names cut inside a UTF-8 sequence, so that two neighbours
# joined would spell a character neither holds alone.
_plain = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), max_size=8)
_piece = st.one_of(
    _plain.map(str.encode),
    st.sampled_from([b"\xc3", b"\xa9", "é".encode(), b"\\", b"\n", b"\xff", b"a/b"]),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_names, _piece, _plain.map(str.encode)), max_size=8))
@example([b"\xc3", b"\xa9"])  # apart two undecodable bytes, joined an "é"
@example([b"caf\xc3", b"\xa9.bin"])
@example([b"a\\b", b"plain"])
def test_display_all_shows_each_name_as_display_does(paths: list[bytes]) -> None:
    assert display_all(paths) == [display(p) for p in paths]
