"""The deleter's quick check (ocrd.ops.quick) against its reference, ocrd.ops.check.check_file:
for every case the quick check answers, it must give check_file's answer; where it does not
answer (None), check_file is asked. Real files, each case provoked for real."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ocrd.fs.dirfds import DirFds
from ocrd.fs.scan import scan
from ocrd.ops import sweep
from ocrd.ops.check import Checked, check_file
from ocrd.ops.inuse import InUse, ignore_lease_breaks
from ocrd.ops.onebehind import OneBehind
from ocrd.ops.outcomes import Outcome, Status
from ocrd.ops.quick import Parent, quick_check
from ocrd.rules.decision import Decision
from ocrd.rules.leftovers import INTERRUPTED
from ocrd.rules.retention import Rules, plan
from ocrd.rules.selectors import PrefixRule
from tests.conftest import make_file, needs_compiled_step

NAME = b"sub/old_a.bin"


def _decision(model_dir: Path) -> Decision:
    rules = Rules((PrefixRule(("old_",)),), settle=0.0)
    (d,) = plan(scan(model_dir), rules, time.time()).deletions
    return d


def _grow(p: Path) -> None:
    with open(p, "ab") as fh:
        fh.write(b"more")


def _replace(p: Path) -> None:
    tmp = p.with_name("new")
    tmp.write_bytes(b"x")
    os.rename(tmp, p)


def _link(p: Path) -> None:
    os.unlink(p)
    os.symlink("/etc/hostname", p)


def _fifo(p: Path) -> None:
    os.unlink(p)
    os.mkfifo(p)


def _socket(p: Path) -> None:
    os.unlink(p)
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.fsdecode(p))
    s.close()


def _touch(p: Path) -> None:
    os.utime(p, (1.0, 1.0))


CASES: dict[str, Callable[[Path], object]] = {
    "unchanged": lambda p: None,
    "grown": _grow,
    "replaced": _replace,
    "mtime": _touch,
    "vanished": os.unlink,
    "symlink": _link,
    "fifo": _fifo,
    "socket": _socket,
}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    return d


@pytest.fixture
def leases() -> None:
    ignore_lease_breaks()


def _answer(result: Outcome | Checked | None) -> object:
    """What a result says, without its fd (closed here)."""
    if isinstance(result, Checked):
        if result.fd is not None:
            os.close(result.fd)
        return ("checked", result.name, result.leased, result.now.st_ino)
    if result is None:
        return None
    return (result.status, result.detail)


def _both(model_dir: Path, d: Decision, holders: InUse) -> tuple[object, object]:
    with DirFds(os.fsencode(model_dir)) as dirs:
        here = Parent(dirs, b"sub")
        try:
            quick = _answer(quick_check(here.get(), d, holders, os.geteuid()))
        finally:
            here.close()
        reference = _answer(check_file(dirs, d, holders, probe=False))
    return quick, reference


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_quick_check_answers_as_check_file_does(
    model_dir: Path, leases: None, case: str
) -> None:
    make_file(model_dir, NAME, b"model")
    d = _decision(model_dir)
    CASES[case](model_dir / os.fsdecode(NAME))
    quick, reference = _both(model_dir, d, InUse())
    assert quick == reference
    assert quick is not None


def test_a_file_open_elsewhere_is_in_use_for_both(model_dir: Path, leases: None) -> None:
    make_file(model_dir, NAME, b"model")
    d = _decision(model_dir)
    holder = os.open(model_dir / os.fsdecode(NAME), os.O_RDONLY)  # another open file description
    try:
        quick, reference = _both(model_dir, d, InUse())
    finally:
        os.close(holder)
    assert quick == reference
    assert isinstance(quick, tuple)
    assert quick[1] == "in_use"


def test_a_leftover_of_another_owner_is_foreign_for_both(model_dir: Path, leases: None) -> None:
    make_file(model_dir, NAME, b"model")
    os.chown(model_dir / os.fsdecode(NAME), 65534, 65534)
    d = _decision(model_dir)._replace(rule=INTERRUPTED)
    quick, reference = _both(model_dir, d, InUse())
    assert quick == reference
    assert isinstance(quick, tuple)
    assert quick[1] == "foreign"


def test_where_no_lease_can_be_had_the_quick_check_hands_over(
    model_dir: Path, leases: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem without leases (EINVAL), provoked for the one fcntl that takes it: the
    quick check must not decide, and check_file asks /proc."""
    import fcntl

    real = fcntl.fcntl

    def no_leases(fd: int, cmd: int, arg: int = 0) -> object:
        if cmd == fcntl.F_SETLEASE and arg == fcntl.F_WRLCK:
            raise OSError(22, "Invalid argument")
        return real(fd, cmd, arg)

    make_file(model_dir, NAME, b"model")
    d = _decision(model_dir)
    monkeypatch.setattr(fcntl, "fcntl", no_leases)
    with DirFds(os.fsencode(model_dir)) as dirs:
        here = Parent(dirs, b"sub")
        try:
            assert quick_check(here.get(), d, InUse(), os.geteuid()) is None
        finally:
            here.close()


