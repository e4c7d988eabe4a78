"""The supervisor against the real AsposeAI from aspose-ocr-python-net."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ocrd.base.errors import EngineBusy
from ocrd.config.schema import Engine
from ocrd.daemon.engine import Supervisor, load_runtime


@pytest.fixture(scope="module")
def runtime() -> Any:
    return load_runtime()


def test_started_engine_is_bound_to_model_dir(tmp_path: Path, runtime: Any) -> None:
    calls = []
    sup = Supervisor(
        Engine(gpu_layers=0, context_size=2048),
        tmp_path,
        runtime=runtime,
        after_native_call=lambda: calls.append(1),
    )
    with capture_logs() as logs, sup:
        assert sup.running
        assert sup._instance.get_local_path() == str(tmp_path)
        assert calls, "signal handlers must be re-installed after the native call"
    events = [e["event"] for e in logs]
    assert events[-2:] == ["engine_started", "engine_freed"]
    assert logs[-1]["reason"] == "shutdown"
    assert not sup.running


def test_released_frees_before_and_starts_after(tmp_path: Path, runtime: Any) -> None:
    sup = Supervisor(Engine(), tmp_path, runtime=runtime)
    with sup:
        instance = sup._instance
        with capture_logs() as logs, sup.released("deletion"):
            assert not sup.running
            assert not instance.is_initialized()
            inside = [e["event"] for e in logs]
        assert sup.running
    assert inside == ["engine_freed"]
    lifecycle = [e["event"] for e in logs if e["event"] in ("engine_freed", "engine_started")]
    assert lifecycle == ["engine_freed", "engine_started"]


def test_disabled_engine_is_never_created(tmp_path: Path) -> None:
    sup = Supervisor(Engine(enabled=False), tmp_path)
    with capture_logs() as logs, sup, sup.released():
        assert not sup.running
    assert logs == []


def test_missing_model_dir_is_not_created(tmp_path: Path, runtime: Any) -> None:
    gone = tmp_path / "gone"
    sup = Supervisor(Engine(), gone, runtime=runtime)
    with sup:
        assert not sup.running
    assert not gone.exists()


class _Refuses:
    """Fault injection: free_resources() failing can't be provoked on the real engine."""

    def free_resources(self) -> None:
        raise RuntimeError("Proxy error(InvalidOperationException): busy")


def test_failed_free_raises_engine_busy_and_runs_nothing(tmp_path: Path) -> None:
    sup = Supervisor(Engine(), tmp_path)
    sup._instance = _Refuses()
    ran = []
    with capture_logs() as logs, pytest.raises(EngineBusy), sup.released("deletion"):
        ran.append(1)
    assert ran == []
    assert logs[0]["event"] == "engine_free_failed"
