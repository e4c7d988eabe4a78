"""The Prometheus textfile: ``[metrics] textfile`` rewritten atomically after each pass, for
node_exporter's textfile collector (no port: the unit keeps ``PrivateNetwork=yes``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ocrd import log
from ocrd.retention import Verdict
from ocrd.stats import Totals

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
        """Write the textfile (temp file in the same directory, then rename: a scrape never
        reads half a file) if the totals moved since the last write. A failure is logged once
        per distinct error, never raised: metrics are not worth stopping retention for."""
        if self.textfile is None or self.totals.generation == self._written:
            return
        # The unit's UMask=0027 would leave the file 0640, unreadable to node_exporter's own
        # user; these numbers are no secret. The loop is the only thread that creates files.
        old = os.umask(0o022)
        try:
            write_to_textfile(str(self.textfile), self.registry)
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self._failure:
                self._failure = error
                log.get().warning("metrics_write_failed", path=str(self.textfile), error=error)
            return
        finally:
            os.umask(old)
        if self._failure is not None:
            log.get().info("metrics_written", path=str(self.textfile))
            self._failure = None
        self._written = self.totals.generation
