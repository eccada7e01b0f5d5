"""The router: one entry point for events from both paths.

Sources call :meth:`Router.route` with a batch of parsed events and acknowledge
their input only after it returns: by then every kept event is durably handed
off (deduplicated by ``event_id`` across paths, merged into its records'
pending changes, a job scheduled where needed). Events of orgs that are not
allowed are filtered out and counted, never dead-lettered. Input a source
could not parse goes to :meth:`Router.reject`: logged, dead-lettered with its
reason, counted (with the next hand-off) and traced, in one place. The router
does no I/O of its own: it hands off through a ``HandOff`` and dead-letters
through a ``DeadLetterSink`` (:mod:`.handoff`).

Each arrival gets a ``process`` span (in its event's trace, see
:mod:`amt_ingest.telemetry.tracing`) and one log line with its outcome.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, get_current_span

from ..policy import org_allowed
from ..telemetry import EventSpans, Telemetry
from ..telemetry.logs import batched_lines, log_lines
from ..telemetry.tracing import (
    MESSAGING_SYSTEM,
    ROOT,
    decode_context,
    event_trace_id,
    next_trace_id,
)
from .events import Event, Rejected
from .handoff import DeadLetterSink, HandOff, IngestResult, Turn
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
        handoff: HandOff,
        *,
        dead_letters: DeadLetterSink | None = None,
        allowed_orgs: Sequence[str] = (),
        orgs: OrgFilter | None = None,
        max_pending_records: int = 20_000,
        capacity_poll_s: float = 0.25,
        telemetry: Telemetry | None = None,
        track_one_path: bool = False,
    ):
        self.handoff = handoff
        self.dead_letters = dead_letters
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
        if self.handoff.last_pending < self.max_pending_records:
            return
        while await self.handoff.pending_records() >= self.max_pending_records:
            if stop is not None and stop.is_set():
                return
            if not self.paused:
                self.paused = True
                log.warning(
                    "intake_paused",
                    pending_records=self.handoff.last_pending,
                    high_water=self.max_pending_records,
                )
            await asyncio.sleep(self.capacity_poll_s)
        if self.paused:
            self.paused = False
            log.info("intake_resumed", pending_records=self.handoff.last_pending)

    async def route(
        self,
        events: Sequence[Event],
        *,
        path: str,
        turn: Turn | None = None,
        counts: Mapping[str, int] | None = None,
        lease: str | None = None,
    ) -> RouteReport:
        """Hand a batch off durably; raises :class:`~amt_ingest.errors.CoordinationError`
        if it was not confirmed in full (then acknowledge nothing).

        Call it inside the batch's receive span: each event's span links to it.
        ``turn`` keeps batches routed at once in order (see
        :class:`~amt_ingest.routing.handoff.Turn`); it is done when this returns.
        ``counts`` (from :meth:`reject`) are counted with the batch. With ``lease``
        (the WebSocket leader's), the hand-off is refused unless that lease is
        the current one (:class:`~amt_ingest.errors.LeaseLostError`).
        """
        try:
            return await self._route(events, path, turn, counts, lease)
        finally:
            if turn is not None:
                turn.finish()

    async def _route(
        self,
        events: Sequence[Event],
        path: str,
        turn: Turn | None,
        counts: Mapping[str, int] | None,
        lease: str | None,
    ) -> RouteReport:
        report = RouteReport()
        outcomes: Counter[tuple[str, str, str]] = Counter()
        spans = self.telemetry.spans
        batch = get_current_span().get_span_context()
        kept, filtered = split_by_org(events, await self.orgs.allowed())
        if filtered:
            more = Counter(f"filtered:{path}:{e.topic}" for e in filtered)
            await self.handoff.count(more + Counter(counts or {}))
            counts = None
            for event in filtered:
                span = _open(spans, batch, path, event)
                spans.close(span, "filtered")
                log.info(
                    "event_filtered",
                    event_id=event.event_id,
                    org_id=event.org_id,
                    topic=event.topic,
                    path=path,
                    outcome="filtered",
                    **spans.ids(span),
                )
                outcomes[(path, event.topic, "filtered")] += 1
            report.outcomes["filtered"] += len(filtered)
        opened = [_open(spans, batch, path, event) for event in kept]
        contexts = [spans.context(span) for span in opened]
        try:
            results = await self.handoff.ingest(
                kept,
                path=path,
                contexts=contexts,
                track_one_path=self.track_one_path,
                turn=turn,
                counts=counts,
                lease=lease,
            )
        except BaseException as exc:
            for span in opened:
                spans.close(span, "", error=f"hand-off failed: {exc}")
            raise
        with batched_lines():
            self._finish(kept, results, opened, contexts, path, report, outcomes)
        self.telemetry.metrics.count_events(outcomes)
        return report

    def _finish(
        self,
        kept: list[Event],
        results: list[IngestResult],
        opened: list[Any],
        contexts: list[str],
        path: str,
        report: RouteReport,
        outcomes: Counter[tuple[str, str, str]],
    ) -> None:
        """Each handed-off event's outcome: its span ended, its line logged."""
        metrics = self.telemetry.metrics
        spans = self.telemetry.spans
        lines = []
        for event, result, span, context in zip(kept, results, opened, contexts, strict=True):
            outcome = result.outcome
            report.outcomes[outcome] += 1
            report.scheduled += result.scheduled
            outcomes[(path, event.topic, outcome)] += 1
            lag_s = None
            if result.lag_ms >= 0:
                lag_s = result.lag_ms / 1000
                metrics.path_lag.record(
                    lag_s, {"first_path": result.first_path, "topic": event.topic}
                )
            if outcome == "duplicate":
                spans.close(
                    span,
                    outcome,
                    first_path=result.first_path,
                    first_arrival=decode_context(result.first_context),
                    lag_s=lag_s,
                )
            else:
                spans.close(span, outcome, lag_s=lag_s)
            lines.append(_routed_line(event, result, path, context or spans.ids(span)))
        log_lines(log, "info", "event_routed", lines)

    async def reject(
        self,
        rejected: Sequence[Rejected],
        *,
        path: str,
        source: str,
        what: str,
        bodies: Sequence[str] | None = None,
        details: Sequence[Mapping[str, object]] | None = None,
    ) -> Counter[str]:
        """Input a source could not parse: each one logged (``ws_frame_rejected``,
        ``ws_event_rejected`` or ``sqs_message_rejected`` as ``what`` says, with its
        reason and detail and the item's ``details``), dead-lettered with its
        reason (``bodies``: the raw input to keep, when the source has it), traced
        and measured.

        Returns the counters to add: pass them to the next :meth:`route` (or
        ``route([], counts=...)``), so they are counted with the batch.
        """
        line = _REJECTED_LINES[what]
        for i, bad in enumerate(rejected):
            line(
                reason=bad.reason,
                detail=bad.detail,
                **({"event_id": bad.event_id} if bad.event_id else {}),
                **({"replay_id": bad.replay_id} if bad.replay_id else {}),
                **(details[i] if details is not None else {}),
            )
            if self.dead_letters is not None:
                body = bodies[i] if bodies is not None else None
                await self.dead_letters.put(bad, path=path, source=source, body=body)
        self._trace_rejected(rejected, path=path)
        return Counter(f"rejected:{path}:{bad.reason}" for bad in rejected)

    def _trace_rejected(self, rejected: Sequence[Rejected], *, path: str) -> None:
        """A span with ``amt.outcome`` = rejected per item, and the per-reason counter."""
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


#: The log line of each kind of rejected input (the event names operators search for).
_REJECTED_LINES: dict[str, Callable[..., object]] = {
    "frame": lambda **fields: log.warning("ws_frame_rejected", **fields),
    "event": lambda **fields: log.warning("ws_event_rejected", **fields),
    "message": lambda **fields: log.warning("sqs_message_rejected", **fields),
}


def _open(spans: EventSpans, batch: SpanContext, path: str, event: Event) -> Any:
    record_ids = event.record_ids
    return spans.open(
        batch,
        path,
        event.topic,
        event.event_id,
        record_ids[0] if record_ids else "",
        len(record_ids),
        event.change_type.value,
    )


def _routed_line(
    event: Event, result: IngestResult, path: str, ids: str | dict[str, str]
) -> dict[str, Any]:
    """The ``event_routed`` line of an arrival. ``ids``: the encoded context
    handed to Redis, or the span's ids when it has none."""
    line: dict[str, Any] = {
        "event_id": event.event_id,
        "record_ids": event.record_ids,
        "topic": event.topic,
        "path": path,
        "outcome": result.outcome,
    }
    if result.outcome == "duplicate":
        line["first_path"] = result.first_path
    else:
        line["change_type"] = event.change_type.value
    if result.lag_ms >= 0:
        line["path_lag_ms"] = result.lag_ms
    # The ids are in the context handed to Redis (when sampled): no second formatting.
    if isinstance(ids, str):
        line["trace_id"] = ids[:32]
        line["span_id"] = ids[32:48]
    else:
        line.update(ids)
    return line
