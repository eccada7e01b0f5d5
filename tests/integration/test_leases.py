"""A job run's leases: alive while it runs, lapsing within AMT_JOB_LEASE_S once its worker dies.

Real Redis, real PostgreSQL and real arq workers (in this process, or a
``python -m amt_ingest worker`` subprocess that is SIGKILLed). A run is stopped
at a known point by a lock the test holds on the table it writes, never by timing.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url

from amt_ingest.config import Settings
from amt_ingest.coordination import Coordinator, in_progress_key
from amt_ingest.coordination.keys import lease_key, record_key
from amt_ingest.jobs import build_worker, create_arq_pool
from amt_ingest.salesforce.client import SalesforceClient
from amt_ingest.store import Store, metadata
from tests.conftest import POSTGRES_URL, amt_process
from tests.integration.test_coordination import RID, make_event
from tests.integration.test_websocket import until

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(90)]


@pytest.fixture
async def pg_store() -> AsyncIterator[Store]:
    store = Store.open(POSTGRES_URL)
    async with store.engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await store.ensure_schema()
    yield store
    await store.close()


class TableLock:
    """A transaction of the test's own that holds ``LOCK TABLE``: every write to the
    table waits until :meth:`release`."""

    def __init__(self, table: str):
        self.table = table
        self.conn: Any = None
        self.tx: Any = None

    async def hold(self) -> TableLock:
        url = make_url(POSTGRES_URL).set(drivername="postgresql")
        self.conn = await asyncpg.connect(url.render_as_string(hide_password=False))
        self.tx = self.conn.transaction()
        await self.tx.start()
        await self.conn.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE")
        return self

    async def release(self) -> None:
        if self.tx is not None:
            await self.tx.rollback()
            self.tx = None
        if self.conn is not None:
            await self.conn.close()
            self.conn = None


async def _stage(store: Store) -> str | None:
    rows = [row async for row in store.export()]
    return rows[0]["fields"].get("StageName") if rows else None


async def test_a_run_that_outlasts_its_lease_keeps_it_and_runs_once(redis_url, pg_store):
    settings = Settings(
        redis_url=redis_url, database_url=POSTGRES_URL, job_lease_s=1, worker_poll_delay=0.02
    )
    pool = await create_arq_pool(settings)
    coord = Coordinator(pool, dedup_ttl=3600)
    salesforce = SalesforceClient("http://127.0.0.1:1", token=lambda: "unused")
    lock = await TableLock("opportunity").hold()
    workers = [
        build_worker(
            settings,
            pool=pool,
            coordinator=coord,
            store=pg_store,
            salesforce=salesforce,
            handle_signals=False,
        )
        for _ in range(2)
    ]
    tasks = [asyncio.create_task(w.main()) for w in workers]
    try:
        await coord.handoff.ingest([make_event(100, {"StageName": "A"})], path="ws")
        lease = lease_key("Opportunity", RID)
        await until(lambda: pool.exists(lease), what="the run claimed the record")
        job_id = (await pool.hget(record_key("Opportunity", RID), "job")).decode()
        # Three lease times with the write blocked: the run's leases are renewed,
        # so the other worker never starts the job (one claim in all).
        await asyncio.sleep(3.0)
        assert 0 < await pool.pttl(lease) <= 1000
        assert 0 < await pool.pttl(in_progress_key(job_id)) <= 1000
        assert coord.leases.held == 2  # of one run: the job's in-progress key, the record
        await lock.release()
        await until(lambda: _has_stage(pg_store, "A"), what="the blocked write went through")
        assert int(await pool.get("amt:fenceseq")) == 1
        await until(lambda: coord.leases.held == 0, what="the run let its leases go")
        assert not await pool.exists(lease)
    finally:
        await lock.release()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await salesforce.aclose()
        await pool.aclose()


async def _has_stage(store: Store, stage: str) -> bool:
    return await _stage(store) == stage


async def _none_pending(coord: Coordinator) -> bool:
    return await coord.handoff.pending_records() == 0


async def test_a_killed_workers_record_is_applied_by_another_worker_within_the_lease(
    redis_url, pg_store, tmp_path: Path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")} | {
        "AMT_REDIS_URL": redis_url,
        "AMT_DATABASE_URL": POSTGRES_URL,
        "AMT_JOB_LEASE_S": "2",
        "AMT_HTTP_PORT": "0",
        "AMT_LOG_FORMAT": "json",
        "AMT_SALESFORCE_BASE_URL": "http://127.0.0.1:1",
        "OTEL_SDK_DISABLED": "true",
    }
    client = aioredis.Redis.from_url(redis_url)
    coord = Coordinator(client, dedup_ttl=3600)
    lock = await TableLock("opportunity").hold()
    log = (tmp_path / "worker.log").open("wb")
    doomed = amt_process("worker", env=env, output=log)
    rescuer = None
    try:
        await coord.handoff.ingest([make_event(100, {"StageName": "A"})], path="ws")
        lease = lease_key("Opportunity", RID)
        await until(lambda: client.exists(lease), within=60, what="the worker claimed the record")
        job_id = (await client.hget(record_key("Opportunity", RID), "job")).decode()
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        # What the dead run held lapses within the lease, not the job timeout + 10 s.
        assert 0 < await client.pttl(in_progress_key(job_id)) <= 2000
        assert 0 < await client.pttl(lease) <= 2000
        await lock.release()
        rescuer = amt_process("worker", env=env, output=log)
        await until(lambda: _has_stage(pg_store, "A"), within=30, what="another worker applied it")
        await until(lambda: _none_pending(coord), what="the record was released")
    finally:
        await lock.release()
        for proc in (doomed, rescuer):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(15)
        log.close()
        await client.aclose()
