"""The Prometheus textfile, from a real ``ocrd run``: written after each pass, atomically,
readable by node_exporter, and a write failure never stops retention."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from ocrd.daemon import metrics
from ocrd.ops.stats import Totals
from tests.configs import config
from tests.conftest import OcrdRunner, StartOcrd
from tests.harness import OcrdProcess
from tests.worlds import OCRD_UID, as_user, make_world, root_only

OTHER_GID = 4343  # a group and user that are neither root nor ocrd's
UMASK_027 = ["sh", "-c", 'umask 027 && exec "$@"', "sh"]  # the unit's UMask=0027


def _samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(path: Path, name: str, **labels: str) -> float | None:
    if not path.exists():
        return None
    return _samples(path).get((name, tuple(sorted(labels.items()))))


def _start(
    tmp_path: Path, start_ocrd: StartOcrd, textfile: str, engine: bool = True
) -> OcrdProcess:
    path = config(
        tmp_path,
        retention={"whitelist": ["*.keep"]},
        engine={"enabled": engine, "batch": "0s", "restart_after": "0s"},
        metrics={"textfile": textfile},
    )
    return start_ocrd(path, prefix=UMASK_027)


def test_textfile_counts_what_happened(tmp_path: Path, models: Path, start_ocrd: StartOcrd) -> None:
    (tmp_path / "prom").mkdir()
    (models / "old_a.bin").write_bytes(b"a" * 100)
    (models / "model.bin").write_bytes(b"m" * 10)
    (models / "en.keep").write_bytes(b"k")
    d = _start(tmp_path, start_ocrd, "prom/ocrd.prom")  # relative: beside the config
    d.note("READY=1")
    prom = tmp_path / "prom" / "ocrd.prom"
    got = _samples(prom)
    assert got[("ocrd_deleted_files_total", (("rule", "prefix"),))] == 1
    assert got[("ocrd_deleted_bytes_total", (("rule", "prefix"),))] == 100
    assert got[("ocrd_deleted_files_total", (("rule", "max_age"),))] == 0
    assert got[("ocrd_deletions_skipped_total", (("reason", "in_use"),))] == 0
    assert got[("ocrd_deletions_failed_total", ())] == 0
    assert got[("ocrd_engine_cycles_total", ())] == 1
    assert got[("ocrd_engine_downtime_seconds_total", ())] > 0
    assert got[("ocrd_events_lost_total", ())] == 0
    assert got[("ocrd_rescans_total", ())] == 0
    assert got[("ocrd_config_rejected", ())] == 0
    # The verdicts of the startup pass's plan: old_a.bin was planned for deletion.
    by_verdict = {
        v: (
            got[("ocrd_model_files", (("verdict", v),))],
            got[("ocrd_model_bytes", (("verdict", v),))],
        )
        for v in ("keep", "delete", "protected", "settling")
    }
    assert by_verdict == {
        "keep": (1, 10),
        "delete": (1, 100),
        "protected": (1, 1),
        "settling": (0, 0),
    }
    started = d.event("scan_completed")["timestamp"]
    assert got[("ocrd_last_full_pass_timestamp_seconds", ())] > 0, started
    assert 0 < got[("ocrd_last_full_pass_duration_seconds", ())] < 30
    # node_exporter runs as its own user: the file is 0644 despite the unit's umask 027.
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert os.listdir(tmp_path / "prom") == ["ocrd.prom"]  # no temp file left behind

    (models / "old_b.bin").write_bytes(b"b" * 5)
    d.event("model_deleted", path="old_b.bin")
    d.wait_for(
        "the textfile to count the second deletion",
        lambda: _value(prom, "ocrd_deleted_bytes_total", rule="prefix") == 105,
    )
    assert _value(prom, "ocrd_engine_cycles_total") == 2
    assert os.listdir(tmp_path / "prom") == ["ocrd.prom"]
    assert d.stop()[0] == 0


def test_a_failed_write_is_logged_and_retention_goes_on(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    d = _start(tmp_path, start_ocrd, str(prom_dir / "ocrd.prom"), engine=False)
    d.note("READY=1")
    assert (prom_dir / "ocrd.prom").exists()
    shutil.rmtree(prom_dir)  # the collector's directory goes away under the daemon
    (models / "old_x.bin").write_bytes(b"x")
    d.event("model_deleted", path="old_x.bin")
    failed = d.event("metrics_write_failed")
    assert failed["level"] == "warning"
    assert "FileNotFoundError" in failed["error"]
    (models / "old_y.bin").write_bytes(b"y")
    d.event("model_deleted", path="old_y.bin")
    assert d.names().count("metrics_write_failed") == 1  # the same error is said once
    prom_dir.mkdir()
    (models / "old_z.bin").write_bytes(b"z")
    d.event("metrics_written")
    d.event("model_deleted", path="old_z.bin")
    d.wait_for(
        "the textfile to count all three deletions",
        lambda: _value(prom_dir / "ocrd.prom", "ocrd_deleted_files_total", rule="prefix") == 3,
    )
    assert d.stop()[0] == 0


def test_textfile_is_validated(tmp_path: Path, models: Path, run_ocrd: OcrdRunner) -> None:
    config = tmp_path / "config.toml"
    config.write_text('model_dir = "models"\n[metrics]\ntextfile = "nowhere/ocrd.prom"\n')
    result = run_ocrd("check", "-c", config)
    assert result.returncode == 78
    assert result.stderr == (
        f"{config}: at 'metrics.textfile': directory \"{tmp_path / 'nowhere'}\" does not exist\n"
    )
    config.write_text('model_dir = "models"\n[metrics]\ntextfile = "ocrd.txt"\n')
    result = run_ocrd("check", "-c", config)
    assert result.returncode == 78
    assert "does not end in .prom" in result.stderr
    config.write_text('model_dir = "models"\n[metrics]\ntextfile = "ocrd.prom"\n')
    assert run_ocrd("check", "-c", config).returncode == 0


def _secret(tmp_path: Path) -> Path:
    """A root-only file outside the textfile directory: what a planted link points at."""
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root only\n")
    secret.chmod(0o600)
    return secret


def test_a_link_planted_where_the_writer_writes_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Links at the names the textfile writer uses: the final name, the temporary name a
    previous write showed (``ocrd.prom.PID.TID`` for prometheus_client's writer), and the
    temporary name the writer is about to use. None leads the write anywhere."""
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    secret = _secret(tmp_path)
    prom = prom_dir / "ocrd.prom"
    prom.symlink_to(secret)
    (prom_dir / f"ocrd.prom.{os.getpid()}.{threading.get_ident()}").symlink_to(secret)
    if hasattr(metrics, "temp_name"):
        planted = [metrics.temp_name("ocrd.prom"), metrics.temp_name("ocrd.prom")]
        for name in planted:
            (prom_dir / name).symlink_to(secret)
        names = iter([*planted, ".ocrd.prom.fresh"])
        monkeypatch.setattr(metrics, "temp_name", lambda final: next(names))
    totals = Totals()
    totals.deleted(100, "prefix")
    with capture_logs() as logs:
        metrics.Metrics(totals, prom).publish()
    assert secret.read_bytes() == b"root only\n"
    assert not prom.is_symlink()
    assert _value(prom, "ocrd_deleted_bytes_total", rule="prefix") == 100
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert [e["event"] for e in logs] == []


