"""The deleter (ocrd/ops/delete.py, onebehind.py, totrash.py) on real files under tmp_path."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ocrd.fs import private
from ocrd.fs.holders import Answer
from ocrd.fs.scan import scan
from ocrd.ops.delete import apply
from ocrd.ops.fanout import FanOut
from ocrd.ops.inuse import InUse
from ocrd.ops.outcomes import Outcome, Status
from ocrd.ops.quick import Parent
from ocrd.rules.decision import Decision, Plan, Verdict
from ocrd.rules.retention import Rules, plan
from ocrd.rules.selectors import PrefixRule
from tests.conftest import Snapshot, make_file, snapshot
from tests.harness import ocrd_argv
from tests.worlds import APP_UID, OCRD_UID, World, as_user, held, make_world, root_only

# Every test here runs through both deleters: the compiled step and the Python path.
pytestmark = pytest.mark.usefixtures("deleter")


def plan_old(model_dir: Path) -> Plan:
    """Plan with the rule "delete names starting with old_", nothing settling."""
    rules = Rules((PrefixRule(("old_",)),), settle=0.0)
    return plan(scan(model_dir), rules, time.time())


def results(outcomes: Iterator[Outcome]) -> dict[bytes, tuple[Status, str | None]]:
    return {o.decision.entry.path: (o.status, o.detail) for o in outcomes}


def exists(path: Path | bytes) -> bool:
    return os.path.lexists(path)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    return tmp_path / "outside"


def test_deletes_exactly_the_planned_files(model_dir: Path) -> None:
    make_file(model_dir, b"old_a.bin", b"aaaa")
    make_file(model_dir, b"sub/old_b\xff\n.bin", b"bb")
    make_file(model_dir, b"sub/keep.bin")
    make_file(model_dir, b"old_dir/new.bin")
    p = plan_old(model_dir)
    assert results(apply(p, model_dir)) == {
        b"old_a.bin": (Status.DELETED, None),
        b"sub/old_b\xff\n.bin": (Status.DELETED, None),
    }
    assert {f.path for f in scan(model_dir).files} == {b"sub/keep.bin", b"old_dir/new.bin"}


def test_dry_run_changes_nothing(model_dir: Path) -> None:
    make_file(model_dir, b"old_a.bin")
    make_file(model_dir, b"sub/old_b.bin")
    before = snapshot(model_dir)
    outcomes = results(apply(plan_old(model_dir), model_dir, dry_run=True))
    assert outcomes == {
        b"old_a.bin": (Status.WOULD_DELETE, None),
        b"sub/old_b.bin": (Status.WOULD_DELETE, None),
    }
    assert snapshot(model_dir) == before


def test_nothing_planned_touches_nothing(model_dir: Path) -> None:
    make_file(model_dir, b"keep.bin")
    (model_dir / "empty").mkdir()
    before = snapshot(model_dir)
    assert list(apply(plan_old(model_dir), model_dir)) == []
    assert snapshot(model_dir) == before


def test_emptied_subdirectories_go_but_model_dir_and_empty_ones_stay(model_dir: Path) -> None:
    make_file(model_dir, b"old_top.bin")
    make_file(model_dir, b"a/b/old_x.bin")  # a/b and then a are emptied by us
    make_file(model_dir, b"c/old_y.bin")
    (model_dir / "c" / "inner").mkdir()  # c keeps an (already empty) subdirectory
    (model_dir / "empty").mkdir()  # was empty before: not ours to remove
    make_file(model_dir, b"d/old_z.bin")
    make_file(model_dir, b"d/keep.bin")
    statuses = {o.status for o in apply(plan_old(model_dir), model_dir)}
    assert statuses == {Status.DELETED}
    assert set(snapshot(model_dir)) == {b".", b"c", b"c/inner", b"empty", b"d", b"d/keep.bin"}


def test_model_dir_itself_is_never_removed(model_dir: Path) -> None:
    make_file(model_dir, b"old_a.bin")
    make_file(model_dir, b"sub/deeper/old_b.bin")
    assert len(list(apply(plan_old(model_dir), model_dir))) == 2
    assert model_dir.is_dir()
    assert os.listdir(model_dir) == []


def test_symlinks_and_their_targets_are_untouched(model_dir: Path, outside: Path) -> None:
    make_file(outside, b"old_target.bin")
    make_file(outside, b"dir/old_in.bin")
    make_file(model_dir, b"old_real.bin")
    (model_dir / "old_link").symlink_to(outside / "old_target.bin")
    (model_dir / "old_dirlink").symlink_to(outside / "dir")
    (model_dir / "old_inlink").symlink_to("old_real.bin")
    outside_before = snapshot(outside)
    p = plan_old(model_dir)
    assert [d.entry.path for d in p.deletions] == [b"old_real.bin"]
    list(apply(p, model_dir))
    assert snapshot(outside) == outside_before
    assert set(os.listdir(model_dir)) == {"old_link", "old_dirlink", "old_inlink"}


def test_a_forged_decision_to_delete_a_symlink_is_refused(model_dir: Path, outside: Path) -> None:
    """Even if a plan wrongly named a link (is_link lost), apply re-checks and refuses."""
    make_file(outside, b"target.bin")
    (model_dir / "old_link").symlink_to(outside / "target.bin")
    (link,) = scan(model_dir).files
    forged = Decision(link._replace(is_link=False), Verdict.DELETE, "prefix", "forged")
    assert results(apply(Plan((forged,), time.time()), model_dir)) == {
        b"old_link": (Status.SKIPPED, "changed")
    }
    assert (model_dir / "old_link").is_symlink()
    assert (outside / "target.bin").exists()


def _replace(path: Path) -> None:
    tmp = path.with_name("incoming")
    tmp.write_bytes(path.read_bytes())
    st = os.stat(path)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime, new inode
    os.replace(tmp, path)


def _append(path: Path) -> None:
    st = os.stat(path)
    with open(path, "ab") as fh:
        fh.write(b"more")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same inode and mtime, new size


def _touch(path: Path) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _to_symlink(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.parent / "keep.bin")


def _to_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize("change", [_replace, _append, _touch, _to_symlink, _to_directory])
def test_a_file_changed_after_planning_is_skipped(
    model_dir: Path, change: Callable[[Path], None]
) -> None:
    make_file(model_dir, b"sub/old_a.bin", b"original")
    make_file(model_dir, b"sub/keep.bin", b"keep")
    p = plan_old(model_dir)
    change(model_dir / "sub" / "old_a.bin")
    after_change = snapshot(model_dir)
    assert results(apply(p, model_dir)) == {b"sub/old_a.bin": (Status.SKIPPED, "changed")}
    assert snapshot(model_dir) == after_change


def test_a_file_removed_after_planning_is_skipped_as_vanished(model_dir: Path) -> None:
    make_file(model_dir, b"old_a.bin")
    make_file(model_dir, b"gone/old_b.bin")
    p = plan_old(model_dir)
    os.unlink(model_dir / "old_a.bin")
    os.unlink(model_dir / "gone" / "old_b.bin")
    os.rmdir(model_dir / "gone")
    assert results(apply(p, model_dir)) == {
        b"old_a.bin": (Status.SKIPPED, "vanished"),
        b"gone/old_b.bin": (Status.SKIPPED, "vanished"),
    }


def _swap_for_link(model_dir: Path, outside: Path) -> None:
    (model_dir / "sub").rename(model_dir / "sub_moved")
    (model_dir / "sub").symlink_to(outside)


def test_directory_swapped_for_a_link_before_apply(model_dir: Path, outside: Path) -> None:
    make_file(model_dir, b"sub/old_a.bin", b"precious")
    # The worst case: outside holds a hard link to the very inode that was planned, so only
    # refusing to follow the swapped-in link keeps the identity check from passing.
    os.link(model_dir / "sub" / "old_a.bin", outside / "old_a.bin")
    p = plan_old(model_dir)
    _swap_for_link(model_dir, outside)
    outside_before = snapshot(outside)
    assert results(apply(p, model_dir)) == {b"sub/old_a.bin": (Status.SKIPPED, "changed")}
    assert snapshot(outside) == outside_before
    assert (model_dir / "sub").is_symlink()
    assert (model_dir / "sub_moved" / "old_a.bin").read_bytes() == b"precious"


def _linked_outside(model_dir: Path, outside: Path, n: int) -> Snapshot:
    """``n`` planned files in sub/, each with a second link in ``outside``; outside's snapshot."""
    for i in range(1, n + 1):
        name = f"old_{i}.bin"
        make_file(model_dir, b"sub/" + name.encode(), name.encode())
        os.link(model_dir / "sub" / name, outside / name)
    return snapshot(outside)


