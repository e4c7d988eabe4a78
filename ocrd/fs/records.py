"""The scan's records through a compiled step (ocrd/fs/records.c), where it was built.

For a batch of names a directory listing gave, the step does what the scan's Python loop
(ocrd.fs.scan.walk_batches) does per name: it encodes the name as os.fsencode does, stats it
without following a link, and builds the FileEntry of a regular file or a symbolic link with
the values os.stat_result would hold; a name gone meanwhile is left out, any other error is
handed back with its errno. The stats of a batch are made with the GIL released. The Python
loop stays the reference, used where the step is not built and under ``OCRD_PURE_PYTHON=1``;
tests/test_scan.py holds the two to the same records.
"""

from __future__ import annotations

from types import ModuleType

from ocrd.base.compiled import wanted
from ocrd.fs.inventory import FileEntry

compiled: ModuleType | None
try:
    from ocrd.fs import _records as compiled
except ImportError:  # not built here: the Python loop does it all
    compiled = None


def available() -> bool:
    """Whether the compiled step is there and not turned off (``OCRD_PURE_PYTHON=1``)."""
    return compiled is not None and wanted()


def records(
    dir_fd: int, prefix: bytes, names: list[str]
) -> tuple[list[FileEntry], list[tuple[str, int]]]:
    """The records of ``names`` in directory ``dir_fd`` (their paths start with ``prefix``),
    in their order, and the names that could not be stated, with their errno."""
    assert compiled is not None
    found: list[FileEntry]
    failed: list[tuple[str, int]]
    found, failed = compiled.records(dir_fd, prefix, names, FileEntry)
    return found, failed
