"""ocrd/fs/holders.py: the /proc fallback answers held, free or unknown, and never free when it
could not see everything."""

from __future__ import annotations

import contextlib
import mmap
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ocrd.fs.holders import Answer, Holders, View, file_id, take
from ocrd.fs.leases import lease_report
from tests.worlds import held


def test_a_complete_view_answers_free_or_held() -> None:
    view = View(held=frozenset({(1, 10)}), held_any_device=frozenset({20}))
    assert view.answer((1, 10)) is Answer.HELD
    assert view.answer((2, 10)) is Answer.FREE
    assert view.answer((3, 20)) is Answer.HELD  # its device unknown: held on every device


def test_an_incomplete_view_never_answers_free() -> None:
    view = View(held=frozenset({(1, 10)}), limits=("cannot see everything",))
    assert view.answer((1, 10)) is Answer.HELD
    assert view.answer((1, 11)) is Answer.UNKNOWN


def test_open_and_mapped_files_of_other_processes_are_held(tmp_path: Path) -> None:
    opened, mapped, free = (tmp_path / n for n in ("opened", "mapped", "free"))
    for p in (opened, mapped, free):
        p.write_bytes(b"x" * 4096)
    with held(opened, "open"), held(mapped, "mmap"):  # the mapping alone: its fd is closed
        view = take()
        ids = {}
        for p in (opened, mapped, free):
            fd = os.open(p, os.O_RDONLY)
            try:
                ids[p.name] = file_id(fd)
            finally:
                os.close(fd)
    assert view.answer(ids["opened"]) is Answer.HELD  # type: ignore[arg-type]
    assert view.answer(ids["mapped"]) is Answer.HELD  # type: ignore[arg-type]
    assert view.answer(ids["free"]) is not Answer.HELD  # type: ignore[arg-type]


def test_our_own_mappings_count_but_not_our_open_fds(tmp_path: Path) -> None:
    """ocrd opens the very file it checks; that fd must not make it look held. A mapping in
    ocrd's own process (the engine's) does."""
    path = tmp_path / "model"
    path.write_bytes(b"x" * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        fid = file_id(fd)
        assert fid is not None
        assert take().answer(fid) is not Answer.HELD
        m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        try:
            assert take().answer(fid) is Answer.HELD
        finally:
            m.close()
    finally:
        os.close(fd)


def test_out_of_file_descriptors_the_view_is_limited_not_empty() -> None:
    """EMFILE while reading /proc used to leave an empty set: "nobody holds anything"."""
    script = (
        "import resource, sys\n"
        "from ocrd.fs.holders import take\n"
        "keep = []\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "try:\n"
        "    while True: keep.append(open('/dev/null'))\n"
        "except OSError: pass\n"
        "keep.pop().close()\n"  # one fd left: enough to list /proc, not to read fdinfo
        "view = take()\n"
        "print(len(view.limits), view.limits[0] if view.limits else '')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    count, _, why = out.partition(" ")
    assert int(count) >= 1, out
    assert "open files" in why or "could not be inspected" in why


def test_in_a_pid_namespace_the_view_says_it_is_limited() -> None:
    script = "from ocrd.fs.holders import take\nprint(take().limits)\n"
    result = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        import pytest

        pytest.skip("unshare --pid needs privileges here")
    assert "PID namespace" in result.stdout


def test_a_view_that_does_not_return_in_time_is_unknown(tmp_path: Path) -> None:
    """A stuck walk of /proc (faked by a proc path that is a FIFO nobody writes to) must not
    stall the pass: the answer after timeout_s is unknown, and the next ask does not start a
    second walk while the first is stuck."""
    fake = tmp_path / "proc"
    fake.mkdir()
    (fake / "self").mkdir()
    (fake / "self" / "ns").mkdir()
    os.mkfifo(fake / "self" / "mountinfo")
    holders = Holders(proc=str(fake), timeout_s=0.2)
    view = holders.view()
    assert view.answer((1, 1)) is Answer.UNKNOWN
    assert "longer than" in view.limits[0]
    again = holders.refresh()
    assert "has not returned" in again.limits[0]
    with open(fake / "self" / "mountinfo", "wb"):
        pass  # lets the stuck walk finish


def test_the_lease_probe_of_ocrd_check_opens_nothing_outside_model_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ocrd check`` (often run as root) opens one model file to try a lease. A directory on
    the way swapped for a link after it was listed must not lead that open elsewhere: here
    to a FIFO outside, where the lease would fail and the report would be wrong."""
    models, outside = tmp_path / "models", tmp_path / "outside"
    (models / "sub").mkdir(parents=True)
    (models / "sub" / "model.bin").write_bytes(b"GGUF")
    outside.mkdir()
    os.mkfifo(outside / "model.bin")
    listing = os.scandir

    def swapped_after_listing(target: Any) -> Any:
        with listing(target) as it:
            entries = list(it)
        if any(e.name in ("model.bin", b"model.bin") for e in entries):
            (models / "sub").rename(models / "moved")
            (models / "sub").symlink_to(outside)
        return contextlib.nullcontext(iter(entries))

    monkeypatch.setattr(os, "scandir", swapped_after_listing)
    report = lease_report(models)
    monkeypatch.undo()
    assert "a lease was granted on a model file" in report
