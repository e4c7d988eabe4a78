"""The supervisor: the single owner of the aspose.ocr.ai.AsposeAI instance for model_dir.

Words used for it throughout ocrd: the *engine* is that AsposeAI instance as the operator knows
it ([engine], engine_started, engine_freed); the *runtime* is the imported ``aspose.ocr.ai``
module with its .NET runtime; the *Supervisor* owns the instance (the daemon's ``engine``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from ocrd.base import log
from ocrd.base.errors import EngineBusy
from ocrd.config.schema import Config, Engine


def load_runtime() -> Any:
    """Import ``aspose.ocr.ai`` with the environment its bundled .NET runtime needs.

    Must run before the process installs its signal handlers (docs/aspose-engine.md §2:
    libcoreclr installs its own SIGTERM/SIGINT handlers at import, bypassing any Python handler
    set earlier).
    """
    # docs/aspose-engine.md §1: the bundled .NET Core 3.1 probes libicuuc.so.50-70 and aborts
    # the whole process (exit 134, uncatchable) on Debian 12's ICU 72. Invariant globalization
    # avoids ICU; it only takes effect if set before the first aspose.ocr import. An operator's
    # own choice (CLR_ICU_VERSION_OVERRIDE, or an explicit value) is respected.
    if "CLR_ICU_VERSION_OVERRIDE" not in os.environ:
        os.environ.setdefault("DOTNET_SYSTEM_GLOBALIZATION_INVARIANT", "1")
    # docs/aspose-engine.md §5: the .NET heap grows to ~83 MB across engine restarts; a 4 MiB
    # gen0 budget keeps it near 6 MB, which matters for a daemon that restarts the engine often.
    os.environ.setdefault("COMPlus_GCgen0size", "0x400000")
    from aspose.ocr import ai  # noqa: PLC0415 — the environment above must come first

    return ai


class Supervisor:
    """Owns one AsposeAI instance; ``with supervisor:`` starts it and frees it on the way out.

    Deleting code goes through ``with supervisor.released("deletion"):``, which frees the
    instance first (or raises EngineBusy and deletes nothing) and starts it again afterwards,
    so "freed before deletion" cannot be forgotten by a caller.
    """

    def __init__(
        self,
        settings: Engine,
        model_dir: Path,
        *,
        runtime: ModuleType | None = None,
        after_native_call: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.model_dir = model_dir.absolute()
        self._runtime = runtime
        self._after_native_call = after_native_call
        self._instance: Any = None
        self._load_warned = False
        self._freed_at: float | None = None  # monotonic time of the last free, for downtime
        self.cycles = 0  # frees for deletions since the process started
        self.downtime_s = 0.0  # time between each free and the next start, summed

    def reconfigure(self, settings: Engine, model_dir: Path) -> None:
        """New settings for the next start(). An instance that refused to be freed is dropped:
        the new one replaces it, and the runtime reclaims the old one with the process."""
        self._instance = None
        if settings.enabled and self._runtime is None:
            self._runtime = load_runtime()
            self._after_native_call()  # the import took the signals: docs/aspose-engine.md §2
        self.settings = settings
        self.model_dir = model_dir.absolute()

    def follow(self, old: Config, new: Config) -> None:
        """A reload. A model reload costs the host: only a new model_dir or new engine
        settings (other than the batch timing) need one; else the new timing is taken as is.
        An instance that refuses to be freed (EngineBusy, logged by free()) stays the one we
        own, and must be freed before any deletion: it is not replaced behind its back."""
        timing = {"batch", "restart_after"}
        if old.model_dir == new.model_dir and old.engine.model_dump(
            exclude=timing
        ) == new.engine.model_dump(exclude=timing):
            self.settings = new.engine
            return
        try:
            self.free("reload")
            self.reconfigure(new.engine, new.model_dir)
        except EngineBusy:
            pass

    @property
    def running(self) -> bool:
        return self._instance is not None

    def start(self) -> None:
        if not self.settings.enabled or self._instance is not None:
            return
        if not self.model_dir.is_dir():
            return  # set_post_processor would create it; the daemon waits for it to return
        runtime = self._runtime if self._runtime is not None else load_runtime()
        instance = runtime.AsposeAI()
        model = runtime.AsposeAIModelConfig()
        model.allow_auto_download = False  # a daemon never fetches models behind our back
        model.directory_model_path = str(self.model_dir)
        model.gpu_layers = self.settings.gpu_layers
        if self.settings.context_size is not None:
            model.context_size = self.settings.context_size
        error: str | None = None
        try:
            # Binds the instance to model_dir (get_local_path() answers it afterwards) and tries
            # to load llama.cpp. Without the native library (docs/aspose-engine.md §7) that load
            # fails, but the instance is bound and owned all the same; we say so once, then only
            # at debug.
            instance.set_post_processor(runtime.SpellCheckAIProcessor(), model)
        except RuntimeError as exc:
            error = _cause(str(exc))
        finally:
            # docs/aspose-engine.md §2: the first set_post_processor call re-takes SIGINT,
            # SIGQUIT and SIGCHLD.
            self._after_native_call()
        self._instance = instance
        logger = log.get()
        if error is not None:
            level = logger.debug if self._load_warned else logger.warning
            level(
                "engine_model_not_loaded",
                error=error,
                effect="no model loaded, AI post-processing off",
            )
            self._load_warned = True
        downtime: dict[str, float] = {}
        if self._freed_at is not None:
            elapsed = time.monotonic() - self._freed_at
            downtime["downtime_ms"] = round(elapsed * 1000, 1)
            self.downtime_s += elapsed
            self._freed_at = None
        logger.info(
            "engine_started", model_dir=str(self.model_dir), loaded=error is None, **downtime
        )

    def free(self, reason: str, deletions: int | None = None) -> None:
        """free_resources() and drop the instance; EngineBusy if the engine refuses.
        ``deletions``: how many deletions this free is for (logged: the cost made visible)."""
        if self._instance is None:
            return
        try:
            self._instance.free_resources()
        except RuntimeError as exc:
            log.get().error("engine_free_failed", reason=reason, error=str(exc)[:300])
            raise EngineBusy(f"freeing the AsposeAI engine failed: {exc}") from exc
        self._instance = None
        self._freed_at = time.monotonic()
        extra = {} if deletions is None else {"deletions": deletions}
        if reason == "deletion":
            self.cycles += 1
        log.get().info("engine_freed", reason=reason, **extra)

    @contextmanager
    def released(self, reason: str = "deletion") -> Iterator[None]:
        """Free the engine for the duration of the block (no-op if disabled or not running)."""
        was_running = self._instance is not None
        self.free(reason)
        try:
            yield
        finally:
            if was_running:
                self.start()

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Already logged by free(); exiting the process releases whatever the engine held.
        with suppress(EngineBusy):
            self.free("shutdown")


def _cause(text: str) -> str:
    """The .NET error in one short line: ``Proxy error(DllNotFoundException): Unable to load
    shared library 'libdl' or one of its dependencies. In order to help ...`` becomes
    ``DllNotFoundException: Unable to load shared library 'libdl'`` (the type and the first
    clause; the runtime's advice to set LD_DEBUG is no use to an operator of a daemon)."""
    first = text.splitlines()[0] if text else ""
    kind, sep, rest = first.partition("): ")
    if sep and kind.startswith("Proxy error("):
        first = f"{kind.removeprefix('Proxy error(')}: {rest}"
    first = first.split(". ", 1)[0].split(" or one of its dependencies", 1)[0]
    return first if len(first) <= 120 else first[:119] + "…"
