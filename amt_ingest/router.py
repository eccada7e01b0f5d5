"""The router: one entry point for events from both paths.

Sources call :meth:`Router.route` with a batch of parsed events and acknowledge
their input only after it returns: by then every kept event is durably in
Redis (deduplicated by ``event_id`` across paths, merged into its records'
pending changes, a job scheduled where needed). Events of orgs that are not
allowed are filtered out and counted, never dead-lettered.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from .coordination import Coordinator, IngestResult
from .events import Event
from .orgs import OrgFilter
from .policy import org_allowed

__all__ = ["RouteReport", "Router"]

log = structlog.get_logger("amt_ingest.router")


@dataclass(slots=True)
class RouteReport:
    """Outcome counts of one routed batch (``first``, ``duplicate``, ``stale``, ``filtered``)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    jobs_created: int = 0


def split_by_org(
    events: Sequence[Event], allowed: frozenset[str]
) -> tuple[list[Event], list[Event]]:
    kept: list[Event] = []
    filtered: list[Event] = []
    for event in events:
        (kept if org_allowed(event.org_id, allowed) else filtered).append(event)
    return kept, filtered


class Router:
    def __init__(
        self,
        coordinator: Coordinator,
        *,
        allowed_orgs: Sequence[str] = (),
        orgs: OrgFilter | None = None,
        max_queued_jobs: int = 20_000,
        capacity_poll_s: float = 0.25,
    ):
        self.coordinator = coordinator
        # ``orgs`` (environment and table) replaces ``allowed_orgs`` (environment only).
        self.orgs = orgs if orgs is not None else OrgFilter(allowed_orgs)
        self.max_queued_jobs = max_queued_jobs
        self.capacity_poll_s = capacity_poll_s
        self.paused = False

    async def wait_for_capacity(self, stop: asyncio.Event | None = None) -> None:
        """Return once the job queue is below its high-water mark.

        Sources call this before taking more input, so that slow workers, a slow
        database or a down one slow intake down (credits withheld, polling
        paused) instead of queueing without limit. Returns early once ``stop`` is
        set; raises :class:`~amt_ingest.errors.CoordinationError` if Redis fails.
        """
        if self.coordinator.last_queue_depth < self.max_queued_jobs:
            return
        while await self.coordinator.queue_depth() >= self.max_queued_jobs:
            if stop is not None and stop.is_set():
                return
            if not self.paused:
                self.paused = True
                log.warning(
                    "intake_paused",
                    queued_jobs=self.coordinator.last_queue_depth,
                    high_water=self.max_queued_jobs,
                )
            await asyncio.sleep(self.capacity_poll_s)
        if self.paused:
            self.paused = False
            log.info("intake_resumed", queued_jobs=self.coordinator.last_queue_depth)

    async def route(self, events: Sequence[Event], *, path: str) -> RouteReport:
        """Hand a batch off durably; raises :class:`~amt_ingest.errors.CoordinationError`
        if Redis did not confirm all of it (then acknowledge nothing)."""
        report = RouteReport()
        kept, filtered = split_by_org(events, await self.orgs.allowed())
        if filtered:
            await self.coordinator.count(Counter(f"filtered:{path}:{e.topic}" for e in filtered))
            for event in filtered:
                log.info(
                    "event_filtered",
                    event_id=event.event_id,
                    org_id=event.org_id,
                    topic=event.topic,
                    path=path,
                    outcome="filtered",
                )
            report.outcomes["filtered"] += len(filtered)
        results = await self.coordinator.ingest(kept, path=path) if kept else []
        for event, result in zip(kept, results, strict=True):
            report.outcomes[result.outcome] += 1
            report.jobs_created += result.jobs_created
            _log_outcome(event, result, path)
        return report


def _log_outcome(event: Event, result: IngestResult, path: str) -> None:
    extra = (
        {"first_path": result.first_path}
        if result.outcome == "duplicate"
        else {"change_type": event.change_type.value}
    )
    log.info(
        "event_routed",
        event_id=event.event_id,
        record_ids=event.record_ids,
        topic=event.topic,
        path=path,
        outcome=result.outcome,
        **extra,
    )
