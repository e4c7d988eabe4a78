"""Files restored from the trash (ocrd.fs.restore), held from every rule for the grace: each
hold a record in ``.ocrd-trash/held/``, written before the file is back and read by every
pass, so no pass ever sees a restored file unheld (docs/trash.md)."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets

from ocrd.base.errors import ModelDirMissing
from ocrd.fs.place import DIR_FLAGS, Place
from ocrd.fs.trash import HELD, HOLD, Entry, Trash, Unusable, load_record, names, write_record


def held_dir(t: Trash) -> int:
    """An fd on the trash's ``held`` directory, made if need be; Unusable if it is not the
    trash owner's own."""
    try:
        os.mkdir(HELD, 0o700, dir_fd=t.fd)
    except FileExistsError:
        pass
    else:
        with contextlib.suppress(OSError):
            fd = os.open(HELD, DIR_FLAGS, dir_fd=t.fd)
            t.own(fd)
            os.close(fd)
    fd = os.open(HELD, DIR_FLAGS, dir_fd=t.fd)
    st = os.fstat(fd)
    if st.st_uid not in (t.uid, os.geteuid()) or st.st_mode & 0o022:
        os.close(fd)
        raise Unusable(f"{os.fsdecode(HELD)} inside it is not ocrd's own directory")
    return fd


def hold(t: Trash, path: bytes, entry: Entry, until: float) -> bytes:
    """Hold ``entry``'s file (by device and inode) until ``until``; the hold's name."""
    name = secrets.token_hex(8).encode() + b".json"
    record = {
        "path": base64.b64encode(path).decode(),
        "dev": entry.dev,
        "ino": entry.ino,
        "until": until,
    }
    hfd = held_dir(t)
    try:
        write_record(hfd, name, record, t)
    finally:
        os.close(hfd)
    return name


def let_go(t: Trash, name: bytes) -> None:
    """Remove the hold ``name`` (its restore did not happen)."""
    with contextlib.suppress(OSError):
        hfd = held_dir(t)
        try:
            os.unlink(name, dir_fd=hfd)
        finally:
            os.close(hfd)


def read(t: Trash, now: float) -> dict[tuple[int, int], float]:
    """The files held from every rule: (device, inode) → until when. A hold that has ended
    is removed."""
    try:
        hfd = os.open(HELD, DIR_FLAGS, dir_fd=t.fd)
    except OSError:
        return {}
    found: dict[tuple[int, int], float] = {}
    try:
        for name in names(hfd):
            if HOLD.fullmatch(name) is None:
                continue
            rec = load_record(hfd, name)
            try:
                key = (int(rec["dev"]), int(rec["ino"]))
                until = float(rec["until"])
            except (KeyError, TypeError, ValueError):
                continue
            if until <= now:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=hfd)
                continue
            found[key] = max(until, found.get(key, until))
    finally:
        os.close(hfd)
    return found


def holds(
    model_dir: Place | os.PathLike[str] | str | bytes | int, now: float
) -> dict[tuple[int, int], float]:
    """The files held from every rule at ``now`` ({} if the trash is absent or unusable, or
    model_dir is gone: then nothing is deleted anyway)."""
    try:
        t = Trash.open(model_dir, create=False)
    except (Unusable, ModelDirMissing):
        return {}
    if t is None:
        return {}
    with t:
        return read(t, now)
