"""The one exception family of ocrd; each message names the file, key or path and the next step."""

from __future__ import annotations

import errno
from collections.abc import Sequence

EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd shows it as "CONFIG"
EXIT_NOPERM = 77  # EX_NOPERM: the user running ocrd may not read model_dir


class OcrdError(Exception):
    """Base of every error ocrd raises on purpose."""


class ConfigError(OcrdError):
    """The configuration file is unusable; ``problems`` lists every reason, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class ModelDirMissing(OcrdError):
    """model_dir is gone (unmounted, removed, replaced by a symlink); nothing may be deleted
    until a real directory is back at the pinned path."""


class Stopped(OcrdError):
    """A walk was asked to stop (SIGTERM) between two directories."""


class EngineBusy(OcrdError):
    """free_resources() failed: the engine may still hold model files, so nothing is deleted."""


class OtherFilesystem(OSError):
    """A directory on the way is on another filesystem than model_dir: never entered.
    Its errno is ESTALE, so callers that refuse a replaced directory refuse this alike."""

    def __init__(self, rel: bytes, device: str) -> None:
        super().__init__(errno.ESTALE, f"on another filesystem (device {device})")
        self.rel = rel
        self.device = device
