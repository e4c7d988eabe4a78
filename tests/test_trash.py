"""The trash on disk (ocrd/fs/trash.py) and its purges (ocrd/ops/purge.py): real files, real leases,
and real processes killed at chosen points."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ocrd.fs import trash
from ocrd.fs.holds import read as read_holds
from ocrd.fs.place import DIR_FLAGS
from ocrd.fs.restore import Refused
from ocrd.fs.restore import restore as restore_file
from ocrd.ops import purge
from tests.conftest import make_file
from tests.worlds import OCRD_UID, root_only

GRACE = 3600.0


def put(
    model_dir: Path, rel: bytes, *, now: float | None = None, rule: str = "prefix"
) -> trash.Entry:
    """Trash ``rel`` as the deleter would: its parent open, its identity checked."""
    t = trash.Trash.open(model_dir, create=True)
    assert t is not None
    with t:
        parent_rel, _, name = rel.rpartition(b"/")
        pfd = os.open(parent_rel or b".", DIR_FLAGS, dir_fd=t.root_fd)
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            return t.put(
                pfd, name, rel, st, rule=rule, now=time.time() if now is None else now, grace=GRACE
            )
        finally:
            os.close(pfd)


def entries(model_dir: Path) -> list[trash.Entry]:
    return purge.entries(model_dir)


def restore(model_dir: Path, e: trash.Entry, now: float | None = None) -> trash.Entry:
    t = trash.Trash.open(model_dir, create=False)
    assert t is not None
    with t:
        return restore_file(t, e, now=time.time() if now is None else now, grace=GRACE)


def test_a_trashed_file_leaves_its_path_and_is_listed(models: Path) -> None:
    make_file(models, b"sub/old_a.gguf", b"A" * 100)
    before = time.time()
    e = put(models, b"sub/old_a.gguf", rule="prefix")
    assert not (models / "sub/old_a.gguf").exists()
    [listed] = entries(models)
    assert listed.path == b"sub/old_a.gguf"
    assert listed.size == 100
    assert listed.rule == "prefix"
    assert before <= listed.deleted_at <= time.time()
    assert listed.purge_at == pytest.approx(listed.deleted_at + GRACE)
    assert listed == e
    doc = listed.as_json()
    assert doc["path"] == "sub/old_a.gguf"
    assert doc["deleted_at"].endswith("Z")
    assert (models / ".ocrd-trash").stat().st_mode & 0o777 == 0o700


def test_no_trashed_file_within_one_level_of_subdirectories(models: Path) -> None:
    """An engine listing model_dir and each of its subdirectories sees no file of the trash."""
    make_file(models, b"old_a.gguf")
    put(models, b"old_a.gguf")
    seen = [p for p in models.iterdir() if p.is_file()]
    seen += [q for p in models.iterdir() if p.is_dir() for q in p.iterdir() if q.is_file()]
    assert seen == []


def test_restore_is_the_same_file_with_mode_owner_mtime(models: Path) -> None:
    data = os.urandom(4096)
    path = make_file(models, b"a/b/old_x.bin", data, age_s=86400 * 3)
    os.chmod(path, 0o640)
    if os.geteuid() == 0:
        os.chown(path, OCRD_UID, OCRD_UID)
    os.chmod(models / "a/b", 0o750)  # noqa: S103 -- a mode restore must bring back
    before = os.stat(path)
    e = put(models, b"a/b/old_x.bin")
    shutil.rmtree(models / "a")  # the deleter removes the directories it empties
    with capture_logs() as logs:
        restore(models, e)
    after = os.stat(path)
    assert Path(os.fsdecode(path)).read_bytes() == data
    assert (after.st_ino, after.st_mode, after.st_uid, after.st_gid, after.st_mtime_ns) == (
        before.st_ino,
        before.st_mode,
        before.st_uid,
        before.st_gid,
        before.st_mtime_ns,
    )
    assert stat.S_IMODE((models / "a/b").stat().st_mode) == 0o750
    assert entries(models) == []
    assert [x for x in (models / ".ocrd-trash").iterdir() if x.name != "held"] == []
    [line] = [x for x in logs if x["event"] == "model_restored"]
    assert line["path"] == "a/b/old_x.bin"
    assert line["size"] == 4096


def test_a_restored_file_is_held_for_grace(models: Path) -> None:
    make_file(models, b"old_a")
    e = put(models, b"old_a")
    now = time.time()
    restore(models, e, now=now)
    st = os.stat(models / "old_a")
    t = trash.Trash.open(models, create=False)
    assert t is not None
    with t:
        assert read_holds(t, now) == {(st.st_dev, st.st_ino): pytest.approx(now + GRACE)}
        assert read_holds(t, now + GRACE + 1) == {}
        assert list((models / ".ocrd-trash/held").iterdir()) == []  # an ended hold is removed


def test_restore_onto_an_existing_file_changes_nothing(models: Path) -> None:
    make_file(models, b"d/old_a", b"trashed")
    e = put(models, b"d/old_a")
    make_file(models, b"d/old_a", b"new one")
    with pytest.raises(Refused) as refused:
        restore(models, e)
    assert refused.value.why == "exists"
    assert (models / "d/old_a").read_bytes() == b"new one"
    assert entries(models) == [e]
    assert not (models / ".ocrd-trash/held").exists() or not any(
        (models / ".ocrd-trash/held").iterdir()
    )


def test_restore_never_follows_a_link_on_the_way(models: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    make_file(models, b"d/old_a", b"x")
    e = put(models, b"d/old_a")
    os.rmdir(models / "d")
    os.symlink(outside, models / "d")
    with pytest.raises(Refused) as refused:
        restore(models, e)
    assert refused.value.why == "parent"
    assert list(outside.iterdir()) == []
    assert entries(models) == [e]


@pytest.mark.parametrize("kind", ["symlink", "file", "foreign", "writable"])
def test_a_squatted_trash_is_unusable_and_the_file_stays(
    models: Path, tmp_path: Path, kind: str
) -> None:
    """model_dir sticky and world-writable: a neighbour made ``.ocrd-trash`` first."""
    if kind == "foreign" and os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    models.chmod(0o1777)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    squat = models / ".ocrd-trash"
    if kind == "symlink":
        squat.symlink_to(elsewhere)
    elif kind == "file":
        squat.write_bytes(b"")
    else:
        squat.mkdir(mode=0o700)
        if kind == "foreign":
            os.chown(squat, 65534, 65534)
        else:
            squat.chmod(0o777)
    make_file(models, b"old_a", b"keep me")
    with pytest.raises(trash.Unusable):
        put(models, b"old_a")
    assert (models / "old_a").read_bytes() == b"keep me"
    assert list(elsewhere.iterdir()) == []
    assert trash.usage(models) == trash.Usage(0, 0)
    assert entries(models) == []


# -- crash safety: real processes killed at chosen points -----------------------------------------

SCRIPT = """\
import os, sys, time
from ocrd.fs import trash
from ocrd.ops import purge
from ocrd.fs.place import DIR_FLAGS
from ocrd.fs.restore import restore
op, model_dir, rel = sys.argv[1], sys.argv[2], os.fsencode(sys.argv[3])
if op == "put":
    t = trash.Trash.open(model_dir, create=True)
    parent_rel, _, name = rel.rpartition(b"/")
    pfd = os.open(parent_rel or b".", DIR_FLAGS, dir_fd=t.root_fd)
    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    t.put(pfd, name, rel, st, rule="prefix", now=time.time(), grace=3600.0)
