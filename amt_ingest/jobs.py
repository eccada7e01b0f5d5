"""arq jobs: one run applies one record's pending changes to the store.

A job is scheduled by the ingest script with a fresh id that the record's
state names as its owner. The run reads the pending changes, applies them
(newest wins per field), then the complete script drops what was applied and
either releases the record or hands it to a fresh job when more changes came
in meanwhile. So at most one job works on a record at a time, and a burst of
events for one record costs one more run, not one per event.

A failed run is retried by arq after ``retry**4 + 30 + jitter`` seconds; new
events keep merging into the pending changes meanwhile. Failures are counted
on the record in Redis, so the operator's throttle (``amt:throttle``: pause,
or slow by a factor) can hold retries without using them up. After the last
try the pending changes go to the dead-letter records with the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any, Final

import orjson
import structlog
from arq import Retry
from arq.connections import ArqRedis, RedisSettings
from arq.cron import cron
from arq.worker import Function, Worker, func
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanKind, StatusCode

from .config import Settings
from .coordination import (
    JOB_FUNCTION,
    QUEUE_NAME,
    REREAD_FIELD,
    RESYNC_FUNCTION,
    Coordinator,
    PendingRecord,
)
from .errors import CoordinationError, FencedError, StoreError
from .events import DELETED_FIELD
from .merge import combine
from .policy import job_retry_delay, throttle_wait
from .resync import resync_topic
from .salesforce import SalesforceClient, SalesforceError, snapshot_changes, snapshot_position
from .store import Store
from .telemetry import Telemetry
from .telemetry.tracing import ROOT, links_from, span_ids

__all__ = ["apply_record", "build_worker", "job_serializer"]

log = structlog.get_logger("amt_ingest.jobs")

COORDINATION_RETRY_S: Final = 5.0
ARQ_MAX_TRIES: Final = 1_000_000


def job_serializer(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data)


def job_deserializer(raw: bytes) -> dict[str, Any]:
    value = orjson.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("an arq job must be a JSON object")
    return value


async def apply_record(ctx: dict[str, Any], topic: str, record_id: str) -> str:
    """Apply a record's pending changes; returns what happened to the record."""
    coordinator: Coordinator = ctx["coordinator"]
    job_id: str = ctx["job_id"]
    job_try: int = ctx.get("job_try", 1)
    bound = log.bind(topic=topic, record_id=record_id, job_id=job_id, job_try=job_try)
    try:
        record = await coordinator.claim(
            topic, record_id, job_id, token=uuid.uuid4().hex, lease_ms=ctx["lease_ms"]
        )
    except CoordinationError as exc:
        bound.warning("job_redis_error", error=str(exc))
        raise Retry(defer=COORDINATION_RETRY_S) from exc
    if record is None:
        bound.info("job_skipped", reason="not_owner")
        return "not_owner"
    if isinstance(record, int):
        # Another run of this job still holds the record (arq reran it after its
        # in-progress key lapsed): never two runs on one record at once.
        bound.warning("job_record_busy", retry_in_ms=record)
        raise Retry(defer=record / 1000)
    telemetry: Telemetry = ctx.get("telemetry") or Telemetry.off()
    # The run joins the trace of the first event it applies and links the others.
    events = links_from(record.links)
    parent = trace.set_span_in_context(NonRecordingSpan(events[0])) if events else ROOT
    run = _Run()
    started = time.perf_counter()
    with telemetry.tracer.start_as_current_span(
        f"apply {topic}",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=[Link(event, {"amt.link": "coalesced_event"}) for event in events],
        attributes={
            "messaging.system": "arq",
            "messaging.operation.type": "process",
            "messaging.destination.name": QUEUE_NAME,
            "messaging.message.id": job_id,
            "amt.topic": topic,
            "amt.record_id": record_id,
            "amt.job_try": job_try,
            "amt.events": len(events),
            "amt.changes": len(record.changes),
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            return await _apply_claimed(ctx, record, job_id, bound.bind(**span_ids(span)), run)
        finally:
            elapsed = time.perf_counter() - started
            span.set_attribute("amt.job_outcome", run.outcome)
            if run.outcome in ("error", "retry", "dead_lettered"):
                span.set_status(StatusCode.ERROR, run.error or run.outcome)
            attributes = {"topic": topic, "outcome": run.outcome}
            telemetry.metrics.jobs.add(1, attributes)
            telemetry.metrics.job_duration.record(elapsed, attributes)
            if run.committed_ms:
                for position in run.positions:
                    commit_ms = int(position[:15])
                    telemetry.metrics.latency.record(
                        max(0.0, (run.committed_ms - commit_ms) / 1000), {"topic": topic}
                    )


class _Run:
    """What one run did, for its span and metrics."""

    __slots__ = ("committed_ms", "error", "outcome", "positions")

    def __init__(self) -> None:
        self.outcome = "error"
        self.error = ""
        self.committed_ms = 0
        self.positions: set[str] = set()


async def _apply_claimed(
    ctx: dict[str, Any], record: PendingRecord, job_id: str, bound: Any, run: _Run
) -> str:
    coordinator: Coordinator = ctx["coordinator"]
    store: Store = ctx["store"]
    max_tries: int = ctx["max_tries"]
    topic, record_id = record.topic, record.record_id
    started = time.perf_counter()
    if record.failures:
        wait = await _throttled(coordinator, record)
        if wait is not None:
            bound.info("job_retry_throttled", wait_s=round(wait, 1))
            await _release(coordinator, record)
            run.outcome = "throttled"
            raise Retry(defer=wait)
    changes = dict(record.changes)
    reread = changes.pop(REREAD_FIELD, None)
    try:
        if reread is not None:
            changes = await _hydrate(ctx, topic, record_id, changes, reread[0], bound)
        result = await store.apply(topic, record_id, record.org_id, changes, fence=record.fence)
    except FencedError as exc:
        # This run lost its lease (its process stalled) and a newer run wrote the
        # record: stop without touching the pending changes, which that run owns.
        bound.warning("job_fenced", error=str(exc))
        run.outcome = "fenced"
        return "fenced"
    except (StoreError, SalesforceError) as exc:
        run.error = str(exc)
        if record.failures + 1 >= max_tries:
            try:
                status = await coordinator.dead_letter_record(record, job_id, str(exc))
            except CoordinationError as redis_exc:
                await _release(coordinator, record)
                run.outcome = "retry"
                raise Retry(defer=COORDINATION_RETRY_S) from redis_exc
            bound.error("job_dead_lettered", error=str(exc), status=status, tries=max_tries)
            run.outcome = "dead_lettered"
            return "dead_lettered"
        delay = job_retry_delay(record.failures + 1)
        try:
            failures = await coordinator.record_failure(record, retry_delay_s=delay)
        except CoordinationError:
            failures = record.failures + 1
        bound.warning("job_retry", error=str(exc), failures=failures, retry_in_s=round(delay, 1))
        await _release(coordinator, record)
        run.outcome = "retry"
        raise Retry(defer=delay) from exc
    except BaseException:
        await _release(coordinator, record)
        raise
    run.committed_ms = int(time.time() * 1000)
    run.positions = {position for position, _ in changes.values()}
    try:
        status, next_job = await coordinator.complete(record, job_id)
    except CoordinationError as exc:
        bound.warning("job_redis_error", error=str(exc))
        await _release(coordinator, record)
        run.outcome = "retry"
        run.error = str(exc)
        raise Retry(defer=COORDINATION_RETRY_S) from exc
    run.outcome = "applied"
    bound.info(
        "job_done",
        applied=result.applied,
        stale=result.stale,
        status=status,
        next_job=next_job or None,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return status


async def _hydrate(
    ctx: dict[str, Any],
    topic: str,
    record_id: str,
    changes: dict[str, tuple[str, Any]],
    reread_position: str,
    bound: Any,
) -> dict[str, tuple[str, Any]]:
    """Add the record as Salesforce has it now (a gap event hid what changed).

    The snapshot is positioned at its SystemModstamp: it wins over every change
    at or before it and loses to later ones. A 404 is a tombstone at the gap's
    position. A snapshot older than the gap is not the gap's content yet: retry.
    """
    client: SalesforceClient = ctx["salesforce"]
    snapshot = await client.get_record(topic, record_id)
    if snapshot is None:
        bound.info("record_reread", outcome="not_found")
        return combine(changes, {DELETED_FIELD: (reread_position, True)})
    position = snapshot_position(snapshot.modstamp_ms)
    if position < reread_position:
        raise SalesforceError(
            f"{topic} {record_id}: SystemModstamp {snapshot.modstamp_ms} predates the gap"
        )
    bound.info("record_reread", outcome="snapshot", fields=len(snapshot.fields))
    return combine(changes, snapshot_changes(snapshot))


async def reap_orphans(ctx: dict[str, Any]) -> int:
    """arq cron: recover records whose job vanished (DESIGN.md section 3, the reaper)."""
    coordinator: Coordinator = ctx["coordinator"]
    recovered = await coordinator.reap()
    for topic, record_id, job_id in recovered:
        log.warning("record_reaped", topic=topic, record_id=record_id, job_id=job_id)
    return len(recovered)


def lease_ms(settings: Settings) -> int:
    """How long a run holds its record: the job timeout plus arq's 10 s margin."""
    return int((settings.job_timeout + 10) * 1000)


async def _throttled(coordinator: Coordinator, record: PendingRecord) -> float | None:
    try:
        mode, factor = await coordinator.throttle()
    except CoordinationError:
        return None
    return throttle_wait(
        mode,
        factor,
        failed_at_ms=record.failed_at_ms,
        retry_delay_s=record.retry_delay_s,
        now_ms=int(time.time() * 1000),
    )


async def _release(coordinator: Coordinator, record: PendingRecord) -> None:
    with contextlib.suppress(CoordinationError):
        await asyncio.shield(coordinator.release_lease(record))


def worker_function(settings: Settings) -> Function:
    return func(
        apply_record,
        name=JOB_FUNCTION,
        # Tries are counted per record in Redis (a throttled wait is not a try);
        # arq's own limit must never end a record's job.
        max_tries=ARQ_MAX_TRIES,
        timeout=settings.job_timeout,
    )


async def create_arq_pool(settings: Settings) -> ArqRedis:
    from arq.connections import create_pool

    return await create_pool(
        RedisSettings.from_dsn(settings.redis_url),
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        default_queue_name=QUEUE_NAME,
    )


def build_worker(
    settings: Settings,
    *,
    pool: ArqRedis,
    coordinator: Coordinator,
    store: Store,
    salesforce: SalesforceClient,
    handle_signals: bool,
    burst: bool = False,
    telemetry: Telemetry | None = None,
) -> Worker:
    """An arq worker for the record jobs, sharing the process's Redis pool and store."""
    return Worker(
        functions=[
            worker_function(settings),
            func(
                resync_topic,
                name=RESYNC_FUNCTION,
                max_tries=ARQ_MAX_TRIES,
                # Not longer than a record job: arq's in-progress timeout (how soon
                # a job of a killed worker reruns) follows the longest function.
                timeout=settings.job_timeout,
            ),
        ],
        cron_jobs=[
            cron(
                reap_orphans,
                name="reap_orphans",
                second=set(range(0, 60, 15)),
                unique=True,
                timeout=settings.job_timeout,
                max_tries=1,
            )
        ],
        queue_name=QUEUE_NAME,
        redis_pool=pool,
        burst=burst,
        handle_signals=handle_signals,
        job_completion_wait=int(settings.shutdown_grace),
        max_jobs=settings.worker_max_jobs,
        poll_delay=settings.worker_poll_delay,
        keep_result=0,
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        ctx={
            "coordinator": coordinator,
            "store": store,
            "salesforce": salesforce,
            "telemetry": telemetry or Telemetry.off(),
            "max_tries": settings.job_max_tries,
            "lease_ms": lease_ms(settings),
            "resync_rate": settings.resync_rate,
            "resync_budget_s": max(1.0, settings.job_timeout * 0.5),
        },
        log_results=False,
    )
