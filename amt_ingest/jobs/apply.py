"""A record job's run: claim its records, apply their pending changes in one
transaction (newest wins per field), complete them, or retry and dead-letter.

The ingest script hands records that no job owns to fresh jobs (the records of
one hand-off share jobs of at most ``AMT_JOB_BATCH`` records), and each record's
state names its job as owner. A run claims the records it still owns, applies
their pending changes in one transaction, then the complete script drops what
was applied and releases each record, or hands the records that changed
meanwhile to one fresh job. So at most one job works on a record at a time, and
a burst of events for one record costs one more run, not one per event.

A record whose write failed is retried after ``retry**4 + 30 + jitter``
seconds; new events keep merging into its pending changes meanwhile. When
every failed record of a run has failed as often as the others, arq reruns the
job after that delay; otherwise each group of equal failure counts moves to a
fresh job due after its delay. Failures are counted on the record in Redis, so
the operator's throttle (``amt:throttle``: pause, or slow by a factor) can hold
retries without using them up. After the last try the pending changes go to the
dead-letter records with the error.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

import structlog
from arq import Retry
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from ..coordination import QUEUE_NAME, Coordinator, PendingRecord
from ..errors import CoordinationError, FencedError, StoreError
from ..policy import job_retry_delay, throttle_wait
from ..routing.positions import position_ms
from ..salesforce import SalesforceError
from ..store import ApplyItem, ApplyResult
from ..telemetry import Telemetry
from ..telemetry.logs import log_lines
from ..telemetry.tracing import ROOT, links_from
from .reread import needs_reread, reread_changes

__all__ = ["apply_record", "apply_records", "run_job"]

log = structlog.get_logger("amt_ingest.jobs")

COORDINATION_RETRY_S: Final = 5.0


async def apply_records(ctx: dict[str, Any], members: list[list[str]]) -> dict[str, int]:
    """Apply the pending changes of the job's records ``[[topic, record_id], ...]``;
    returns how many records ended in each status."""
    statuses = await run_job(ctx, [(str(topic), str(record_id)) for topic, record_id in members])
    return dict(Counter(statuses))


async def apply_record(ctx: dict[str, Any], topic: str, record_id: str) -> str:
    """A job of one record (as earlier versions queued them); returns its status."""
    (status,) = await run_job(ctx, [(topic, record_id)])
    return status


class _RecordRun:
    """One record in a run: what happened to it, for its span, metrics and status."""

    __slots__ = ("error", "ids", "outcome", "record", "span", "status")

    def __init__(self, record: PendingRecord, span: Any, ids: dict[str, str]) -> None:
        self.record = record
        #: Its apply span, as the telemetry's ApplySpans opened it.
        self.span = span
        #: ``trace_id``/``span_id`` of that span, for its log lines.
        self.ids = ids
        self.outcome = "error"
        self.status = "error"
        self.error = ""


async def run_job(ctx: dict[str, Any], members: Sequence[tuple[str, str]]) -> list[str]:
    """One run of a job over its records; returns each member's status
    (``released``, ``handed_over``, ``not_owner``, ``fenced``, ``moved``,
    ``dead_lettered``, ...). Raises :class:`arq.Retry` to have arq rerun the job."""
    job_id: str = ctx["job_id"]
    job_try: int = ctx.get("job_try", 1)
    bound = log.bind(job_id=job_id, job_try=job_try)
    coordinator: Coordinator = ctx["coordinator"]
    lease_ms: int = ctx["lease_ms"]
    # The records' leases live while this run does (renewed), and lapse soon after
    # its process dies: then another run of the job takes the records.
    with coordinator.leases.hold(job_id, ttl_ms=lease_ms) as leases:
        records = await _claim(coordinator, members, job_id, lease_ms, bound)
        if not records:
            return ["not_owner"] * len(members)
        leases.add(coordinator.records.lease_keys(records), records[0].token)
        telemetry: Telemetry = ctx.get("telemetry") or Telemetry.off()
        started = time.perf_counter()
        batch, runs = _start_spans(telemetry, records, job_id, job_try)
        try:
            current = batch or telemetry.applies.span(runs[0].span)
            with trace.use_span(current, end_on_exit=False):
                await _apply_claimed(ctx, runs, job_id, bound)
        finally:
            _end_spans(telemetry, runs, batch, time.perf_counter() - started)
    by_record = {(run.record.topic, run.record.record_id): run.status for run in runs}
    return [by_record.get(member, "not_owner") for member in members]


async def _claim(
    coordinator: Coordinator,
    members: Sequence[tuple[str, str]],
    job_id: str,
    lease: int,
    bound: Any,
) -> list[PendingRecord]:
    """The records this run claimed (those its job still owns); raises
    :class:`arq.Retry` when Redis fails or another run of the job holds one."""
    try:
        claimed = await coordinator.records.claim_batch(
            members, job_id, token=uuid.uuid4().hex, lease_ms=lease
        )
    except CoordinationError as exc:
        bound.warning("job_redis_error", error=str(exc))
        raise Retry(defer=COORDINATION_RETRY_S) from exc
    if isinstance(claimed, int):
        # Another run of this job still holds a record (arq reran it after its
        # in-progress key lapsed): never two runs on one record at once.
        bound.warning("job_record_busy", retry_in_ms=claimed)
        raise Retry(defer=claimed / 1000)
    for (topic, record_id), record in zip(members, claimed, strict=True):
        if record is None:
            bound.info("job_skipped", reason="not_owner", topic=topic, record_id=record_id)
    return [record for record in claimed if record is not None]


def _start_spans(
    telemetry: Telemetry, records: list[PendingRecord], job_id: str, job_try: int
) -> tuple[Span | None, list[_RecordRun]]:
    """A batch run has a span of its own for the shared work (the claim, the
    transaction, the completion); each record's span joins the trace of the first
    event it applies, links the others and links the run. A run of one record is
    that record's span alone."""
    batch = (
        telemetry.tracer.start_span(
            "apply batch",
            context=ROOT,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "arq",
                "messaging.operation.type": "process",
                "messaging.destination.name": QUEUE_NAME,
                "messaging.message.id": job_id,
                "messaging.batch.message_count": len(records),
                "amt.job_try": job_try,
            },
        )
        if len(records) > 1
        else None
    )
    run_context = batch.get_span_context() if batch else None
    spans = telemetry.applies
    runs = []
    for record in records:
        span = spans.open(
            QUEUE_NAME,
            record.topic,
            record.record_id,
            job_id,
            job_try,
            links_from(record.links),
            len(record.changes),
            run_context,
        )
        runs.append(_RecordRun(record, span, spans.ids(span)))
    return batch, runs


