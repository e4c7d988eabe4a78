"""What the daemon tells the world about itself: STATUS= through sd_notify and the Prometheus
textfile (ocrd.daemon.metrics). It owns the last STATUS= text sent and the metrics writer."""

from __future__ import annotations

from pathlib import Path

from ocrd.daemon.batcher import Batcher
from ocrd.daemon.budget import Keeper
from ocrd.daemon.engine import Supervisor
from ocrd.daemon.metrics import Metrics
from ocrd.daemon.notify import Notifier
from ocrd.ops.stats import Totals
from ocrd.watch.mirror import Mirror


class Publisher:
    """STATUS= and the metrics file, from the totals and the parts' own state."""

    def __init__(
        self,
        model_dir: Path,
        textfile: Path | None,
        *,
        totals: Totals,
        notifier: Notifier,
        mirror: Mirror,
        engine: Supervisor,
        batcher: Batcher,
        keeper: Keeper,
    ) -> None:
        self.model_dir = model_dir
        self.totals = totals
        self.notifier = notifier
        self.mirror = mirror
        self.engine = engine
        self.batcher = batcher
        self.keeper = keeper
        self.metrics = Metrics(totals, textfile)
        self.status_sent = ""

    def reconfigure(self, model_dir: Path, textfile: Path | None) -> None:
        self.model_dir = model_dir
        self.metrics.reconfigure(textfile)

    def status(self) -> str:
        missing = str(self.model_dir) if self.mirror.missing else None
        index = self.mirror.index
        status = self.totals.status(index.files, index.bytes, missing, len(self.batcher.due))
        budget = self.keeper.status()
        return status if budget is None else f"{status}; {budget}"

    def publish(self) -> None:
        """The engine's and the watch's own state into the totals; the metrics file if
        anything moved."""
        self.totals.engine(self.engine.cycles, self.engine.downtime_s)
        self.totals.watch(self.mirror.watching.degraded)
        self.metrics.publish()

    def send(self) -> None:
        """STATUS= when its text changed, and the metrics file when the totals did."""
        self.publish()
        status = self.status()
        if status != self.status_sent:
            self.status_sent = status
            self.notifier.status(status)

    def ready(self) -> None:
        """The metrics file, then READY=1 with the STATUS= text as it is now."""
        self.publish()
        self.notifier.ready(self.status())
