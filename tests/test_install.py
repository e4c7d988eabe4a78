"""The Makefile's install and uninstall, against directories under tmp_path (every target
directory is a make variable); tests/test_systemd_live.py runs them for real under systemd."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.worlds import root_only

REPO = Path(__file__).resolve().parent.parent

pytestmark = root_only  # both targets refuse to run but as root


def make(target: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    dirs = {
        "PREFIX": tmp_path / "opt/ocrd",
        "BINDIR": tmp_path / "bin",
        "UNITDIR": tmp_path / "etc/systemd/system",
        "LIBDIR": tmp_path / "lib",
        "CONFDIR": tmp_path / "etc/ocrd",
    }
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), target]
        + [f"{name}={path}" for name, path in dirs.items()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")},
    )


@pytest.mark.parametrize("foreign", ["a program", "a link elsewhere"])
def test_install_leaves_another_ocrd_command_alone(tmp_path: Path, foreign: str) -> None:
    """The OCR-D framework ships a command named ocrd: install stops before doing anything."""
    other = tmp_path / "bin/ocrd"
    other.parent.mkdir()
    if foreign == "a program":
        other.write_text("#!/bin/sh\necho OCR-D\n")
    else:
        other.symlink_to("/usr/lib/ocrd-framework/bin/ocrd")
    before = os.readlink(other) if other.is_symlink() else other.read_text()

    result = make("install", tmp_path)

    assert result.returncode != 0
    assert "BINDIR=" in result.stderr, result.stderr
    assert f"{other} exists" in result.stderr, result.stderr
    assert (os.readlink(other) if other.is_symlink() else other.read_text()) == before
    assert not (tmp_path / "opt").exists(), "nothing installed"


def installed(tmp_path: Path, textfile: str) -> dict[str, Path]:
    """What install and the README's metrics opt-in leave, made by hand."""
    venv_ocrd = tmp_path / "opt/ocrd/venv/bin/ocrd"
    units = tmp_path / "etc/systemd/system"
    prom_dir = tmp_path / "node-exporter"
    paths = {
        "venv": venv_ocrd,
        "link": tmp_path / "bin/ocrd",
        "unit": units / "ocrd.service",
        "drop-in": units / "ocrd.service.d/metrics.conf",
        "sysusers": tmp_path / "lib/sysusers.d/ocrd.conf",
        "tmpfiles": tmp_path / "lib/tmpfiles.d/ocrd.conf",
        "prom": prom_dir / "ocrd.prom",
    }
    for name, path in paths.items():
        if name != "link":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)
    paths["link"].parent.mkdir(parents=True)
    paths["link"].symlink_to(venv_ocrd)
    config = tmp_path / "etc/ocrd/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'model_dir = "/var/lib/ocrd/models"\n\n[metrics]\ntextfile = "{textfile}"\n')
    return paths


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative to the config"])
def test_uninstall_removes_what_install_and_the_metrics_opt_in_added(
    tmp_path: Path, relative: bool
) -> None:
    prom = tmp_path / "node-exporter/ocrd.prom"
    paths = installed(tmp_path, "../../node-exporter/ocrd.prom" if relative else str(prom))
    # Not ours: another drop-in, node_exporter's other files, the operator's config and data.
    override = tmp_path / "etc/systemd/system/ocrd.service.d/override.conf"
    override.write_text("[Service]\nNice=5\n")
    node = tmp_path / "node-exporter/node.prom"
    node.write_text("node 1\n")

    result = make("uninstall", tmp_path)

    assert result.returncode == 0, result.stderr
    for name, path in paths.items():
        assert not os.path.lexists(path), name
    assert not (tmp_path / "opt/ocrd").exists()
    assert override.read_text() == "[Service]\nNice=5\n"
    assert node.exists()
    assert (tmp_path / "etc/ocrd/config.toml").exists()


def test_uninstall_removes_the_drop_in_directory_it_emptied(tmp_path: Path) -> None:
    installed(tmp_path, str(tmp_path / "node-exporter/ocrd.prom"))
    assert make("uninstall", tmp_path).returncode == 0
    assert not (tmp_path / "etc/systemd/system/ocrd.service.d").exists()


def test_uninstall_keeps_another_ocrd_command_and_files_the_config_does_not_name(
    tmp_path: Path,
) -> None:
    paths = installed(tmp_path, str(tmp_path / "node-exporter/not-metrics.txt"))
    paths["link"].unlink()
    paths["link"].write_text("#!/bin/sh\necho OCR-D\n")

    assert make("uninstall", tmp_path).returncode == 0

    assert paths["link"].read_text() == "#!/bin/sh\necho OCR-D\n"
    assert paths["prom"].exists(), "a .prom file the config does not name is not ours"
