"""§8, name storm: what a storm of hostile file names makes ocrd write.

Anyone who may write to model_dir can create files, and each becomes a log line: with 255-byte
names of control bytes (escaped as \\xNN, four characters each) a model_deleted line is about
1 KB. This creates the mode's number of such old_ files as fast as it can under ``ocrd run``
and measures the bytes ocrd wrote to stdout per second, against what one line per file would
have been (the same storm, each file's line as long as the ones that were written), and checks
that every deletion is accounted for (a line, or a count in a log_summary).
"""

from __future__ import annotations

import contextlib
import os
import time

from bench.modes import Mode
from bench.report import Results, Row
from bench.workspace import Workspace
from tests import configs
from tests.harness import Event, running

CONFIG = configs.toml()  # prefix old_, settle 0s, engine off, JSON logs


def _accounted(events: list[Event]) -> int:
    lines = sum(1 for e in events if e["event"] == "model_deleted")
    return lines + sum(
        int(e["count"])
        for e in events
        if e["event"] == "log_summary" and e.get("of") == "model_deleted"
    )


def section_storm(mode: Mode, ws: Workspace, res: Results) -> None:
    scratch = ws.fresh("storm")
    files = mode.storm_files
    try:
        models = scratch / "models"
        models.mkdir()
        config = scratch / "config.toml"
        config.write_text(CONFIG)
        with running(config, ready_s=60) as ocrd:
            start_lines = len(ocrd.lines)
            began = time.monotonic()
            root = os.fsencode(models)
            for i in range(files):
                name = b"old_%06d" % i + bytes(1 + (j % 30) for j in range(245))
                os.close(os.open(os.path.join(root, name), os.O_CREAT | os.O_WRONLY))
            with contextlib.suppress(AssertionError):  # reported below: not accounted for
                ocrd.wait_for(
                    "every deletion in a line or a log_summary",
                    lambda: _accounted(ocrd.events[start_lines:]) >= files,
                    timeout=120,
                )
            took = time.monotonic() - began
            storm = [line.encode() for line in ocrd.lines[start_lines:]]  # as written: bytes
            events = ocrd.events[start_lines:]
    finally:
        ws.remove(scratch)
    per_file = [raw for raw, e in zip(storm, events, strict=True) if e["event"] == "model_deleted"]
    accounted = _accounted(events)
    written = sum(len(raw) for raw in storm)
    per_line = sum(len(raw) for raw in per_file) / max(1, len(per_file))
    unbudgeted = written + (accounted - len(per_file)) * per_line
    label = f"name storm, {files} files with 255-byte control-byte names"
    res.add(Row("8", label, "ocrd run: storm deleted", "s", took, n=1))
    res.add(
        Row(
            "8",
            label,
            "ocrd run: log written",
            "MiB/s",
            written / took / 2**20,
            n=1,
            note=f"{written / 2**20:.1f} MiB; one line per file would be "
            f"{unbudgeted / 2**20:.1f} MiB ({written / max(1.0, unbudgeted):.2f}x)",
        )
    )
    res.add(
        Row(
            "8",
            label,
            "ocrd run: deletions accounted for",
            "files",
            accounted,
            n=1,
            note=f"{len(per_file)} lines, {accounted - len(per_file)} in log_summary",
        )
    )
    if accounted != files:
        res.problems.append(f"§8: {accounted} of {files} deletions accounted for in the log")