def _end_spans(
    telemetry: Telemetry, runs: list[_RecordRun], batch: Span | None, elapsed: float
) -> None:
    spans = telemetry.applies
    for run in runs:
        failed = run.outcome in ("error", "retry", "dead_lettered")
        spans.close(run.span, run.outcome, (run.error or run.outcome) if failed else None)
    # One measurement per outcome group of the run, not per record: the counter
    # counts records, the histogram the run's duration.
    groups = Counter((run.record.topic, run.outcome) for run in runs)
    for (topic, outcome), count in groups.items():
        attributes = {"topic": topic, "outcome": outcome}
        telemetry.metrics.jobs.add(count, attributes)
        telemetry.metrics.job_duration.record(elapsed, attributes)
    if batch is not None:
        batch.set_attribute("amt.outcomes", sorted({run.outcome for run in runs}))
        batch.end()


async def _apply_claimed(
    ctx: dict[str, Any], runs: list[_RecordRun], job_id: str, bound: Any
) -> None:
    """Apply the runs' changes and settle each record (completed, held, dead-lettered).

    Raises :class:`arq.Retry` when Redis failed (the leases are released first);
    any other failure releases the leases and goes on up.
    """
    coordinator: Coordinator = ctx["coordinator"]
    started = time.perf_counter()
    try:
        runs = await _throttle(coordinator, runs, job_id, bound)
        items, ready, failed = await _prepare(ctx, runs, bound)
        outcomes = await ctx["store"].apply_many(items) if items else []
        applied = _sort_outcomes(ready, items, outcomes, failed, bound)
        if applied:
            await _complete(ctx, applied, job_id, started, bound)
        if failed:
            await _retry_or_dead_letter(ctx, failed, job_id, bound)
    except CoordinationError as exc:
        bound.warning("job_redis_error", error=str(exc))
        for run in runs:
            if run.outcome == "error":
                run.outcome, run.error = "retry", str(exc)
        await coordinator.records.release_leases([run.record for run in runs])
        raise Retry(defer=COORDINATION_RETRY_S) from exc
    except Retry:
        raise
    except BaseException:
        await coordinator.records.release_leases([run.record for run in runs])
        raise


