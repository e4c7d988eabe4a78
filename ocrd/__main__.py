"""``python -m ocrd``: the same command line as the ``ocrd`` console script."""

from ocrd.cli import main

raise SystemExit(main())
