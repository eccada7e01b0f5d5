"""The arq worker of the record jobs: its functions, its cron, its Redis pool.

The worker shares the process's Redis pool and store; arq delivers jobs, the
coordination state in Redis decides what they do (:mod:`.apply`).

arq marks a running job with an in-progress key and starts no other run of it
while the key lives; it sets the key for the longest function timeout + 10 s
(130 s with the defaults), so the job of a killed worker would wait that long.
Here the key is a lease instead: set for ``AMT_JOB_LEASE_S`` and renewed while the
job runs (:class:`~amt_ingest.coordination.LeaseKeeper`), so a killed worker's
jobs run again on another worker within that time.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
from arq.connections import ArqRedis, RedisSettings
from arq.cron import cron
from arq.typing import WorkerCoroutine
from arq.worker import Function, Worker, func

from ..config import Settings
from ..coordination import (
    IN_PROGRESS_VALUE,
    JOB_FUNCTION,
    LEGACY_JOB_FUNCTION,
    QUEUE_NAME,
    RESYNC_FUNCTION,
    Coordinator,
    in_progress_key,
    job_deserializer,
    job_serializer,
)
from ..salesforce import SalesforceClient
from ..salesforce.resync import resync_topic
from ..store import Store
from ..telemetry import Telemetry
from .apply import apply_record, apply_records

__all__ = [
    "build_worker",
    "create_arq_pool",
    "lease_ms",
    "leased",
    "reap_orphans",
    "worker_functions",
]

log = structlog.get_logger("amt_ingest.jobs")

ARQ_MAX_TRIES: Final = 1_000_000


def leased(function: Callable[..., Awaitable[Any]]) -> WorkerCoroutine:
    """``function`` as an arq job that holds its in-progress key as a lease: kept
    alive while the job runs, so that it lapses soon after the worker dies."""

    @functools.wraps(function)
    async def job(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
        coordinator: Coordinator = ctx["coordinator"]
        with coordinator.leases.hold(ctx["job_id"], ttl_ms=ctx["lease_ms"]) as hold:
            hold.add([in_progress_key(ctx["job_id"])], IN_PROGRESS_VALUE)
            return await function(ctx, *args, **kwargs)

    return job


async def reap_orphans(ctx: dict[str, Any]) -> int:
    """arq cron: recover records whose job vanished (DESIGN.md section 3, the reaper)."""
    coordinator: Coordinator = ctx["coordinator"]
    recovered = await coordinator.records.reap()
    for topic, record_id, job_id in recovered:
        log.warning("record_reaped", topic=topic, record_id=record_id, job_id=job_id)
    return len(recovered)


def lease_ms(settings: Settings) -> int:
    """How long a job's leases live without a renewal (``AMT_JOB_LEASE_S``)."""
    return int(settings.job_lease_s * 1000)


def worker_functions(settings: Settings) -> list[Function]:
    return [
        func(
            leased(function),
            name=name,
            # Tries are counted per record in Redis (a throttled wait is not a try);
            # arq's own limit must never end a record's job.
            max_tries=ARQ_MAX_TRIES,
            timeout=settings.job_timeout,
        )
        for function, name in ((apply_records, JOB_FUNCTION), (apply_record, LEGACY_JOB_FUNCTION))
    ]


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
    worker = Worker(
        functions=[
            *worker_functions(settings),
            func(
                leased(resync_topic),
                name=RESYNC_FUNCTION,
                max_tries=ARQ_MAX_TRIES,
                timeout=settings.job_timeout,
            ),
        ],
        cron_jobs=[
            cron(
                leased(reap_orphans),
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
    # A lease, not a timeout: the in-progress key lives AMT_JOB_LEASE_S, renewed
    # while the job runs (see the module docstring).
    worker.in_progress_timeout_s = settings.job_lease_s
    return worker
