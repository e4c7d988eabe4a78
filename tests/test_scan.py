"""ocrd/fs/scan.py: the walk over real files under tmp_path."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from ocrd.base.errors import ModelDirMissing
from ocrd.fs.inventory import FileEntry, Inventory
from ocrd.fs.place import pin
from ocrd.fs.scan import scan, scan_batches
from tests.conftest import make_file, needs_compiled_step


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
    found = dict(scan(model_dir).directories)
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


def _hostile_tree(root: Path) -> None:
    """Every kind of entry a scan meets, under names no one would choose."""
    (root / "d" / "e").mkdir(parents=True)
    for rel, data in ((b"a.bin", b"x"), (b"d/b.bin", b"yy"), (b"d/e/c.bin", b"")):
        (root / os.fsdecode(rel)).write_bytes(data)
    for name in (b"\xff\xfe-not-utf8", b"new\nline", b"sp ace", b"\xc3\xa9t\xc3\xa9", b"-"):
        (root / os.fsdecode(name)).write_bytes(name)
    os.symlink("/etc/hostname", root / "link")
    os.symlink("nowhere", root / "d" / "dangling")
    os.mkfifo(root / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.fsdecode(root / "d" / "sock"))
    s.close()
    os.utime(root / "a.bin", ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    os.chown(root / "d" / "b.bin", 65534, 65534)
    for i in range(1300):  # more than one batch of the compiled step in one directory
        (root / "d" / f"f{i:04d}").write_bytes(b"")


@pytest.mark.parametrize("chunk", [None, 3, 700])
def test_the_compiled_records_are_the_python_loops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int | None
) -> None:
    """The compiled step (ocrd/fs/records.c) against the Python loop, its reference: the same
    records, in the same batches, the same directories, unreadable places and mounts."""
    needs_compiled_step()
    _hostile_tree(tmp_path)
    seen = {}
    for pure in ("1", "0"):
        monkeypatch.setenv("OCRD_PURE_PYTHON", pure)
        unreadable: list[tuple[bytes, str]] = []
        directories: list[tuple[bytes, int]] = []
        mounts: list[tuple[bytes, str]] = []
        batches = list(
            scan_batches(pin(tmp_path), unreadable, directories, mounts=mounts, chunk=chunk)
        )
        seen[pure] = (batches, unreadable, directories, mounts)
    assert seen["0"] == seen["1"]
    batches = seen["0"][0]
    files = [f for b in batches for f in b]
    assert len(files) == 3 + 5 + 2 + 1300
    assert all(type(f) is FileEntry for f in files)
    a = next(f for f in files if f.path == b"a.bin")
    assert a.mtime == os.stat(tmp_path / "a.bin").st_mtime  # the same double, to the last bit
    if chunk is not None:
        assert max(len(b) for b in batches) <= chunk
