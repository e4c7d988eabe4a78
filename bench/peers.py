"""The peers ocrd is measured against, and every tool's command line for one retention pass:
``ocrd clean``, systemd-tmpfiles, tmpreaper, ``find -delete``, and the safe floor
(``bench/floor.c``, built by ``bench.floor``), the reference every pass is compared with."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from bench import floor
from bench.tree import PREFIX, Tree
from bench.workspace import assert_inside
from tests.harness import ocrd_argv

MAX_AGE = "30d"
FIND_AGE = "+43200"  # minutes: strictly more than 30 days, like the others (-mtime +30 is ≥31 d)

RETENTION_TOOLS = ("ocrd", "tmpfiles", "tmpreaper", "find")
TOOL_NAMES = {
    "ocrd": "ocrd clean",
    "tmpfiles": "systemd-tmpfiles --clean",
    "tmpreaper": "tmpreaper --mtime",
    "find": "find -delete",
    "floor": "safe floor (C)",
    # The same ocrd clean with its compiled step turned off: what the step gains, in one run.
    "ocrd-py": "ocrd clean, Python path",
}
# Every tool a §2 row can name, in the order of the rows: the floor is not a tool anyone runs,
# so it is no peer in "x fastest peer"; the report sets every pass against it apart.
ALL_TOOLS = (*RETENTION_TOOLS, "ocrd-py", "floor")
OCRDS = ("ocrd", "ocrd-py")  # the rows that are ocrd's own


def retention_commands(
    tool: str, tree: Tree, scratch: Path, prefix: bool, *, floor_binary: Path | None = None
) -> list[list[str]]:
    """The argv list that makes ``tool`` apply "older than 30 days by mtime" (and, if ``prefix``,
    "name starts with old_") to ``tree``; config files are written into ``scratch``. The
    floor's command needs its ``floor_binary``."""
    root = str(tree.root)
    assert not any(c.isspace() for c in root), root  # tmpfiles.d lines split on whitespace
    if tool == "ocrd-py":
        (argv,) = retention_commands("ocrd", tree, scratch, prefix)
        return [["env", "OCRD_PURE_PYTHON=1", *argv]]
    if tool == "ocrd":
        config = scratch / "ocrd.toml"
        config.write_text(
            f"model_dir = {json.dumps(root)}\n\n"
            "[retention]\n"
            f"prefixes = {json.dumps([PREFIX] if prefix else [])}\n"
            f'max_age = "{MAX_AGE}"\nage_by = "mtime"\n'
            # The tree is made now with old mtimes: by mtime alone, as tmpfiles' "m:" judges.
            'age_from = "timestamp"\n\n'
            '[watch]\nsettle = "0s"\n\n'
            "[engine]\nenabled = false\n"
        )
        return [[*ocrd_argv(), "clean", "-c", str(config)]]
    if tool == "tmpfiles":
        # "e" cleans what is in the directory by age; "m:" judges by mtime alone (by default
        # tmpfiles keeps a file if any of atime, ctime, btime, mtime is recent, and ctime is
        # always now on a generated tree). tmpfiles has no name-prefix rule: "r" removes what a
        # glob matches, whatever its age, which is what ocrd's prefix rule does. Its globs do
        # not recurse, so one "r" line per level of the tree (the tree has two: the top and
        # the 100 subdirectories).
        lines = [f"e {root} - - - m:{MAX_AGE}"]
        if prefix:
            lines += [f"r {root}/{PREFIX}*", f"r {root}/*/{PREFIX}*"]
        config = scratch / "ocrd-bench.conf"
        config.write_text("\n".join(lines) + "\n")
        for line in lines:
            assert_inside(line.split()[1], scratch)
        flags = ["--clean", "--remove"] if prefix else ["--clean"]
        return [["systemd-tmpfiles", *flags, f"--prefix={root}", str(config)]]
    if tool == "tmpreaper":
        # --runtime (-T) defaults to 55 s, after which tmpreaper gives up: far more than that.
        # It has no name rule at all: the prefix rule is a second command, timed with it.
        argvs = [["tmpreaper", "--mtime", "--runtime=3600", MAX_AGE, root]]
        if prefix:
            argvs.append(["find", root, "-type", "f", "-name", f"{PREFIX}*", "-delete"])
        return argvs
    if tool == "find":
        if prefix:
            test = ["(", "-name", f"{PREFIX}*", "-o", "-mmin", FIND_AGE, ")"]
        else:
            test = ["-mmin", FIND_AGE]
        return [["find", root, "-type", "f", *test, "-delete"]]
    if tool == "floor":
        if floor_binary is None:
            raise ValueError("the floor's command needs its binary (bench.floor.build)")
        return [floor.argv(floor_binary, tree.root, prefix)]
    raise ValueError(tool)


def ensure_tmpreaper() -> str | None:
    """tmpreaper from Debian's packages if missing; None when present, else why not."""
    if shutil.which("tmpreaper", path=os.environ.get("PATH", "") + ":/usr/sbin"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "tmpreaper not installed (apt-get install tmpreaper needs root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing tmpreaper from Debian's packages …", flush=True)
    for argvs in (
        [["apt-get", "install", "-y", "tmpreaper"]],
        [["apt-get", "update"], ["apt-get", "install", "-y", "tmpreaper"]],
    ):
        for argv in argvs:
            subprocess.run(argv, env=env, capture_output=True, timeout=600, check=False)
        if shutil.which("tmpreaper", path=os.environ.get("PATH", "") + ":/usr/sbin"):
            return None
    return "tmpreaper could not be installed with apt-get"
