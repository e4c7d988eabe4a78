"""Whether ocrd's optional compiled steps may be used: ocrd/ops/sweep.py (the deleter's) and
ocrd/fs/records.py (the scan's) each load theirs, where the install built it, and ask here."""

from __future__ import annotations

import os


def wanted() -> bool:
    """False under ``OCRD_PURE_PYTHON=1``: every compiled step off, the Python paths (the
    references) do it all."""
    return os.environ.get("OCRD_PURE_PYTHON", "") != "1"
