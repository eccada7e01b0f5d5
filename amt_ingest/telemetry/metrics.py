"""Metrics: the instruments of DESIGN.md section 4, with bounded attributes.

Attributes are only ever a path (``ws``, ``sqs``), a topic (three), an outcome
or reason (closed sets), or a queue name from the configuration: never a
record or event id. On ``/metrics`` (Prometheus) the names become
``amt_events_total``, ``amt_path_lag_seconds`` and so on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeter, Observation

__all__ = ["Gauges", "Metrics"]

_LAG_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30)
_BATCH_BUCKETS: Final = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)


@dataclass
class Gauges:
    """Values the service refreshes and the observable instruments read.

    ``queues`` maps a queue label (``arq``, ``dead_records``, ``sqs:<name>``,
    ``dlq:<name>``) to its depth; ``websocket`` is 1 while subscribed;
    ``ws_leader`` is 1 while this replica holds the WebSocket lease.
    """

    queues: dict[str, int] = field(default_factory=dict)
    websocket: Callable[[], int] | None = None
    ws_leader: Callable[[], int] | None = None


class Metrics:
    """Every instrument, created once per process from one meter."""

    def __init__(self, meter: Meter | None = None, gauges: Gauges | None = None):
        meter = meter or NoOpMeter("amt_ingest")
        self.gauges = gauges or Gauges()
        self.events = meter.create_counter(
            "amt.events",
            unit="{event}",
            description="Events received, by path, topic and outcome "
            "(first, duplicate, stale, filtered)",
        )
        self.rejected = meter.create_counter(
            "amt.events.rejected",
            unit="{event}",
            description="Input rejected as invalid, by path and reason (dead-lettered)",
        )
        self.path_lag = meter.create_histogram(
            "amt.path.lag",
            unit="s",
            description="Second arrival of an event on the other path minus its first arrival",
            explicit_bucket_boundaries_advisory=list(_LAG_BUCKETS),
        )
        self.one_path = meter.create_counter(
            "amt.events.one_path",
            unit="{event}",
            description="Events seen on one path only after the grace window, by that path",
        )
        self.sqs_batch = meter.create_histogram(
            "amt.sqs.batch.size",
            unit="{message}",
            description="Messages per non-empty SQS receive",
            explicit_bucket_boundaries_advisory=list(_BATCH_BUCKETS),
        )
        self.jobs = meter.create_counter(
            "amt.jobs", unit="{run}", description="Record job runs, by topic and outcome"
        )
        self.job_duration = meter.create_histogram(
            "amt.job.duration",
            unit="s",
            description="Duration of a record job run, by topic and outcome",
            explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS),
        )
        self.latency = meter.create_histogram(
            "amt.e2e.latency",
            unit="s",
            description="Commit timestamp of a change to its commit in the store",
            explicit_bucket_boundaries_advisory=list(_LATENCY_BUCKETS),
        )
        self.resync_deletes_unknown = meter.create_counter(
            "amt.resync.deletes_unknown",
            unit="{resync}",
            description="Resyncs whose window Salesforce no longer knows every delete of "
            "(earliestDateAvailable after its start): run a full reconciliation of the topic",
        )
        self.ws_reconnects = meter.create_counter(
            "amt.websocket.reconnects",
            unit="{reconnect}",
            description="WebSocket reconnects, by reason class",
        )
        self.ws_handovers = meter.create_counter(
            "amt.ws.handovers",
            unit="{handover}",
            description="Changes of this replica's WebSocket lease, by change "
            "(acquired, released, lost)",
        )
        meter.create_observable_gauge(
            "amt.ws.leader",
            callbacks=[self._observe_leader],
            unit="1",
            description="1 while this replica holds the WebSocket lease (subscribes)",
        )
        meter.create_observable_gauge(
            "amt.websocket.connected",
            callbacks=[self._observe_websocket],
            unit="1",
            description="1 while the WebSocket is subscribed",
        )
        meter.create_observable_gauge(
            "amt.queue.depth",
            callbacks=[self._observe_queues],
            unit="{item}",
            description="Queue depths: arq jobs, SQS and dead-letter queues, dead-lettered records",
        )

    def count_events(self, outcomes: Counter[tuple[str, str, str]]) -> None:
        """Add a batch's ``(path, topic, outcome)`` counts."""
        for (path, topic, outcome), n in outcomes.items():
            self.events.add(n, {"path": path, "topic": topic, "outcome": outcome})

    def count_rejected(self, path: str, reasons: Iterable[str]) -> None:
        for reason, n in Counter(reasons).items():
            self.rejected.add(n, {"path": path, "reason": reason})

    def _observe_websocket(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.gauges.websocket is None:
            return []
        return [Observation(self.gauges.websocket())]

    def _observe_leader(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.gauges.ws_leader is None:
            return []
        return [Observation(self.gauges.ws_leader())]

    def _observe_queues(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(depth, {"queue": name}) for name, depth in self.gauges.queues.items()]
