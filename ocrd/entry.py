"""The ``ocrd`` console script. For ``ocrd run`` it holds signals back before importing
anything heavy (see ocrd/daemon/signals.py); the one-shot commands keep the default dispositions."""

from __future__ import annotations

import os
import sys


def main() -> int:
    if sys.argv[1:2] == ["run"]:
        from ocrd.daemon import signals  # noqa: PLC0415

        signals.hold()
    from ocrd.cli.main import main as cli_main  # noqa: PLC0415

    try:
        return cli_main()
    except BrokenPipeError:
        # The reader of stdout went away (`ocrd list | head`): what it did not read is not
        # owed, and no traceback either. stdout goes to /dev/null so the interpreter's own
        # flush at exit does not raise again; 141 is what a shell reports for SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