def test_directory_swapped_for_a_link_between_two_deletions(
    model_dir: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The directory is verified again from the root every Parent.EVERY files (here 2: the
    # swap comes right after the second file was checked, so the third meets the link).
    monkeypatch.setattr(Parent, "EVERY", 2)
    outside_before = _linked_outside(model_dir, outside, 3)
    outcomes = apply(plan_old(model_dir), model_dir)
    # The first file's outcome comes once the second is in hand: checked inside the real sub,
    # and moved to a private name there (deletion runs one file behind). sub's fd is cached.
    first = next(outcomes)
    assert first.status is Status.DELETED
    _swap_for_link(model_dir, outside)
    rest = {(o.status, o.detail): o.decision.entry.name for o in outcomes}
    assert rest.keys() == {
        (Status.DELETED, None),  # the one in hand, deleted where it was checked: sub_moved
        (Status.SKIPPED, "changed"),  # the next is not reached through the link
    }
    assert snapshot(outside) == outside_before
    assert (model_dir / "sub").is_symlink()  # and the emptied-directory sweep left it alone
    assert os.listdir(model_dir / "sub_moved") == [os.fsdecode(rest[Status.SKIPPED, "changed"])]


def test_a_swap_within_a_run_of_deletions_deletes_only_the_planned_files_where_they_were(
    model_dir: Path, outside: Path
) -> None:
    """Between two verifications of a directory its fd is used as it is: the files still
    planned in it are deleted from the very directory that was verified (now sub_moved),
    each still the planned inode; nothing is reached through the link, outside is untouched."""
    outside_before = _linked_outside(model_dir, outside, 4)
    outcomes = apply(plan_old(model_dir), model_dir)
    first = next(outcomes)
    assert first.status is Status.DELETED
    _swap_for_link(model_dir, outside)
    rest = [(o.status, o.freed) for o in outcomes]
    assert rest == [(Status.DELETED, 0)] * 3  # each had a second link (outside): no bytes freed
    assert snapshot(outside) == outside_before
    assert (model_dir / "sub").is_symlink()
    assert os.listdir(model_dir / "sub_moved") == []


def private_names(root: Path) -> list[str]:
    return [n for _, _, names in os.walk(root) for n in names if n.startswith(".ocrd-deleting-")]


def test_a_file_opened_while_it_waits_to_go_is_put_back(model_dir: Path, outside: Path) -> None:
    """Deletion runs one file behind: a checked file waits under a private name, still
    leased, until the next file's rename replaces it. A process that opens it meanwhile
    (here through a hard link elsewhere, the only name left) waits for our lease; the file is
    then given its name back and reported in use, not deleted under the opener."""
    for name in ("old_1.bin", "old_2.bin", "old_3.bin"):
        make_file(model_dir, b"sub/" + name.encode(), name.encode())
    p = plan_old(model_dir)
    order = [d.entry.name for d in sorted(p.deletions, key=lambda d: d.entry.ino)]
    os.link(model_dir / "sub" / os.fsdecode(order[1]), outside / "second.bin")
    outcomes = apply(p, model_dir)
    first = next(outcomes)  # order[0] deleted by order[1]'s rename: order[1] now waits
    assert (first.decision.entry.name, first.status) == (order[0], Status.DELETED)
    read: list[bytes] = []
    opener = threading.Thread(target=lambda: read.append((outside / "second.bin").read_bytes()))
    opener.start()
    deadline = time.monotonic() + 30
    while "BREAKING" not in Path("/proc/locks").read_text():
        assert time.monotonic() < deadline, "the opener never waited for our lease"
        time.sleep(0.01)
    rest = results(outcomes)
    opener.join(timeout=30)
    assert read == [order[1]]
    assert rest == {
        b"sub/" + order[1]: (Status.SKIPPED, "in_use"),
        b"sub/" + order[2]: (Status.DELETED, None),
    }
    assert os.listdir(model_dir / "sub") == [os.fsdecode(order[1])]
    assert private_names(model_dir) == []


def test_a_pass_abandoned_midway_deletes_nothing_unreported(model_dir: Path) -> None:
    for i in range(4):
        make_file(model_dir, b"sub/old_%d.bin" % i)
    outcomes = apply(plan_old(model_dir), model_dir)
    first = next(outcomes)
    outcomes.close()  # the consumer went away with the next file in hand
    assert first.status is Status.DELETED
    assert sorted(os.listdir(model_dir / "sub")) == sorted(
        n
        for n in ("old_0.bin", "old_1.bin", "old_2.bin", "old_3.bin")
        if n != os.fsdecode(first.decision.entry.name)
    )
    assert private_names(model_dir) == []


@pytest.mark.parametrize("how", ["open", "mmap"])
def test_a_file_in_use_is_skipped_and_deleted_on_a_later_pass(model_dir: Path, how: str) -> None:
    make_file(model_dir, b"old_model.gguf", b"GGUF" * 1024)
    make_file(model_dir, b"old_free.bin")
    p = plan_old(model_dir)
    with held(model_dir / "old_model.gguf", how):
        assert results(apply(p, model_dir)) == {
            b"old_model.gguf": (Status.SKIPPED, "in_use"),
            b"old_free.bin": (Status.DELETED, None),
        }
        assert (model_dir / "old_model.gguf").exists()
    later = plan_old(model_dir)
    assert results(apply(later, model_dir, in_use=InUse())) == {
        b"old_model.gguf": (Status.DELETED, None)
    }


def test_stop_is_asked_before_each_file(model_dir: Path) -> None:
    for i in range(3):
        make_file(model_dir, b"old_%d.bin" % i)
    p = plan_old(model_dir)

    assert list(apply(p, model_dir, stop=lambda: True)) == []
    assert len(os.listdir(model_dir)) == 3

    asked = 0

    def after_one_file() -> bool:
        nonlocal asked
        asked += 1
        return asked > 1

    # The file in hand is finished (and reported) after the stop, however the deleter works.
    done = list(apply(p, model_dir, stop=after_one_file))
    assert [o.status for o in done] == [Status.DELETED]
    assert len(os.listdir(model_dir)) == 2
    assert not exists(os.path.join(os.fsencode(model_dir), done[0].decision.entry.path))


# -- many directories: inode order, and threads where deletions wait ---------------------------


def old_files(model_dir: Path, dirs: int, per_dir: int) -> set[bytes]:
    """``per_dir`` old_ files in each of ``dirs`` directories, plus one kept file in each but
    the first (which the pass must then remove); the old_ paths."""
    made = set()
    for d in range(dirs):
        for i in range(per_dir):
            rel = b"d%d/old_%03d.bin" % (d, i)
            make_file(model_dir, rel)
            made.add(rel)
        if d:
            make_file(model_dir, b"d%d/keep.bin" % d)
    return made


@pytest.fixture
def waiting() -> FanOut[Decision, Outcome]:
    """Every deletion counts as unlink-bound, so the pass turns to threads after the first two,
    whatever filesystem the test's temporary directory is on; workers hand over each outcome
    at once."""
    return FanOut(sample=2, share=0.0, handful=1, min_wait_s=0.0)


class Witness(InUse):
    """A real holder check that also notes which threads did deletions."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def check(self, fd: int | None, parent: int, ino: int) -> Answer:
        self.threads.add(threading.current_thread().name)
        return super().check(fd, parent, ino)


@pytest.mark.parametrize("slow", [True, False], ids=["waiting", "working"])
def test_threads_are_used_only_when_deletions_wait(model_dir: Path, slow: bool) -> None:
    made = old_files(model_dir, dirs=6, per_dir=30)
    fan_out: FanOut[Decision, Outcome] = FanOut(
        sample=2, share=0.0 if slow else 1.01, min_wait_s=0.0
    )
    witness = Witness()
    outcomes = list(apply(plan_old(model_dir), model_dir, in_use=witness, fan_out=fan_out))
    workers = {name for name in witness.threads if name.startswith("ocrd-delete-")}
    assert bool(workers) is slow  # how many of the 4 got a directory is up to the scheduler
    assert threading.current_thread().name in witness.threads  # the first SAMPLE, timed
    assert sorted(o.decision.entry.path for o in outcomes) == sorted(made)  # each exactly once
    assert {o.status for o in outcomes} == {Status.DELETED}
    assert sorted(os.listdir(model_dir)) == ["d1", "d2", "d3", "d4", "d5"]  # d0 emptied: gone
    assert all(os.listdir(model_dir / f"d{d}") == ["keep.bin"] for d in range(1, 6))
    assert not any(t.name.startswith("ocrd-delete-") for t in threading.enumerate())


def test_one_directory_left_is_not_handed_to_a_thread(
    model_dir: Path, waiting: FanOut[Decision, Outcome]
) -> None:
    made = old_files(model_dir, dirs=1, per_dir=30)
    witness = Witness()
    p = plan_old(model_dir)
    deleted = {o.decision.entry.path for o in apply(p, model_dir, in_use=witness, fan_out=waiting)}
    assert deleted == made
    assert witness.threads == {threading.current_thread().name}


def test_a_directory_is_emptied_in_inode_order(model_dir: Path) -> None:
    old_files(model_dir, dirs=1, per_dir=60)
    p = plan_old(model_dir)
    planned = [d.entry.ino for d in p.deletions]
    assert planned != sorted(planned)  # readdir order: else this test could not fail
    done = [o.decision.entry.ino for o in apply(p, model_dir, fan_out=FanOut(threads=1))]
    assert done == sorted(planned)


class Gate(InUse):
    """A holder check that lets one deletion through per permit: the test decides how far the
    deleting threads get (before the unlink). lease_blind is asked once per file on either
    path: after the lease on the Python path, before the compiled step (ocrd.ops.sweep)."""

    def __init__(self) -> None:
        super().__init__()
        self.permits = threading.Semaphore(0)

    def lease_blind(self, fd: int, dev: int) -> bool:
        assert self.permits.acquire(timeout=30), "the test never let this deletion through"
        return super().lease_blind(fd, dev)


def test_stop_while_threads_delete_finishes_files_in_hand_and_reports_each(
    model_dir: Path, waiting: FanOut[Decision, Outcome]
) -> None:
    made = old_files(model_dir, dirs=8, per_dir=25)
    gate = Gate()
    asked = 0

    def stop() -> bool:
        nonlocal asked
        asked += 1
        if asked > 10:
            gate.permits.release(1000)  # the files in hand may finish; no new one is started
            return True
        gate.permits.release()
        return False

    outcomes = list(apply(plan_old(model_dir), model_dir, stop=stop, in_use=gate, fan_out=waiting))
    deleted = {o.decision.entry.path for o in outcomes if o.status is Status.DELETED}
    on_disk = {f.path for f in scan(model_dir).files}
    assert deleted == made - on_disk  # every deletion that happened was reported
    assert len(outcomes) == len(deleted)
    # Ten let through before the stop, at most one more in hand per thread, none started after.
    assert 2 <= len(deleted) <= 10 + waiting.threads
    assert not any(t.name.startswith("ocrd-delete-") for t in threading.enumerate())


def test_directories_swapped_for_links_while_threads_delete(
    model_dir: Path, outside: Path, waiting: FanOut[Decision, Outcome]
) -> None:
    old_files(model_dir, dirs=2, per_dir=10)
    for d in ("d0", "d1"):  # outside holds hard links to the very inodes that are planned
        (outside / d).mkdir()
        for name in os.listdir(model_dir / d):
            os.link(model_dir / d / name, outside / d / name)
    p = plan_old(model_dir)
    outside_before = snapshot(outside)
    gate = Gate()
    asked = 0

    def stop() -> bool:
        nonlocal asked
        asked += 1
        if asked == 4:  # two deletions done, the threads are in the middle of their directories
            for d in ("d0", "d1"):
                (model_dir / d).rename(model_dir / f"{d}_moved")
                (model_dir / d).symlink_to(outside / d)
            gate.permits.release(1000)
        elif asked < 4:
            gate.permits.release()
        return False

    outcomes = list(apply(p, model_dir, stop=stop, in_use=gate, fan_out=waiting))
    assert len(outcomes) == 20
    deleted = [o for o in outcomes if o.status is Status.DELETED]
    assert len(deleted) <= 3 + 2  # before the swap, and one in hand per thread
    assert {o.detail for o in outcomes if o.status is not Status.DELETED} == {"changed"}
    assert snapshot(outside) == outside_before
    assert (model_dir / "d0").is_symlink()
    assert (model_dir / "d1").is_symlink()
    left = len(os.listdir(model_dir / "d0_moved")) + len(os.listdir(model_dir / "d1_moved"))
    assert left == 20 + 1 - len(deleted)  # d1 also holds keep.bin


def test_an_error_in_a_deleting_thread_is_raised_after_what_was_done(
    model_dir: Path, waiting: FanOut[Decision, Outcome]
) -> None:
    made = old_files(model_dir, dirs=4, per_dir=20)

    class Broken(InUse):
        calls = 0

        # Asked once per file on either path (ocrd.ops.quick, or ocrd.ops.sweep.ready).
        def lease_blind(self, fd: int, dev: int) -> bool:
            Broken.calls += 1
            if Broken.calls == 30:
                raise RuntimeError("injected")
            return super().lease_blind(fd, dev)

    outcomes: list[Outcome] = []
    with pytest.raises(RuntimeError, match="injected"):
        outcomes.extend(apply(plan_old(model_dir), model_dir, in_use=Broken(), fan_out=waiting))
    on_disk = {f.path for f in scan(model_dir).files}
    assert {o.decision.entry.path for o in outcomes} == made - on_disk
    assert len(outcomes) < len(made)
    assert not any(t.name.startswith("ocrd-delete-") for t in threading.enumerate())


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (apt-get install strace)")
@pytest.mark.parametrize("before", [0, 1], ids=["first", "after-one-waiting"])
def test_a_file_renamed_over_the_checked_one_is_put_back_not_deleted(
    tmp_path: Path, model_dir: Path, before: int
) -> None:
    """unlink() takes a name: a file renamed over the checked one between the check and the
    unlink would be deleted in its place. strace holds ocrd's rename for 3 s right after the
    check (while its lease is visible in /proc/locks); the test renames another file over
    the planned one then. That file must survive, under its name, and nothing else is
    deleted. With ``before`` = 1 another planned file comes first (by inode) and is waiting
    under the private name that the held rename replaces: it goes, and only it."""
    made = [model_dir / f"new_{i}" for i in range(before + 1)]
    for f in made:
        f.write_bytes(b"due")
    made.sort(key=lambda f: f.stat().st_ino)  # deletion order; the last one is the target
    earlier = [f.rename(model_dir / f"old_{i}.bin") for i, f in enumerate(made[:-1])]
    planned = made[-1].rename(model_dir / "old_x.bin")
    planned.write_bytes(b"planned")
    intruder = model_dir / "intruder.bin"
    intruder.write_bytes(b"precious")
    config = tmp_path / "config.toml"
    config.write_text(
        'model_dir = "models"\n[retention]\nprefixes = ["old_"]\n[watch]\nsettle = "0s"\n'
    )
    ino = planned.stat().st_ino
    calls = "renameat,renameat2,rename"
    # strace counts each syscall apart. The first file of a directory claims its private name
    # (renameat2 with RENAME_NOREPLACE); a later one renames over the waiting file (renameat).
    slowed = calls if before == 0 else "renameat"
    proc = subprocess.Popen(
        [
            "strace",
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            f"-etrace={calls}",
            f"-einject={slowed}:delay_enter=3000000:when=1",
            *ocrd_argv(),
            "clean",
            "--json",
            "-c",
            str(config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not any(
            "LEASE" in line and f":{ino} " in line
            for line in Path("/proc/locks").read_text().splitlines()
        ):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "ocrd never took its lease"
            time.sleep(0.02)
        os.rename(intruder, planned)  # while ocrd's rename waits, after its check
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["deleted"] == [f.name for f in earlier]
    assert report["skipped"] == [{"path": "old_x.bin", "reason": "changed"}]
    assert planned.read_bytes() == b"precious"
    assert os.listdir(model_dir) == ["old_x.bin"]  # no private name left behind


def test_freed_bytes_count_only_files_whose_last_link_went(model_dir: Path, outside: Path) -> None:
    make_file(model_dir, b"old_single.bin", b"a" * 100)
    make_file(model_dir, b"old_linked.bin", b"b" * 1000)
    os.link(model_dir / "old_linked.bin", outside / "kept-elsewhere.bin")
    freed = {o.decision.entry.path: o.freed for o in apply(plan_old(model_dir), model_dir)}
    assert freed == {b"old_single.bin": 100, b"old_linked.bin": 0}
    assert (outside / "kept-elsewhere.bin").read_bytes() == b"b" * 1000


def _clean_in_pid_namespace(
    config: Path, *, uid: int | None = None, world: World | None = None
) -> subprocess.Popen[str]:
    """``ocrd clean`` as PID 1 of a PID namespace of its own, as in a container; as user
    ``uid``, with CAP_LEASE as the unit grants it, through ``world``'s interpreter."""
    ocrd = [*world.python, "-m", "ocrd"] if world is not None else ocrd_argv()
    return subprocess.Popen(
        [*as_user(uid, lease_cap=True, pid_ns=True), *ocrd, "clean", "--json", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=world.env if world is not None else None,
    )


@root_only
def test_two_ocrds_with_the_same_pid_never_swap_files(tmp_path: Path, model_dir: Path) -> None:
    """Two ``ocrd clean`` runs, each PID 1 of its own PID namespace, on one directory: each
    file they do not delete keeps its own bytes, under its own name. A private name built
    from the PID alone is the same for both: one renames a file over the other's waiting
    file, and the other "puts back" that stranger under its own file's name."""
    config = tmp_path / "config.toml"
    config.write_text(
        'model_dir = "models"\n[retention]\nprefixes = ["old_"]\n[watch]\nsettle = "0s"\n'
        '[engine]\nenabled = false\n[log]\nlevel = "warning"\n'
    )
    names = [f"old_{i:05d}" for i in range(3000)]
    for run in range(4):
        for name in names:
            (model_dir / name).write_bytes(name.encode() * 3)
        runs = [_clean_in_pid_namespace(config) for _ in range(2)]
        for proc in runs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode in (0, 1), err
        for left in os.listdir(model_dir):
            assert not left.startswith(".ocrd-deleting-"), f"run {run}: {left} left behind"
            data = (model_dir / left).read_bytes()
            assert data == left.encode() * 3, f"run {run}: {left} holds {data[:11]!r}"
        for left in os.listdir(model_dir):
            (model_dir / left).unlink()


@root_only
def test_squatted_private_names_stop_no_deletion(tmp_path: Path) -> None:
    """Another user fills a sticky, world-writable model directory with directories named
    like the private names ocrd used (``.ocrd-deleting-PID-N``, PID 1 in a container): every
    due file still goes, and every squat stays as it was."""
    with make_world() as world:
        world.models.chmod(0o1777)
        squats = [f".ocrd-deleting-1-{n}" for n in range(200)]
        squat = [*as_user(APP_UID), "mkdir", *(str(world.models / s) for s in squats)]
        subprocess.run(squat, check=True)
        due = [world.model(f"old_{i}.gguf", owner=APP_UID) for i in range(20)]
        before = {k: v for k, v in snapshot(world.models).items() if k.startswith(b".ocrd-")}
        proc = _clean_in_pid_namespace(world.config(), uid=OCRD_UID, world=world)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        report = json.loads(out)
        assert sorted(report["deleted"]) == sorted(p.name for p in due)
        assert report["failed"] == []
        assert sorted(os.listdir(world.models)) == sorted(squats)
        assert {k: v for k, v in snapshot(world.models).items() if k != b"."} == before


@root_only
def test_interrupted_finishes_only_ocrds_own_leftovers(tmp_path: Path) -> None:
    """Entries another user named like ocrd's private names, in any format: a file, a
    directory, a file inside it. ``interrupted`` deletes none of them; a file that ocrd's
    own run left under a private name (ocrd's uid, its format) goes."""
    with make_world() as world:
        world.models.chmod(0o1777)
        ours = ".ocrd-deleting-cce882604d4f-%d-0a1b2c3d-0000%04d"
        squats = [".ocrd-deleting-1-0", ours % (1, 1), ours % (2, 2)]
        for name in squats:
            world.model(name, owner=APP_UID)
        world.model(ours % (3, 3), owner=OCRD_UID)  # a leftover of ocrd's own
        for name in (".ocrd-deleting-4-0", ours % (5, 5)):
            subprocess.run([*as_user(APP_UID), "mkdir", str(world.models / name)], check=True)
            inside = f"{name}/{ours % (6, 6)}"
            subprocess.run([*as_user(APP_UID), "touch", str(world.models / inside)], check=True)
            squats += [name, inside]
        before = {k: v for k, v in snapshot(world.models).items() if k != b"."}
        listing = [*as_user(OCRD_UID), *world.python, "-m", "ocrd", "list", "--json", "-c"]
        listing.append(str(world.config()))
        listed = subprocess.run(listing, capture_output=True, text=True, check=True, env=world.env)
        rows = {row["path"]: row for row in json.loads(listed.stdout)}
        assert rows[ours % (1, 1)]["verdict"] == "foreign"
        assert rows[ours % (3, 3)]["verdict"] == "delete"
        assert "not a name ocrd made" in rows[".ocrd-deleting-1-0"]["reason"]
        proc = _clean_in_pid_namespace(world.config(), uid=OCRD_UID, world=world)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert json.loads(out)["deleted"] == [ours % (3, 3)]
        after = {k: v for k, v in snapshot(world.models).items() if k != b"."}
        assert after == {k: v for k, v in before.items() if k != os.fsencode(ours % (3, 3))}


def test_a_taken_private_name_is_passed_over_and_left_as_it_is(
    model_dir: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever holds the private name ocrd is about to use (a directory, a file, a link to a
    file outside) stays exactly as it is, is logged with its owner, and the file goes under
    the next fresh name."""
    squats = iter([b".squat-dir", b".squat-file", b".squat-link"])
    fresh = (b".ocrd-mine-%d" % n for n in itertools.count())
    monkeypatch.setattr(private, "make", lambda: next(squats, None) or next(fresh))
    (model_dir / ".squat-dir").mkdir()
    (model_dir / ".squat-dir" / "inside").write_bytes(b"theirs")
    (model_dir / ".squat-file").write_bytes(b"theirs")
    (outside / "target").write_bytes(b"precious")
    (model_dir / ".squat-link").symlink_to(outside / "target")
    for i in range(3):
        make_file(model_dir, b"old_%d.bin" % i)
    before = {k: v for k, v in snapshot(model_dir).items() if k.startswith(b".squat")}
    with capture_logs() as logs:
        outcomes = results(apply(plan_old(model_dir), model_dir))
    assert outcomes == {b"old_%d.bin" % i: (Status.DELETED, None) for i in range(3)}
    taken = [e for e in logs if e["event"] == "private_name_taken"]
    assert [(e["path"], e["kind"], e["owner"]) for e in taken] == [
        (".squat-dir", "directory", os.geteuid()),
        (".squat-file", "file", os.geteuid()),
        (".squat-link", "symbolic link", os.geteuid()),
    ]
    assert {k: v for k, v in snapshot(model_dir).items() if k != b"."} == before
    assert (outside / "target").read_bytes() == b"precious"


def test_a_stranger_put_under_our_private_name_is_never_deleted(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who learns the private name renames their own file over the one waiting there:
    ocrd does not rename over, unlink or put back the stranger; the file it had left there is
    reported as gone from where it was."""
    for i in range(3):
        make_file(model_dir, b"sub/old_%d.bin" % i)
    (model_dir / "theirs.bin").write_bytes(b"theirs")
    outcomes = apply(plan_old(model_dir), model_dir)
    first = next(outcomes)  # the first file went; the second waits under the private name
    (waiting,) = private_names(model_dir)
    os.rename(model_dir / "theirs.bin", model_dir / "sub" / waiting)
    rest = results(outcomes)
    assert first.status is Status.DELETED
    assert sorted(rest.values()) == [(Status.DELETED, None), (Status.SKIPPED, "vanished")]
    assert (model_dir / "sub" / waiting).read_bytes() == b"theirs"
    assert sorted(os.listdir(model_dir / "sub")) == [waiting]
