"""The ``ocrd`` console script. For ``ocrd run`` it holds signals back before importing
anything heavy (see ocrd/signals.py); the one-shot commands keep the default dispositions."""

from __future__ import annotations

import sys


def main() -> int:
    if sys.argv[1:2] == ["run"]:
        from ocrd import signals  # noqa: PLC0415

        signals.hold()
    from ocrd.cli import main as cli_main  # noqa: PLC0415

    return cli_main()