def test_the_directory_is_verified_again_after_every_files(model_dir: Path, leases: None) -> None:
    make_file(model_dir, NAME, b"model")
    with DirFds(os.fsencode(model_dir)) as dirs:
        here = Parent(dirs, b"sub", every=3)
        try:
            first = here.get()
            assert first >= 0
            os.rename(model_dir / "sub", model_dir / "moved")
            os.mkdir(model_dir / "sub")
            # Within the run: still the verified directory, wherever it is now.
            assert os.path.samestat(os.fstat(here.get()), os.stat(model_dir / "moved"))
            assert here.get() >= 0
            # The fourth: verified again, and the new directory at the path is refused.
            assert here.get() == -1
        finally:
            here.close()


@contextlib.contextmanager
def _first_waiting(model_dir: Path) -> Iterator[tuple[OneBehind, int, Decision, Decision]]:
    """Two planned files of sub/ (inode order): the first checked and taken by OneBehind, so
    it waits leased under the private name; the second the one the step is asked about; and
    sub/'s fd."""
    make_file(model_dir, b"sub/old_0.bin", b"waits")
    make_file(model_dir, NAME, b"model")
    rules = Rules((PrefixRule(("old_",)),), settle=0.0)
    first, second = sorted(
        plan(scan(model_dir), rules, time.time()).deletions, key=lambda d: d.entry.ino
    )
    behind = OneBehind(None)
    with DirFds(os.fsencode(model_dir)) as dirs:
        here = Parent(dirs, b"sub")
        try:
            parent = here.get()
            c = quick_check(parent, first, InUse(), os.geteuid())
            assert isinstance(c, Checked)
            assert list(behind.take(c)) == []
            yield behind, parent, first, second
        finally:
            behind.abandon()
            here.close()


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_compiled_step_does_nothing_where_the_python_path_must_decide(
    model_dir: Path, leases: None, case: str
) -> None:
    """For each case: the step either takes the file exactly as the Python path would
    (unchanged: the waiting file deleted, this one waiting), or returns None having done
    nothing at all (the waiting file still waiting, the file as the case left it)."""
    needs_compiled_step()
    with _first_waiting(model_dir) as (behind, parent, first, second):
        waiting_name = behind.private
        CASES[case](model_dir / os.fsdecode(second.entry.path))
        before = sorted(os.listdir(model_dir / "sub"))
        settled = sweep.step(behind, parent, second, os.geteuid())
        if case == "unchanged":
            assert settled is not None
            assert [(o.decision, o.status) for o in settled] == [(first, Status.DELETED)]
            assert behind.waiting is not None
            assert behind.waiting.decision == second
            assert sorted(os.listdir(model_dir / "sub")) == [os.fsdecode(waiting_name)]
        else:
            assert settled is None
            assert sorted(os.listdir(model_dir / "sub")) == before
            assert behind.waiting is not None
            assert behind.waiting.decision == first
        last = behind.finish()
        assert last is not None
        assert last.status is Status.DELETED


def test_the_compiled_step_leaves_a_file_being_opened_to_the_python_path(
    model_dir: Path, leases: None
) -> None:
    """A file held elsewhere: the step does nothing, and the waiting file still waits."""
    needs_compiled_step()
    with _first_waiting(model_dir) as (behind, parent, first, second):
        holder = os.open(model_dir / os.fsdecode(second.entry.path), os.O_RDONLY)
        try:
            assert sweep.step(behind, parent, second, os.geteuid()) is None
            assert behind.waiting is not None
            assert behind.waiting.decision == first
        finally:
            os.close(holder)
            behind.abandon()  # the waiting file gets its name back
    assert sorted(os.listdir(model_dir / "sub")) == ["old_0.bin", "old_a.bin"]
