"""The daemon's index of model_dir: one packed record per file, grouped by directory, with
running totals."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from ocrd.fs.inventory import FileEntry

# size, mtime, atime, ctime, dev, ino, is_link, uid: 53 bytes in one bytes object, where a
# FileEntry with its float and int objects costs ~330 bytes. The daemon holds one per file
# for as long as it runs; the planner gets FileEntry values back only for what it looks at.
_RECORD = struct.Struct("=qdddQQ?I")


def _split(path: bytes) -> tuple[bytes, bytes]:
    """(directory key, name): the key is everything up to and including the last "/" (b"" at
    the top), so that key + name is the path again, whatever bytes it holds."""
    cut = path.rfind(b"/") + 1
    return path[:cut], path[cut:]


def _parent(key: bytes) -> bytes:
    return _split(key[:-1])[0]


class Index:
    """path → record, plus the file count and byte total that STATUS reports, and the regular
    files per owner uid (what may vouch that a model stays: ocrd.rules.refusal.refuse_all), kept
    up to date on every change instead of summed when asked.

    Records are kept per directory, and each directory knows its subdirectories, so dropping
    a directory's subtree costs what the subtree holds, not what the whole index holds: a
    storm of directory events on a million-file tree stays cheap per event."""

    def __init__(self, entries: Iterable[FileEntry] = ()) -> None:
        self._dirs: dict[bytes, dict[bytes, bytes]] = {}  # directory key → name → record
        self._subdirs: dict[bytes, set[bytes]] = {}  # directory key → child directory keys
        self._count = 0
        self.files = 0  # regular files (symlinks are indexed but not counted)
        self.bytes = 0
        self.owners: dict[int, int] = {}  # uid → regular files it owns
        for e in entries:
            self.put(e)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, bytes):
            return False
        key, name = _split(path)
        names = self._dirs.get(key)
        return names is not None and name in names

    def put(self, entry: FileEntry) -> None:
        self.pop(entry.path)
        key, name = _split(entry.path)
        names = self._dirs.get(key)
        if names is None:
            names = self._dirs[key] = {}
            self._link(key)
        names[name] = _RECORD.pack(*entry[1:])
        self._count += 1
        if not entry.is_link:
            self.files += 1
            self.bytes += entry.size
            self.owners[entry.uid] = self.owners.get(entry.uid, 0) + 1

    def get(self, path: bytes) -> FileEntry | None:
        key, name = _split(path)
        names = self._dirs.get(key)
        record = None if names is None else names.get(name)
        return None if record is None else FileEntry(path, *_RECORD.unpack(record))

    def pop(self, path: bytes) -> None:
        key, name = _split(path)
        names = self._dirs.get(key)
        if names is None:
            return
        record = names.pop(name, None)
        if record is None:
            return
        self._count -= 1
        self._uncount(record)
        if not names:
            self._prune(key)

    def forget_under(self, prefix: bytes) -> int:
        """Drop every path below directory ``prefix`` (which ends with "/"); how many."""
        if prefix not in self._dirs and prefix not in self._subdirs:
            return 0
        before = self._count
        stack = [prefix]
        while stack:
            key = stack.pop()
            stack.extend(self._subdirs.pop(key, ()))
            for record in self._dirs.pop(key, {}).values():
                self._count -= 1
                self._uncount(record)
        if prefix:
            parent = _parent(prefix)
            siblings = self._subdirs.get(parent)
            if siblings is not None:
                siblings.discard(prefix)
                if not siblings and not self._dirs.get(parent):
                    self._prune(parent)
        return before - self._count

    def clear(self) -> None:
        self._dirs.clear()
        self._subdirs.clear()
        self._count = self.files = self.bytes = 0
        self.owners.clear()

    def _uncount(self, record: bytes) -> None:
        size, *_, is_link, uid = _RECORD.unpack(record)
        if not is_link:
            self.files -= 1
            self.bytes -= size
            left = self.owners[uid] - 1
            if left:
                self.owners[uid] = left
            else:
                del self.owners[uid]

    def entries(self) -> Iterator[FileEntry]:
        for key, names in self._dirs.items():
            for name, record in names.items():
                yield FileEntry(key + name, *_RECORD.unpack(record))

    def _link(self, key: bytes) -> None:
        """Record ``key`` under its parent, and the parent under its own, up to the first
        directory already known (the top, b"", needs no parent)."""
        while key:
            parent = _parent(key)
            children = self._subdirs.get(parent)
            if children is None:
                self._subdirs[parent] = {key}
            elif key in children:
                return
            else:
                children.add(key)
                return
            key = parent

    def _prune(self, key: bytes) -> None:
        """Forget directory ``key`` once it holds nothing, and parents left empty by that: a
        churn of directories leaves nothing behind."""
        while key and not self._dirs.get(key) and not self._subdirs.get(key):
            self._dirs.pop(key, None)
            self._subdirs.pop(key, None)
            parent = _parent(key)
            children = self._subdirs.get(parent)
            if children is not None:
                children.discard(key)
            key = parent
        if not key and not self._dirs.get(b"") and not self._subdirs.get(b""):
            self._dirs.pop(b"", None)
            self._subdirs.pop(b"", None)
