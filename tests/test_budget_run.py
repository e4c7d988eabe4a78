"""The budget under a real ``ocrd run`` on a small loop-mounted ext4 image (real statvfs, real
inotify): least recently used first by real opens, the budget holding after the pass, every
protection kept, last use across a restart and a rename, and ``ocrd list`` changing nobody's
last use."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OcrdRunner, write_config
from tests.harness import OcrdProcess
from tests.test_arrival import Image, ext4_image

MiB = 1 << 20
OLD = time.time() - 60 * 86_400  # when the models "arrived": settled and old
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a loop image: needs root")


def _config(base: Path, *, min_free: str, families: bool = False) -> Path:
    """``families``: versions of one model are families (keep_newest is set, keeping them all),
    so that the last-version floor holds."""
    return write_config(
        base,
        f"""\
model_dir = "fs/models"
[retention]
whitelist = ["keep.gguf"]
{"keep_newest = 100" if families else ""}
[watch]
settle = "1h"
[engine]
enabled = false
[budget]
min_free = "{min_free}"
headroom = "0 B"
[state]
path = "state/state.db"
[log]
format = "json"
level = "debug"
""",
    )


def _debugfs(img: Image, rel: str, field: str, when: float) -> None:
    subprocess.run(
        ["debugfs", "-w", "-R", f"set_inode_field /{rel} {field} @{int(when)}", str(img.image)],
        check=True,
        capture_output=True,
    )


def _models(img: Image, sizes: dict[str, int], mtimes: dict[str, float] | None = None) -> Path:
    """Model files on the image, arrived 60 days ago (ctime, which no tool can set back, set
    with debugfs on the unmounted image); mtimes as given (default: 60 days ago too)."""
    models = img.mnt / "models"
    models.mkdir(exist_ok=True)
    for name, size in sizes.items():
        (models / name).write_bytes(os.urandom(size))
    os.sync()
    img.umount()
    try:
        for name in sizes:
            rel = f"models/{name}"
            _debugfs(img, rel, "ctime", OLD)
            _debugfs(img, rel, "atime", OLD)
            _debugfs(img, rel, "mtime", (mtimes or {}).get(name, OLD))
    finally:
        img.mount()
    return models


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(img: Image, leave: int) -> None:
    """A file outside model_dir that leaves ``leave`` bytes free on the image."""
    filler = img.mnt / "filler"
    have = _free(img.mnt) + (filler.stat().st_size if filler.exists() else 0)
    with open(filler, "wb") as fh:
        fh.truncate(0)
        left = have - leave
        chunk = os.urandom(MiB)
        while left > 0:
            fh.write(chunk[: min(left, MiB)])
            left -= MiB
        fh.flush()
        os.fsync(fh.fileno())


def _read(path: Path) -> None:
    """Another process reads the file: a real use."""
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def _rows(run_ocrd: OcrdRunner, config: Path) -> dict[str, dict[str, Any]]:
    done = run_ocrd("list", "-c", config, "--json")
    assert done.returncode == 0, done.stderr
    return {row["path"]: row for row in json.loads(done.stdout)}


def _deleted(ocrd: OcrdProcess) -> dict[str, str]:
    with ocrd.cond:
        return {
            str(e["path"]): str(e["rule"]) for e in ocrd.events if e.get("event") == "model_deleted"
        }


@contextmanager
def _held(path: Path) -> Iterator[None]:
    """Another process holds ``path`` open (as a model server would) for the block."""
    with subprocess.Popen(
        [sys.executable, "-c", f"f = open({str(path)!r}, 'rb'); print('ok', flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as p:
        try:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ok"
            yield
        finally:
            p.kill()


@pytest.fixture
def image(tmp_path: Path) -> Iterator[Image]:
    with ext4_image(tmp_path) as img:
        yield img


@root_only
def test_lru_by_real_opens_beats_mtime_and_the_budget_holds(
    tmp_path: Path, image: Image, run_ocrd: OcrdRunner, daemons: list[OcrdProcess]
) -> None:
    # read.gguf has the oldest mtime of all, the unused ones recent mtimes: by mtime it would
    # go first. Every file arrived at the same time.
    models = _models(
        image,
        {"read.gguf": 2 * MiB, "u1.gguf": 2 * MiB, "u2.gguf": 2 * MiB, "u3.gguf": 2 * MiB},
        mtimes={"read.gguf": 1e9, "u1.gguf": OLD + 86_400, "u2.gguf": OLD + 86_400},
    )
    min_free = 8 * MiB
    config = _config(tmp_path, min_free=f"{min_free // MiB} MiB")
    ocrd = OcrdProcess(config)
    daemons.append(ocrd)
    ocrd.wait_ready()
    _read(models / "read.gguf")
    # The filesystem fills from outside model_dir; the next arrival makes the budget look.
    _fill(image, leave=min_free - 3 * MiB)
    (models / "trigger.gguf").write_bytes(b"GGUF")
    ocrd.event("budget_met")
    deleted = _deleted(ocrd)
    assert set(deleted.values()) == {"budget"}
    assert "read.gguf" not in deleted  # used a moment ago: it outlives the unused
    assert len(deleted) == 2  # two 2 MiB files free the 3 MiB short
    assert (models / "read.gguf").exists()
    assert _free(image.mnt) >= min_free  # the budget holds after the pass
    # The unused ones go by arrival (their ctime): setting u1's and u2's mtimes moved their
    # ctimes, so which two of the three go depends on the clock's tick, never read.gguf.
    assert set(deleted) < {"u1.gguf", "u2.gguf", "u3.gguf"}
    (unused,) = {"u1.gguf", "u2.gguf", "u3.gguf"} - set(deleted)
    rows = _rows(run_ocrd, config)
    assert rows["read.gguf"]["last_used"] > rows[unused]["last_used"]


@root_only
def test_protected_files_stay_and_the_unmet_budget_is_said_once(
    tmp_path: Path, image: Image, daemons: list[OcrdProcess]
) -> None:
    names = ["keep.gguf", "held.gguf", "free.gguf"]
    models = _models(image, dict.fromkeys(names, 2 * MiB))
    (models / "fresh.gguf").write_bytes(os.urandom(2 * MiB))  # arrives now: settling
    config = _config(tmp_path, min_free="99%")  # never met
    with _held(models / "held.gguf"):
        ocrd = OcrdProcess(config)
        daemons.append(ocrd)
        ocrd.wait_ready()
        unmet = ocrd.event("budget_unmet")
        deleted = _deleted(ocrd)
        assert deleted == {"free.gguf": "budget"}
        for name in ("keep.gguf", "held.gguf", "fresh.gguf"):
            assert (models / name).exists()
        assert unmet["min_free"] > unmet["free"]
        assert set(unmet["blockers"]) == {"whitelist", "in_use", "settling"}
        ocrd.wait_for("STATUS says so", lambda: any("budget unmet" in n for _, n in ocrd.notes))
        # One warning, however many passes follow.
        with ocrd.cond:
            checks = sum(e.get("event") == "budget_checked" for e in ocrd.events)
        (models / "another.gguf").write_bytes(b"x")
        ocrd.wait_for(
            "another budget check",
            lambda: sum(e.get("event") == "budget_checked" for e in ocrd.events) > checks,
        )
        with ocrd.cond:
            assert sum(e.get("event") == "budget_unmet" for e in ocrd.events) == 1
            # the daemon's own look at held.gguf (its lease check) is no use of it
            assert not [e for e in ocrd.events if e.get("event") == "use_recorded"]


@root_only
def test_a_familys_last_version_stays(
    tmp_path: Path, image: Image, daemons: list[OcrdProcess]
) -> None:
    models = _models(image, dict.fromkeys(["phi-v1.gguf", "phi-v2.gguf", "other.gguf"], 2 * MiB))
    config = _config(tmp_path, min_free="99%", families=True)
    ocrd = OcrdProcess(config)
    daemons.append(ocrd)
    ocrd.wait_ready()
    unmet = ocrd.event("budget_unmet")
    # other.gguf is alone in its family: its last version too
    assert _deleted(ocrd) == {"phi-v1.gguf": "budget"}
    assert (models / "phi-v2.gguf").exists()
    assert unmet["blockers"] == {"keep_last_version": {"files": 2, "bytes": 4 * MiB}}


@root_only
def test_the_last_model_file_stays(
    tmp_path: Path, image: Image, daemons: list[OcrdProcess]
) -> None:
    models = _models(image, {"a.gguf": 2 * MiB, "b.gguf": 2 * MiB})
    config = _config(tmp_path, min_free="99%")
    ocrd = OcrdProcess(config)
    daemons.append(ocrd)
    ocrd.wait_ready()
    unmet = ocrd.event("budget_unmet")
    assert len(_deleted(ocrd)) == 1
    assert len(list(models.iterdir())) == 1
    assert "allow_delete_all" in unmet["blockers"]


@root_only
def test_last_use_survives_a_restart_and_a_rename(
    tmp_path: Path, image: Image, run_ocrd: OcrdRunner, daemons: list[OcrdProcess]
) -> None:
    models = _models(image, {"read.gguf": 2 * MiB, "u1.gguf": 2 * MiB, "u2.gguf": 2 * MiB})
    config = _config(tmp_path, min_free="1 MiB")
    first = OcrdProcess(config)
    daemons.append(first)
    first.wait_ready()
    _read(models / "read.gguf")
    first.event("use_recorded", path="read.gguf")
    first.stop()
    used = _rows(run_ocrd, config)["read.gguf"]["last_used"]
    assert used > _rows(run_ocrd, config)["u1.gguf"]["last_used"]
    os.rename(models / "read.gguf", models / "renamed.gguf")
    _fill(image, leave=5 * MiB)
    config = _config(tmp_path, min_free="6 MiB")
    second = OcrdProcess(config)
    daemons.append(second)
    second.wait_ready()
    second.event("budget_met")
    assert "renamed.gguf" not in _deleted(second)
    assert (models / "renamed.gguf").exists()
    assert _rows(run_ocrd, config)["renamed.gguf"]["last_used"] == used


@root_only
def test_ocrd_list_again_and_again_changes_no_ones_last_use(
    tmp_path: Path, image: Image, run_ocrd: OcrdRunner, daemons: list[OcrdProcess]
) -> None:
    models = _models(image, {"a.gguf": 2 * MiB, "b.gguf": 2 * MiB, "c.gguf": 2 * MiB})
    # The daemon's budget holds; the same config with a budget that cannot hold makes
    # ``ocrd list`` show files the budget would take now, and check whether they are in use.
    config = _config(tmp_path, min_free="1 MiB")
    tight = _config(tmp_path / "tight", min_free="99%").read_text()
    tight = tight.replace('"fs/models"', f'"{models}"').replace(
        '"state/state.db"', f'"{tmp_path / "state" / "state.db"}"'
    )
    tight_config = write_config(tmp_path / "tight", tight)
    ocrd = OcrdProcess(config)
    daemons.append(ocrd)
    ocrd.wait_ready()
    before = _rows(run_ocrd, tight_config)
    assert any(r["verdict"] == "delete" and r["rule"] == "budget" for r in before.values())
    for _ in range(3):
        _rows(run_ocrd, tight_config)
    # Whatever the daemon saw meanwhile is recorded once this use is: events of one watch
    # come in order.
    _read(models / "c.gguf")
    ocrd.event("use_recorded", path="c.gguf")
    after = _rows(run_ocrd, tight_config)
    for name in ("a.gguf", "b.gguf"):
        assert after[name]["last_used"] == before[name]["last_used"]
    assert after["c.gguf"]["last_used"] != before["c.gguf"]["last_used"]
    with ocrd.cond:
        recorded = [e["path"] for e in ocrd.events if e.get("event") == "use_recorded"]
    assert recorded == ["c.gguf"]


def test_without_budget_or_state_no_state_file_is_made(
    tmp_path: Path, daemons: list[OcrdProcess]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "a.gguf").write_bytes(b"x")
    config = write_config(
        tmp_path,
        'model_dir = "models"\n[engine]\nenabled = false\n[log]\nformat = "json"\n'
        'level = "debug"\n',
    )
    xdg = tmp_path / "xdg"
    ocrd = OcrdProcess(config, env={"XDG_STATE_HOME": str(xdg)})
    daemons.append(ocrd)
    ocrd.wait_ready()
    _read(models / "a.gguf")
    ocrd.stop()
    assert not xdg.exists()
    assert "use_recorded" not in ocrd.names()


@root_only
def test_the_trash_is_emptied_before_any_model(
    tmp_path: Path, image: Image, daemons: list[OcrdProcess]
) -> None:
    models = _models(image, {"old_a.gguf": 4 * MiB, "u1.gguf": 2 * MiB, "u2.gguf": 2 * MiB})
    config = _config(tmp_path, min_free="1 MiB")
    text = config.read_text().replace("[retention]\n", '[retention]\nprefixes = ["old_"]\n')
    config.write_text(text + '[trash]\ngrace = "1h"\n')
    ocrd = OcrdProcess(config)
    daemons.append(ocrd)
    ocrd.wait_ready()
    ocrd.event("model_deleted", path="old_a.gguf")  # into the trash: its 4 MiB still taken
    free = _free(image.mnt)
    # The filesystem fills; the trash holds what the budget needs.
    _fill(image, leave=free - 2 * MiB)
    config.write_text(
        config.read_text().replace('min_free = "1 MiB"', f'min_free = "{free // MiB - 1} MiB"')
    )
    ocrd.send(signal.SIGHUP)
    ocrd.event("budget_met")
    assert ocrd.event("trash_purged")["reason"] == "budget"
    assert set(_deleted(ocrd)) == {"old_a.gguf"}  # no model went for the budget
    assert (models / "u1.gguf").exists()
    assert (models / "u2.gguf").exists()
