"""The router: one entry point for events from both paths.

Sources call :meth:`Router.route` with a batch of parsed events and acknowledge
their input only after it returns: by then every kept event is durably in
Redis (deduplicated by ``event_id`` across paths, merged into its records'
pending changes, a job scheduled where needed). Events of orgs that are not
allowed are filtered out and counted, never dead-lettered.

Each arrival gets a ``process`` span (in its event's trace, see
:mod:`amt_ingest.telemetry.tracing`) and one log line with its outcome.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, get_current_span

from ..coordination import Coordinator, IngestResult, Turn
from ..policy import org_allowed
from ..telemetry import Telemetry
from ..telemetry.logs import batched_lines
from ..telemetry.tracing import (
    MESSAGING_SYSTEM,
    ROOT,
    decode_context,
    encode_context,
    event_trace_id,
    next_trace_id,
    span_ids,
)
from .events import Event, Rejected
from .orgs import OrgFilter

__all__ = ["RouteReport", "Router"]

log = structlog.get_logger("amt_ingest.router")


@dataclass(slots=True)
class RouteReport:
    """Outcome counts of one routed batch (``first``, ``duplicate``, ``stale``, ``filtered``)
    and the records it handed to jobs."""

    outcomes: Counter[str] = field(default_factory=Counter)
    scheduled: int = 0


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
        max_pending_records: int = 20_000,
        capacity_poll_s: float = 0.25,
        telemetry: Telemetry | None = None,
        track_one_path: bool = False,
    ):
        self.coordinator = coordinator
        self.telemetry = telemetry or Telemetry.off()
        #: Both paths run: keep first arrivals until the other path brings them.
        self.track_one_path = track_one_path
        # ``orgs`` (environment and table) replaces ``allowed_orgs`` (environment only).
        self.orgs = orgs if orgs is not None else OrgFilter(allowed_orgs)
        self.max_pending_records = max_pending_records
        self.capacity_poll_s = capacity_poll_s
        self.paused = False

    async def wait_for_capacity(self, stop: asyncio.Event | None = None) -> None:
        """Return once the records pending in Redis are below the high-water mark.

        Sources call this before taking more input, so that slow workers, a slow
        database or a down one slow intake down (credits withheld, polling
        paused) instead of queueing without limit. Returns early once ``stop`` is
        set; raises :class:`~amt_ingest.errors.CoordinationError` if Redis fails.
        """
        if self.coordinator.last_pending < self.max_pending_records:
            return
        while await self.coordinator.pending_records() >= self.max_pending_records:
            if stop is not None and stop.is_set():
                return
            if not self.paused:
                self.paused = True
                log.warning(
                    "intake_paused",
                    pending_records=self.coordinator.last_pending,
                    high_water=self.max_pending_records,
                )
            await asyncio.sleep(self.capacity_poll_s)
        if self.paused:
            self.paused = False
            log.info("intake_resumed", pending_records=self.coordinator.last_pending)

    async def route(
        self, events: Sequence[Event], *, path: str, turn: Turn | None = None
    ) -> RouteReport:
        """Hand a batch off durably; raises :class:`~amt_ingest.errors.CoordinationError`
        if Redis did not confirm all of it (then acknowledge nothing).

        Call it inside the batch's receive span: each event's span links to it.
        ``turn`` keeps batches routed at once in order in Redis (see
        :class:`~amt_ingest.coordination.Turn`); it is done when this returns.
        """
        try:
            return await self._route(events, path, turn)
        finally:
            if turn is not None:
                turn.finish()

    async def _route(self, events: Sequence[Event], path: str, turn: Turn | None) -> RouteReport:
        report = RouteReport()
        counts: Counter[tuple[str, str, str]] = Counter()
        batch = get_current_span().get_span_context()
        batch_links = [Link(batch)] if batch.is_valid else []
        kept, filtered = split_by_org(events, await self.orgs.allowed())
        if filtered:
            await self.coordinator.count(Counter(f"filtered:{path}:{e.topic}" for e in filtered))
            for event in filtered:
                span = self._start_span(event, path, batch_links)
                span.set_attribute("amt.outcome", "filtered")
                span.end()
                log.info(
                    "event_filtered",
                    event_id=event.event_id,
                    org_id=event.org_id,
                    topic=event.topic,
                    path=path,
                    outcome="filtered",
                    **span_ids(span),
                )
                counts[(path, event.topic, "filtered")] += 1
            report.outcomes["filtered"] += len(filtered)
        spans = [self._start_span(event, path, batch_links) for event in kept]
        contexts = [encode_context(span.get_span_context()) for span in spans]
        try:
            results = await self.coordinator.ingest(
                kept,
                path=path,
                contexts=contexts,
                track_one_path=self.track_one_path,
                turn=turn,
            )
        except BaseException as exc:
            for span in spans:
                span.set_status(Status(StatusCode.ERROR, f"hand-off failed: {exc}"))
                span.end()
            raise
        metrics = self.telemetry.metrics
        with batched_lines():
            self._finish(kept, results, spans, contexts, path, report, counts)
        metrics.count_events(counts)
        return report

    def _finish(
        self,
        kept: list[Event],
        results: list[IngestResult],
        spans: list[Span],
        contexts: list[str],
        path: str,
        report: RouteReport,
        counts: Counter[tuple[str, str, str]],
    ) -> None:
        """Each handed-off event's outcome: its span ended, its line logged."""
        metrics = self.telemetry.metrics
        for event, result, span, context in zip(kept, results, spans, contexts, strict=True):
            report.outcomes[result.outcome] += 1
            report.scheduled += result.scheduled
            counts[(path, event.topic, result.outcome)] += 1
            span.set_attribute("amt.outcome", result.outcome)
            if result.outcome == "duplicate":
                span.set_attribute("amt.first_path", result.first_path)
                first = decode_context(result.first_context)
                if first is not None:
                    span.add_link(first, {"amt.link": "first_arrival"})
            if result.lag_ms >= 0:
                lag_s = result.lag_ms / 1000
                span.set_attribute("amt.path_lag_s", lag_s)
                metrics.path_lag.record(
                    lag_s, {"first_path": result.first_path, "topic": event.topic}
                )
            span.end()
            _log_outcome(event, result, path, span, context)

    def note_rejected(self, rejected: Sequence[Rejected], *, path: str) -> None:
        """Record input a source rejected (it dead-letters and logs it): a span
        with ``amt.outcome`` = rejected per item and the per-reason counter."""
        batch = get_current_span().get_span_context()
        links = [Link(batch)] if batch.is_valid else []
        for bad in rejected:
            token = next_trace_id.set(event_trace_id(bad.event_id) if bad.event_id else None)
            try:
                span = self.telemetry.tracer.start_span(
                    "process rejected",
                    context=ROOT,
                    kind=SpanKind.CONSUMER,
                    links=links,
                    attributes={
                        "messaging.system": MESSAGING_SYSTEM.get(path, path),
                        "messaging.operation.type": "process",
                        "amt.path": path,
                        "amt.outcome": "rejected",
                        "amt.reason": bad.reason,
                        "amt.event_id": bad.event_id or "",
                    },
                )
            finally:
                next_trace_id.reset(token)
            span.set_status(Status(StatusCode.ERROR, f"{bad.reason}: {bad.detail}"[:500]))
            span.end()
        self.telemetry.metrics.count_rejected(path, (bad.reason for bad in rejected))

    def _start_span(self, event: Event, path: str, links: list[Link]) -> Span:
        # A root span whose trace id is the event's: both arrivals share a trace.
        token = next_trace_id.set(event_trace_id(event.event_id))
        try:
            return self.telemetry.tracer.start_span(
                f"process {event.topic}",
                context=ROOT,
                kind=SpanKind.CONSUMER,
                links=links,
                attributes={
                    "messaging.system": MESSAGING_SYSTEM.get(path, path),
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": event.topic,
                    "amt.event_id": event.event_id,
                    "amt.record_id": event.record_ids[0] if event.record_ids else "",
                    "amt.record_count": len(event.record_ids),
                    "amt.topic": event.topic,
                    "amt.path": path,
                    "amt.change_type": event.change_type.value,
                },
            )
        finally:
            next_trace_id.reset(token)


def _log_outcome(event: Event, result: IngestResult, path: str, span: Span, context: str) -> None:
    extra: dict[str, object] = (
        {"first_path": result.first_path}
        if result.outcome == "duplicate"
        else {"change_type": event.change_type.value}
    )
    if result.lag_ms >= 0:
        extra["path_lag_ms"] = result.lag_ms
    log.info(
        "event_routed",
        event_id=event.event_id,
        record_ids=event.record_ids,
        topic=event.topic,
        path=path,
        outcome=result.outcome,
        **extra,
        # The ids are in the context handed to Redis (when sampled): no second formatting.
        **({"trace_id": context[:32], "span_id": context[32:48]} if context else span_ids(span)),
    )