async def _prepare(
    ctx: dict[str, Any], runs: list[_RecordRun], bound: Any
) -> tuple[list[ApplyItem], list[_RecordRun], list[_RecordRun]]:
    """The store writes of the runs (re-read where a marker asks), the runs they
    belong to, and the runs whose re-read failed."""
    items: list[ApplyItem] = []
    ready: list[_RecordRun] = []
    failed: list[_RecordRun] = []
    for run in runs:
        record = run.record
        try:
            changes = (
                await reread_changes(
                    ctx["salesforce"], record.topic, record.record_id, record.changes, bound
                )
                if needs_reread(record.changes)
                else record.changes
            )
        except SalesforceError as exc:
            run.error = str(exc)
            failed.append(run)
            continue
        items.append(
            ApplyItem(record.topic, record.record_id, record.org_id, changes, record.fence)
        )
        ready.append(run)
    return items, ready, failed


def _sort_outcomes(
    ready: list[_RecordRun],
    items: list[ApplyItem],
    outcomes: Sequence[ApplyResult | FencedError | StoreError],
    failed: list[_RecordRun],
    bound: Any,
) -> list[tuple[_RecordRun, ApplyResult, ApplyItem]]:
    """The runs whose write took; failed writes join ``failed``, fenced ones stop."""
    applied: list[tuple[_RecordRun, ApplyResult, ApplyItem]] = []
    for run, item, outcome in zip(ready, items, outcomes, strict=True):
        if isinstance(outcome, FencedError):
            # This run lost its lease (its process stalled) and a newer run wrote
            # the record: leave the pending changes, which that run owns.
            _bound(bound, run).warning("job_fenced", error=str(outcome))
            run.outcome = run.status = "fenced"
        elif isinstance(outcome, StoreError):
            run.error = str(outcome)
            failed.append(run)
        else:
            applied.append((run, outcome, item))
    return applied


async def _complete(
    ctx: dict[str, Any],
    applied: list[tuple[_RecordRun, ApplyResult, ApplyItem]],
    job_id: str,
    started: float,
    bound: Any,
) -> None:
    """Complete the written records in Redis; measure and log each."""
    coordinator: Coordinator = ctx["coordinator"]
    telemetry: Telemetry = ctx.get("telemetry") or Telemetry.off()
    committed_ms = int(time.time() * 1000)
    statuses, next_job = await coordinator.records.complete_batch(
        [run.record for run, _, _ in applied], job_id
    )
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    latency = telemetry.metrics.latency
    job_try = ctx.get("job_try", 1)
    lines = []
    for (run, result, item), status in zip(applied, statuses, strict=True):
        run.outcome, run.status = "applied", status
        topic = {"topic": run.record.topic}
        for position in {position for position, _ in item.changes.values()}:
            latency.record(max(0.0, (committed_ms - position_ms(position)) / 1000), topic)
        lines.append(
            {
                "applied": result.applied,
                "stale": result.stale,
                "status": status,
                "next_job": next_job if status == "handed_over" else None,
                "duration_ms": duration_ms,
                # What _bound() binds, for the batch of lines.
                "job_id": job_id,
                "job_try": job_try,
                "topic": run.record.topic,
                "record_id": run.record.record_id,
                **run.ids,
            }
        )
    log_lines(log, "info", "job_done", lines)


