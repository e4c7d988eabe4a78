"""``python -m ocrd``: the same command line as the ``ocrd`` console script."""

import sys

if sys.argv[1:2] == ["run"]:
    from ocrd.daemon import signals

    signals.hold()  # before the imports below: see ocrd/daemon/signals.py

from ocrd.cli.main import main

raise SystemExit(main())
