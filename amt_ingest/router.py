"""The router: one entry point for events from both paths.

Sources call :meth:`Router.route` with a batch of parsed events and acknowledge
their input only after it returns: by then every kept event is durably in
Redis (deduplicated by ``event_id`` across paths, merged into its records'
pending changes, a job scheduled where needed). Events of orgs that are not
allowed are filtered out and counted, never dead-lettered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from .coordination import Coordinator, IngestResult
from .events import Event
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
    def __init__(self, coordinator: Coordinator, *, allowed_orgs: Sequence[str] = ()):
        self.coordinator = coordinator
        self.allowed = frozenset(org[:15] for org in allowed_orgs)

    async def route(self, events: Sequence[Event], *, path: str) -> RouteReport:
        """Hand a batch off durably; raises :class:`~amt_ingest.errors.CoordinationError`
        if Redis did not confirm all of it (then acknowledge nothing)."""
        report = RouteReport()
        kept, filtered = split_by_org(events, self.allowed)
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
    if result.outcome == "duplicate":
        log.info(
            "event_routed",
            event_id=event.event_id,
            record_ids=event.record_ids,
            topic=event.topic,
            path=path,
            outcome="duplicate",
            first_path=result.first_path,
        )
    else:
        log.info(
            "event_routed",
            event_id=event.event_id,
            record_ids=event.record_ids,
            topic=event.topic,
            change_type=event.change_type.value,
            path=path,
            outcome=result.outcome,
        )
