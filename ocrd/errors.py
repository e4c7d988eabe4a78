"""The one exception family of ocrd; each message names the file, key or path and the next step."""

from __future__ import annotations

from collections.abc import Sequence

EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd shows it as "CONFIG"


class OcrdError(Exception):
    """Base of every error ocrd raises on purpose."""


class ConfigError(OcrdError):
    """The configuration file is unusable; ``problems`` lists every reason, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))
