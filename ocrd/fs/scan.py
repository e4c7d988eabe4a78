"""Walks model_dir without following symlinks and records what each file is (ocrd.fs.inventory's
plain values), whole (scan) or one directory at a time (walk_batches)."""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterator

from ocrd.base import log
from ocrd.base.collector import collecting_paused
from ocrd.base.errors import Stopped
from ocrd.fs import records
from ocrd.fs.inventory import FileEntry, Inventory, display
from ocrd.fs.place import Identity, Place, identify, open_root, pin, still_there
from ocrd.fs.trashentry import NAME as TRASH
from ocrd.fs.walk import walk_dirs

TICK_EVERY = 4096  # entries of one directory between two calls of a walk's tick


def scan(model_dir: Place | os.PathLike[str] | str | bytes) -> Inventory:
    """Walk ``model_dir`` recursively; symlinks are recorded, never followed.

    The walk goes from directory file descriptors, each subdirectory opened with O_NOFOLLOW
    relative to its parent, so a directory swapped for a symlink mid-walk is not entered (it
    ends up unread, not listed from outside), and a directory on another filesystem is not
    entered at all (it is listed in ``mounts``). A path is pinned (resolved) here, once.
    """
    place = model_dir if isinstance(model_dir, Place) else pin(model_dir)
    unreadable: list[tuple[bytes, str]] = []
    directories: list[tuple[bytes, int]] = []
    mounts: list[tuple[bytes, str]] = []
    batches = scan_batches(place, unreadable, directories, mounts=mounts)
    return _inventory(batches, unreadable, directories, mounts)


def scan_batches(
    place: Place,
    unreadable: list[tuple[bytes, str]],
    directories: list[tuple[bytes, int]],
    *,
    mounts: list[tuple[bytes, str]] | None = None,
    tick: Callable[[], bool] | None = None,
    recheck_s: float | None = None,
    chunk: int | None = None,
) -> Iterator[list[FileEntry]]:
    """scan(), one directory's files at a time (walk_batches from model_dir's pinned path).
    Once the walk is done, model_dir must still be the directory it started from, or
    ModelDirMissing: the walk's fd kept working if it was removed or swapped meanwhile.
    ``chunk`` as for walk_batches. With
    ``recheck_s``, that is also asked every ``recheck_s`` of the walk, before a batch is
    handed on (for a caller that deletes while the walk goes on: ocrd.ops.stream)."""
    fd = open_root(place)
    root = identify(fd)
    checked = time.monotonic()
    walked = walk_batches(
        fd, unreadable, directories, mounts=mounts, tick=tick, chunk=chunk, top_skip=TOP_SKIP
    )
    for files in walked:
        if recheck_s is not None and time.monotonic() - checked >= recheck_s:
            still_there(place, root)
            checked = time.monotonic()
        yield files
    still_there(place, root)


def walk(
    root_fd: int,
    *,
    boundary: Identity | None = None,
    tick: Callable[[], bool] | None = None,
) -> Inventory:
    """The walk behind scan(), from an open directory fd, which it closes. Paths are relative
    to that directory; the daemon uses it for a subtree reached through verified fds, with
    model_dir's ``boundary``."""
    unreadable: list[tuple[bytes, str]] = []
    directories: list[tuple[bytes, int]] = []
    mounts: list[tuple[bytes, str]] = []
    batches = walk_batches(
        root_fd, unreadable, directories, boundary=boundary, mounts=mounts, tick=tick
    )
    return _inventory(batches, unreadable, directories, mounts)


def _inventory(
    batches: Iterator[list[FileEntry]],
    unreadable: list[tuple[bytes, str]],
    directories: list[tuple[bytes, int]],
    mounts: list[tuple[bytes, str]],
) -> Inventory:
    """A walk's batches gathered into one Inventory, the cyclic collector off meanwhile (the
    batches are generated, so the walk itself runs here)."""
    with collecting_paused():
        files = [f for batch in batches for f in batch]
    return Inventory(tuple(files), tuple(unreadable), tuple(directories), tuple(mounts))


