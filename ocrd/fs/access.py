"""Whether the user running ocrd may read model_dir; if not, which directory stops them, whose
it is, and the command that gets past it."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ocrd.base.errors import ConfigError


@dataclass(frozen=True)
class Denial:
    """``where``: the first directory on the way to ``model_dir`` (or model_dir itself) that
    this user may not enter, or list; its ``mode``, owner ``uid`` and group ``gid``."""

    model_dir: str
    where: str
    mode: int
    uid: int
    gid: int

    @property
    def owner(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return f"uid {self.uid}"

    @property
    def group(self) -> str:
        try:
            return grp.getgrgid(self.gid).gr_name
        except KeyError:
            return f"gid {self.gid}"

    def why(self) -> str:
        """``/var/lib/ocrd is drwxr-x--- ocrd:ocrd``: what stops this user."""
        return f"{_shown(self.where)} is {stat.filemode(self.mode)} {self.owner}:{self.group}"

    def advice(self, command: Sequence[str]) -> str:
        """One line: who may, and how to become them, for ``command`` (argv without sudo)."""
        asking = me()
        line = (
            f"cannot read model_dir {_shown(self.model_dir)} as {asking}: {self.why()}. "
            f"Run it as root or as {self.owner}: "
        )
        if self.uid == 0:
            line += f"sudo {shlex.join(command)}"
        else:
            who = self.owner if not self.owner.startswith("uid ") else f"#{self.uid}"
            line += f"sudo -u {shlex.quote(who)} {shlex.join(command)}"
        if self._group_may():
            member = self.group.removeprefix("gid ")
            line += f"; or join {'group ' if member == self.group else ''}{self.group}"
            if not asking.startswith("uid "):
                line += f": sudo usermod -aG {member} {asking}, then log in again"
        return line

    def _group_may(self) -> bool:
        """Whether members of the group get past ``where`` (enter it, and list model_dir)."""
        need = stat.S_IXGRP | (stat.S_IRGRP if self.where == self.model_dir else 0)
        return self.mode & need == need


class NoAccess(ConfigError):
    """The user running ocrd may not read model_dir: the config may be right, but nothing can
    be judged from here. ``denial`` says which directory stops them and who may."""

    def __init__(self, problem: str, denial: Denial) -> None:
        super().__init__([problem])
        self.denial = denial


def denied(model_dir: Path) -> Denial | None:
    """The Denial that keeps this process (its effective ids) from listing ``model_dir``, or
    None when it may (or when the path does not exist: a different problem)."""
    path = os.path.abspath(model_dir)
    parts = [p for p in path.split("/") if p]
    on_the_way = ["/" + "/".join(parts[:i]) for i in range(len(parts) + 1)]
    for where in on_the_way:
        need = os.X_OK | (os.R_OK if where == path else 0)
        if os.access(where, need, effective_ids=True):
            continue
        try:
            st = os.stat(where)
        except OSError:
            return None  # absent, or not even stat-able: the config check says what is wrong
        if not stat.S_ISDIR(st.st_mode):
            return None  # not a directory: a different problem, which the config check names
        return Denial(path, where, st.st_mode, st.st_uid, st.st_gid)
    return None


def me() -> str:
    """The user this process runs as (effective uid), by name where it has one."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _shown(path: str) -> str:
    """A path as it is, unless it holds anything unprintable: then a quoted, escaped string."""
    return path if path.isprintable() else json.dumps(path)