elif op == "purge":
    purge.purge_due(model_dir, now=time.time(), grace=0.0)
elif op == "restore":
    t = trash.Trash.open(model_dir, create=False)
    for e in t.entries():
        restore(t, e, now=time.time(), grace=3600.0)
elif op == "recover":
    purge.recover(model_dir)
print("done", flush=True)
"""

CONTENT = b"the one model " * 64


def run(op: str, models: Path, rel: bytes, prefix: list[str], env: dict[str, str]) -> bool:
    """Run ``op``; whether it got to its end (False: killed on the way)."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-B", "-c", SCRIPT, op, str(models), os.fsdecode(rel)],
        capture_output=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    if proc.stdout.strip().endswith(b"done"):
        return True
    assert proc.returncode in (-9, 137), proc.stderr.decode()
    return False


def copies(models: Path) -> list[str]:
    """Where the model's bytes are: its path, the trash, or a private name in it."""
    found = []
    for dirpath, _, files in os.walk(models):
        for f in files:
            p = Path(dirpath, f)
            if p.read_bytes() == CONTENT:
                found.append(str(p.relative_to(models)))
    return found


def state_after_recovery(models: Path) -> list[str]:
    """Recover in a fresh process, then: no debris (every entry has its file), and where the
    model is."""
    assert run("recover", models, b"x", [], {})
    where = copies(models)
    listed = entries(models)
    trash_dir = models / ".ocrd-trash"
    dirs = [d for d in trash_dir.iterdir() if d.name != "held"] if trash_dir.exists() else []
    assert len(dirs) == len(listed), f"debris left: {sorted(os.listdir(trash_dir))}"
    assert len([w for w in where if w.startswith(".ocrd-trash/")]) == len(listed)
    return where


