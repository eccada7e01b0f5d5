"""Periodic views of the running system: queue depths, reconciliation.

Every ``AMT_GAUGE_INTERVAL_S`` the watcher reads the arq queue, the dead-lettered
records and (through SQS) each queue and dead-letter queue depth into the
metrics gauges, and publishes them in Redis (``amt:gauges``) for
``python -m amt_ingest status``. (Each replica's WebSocket state goes with its
heartbeat: :mod:`.heartbeat`.)

While both paths run it also sweeps the events seen on one path only for
longer than ``AMT_RECONCILE_GRACE_S``: each is counted
(``amt.events.one_path``, ``onepath:<path>:<topic>`` in ``amt:stats``) and
logged once, as ``event_one_path_only``: when the path is ``sqs``, the
WebSocket missed the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from ..config import Settings
from ..coordination import Coordinator
from ..errors import CoordinationError
from ..telemetry import Telemetry

__all__ = ["Watcher", "queue_label"]

log = structlog.get_logger("amt_ingest.watch")

SWEEP_BATCH = 1000


def queue_label(url: str) -> str:
    """The queue's name, the last part of its URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]


class Watcher:
    def __init__(
        self,
        settings: Settings,
        *,
        coordinator: Coordinator,
        telemetry: Telemetry,
        sqs: Any,
        queues: dict[str, str | None],
        sweep_one_path: bool,
    ):
        self.settings = settings
        self.coordinator = coordinator
        self.telemetry = telemetry
        self.sqs = sqs
        #: Source queue URL -> its dead-letter queue URL (None if it has none).
        self.queues = queues
        self.sweep_one_path = sweep_one_path

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh()
            except CoordinationError as exc:
                log.warning("gauges_not_refreshed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.gauge_interval_s)

    async def refresh(self) -> None:
        """One round: gauges read and published, one-path events swept."""
        overview = await self.coordinator.observations.overview()
        depths: dict[str, int] = {
            "arq": overview["queued_jobs"],
            "pending_records": overview["pending_records"],
            "dead_records": overview["dead_records"],
            "retrying_records": overview["retrying_records"],
        }
        for url, dlq in self.queues.items():
            depth = await self._sqs_depth(url)
            if depth is not None:
                depths[f"sqs:{queue_label(url)}"] = depth
            if dlq is not None:
                depth = await self._sqs_depth(dlq)
                if depth is not None:
                    depths[f"dlq:{queue_label(dlq)}"] = depth
        self.telemetry.metrics.gauges.queues = depths
        published: dict[str, str | int | float] = {f"depth:{k}": v for k, v in depths.items()}
        published["updated_ms"] = int(time.time() * 1000)
        await self.coordinator.observations.publish_gauges(published)
        if self.sweep_one_path:
            await self.sweep()

    async def sweep(self) -> int:
        """Count and log the events seen on one path only past the grace window."""
        grace_ms = int(self.settings.reconcile_grace_s * 1000)
        total = 0
        while True:
            found = await self.coordinator.observations.sweep_one_path(
                grace_ms=grace_ms, limit=SWEEP_BATCH
            )
            now_ms = int(time.time() * 1000)
            for member, first_ms in found:
                path, topic, event_id = member.split(":", 2)
                self.telemetry.metrics.one_path.add(1, {"path": path, "topic": topic})
                log.warning(
                    "event_one_path_only",
                    event_id=event_id,
                    topic=topic,
                    path=path,
                    missing_path="ws" if path == "sqs" else "sqs",
                    age_s=round((now_ms - first_ms) / 1000, 1),
                )
            total += len(found)
            if len(found) < SWEEP_BATCH:
                return total

    async def _sqs_depth(self, url: str) -> int | None:
        if self.sqs is None:
            return None
        try:
            reply = await self.sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
            )
        except (ClientError, BotoCoreError, OSError) as exc:
            log.warning("queue_depth_unknown", queue_url=url, error=str(exc))
            return None
        return int(reply.get("Attributes", {}).get("ApproximateNumberOfMessages", 0))
