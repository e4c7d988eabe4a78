"""The daemon's index of model_dir: one packed record per file, with running totals."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from ocrd.inventory import FileEntry

# size, mtime, atime, ctime, dev, ino, is_link: 49 bytes in one bytes object, where a
# FileEntry with its float and int objects costs ~330 bytes. The daemon holds one per file
# for as long as it runs; the planner gets FileEntry values back only for what it looks at.
_RECORD = struct.Struct("=qdddQQ?")


class Index:
    """path → record, plus the file count and byte total that STATUS reports, kept up to date
    on every change instead of summed on every status line."""

    def __init__(self, entries: Iterable[FileEntry] = ()) -> None:
        self._records: dict[bytes, bytes] = {}
        self.files = 0  # regular files (symlinks are indexed but not counted)
        self.bytes = 0
        for e in entries:
            self.put(e)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, path: object) -> bool:
        return path in self._records

    def put(self, entry: FileEntry) -> None:
        self.pop(entry.path)
        self._records[entry.path] = _RECORD.pack(*entry[1:])
        if not entry.is_link:
            self.files += 1
            self.bytes += entry.size

    def get(self, path: bytes) -> FileEntry | None:
        record = self._records.get(path)
        return None if record is None else FileEntry(path, *_RECORD.unpack(record))

    def pop(self, path: bytes) -> None:
        record = self._records.pop(path, None)
        if record is not None:
            size, *_, is_link = _RECORD.unpack(record)
            if not is_link:
                self.files -= 1
                self.bytes -= size

    def forget_under(self, prefix: bytes) -> None:
        """Drop every path below directory ``prefix`` (which ends with "/")."""
        for path in [p for p in self._records if p.startswith(prefix)]:
            self.pop(path)

    def clear(self) -> None:
        self._records.clear()
        self.files = self.bytes = 0

    def entries(self) -> Iterator[FileEntry]:
        for path, record in self._records.items():
            yield FileEntry(path, *_RECORD.unpack(record))
