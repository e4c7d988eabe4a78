"""Log flood: what a storm of hostile file names makes ocrd write.

Anyone who may write to model_dir can create files, and each becomes a log line: with 255-byte
names of control bytes (escaped as \\xNN, four characters each) a model_deleted line is about
1 KB. This creates N such old_ files as fast as it can under ``ocrd run`` and measures the
bytes ocrd wrote to stdout per second, against what one line per file would have been (the
same storm, each file's line as long as the ones that were written), and checks that every
deletion is accounted for (a line, or a count in a log_summary).

    python -m bench.flood [--files 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.harness import running


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood")
    parser.add_argument("--files", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ocrd-flood-") as tmp:
        scratch = Path(tmp)
        models = scratch / "models"
        models.mkdir()
        config = scratch / "config.toml"
        config.write_text(
            'model_dir = "models"\n[retention]\nprefixes = ["old_"]\n[watch]\nsettle = "0s"\n'
            '[engine]\nenabled = false\n[log]\nformat = "json"\n',
        )
        with running(config, ready_s=60) as ocrd:
            start_lines = len(ocrd.lines)
            began = time.monotonic()
            root = os.fsencode(models)
            for i in range(args.files):
                name = b"old_%06d" % i + bytes(1 + (j % 30) for j in range(245))
                os.close(os.open(os.path.join(root, name), os.O_CREAT | os.O_WRONLY))
            while os.listdir(models):
                time.sleep(0.05)
            time.sleep(2.0)  # the last summary comes within a second
            took = time.monotonic() - began
    storm = [line.encode() for line in ocrd.lines[start_lines:]]  # as written: bytes
    events = ocrd.events[start_lines:]
    per_file = [raw for raw, e in zip(storm, events, strict=True) if e["event"] == "model_deleted"]
    summarised = sum(
        int(e["count"])
        for e in events
        if e["event"] == "log_summary" and e.get("of") == "model_deleted"
    )
    written = sum(len(raw) for raw in storm)
    per_line = sum(len(raw) for raw in per_file) / max(1, len(per_file))
    unbudgeted = written + summarised * per_line
    print(f"storm: {args.files} files with 255-byte control-byte names, {took:.1f} s")
    print(f"  model_deleted lines: {len(per_file)}, counted in log_summary: {summarised}")
    print(f"  accounted for: {len(per_file) + summarised} of {args.files}")
    print(
        f"  written: {written / 2**20:.1f} MiB ({written / took / 2**20:.2f} MiB/s); one line per "
        f"file: {unbudgeted / 2**20:.1f} MiB ({unbudgeted / took / 2**20:.2f} MiB/s); "
        f"ratio {written / unbudgeted:.2f}x"
    )
    return 0 if len(per_file) + summarised == args.files else 1


if __name__ == "__main__":
    sys.exit(main())
