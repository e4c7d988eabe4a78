"""The Prometheus textfile: ``[metrics] textfile`` rewritten atomically after each pass, for
node_exporter's textfile collector (no port: the unit keeps ``PrivateNetwork=yes``)."""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import suppress
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ocrd.base import log
from ocrd.config.trusted import writers_beyond
from ocrd.ops.stats import Totals
from ocrd.rules.decision import Verdict

# Always exported, at 0 until they happen, so a rate() or an alert has a series from the start.
RULES = ("prefix", "max_age")
REASONS = ("changed", "vanished", "in_use", "in_use_unknown", "engine_busy")


class TotalsCollector(Collector):
    """Reads ``Totals`` at write time: the daemon's bookkeeping is the one source of truth,
    these are only its Prometheus names (prometheus_client's custom-collector pattern)."""

    def __init__(self, totals: Totals) -> None:
        self.totals = totals

    def collect(self) -> Iterator[Metric]:
        t = self.totals
        deleted = CounterMetricFamily(
            "ocrd_deleted_files", "Model files deleted, by rule.", labels=["rule"]
        )
        freed = CounterMetricFamily(
            "ocrd_deleted_bytes", "Bytes of model files deleted, by rule.", labels=["rule"]
        )
        for rule in _with(RULES, t.deleted_by_rule):
            deleted.add_metric([rule], t.deleted_by_rule[rule])
            freed.add_metric([rule], t.freed_by_rule[rule])
        skipped = CounterMetricFamily(
            "ocrd_deletions_skipped", "Planned deletions not done, by reason.", labels=["reason"]
        )
        for reason in _with(REASONS, t.since_start.skipped):
            skipped.add_metric([reason], t.since_start.skipped[reason])
        yield deleted
        yield freed
        yield skipped
        yield CounterMetricFamily(
            "ocrd_deletions_failed", "Deletions the OS refused.", value=t.since_start.failed
        )
        yield CounterMetricFamily(
            "ocrd_engine_cycles",
            "Times the AsposeAI engine was freed for deletions and started again.",
            value=t.engine_cycles,
        )
        yield CounterMetricFamily(
            "ocrd_engine_downtime_seconds",
            "Seconds the engine spent freed (between a free and the next start).",
            value=t.engine_downtime_s,
        )
        yield CounterMetricFamily(
            "ocrd_events_lost",
            "Full passes forced by lost watch events (inotify queue overflow, watch limits).",
            value=t.full_passes["events_lost"],
        )
        yield CounterMetricFamily(
            "ocrd_rescans", "Periodic full rescans (watch.rescan).", value=t.full_passes["rescan"]
        )
        yield GaugeMetricFamily(
            "ocrd_watch_degraded",
            "1 while the watch is not the one the config asks for, or not proven to deliver "
            "events (STATUS says why), else 0.",
            value=0 if t.degraded is None else 1,
        )
        yield GaugeMetricFamily(
            "ocrd_config_rejected",
            "1 while the last reload was rejected or held (the old rules are in force), else 0.",
            value=0 if t.rejected_at is None else 1,
        )
        if t.census.last is not None:
            files = GaugeMetricFamily(
                "ocrd_model_files",
                "Files under model_dir by verdict, at the last full pass.",
                labels=["verdict"],
            )
            size = GaugeMetricFamily(
                "ocrd_model_bytes",
                "Bytes under model_dir by verdict, at the last full pass.",
                labels=["verdict"],
            )
            for verdict in Verdict:
                n, b = t.census.last.get(verdict, (0, 0))
                files.add_metric([str(verdict)], n)
                size.add_metric([str(verdict)], b)
            yield files
            yield size
        if t.census.due_bytes is not None:
            due = GaugeMetricFamily(
                "ocrd_due_bytes",
                "Bytes of model files that come due for deletion within this long of the last "
                "full pass, if no file arrives or changes (due_at in ocrd list --json).",
                labels=["within"],
            )
            for within, nbytes in t.census.due_bytes.items():
                due.add_metric([within], nbytes)
            yield due
        if t.full_pass_at is not None and t.full_pass_s is not None:
            yield GaugeMetricFamily(
                "ocrd_last_full_pass_timestamp_seconds",
                "Unix time the last full pass (scan, plan, delete) started.",
                value=t.full_pass_at,
            )
            yield GaugeMetricFamily(
                "ocrd_last_full_pass_duration_seconds",
                "How long the last full pass took.",
                value=t.full_pass_s,
            )


def _with(known: Iterable[str], seen: Iterable[str]) -> list[str]:
    return sorted({*known, *seen})


class Metrics:
    """Owns the private registry; ``publish()`` writes the file when anything changed."""

    def __init__(self, totals: Totals, textfile: Path | None) -> None:
        self.totals = totals
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(TotalsCollector(totals))
        self.textfile: Path | None = None
        self._written = -1  # the Totals generation last written
        self._failure: str | None = None
        self.reconfigure(textfile)

    def reconfigure(self, textfile: Path | None) -> None:
        if textfile != self.textfile:
            self._written = -1
            self._failure = None
        self.textfile = textfile
        # The verdict census costs a look at every decision: only when someone reads it.
        self.totals.census.active = textfile is not None

    def publish(self) -> None:
        """Write the textfile (write_textfile) if the totals moved since the last write. A
        failure is logged once per distinct error, never raised: metrics are not worth
        stopping retention for."""
        if self.textfile is None or self.totals.generation == self._written:
            return
        try:
            write_textfile(self.textfile, generate_latest(self.registry))
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self._failure:
                self._failure = error
                log.get().warning("metrics_write_failed", path=str(self.textfile), error=error)
            return
        if self._failure is not None:
            log.get().info("metrics_written", path=str(self.textfile))
            self._failure = None
        self._written = self.totals.generation


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_TRIES = 4  # fresh names tried when one is taken (only a squatter takes one)


def temp_name(final: str) -> str:
    """A name no one can guess, that node_exporter skips (not ``*.prom``)."""
    return f".{final}.{secrets.token_hex(8)}.tmp"


def write_textfile(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, atomically (a scrape never reads half a file), and
    without following a link anywhere ocrd may be writing as root: the directory is opened
    with O_NOFOLLOW and checked (config.writers_beyond: writable by root and ocrd only), the
    temporary file is created in it exclusively (O_EXCL|O_NOFOLLOW: a link or file planted at
    the name makes the open fail, not follow) under a name no one can guess, and renamed over
    ``path`` within that directory: rename replaces a link at ``path``, never its target.
    Mode 0644 whatever the umask (the unit's 0027 would hide it from node_exporter's user)."""
    dir_fd = os.open(path.parent, DIR_FLAGS)
    try:
        who = writers_beyond(os.fstat(dir_fd))
        if who is not None:
            raise PermissionError(
                errno.EPERM, f"the directory is {who}: not written (see ocrd check)", str(path)
            )
        temp, fd = _create(dir_fd, path.name)
        try:
            try:
                os.fchmod(fd, 0o644)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)


def _create(dir_fd: int, final: str) -> tuple[str, int]:
    """A new temporary file beside ``final``: its name and an fd open for writing."""
    for _ in range(TEMP_TRIES - 1):
        temp = temp_name(final)
        with suppress(FileExistsError):
            return temp, os.open(temp, TEMP_FLAGS, 0o644, dir_fd=dir_fd)
    temp = temp_name(final)
    return temp, os.open(temp, TEMP_FLAGS, 0o644, dir_fd=dir_fd)