def prepare(models: Path, where: str) -> None:
    if models.exists():
        shutil.rmtree(models)
    models.mkdir()
    make_file(models, b"d/old_a", CONTENT)
    if where in ("trash", "due"):
        assert run("put", models, b"d/old_a", [], {})


FAULTS = [
    ("put", "in_place", "put:recorded", {"d/old_a"}),
    ("put", "in_place", "put:renamed", {"trash"}),
    ("purge", "due", "purge:locked", {"trash"}),
    ("purge", "due", "purge:deleted", {"purged"}),
    ("restore", "trash", "restore:renamed", {"d/old_a"}),
]


@pytest.mark.parametrize(("op", "start", "point", "expected"), FAULTS)
def test_killed_at_a_fault_point_nothing_is_lost_or_doubled(
    models: Path, op: str, start: str, point: str, expected: set[str]
) -> None:
    prepare(models, start)
    assert not run(op, models, b"d/old_a", [], {trash.FAULT_ENV: point})
    where = state_after_recovery(models)
    assert len(where) <= 1
    at = {"trash" if w.startswith(".ocrd-trash/") else w for w in where}
    got = at or {"purged"}
    assert got == expected


def strace_kill(name: str, n: int) -> list[str]:
    """A prefix that kills the process (SIGKILL) as it enters its ``n``th ``name`` call."""
    return [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        f"trace={name}",
        "-e",
        f"inject={name}:signal=KILL:when={n}",
    ]


def sweep(op: str, start: str, models: Path, name: str) -> Iterator[list[str]]:
    """Kill ``op`` at each of its ``name`` calls in turn until it runs to its end; yields where
    the model is after recovery, for each."""
    n = 1
    while True:
        prepare(models, start)
        finished = run(op, models, b"d/old_a", strace_kill(name, n), {})
        yield state_after_recovery(models)
        if finished:
            return
        n += 1
        assert n < 2000


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize(
    ("op", "start"), [("put", "in_place"), ("purge", "due"), ("restore", "trash")]
)
@pytest.mark.parametrize("name", ["renameat2", "unlinkat", "mkdirat", "flock"])
def test_killed_at_any_call_nothing_is_lost_or_doubled(
    models: Path, op: str, start: str, name: str
) -> None:
    """SIGKILL as the process enters each rename, unlink (rmdir too), mkdir and flock in turn:
    after recovery the model is at its path, in the trash (listed) or, for a purge, gone;
    never in two places."""
    for where in sweep(op, start, models, name):
        assert len(where) <= 1, where
        if op != "purge":
            assert len(where) == 1, where


@root_only
def test_root_entries_in_a_trash_of_ocrds_user_are_ocrds(models: Path) -> None:
    os.chown(models, OCRD_UID, OCRD_UID)
    trash_dir = models / ".ocrd-trash"
    trash_dir.mkdir(mode=0o700)
    os.chown(trash_dir, OCRD_UID, OCRD_UID)
    make_file(models, b"old_a")
    e = put(models, b"old_a")
    entry_dir = trash_dir / e.id.decode()
    assert {p.stat().st_uid for p in [entry_dir, entry_dir / "entry.json"]} == {OCRD_UID}


@root_only
def test_a_trash_root_makes_is_model_dirs_owners(models: Path) -> None:
    """``ocrd clean`` run by root first: the daemon's user (model_dir's owner) can use it."""
    os.chown(models, OCRD_UID, OCRD_UID)
    make_file(models, b"old_a")
    e = put(models, b"old_a")
    trash_dir = models / ".ocrd-trash"
    owners = {p.stat().st_uid for p in [trash_dir, trash_dir / e.id.decode()]}
    assert owners == {OCRD_UID}