def test_a_textfile_directory_swapped_for_a_link_is_not_written_through(
    tmp_path: Path,
) -> None:
    secret_dir = tmp_path / "etc"
    secret_dir.mkdir()
    prom_dir = tmp_path / "prom"
    prom_dir.symlink_to(secret_dir)
    with capture_logs() as logs:
        metrics.Metrics(Totals(), prom_dir / "ocrd.prom").publish()
    assert os.listdir(secret_dir) == []
    (failed,) = logs
    assert failed["event"] == "metrics_write_failed"


@root_only
@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775, 0o757])
def test_a_textfile_directory_others_may_write_is_refused(
    tmp_path: Path, models: Path, run_ocrd: OcrdRunner, mode: int
) -> None:
    """Whoever may write the directory may plant links and files where ocrd writes, as root
    perhaps: the directory must be writable by root and ocrd's own user only."""
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    os.chown(prom_dir, 0, OTHER_GID)
    prom_dir.chmod(mode)
    config = tmp_path / "config.toml"
    config.write_text(f'model_dir = "models"\n[metrics]\ntextfile = "{prom_dir}/ocrd.prom"\n')
    result = run_ocrd("check", "-c", config)
    assert result.returncode == 78, result.stderr
    assert "at 'metrics.textfile'" in result.stderr
    assert "chown root:root and chmod 0755" in result.stderr


@root_only
def test_a_textfile_directory_owned_by_another_user_is_refused(
    tmp_path: Path, models: Path, run_ocrd: OcrdRunner
) -> None:
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    os.chown(prom_dir, OTHER_GID, OTHER_GID)
    prom_dir.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(f'model_dir = "models"\n[metrics]\ntextfile = "{prom_dir}/ocrd.prom"\n')
    result = run_ocrd("check", "-c", config)
    assert result.returncode == 78, result.stderr
    assert f"owned by uid {OTHER_GID}" in result.stderr


@root_only
def test_the_documented_setup_passes_the_check() -> None:
    """systemd/README.md: node_exporter's directory (root's, 0755) given to ocrd's user,
    ``chown ocrd; chmod 0755``, checked as the user ocrd runs as."""
    with make_world() as world:
        prom_dir = world.base / "node-exporter"
        prom_dir.mkdir()
        os.chown(prom_dir, OCRD_UID, 0)
        prom_dir.chmod(0o755)
        config = world.config(metrics={"textfile": f"{prom_dir}/ocrd.prom"})
        check = [*as_user(OCRD_UID), *world.python, "-m", "ocrd", "check", "-c", str(config)]
        result = subprocess.run(check, capture_output=True, text=True, env=world.env, check=False)
        assert result.returncode == 0, result.stderr


def test_a_reload_onto_a_directory_others_may_write_is_rejected(
    tmp_path: Path, models: Path, start_ocrd: StartOcrd
) -> None:
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    d = _start(tmp_path, start_ocrd, str(prom_dir / "ocrd.prom"), engine=False)
    d.note("READY=1")
    prom_dir.chmod(0o777)
    d.send(signal.SIGHUP)
    rejected = d.event("config_rejected")
    assert any("metrics.textfile" in e and "writable by" in e for e in rejected["errors"])
    assert d.stop()[0] == 0