def _bound(bound: Any, run: _RecordRun) -> Any:
    return bound.bind(topic=run.record.topic, record_id=run.record.record_id, **run.ids)


async def _throttle(
    coordinator: Coordinator, runs: list[_RecordRun], job_id: str, bound: Any
) -> list[_RecordRun]:
    """Hold the retries the operator's throttle holds; returns the runs to go on with.

    Raises :class:`arq.Retry` when it holds every record of the run (arq reruns
    the job after the wait); held records of a mixed run move to a fresh job.
    """
    retrying = [run for run in runs if run.record.failures]
    if not retrying:
        return runs
    try:
        mode, factor = await coordinator.throttle.get()
    except CoordinationError:
        return runs
    now_ms = int(time.time() * 1000)
    held: list[tuple[_RecordRun, float]] = []
    for run in retrying:
        wait = throttle_wait(
            mode,
            factor,
            failed_at_ms=run.record.failed_at_ms,
            retry_delay_s=run.record.retry_delay_s,
            now_ms=now_ms,
        )
        if wait is not None:
            held.append((run, wait))
    if not held:
        return runs
    wait = max(w for _, w in held)
    everything = len(held) == len(runs)
    _, next_job = await coordinator.records.hold(
        [run.record for run, _ in held],
        job_id,
        failed=False,
        retry_delay_s=0,
        move_after_s=None if everything else wait,
    )
    for run, _ in held:
        run.outcome, run.status = "throttled", "throttled" if everything else "moved"
        _bound(bound, run).info(
            "job_retry_throttled", wait_s=round(wait, 1), next_job=next_job or None
        )
    if everything:
        raise Retry(defer=wait)
    return [run for run in runs if run.outcome != "throttled"]


async def _retry_or_dead_letter(
    ctx: dict[str, Any], failed: list[_RecordRun], job_id: str, bound: Any
) -> None:
    """Dead-letter the records out of tries; schedule the others' retries.

    Raises :class:`arq.Retry` when they all failed as often (arq reruns the job
    after their delay); otherwise each group moves to a fresh job due after its delay.
    """
    coordinator: Coordinator = ctx["coordinator"]
    max_tries: int = ctx["max_tries"]
    groups: dict[int, list[_RecordRun]] = {}
    for run in failed:
        if run.record.failures + 1 >= max_tries:
            status = await coordinator.records.dead_letter(run.record, job_id, run.error)
            _bound(bound, run).error(
                "job_dead_lettered", error=run.error, status=status, tries=max_tries
            )
            run.outcome, run.status = "dead_lettered", "dead_lettered"
        else:
            groups.setdefault(run.record.failures, []).append(run)
    rerun: float | None = None
    for failures, group in groups.items():
        delay = job_retry_delay(failures + 1)
        stay = len(groups) == 1
        counted, next_job = await coordinator.records.hold(
            [run.record for run in group],
            job_id,
            failed=True,
            retry_delay_s=delay,
            move_after_s=None if stay else delay,
        )
        for run, count in zip(group, counted, strict=True):
            run.outcome, run.status = "retry", "retry" if stay else "moved"
            _bound(bound, run).warning(
                "job_retry",
                error=run.error,
                failures=count,
                retry_in_s=round(delay, 1),
                next_job=next_job or None,
            )
        if stay:
            rerun = delay
    if rerun is not None:
        raise Retry(defer=rerun)
