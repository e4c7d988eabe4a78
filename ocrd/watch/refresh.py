"""What the watch marked, looked at again on disk: model_dir's index, its directories and the
arrivals brought up to date path by path between full scans (ocrd.watch.mirror owns them)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from ocrd.base.clock import Clock
from ocrd.base.errors import OtherFilesystem, Stopped
from ocrd.fs.arrival import Arrivals
from ocrd.fs.dirfds import DirFds
from ocrd.fs.inventory import entry_from_stat
from ocrd.fs.place import Place
from ocrd.fs.scan import unreadable, walk
from ocrd.fs.trash import is_trash
from ocrd.watch.index import Index
from ocrd.watch.observer import Changes


@dataclass
class Refreshed:
    """What a refresh found: files (re)indexed, files gone, and how many paths it forgot with
    directories that went."""

    touched: set[bytes] = field(default_factory=set)
    gone: list[bytes] = field(default_factory=list)
    forgotten: int = 0


def refresh(
    changes: Changes,
    *,
    place: Place,
    index: Index,
    directories: dict[bytes, int],
    arrivals: Arrivals,
    clock: Clock,
    tick: Callable[[], bool],
    mounts: Callable[[list[tuple[bytes, str]]], None],
    walked: Callable[[], None],
) -> Refreshed:
    """Bring ``index``, ``directories`` and ``arrivals`` up to date for every path the watch
    marked. An event's word on what a path is (file or directory) is not trusted — polling
    reports a reused inode as a move, directory to file — each path is looked at on disk.
    ``mounts`` is told the mount points met (not entered), ``walked`` that new directories
    were walked (ocrd.watch.watching checks that the watch covers them)."""
    done = Refreshed()
    # A file in a directory the mirror does not hold came with that directory, whatever
    # order its events came in (polling reports a tree's files before its directories):
    # the topmost such directory is walked, and so dated, as if its own event had come.
    dirs = set(changes.dirs)
    for rel in changes.files:
        if (top := _unheld_top(rel, directories)) is not None:
            dirs.add(top)
    with DirFds(place) as fds:
        for rel in dirs | changes.files:
            if not rel:
                continue  # model_dir itself: check_root's business
            if is_trash(rel):
                continue  # not a model (ocrd.trash); the polling observer sees into it
            if below_any(rel, dirs):
                continue  # that directory is forgotten and walked whole below
            try:
                st = fds.stat(rel)
            except OSError as exc:
                # Any directory may become unreadable at any time (another user's
                # chmod 700): what is in it stays as last seen, and nothing there is
                # deleted, since deleting goes through the same directories.
                _unreadable(rel, exc)
                continue
            is_dir = st is not None and stat.S_ISDIR(st.st_mode)
            if not is_dir and (rel in dirs or rel in directories):
                done.forgotten += _forget_tree(
                    rel, index, directories
                )  # a directory gone or now a file
                arrivals.forget(rel)
            if st is None:
                index.pop(rel)
                done.gone.append(rel)
            elif is_dir:
                # What the mirror held there before: a directory it holds already, as the
                # very same inode, did not arrive again (its sighting stays as it was).
                known = _held_under(rel, directories)
                index.pop(rel)
                done.forgotten += _forget_tree(rel, index, directories)
                try:
                    sub = walk(os.dup(fds.open(rel)), boundary=fds.boundary, tick=tick)
                except OtherFilesystem as exc:
                    mounts([(rel, exc.device)])
                    continue
                except OSError as exc:
                    _unreadable(rel, exc)
                    continue
                except Stopped:
                    break  # SIGTERM: the loop exits; the index no longer matters
                prefix = rel + b"/"
                arrivals.found(
                    ((prefix + d if d else rel, ino) for d, ino in sub.directories),
                    known,
                    clock.time(),
                    holding=(prefix + e.path for e in sub.files),
                )
                for where, why in sub.unreadable:
                    unreadable(prefix + where, why)
                mounts([(prefix + p, dev) for p, dev in sub.mounts])
                directories.update((prefix + d if d else rel, ino) for d, ino in sub.directories)
                walked()
                for e in sub.files:
                    found = e._replace(path=prefix + e.path)
                    index.put(found)
                    done.touched.add(found.path)
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                prior = index.get(rel)
                if stat.S_ISREG(st.st_mode) and (prior is None or prior.ino != st.st_ino):
                    arrivals.saw_file(rel, st, clock.time())
                index.put(entry_from_stat(rel, st))
                done.touched.add(rel)
            else:
                index.pop(rel)  # a fifo or socket: not a model
    return done


def _held_under(rel: bytes, directories: dict[bytes, int]) -> dict[bytes, int]:
    """The directories of ``directories`` at ``rel`` and below it, with their inodes."""
    if rel not in directories:
        return {}  # a directory just made: mkdir storms cost nothing
    prefix = rel + b"/"
    return {p: i for p, i in directories.items() if p == rel or p.startswith(prefix)}


def _forget_tree(rel: bytes, index: Index, directories: dict[bytes, int]) -> int:
    """Forget directory ``rel`` and all below it; how many indexed paths went with it."""
    prefix = rel + b"/"
    forgotten = index.forget_under(prefix)  # costs what the subtree holds
    if rel in directories:  # a directory just made is not: mkdir storms cost nothing
        for stale in [p for p in directories if p == rel or p.startswith(prefix)]:
            del directories[stale]
    return forgotten


def _unreadable(rel: bytes, exc: OSError) -> None:
    unreadable(rel, exc.strerror or str(exc))


def _unheld_top(rel: bytes, held: dict[bytes, int]) -> bytes | None:
    """The topmost directory above ``rel`` that ``held`` does not hold, if any (none before
    the first full scan, which holds model_dir itself)."""
    if b"" not in held:
        return None
    top = None
    d = rel.rpartition(b"/")[0]
    while d and d not in held:
        top = d
        d = d.rpartition(b"/")[0]
    return top


def below_any(rel: bytes, dirs: set[bytes]) -> bool:
    """Whether a directory above ``rel`` is in ``dirs``. Polling reports every directory of a
    tree moved in, each of which was walked whole: quadratic in its depth."""
    while True:
        rel = rel.rpartition(b"/")[0]
        if not rel:
            return False
        if rel in dirs:
            return True
