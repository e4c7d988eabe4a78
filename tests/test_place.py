"""Where model_dir is (ocrd.fs.place): reached from / without following a link, still the
same directory after a walk, and the fd budget every walk shares."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest

from ocrd.base.errors import ModelDirMissing
from ocrd.fs.place import fd_budget, identify, open_root, pin, still_there


def test_open_root_refuses_a_link_anywhere_on_the_way(models: Path, tmp_path: Path) -> None:
    fd = open_root(pin(models))
    try:
        assert identify(fd)[:2] == (os.stat(models).st_dev, os.stat(models).st_ino)
    finally:
        os.close(fd)
    os.symlink(models, tmp_path / "via")
    with pytest.raises(ModelDirMissing, match="without a symlink"):
        open_root(tmp_path / "via")
    os.symlink(tmp_path, tmp_path / "up")
    with pytest.raises(ModelDirMissing, match="without a symlink"):
        open_root(tmp_path / "up" / "models")
    with pytest.raises(ModelDirMissing, match="does not exist"):
        open_root(tmp_path / "none")


def test_still_there_tells_a_vanished_from_a_replaced_model_dir(
    models: Path, tmp_path: Path
) -> None:
    place = pin(models)
    fd = open_root(place)
    root = identify(fd)
    os.close(fd)
    still_there(place, root)  # nothing happened
    os.rename(models, tmp_path / "away")
    with pytest.raises(ModelDirMissing, match="vanished"):
        still_there(place, root)
    models.mkdir()
    with pytest.raises(ModelDirMissing, match="replaced"):
        still_there(place, root)


def test_the_fd_budget_shares_the_soft_limit_among_the_holders() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert fd_budget() == 32
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert fd_budget() == 160
        resource.setrlimit(resource.RLIMIT_NOFILE, (70, hard))
        assert fd_budget() == 4  # never fewer
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
