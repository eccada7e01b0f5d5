"""The arq worker of the record jobs: its functions, its cron, its Redis pool.

The worker shares the process's Redis pool and store; arq delivers jobs, the
coordination state in Redis decides what they do (:mod:`.apply`).
"""

from __future__ import annotations

from typing import Any, Final

import structlog
from arq.connections import ArqRedis, RedisSettings
from arq.cron import cron
from arq.worker import Function, Worker, func

from ..config import Settings
from ..coordination import (
    JOB_FUNCTION,
    LEGACY_JOB_FUNCTION,
    QUEUE_NAME,
    RESYNC_FUNCTION,
    Coordinator,
    job_deserializer,
    job_serializer,
)
from ..salesforce import SalesforceClient
from ..salesforce.resync import resync_topic
from ..store import Store
from ..telemetry import Telemetry
from .apply import apply_record, apply_records

__all__ = ["build_worker", "create_arq_pool", "lease_ms", "reap_orphans", "worker_functions"]

log = structlog.get_logger("amt_ingest.jobs")

ARQ_MAX_TRIES: Final = 1_000_000


async def reap_orphans(ctx: dict[str, Any]) -> int:
    """arq cron: recover records whose job vanished (DESIGN.md section 3, the reaper)."""
    coordinator: Coordinator = ctx["coordinator"]
    recovered = await coordinator.records.reap()
    for topic, record_id, job_id in recovered:
        log.warning("record_reaped", topic=topic, record_id=record_id, job_id=job_id)
    return len(recovered)


def lease_ms(settings: Settings) -> int:
    """How long a run holds its record: the job timeout plus arq's 10 s margin."""
    return int((settings.job_timeout + 10) * 1000)


def worker_functions(settings: Settings) -> list[Function]:
    return [
        func(
            function,
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
    return Worker(
        functions=[
            *worker_functions(settings),
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