def walk_batches(
    root_fd: int,
    unreadable: list[tuple[bytes, str]],
    directories: list[tuple[bytes, int]],
    *,
    boundary: Identity | None = None,
    mounts: list[tuple[bytes, str]] | None = None,
    tick: Callable[[], bool] | None = None,
    chunk: int | None = None,
    top_skip: str | None = None,
) -> Iterator[list[FileEntry]]:
    """The walk, one directory's files at a time, so a caller can plan and drop them as it
    goes instead of holding a record per file of the whole tree (the daemon's full pass).
    Closes ``root_fd``; appends to ``unreadable``, ``directories`` and ``mounts`` as it goes; calls
    ``tick`` between directories (ocrd.fs.walk: no recursion, fds bounded, one filesystem)
    and every TICK_EVERY entries within one, raising Stopped when it answers True. With
    ``chunk``, a directory's files come in lists of at most that many, one after the other
    (a directory of millions is never one list). ``top_skip``: a name in the walk's top
    directory that is neither listed nor entered.
    """
    is_reg, is_lnk = stat.S_ISREG, stat.S_ISLNK
    fsencode = os.fsencode
    # This runs once per file of every scan, so the record is built the quickest way Python
    # has: each name encoded as os.fsencode would (minus its checks), the tuple made without
    # FileEntry's keyword-parsing __new__: ocrd.fs.inventory.entry_from_stat, inlined.
    # bench/RESULTS.md §1 measures what that buys.
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    record = tuple.__new__
    # Where it is built, the compiled step stats a directory's names and builds their records
    # in batches of ``step`` (ocrd.fs.records); the loop below is the reference.
    fast = records.available()
    step = min(RECORDS_BATCH, chunk) if chunk is not None else RECORDS_BATCH
    for here in walk_dirs(
        root_fd, boundary=boundary, unreadable=unreadable, mounts=mounts, tick=tick
    ):
        directories.append((here.path, here.ino))
        prefix = here.path + b"/" if here.path else b""
        subdirs = here.subdirs
        files: list[FileEntry] = []
        append = files.append
        seen = 0
        pending: list[str] | None = [] if fast else None  # names for the compiled step
        try:
            with os.scandir(here.fd) as it:
                for entry in it:
                    seen += 1
                    if seen % TICK_EVERY == 0 and tick is not None and tick():
                        raise Stopped("stopped within a directory")
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            subdirs.append(entry.name)
                            continue
                        if pending is not None:
                            pending.append(entry.name)
                            if len(pending) < step:
                                continue
                            files += _compiled(here.fd, prefix, pending, unreadable)
                            pending.clear()
                            if chunk is None or len(files) < chunk:
                                continue
                            while len(files) >= chunk:
                                if top_skip is not None and not here.path:
                                    _skip(top_skip, files, subdirs)
                                yield files[:chunk]
                                del files[:chunk]
                            continue
                        s = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # gone between readdir and stat: not ours to judge now
                    except OSError as exc:
                        rel = prefix + fsencode(entry.name)
                        unreadable.append((rel, exc.strerror or str(exc)))
                        continue
                    mode = s.st_mode
                    if is_reg(mode) or is_lnk(mode):
                        append(
                            record(
                                FileEntry,
                                (
                                    prefix + entry.name.encode(encoding, errors),
                                    s.st_size,
                                    s.st_mtime,
                                    s.st_atime,
                                    s.st_ctime,
                                    s.st_dev,
                                    s.st_ino,
                                    is_lnk(mode),
                                    s.st_uid,
                                ),
                            )
                        )
                        if chunk is not None and len(files) >= chunk:
                            if top_skip is not None and not here.path:
                                _skip(top_skip, files, subdirs)
                            yield files
                            files = []
                            append = files.append
                if pending:
                    files += _compiled(here.fd, prefix, pending, unreadable)
        except OSError as exc:
            unreadable.append((here.path, exc.strerror or str(exc)))
        if chunk is not None:
            while len(files) > chunk:
                if top_skip is not None and not here.path:
                    _skip(top_skip, files, subdirs)
                yield files[:chunk]
                del files[:chunk]
        if top_skip is not None and not here.path:
            _skip(top_skip, files, subdirs)
        if files:
            yield files


RECORDS_BATCH = 512  # names per call of the compiled step


def _compiled(
    fd: int, prefix: bytes, names: list[str], unreadable: list[tuple[bytes, str]]
) -> list[FileEntry]:
    """The records of ``names`` by the compiled step; the names it could not stat (not gone:
    those are left out) go to ``unreadable``, as the Python loop's do."""
    found, failed = records.records(fd, prefix, names)
    for name, err in failed:
        unreadable.append((prefix + os.fsencode(name), os.strerror(err)))
    return found


def unreadable(rel: bytes, why: str) -> None:
    """``scan_unreadable``: a place under model_dir that a walk could not read (nothing there is
    deleted by that walk). Every walk, the command line's and the daemon's, says it here."""
    log.get().warning("scan_unreadable", path=display(rel), error=why)


TOP_SKIP = os.fsdecode(TRASH)
"""What a walk of model_dir leaves out: the trash (ocrd.fs.trash), whatever is at that name (a
neighbour's file or link there is not a model either)."""


def _skip(name: str, files: list[FileEntry], subdirs: list[str]) -> None:
    """Drop ``name`` from the top directory's files (each chunk of them) and subdirectories
    (once per chunk, not once per file)."""
    if name in subdirs:
        subdirs.remove(name)
    encoded = os.fsencode(name)
    files[:] = [f for f in files if f.path != encoded]
