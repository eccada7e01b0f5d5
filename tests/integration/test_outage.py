"""A database outage: PostgreSQL connections refused, then back. Jobs retry and converge."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from arq import Retry

from amt_ingest.coordination import Coordinator
from amt_ingest.jobs import apply_record
from amt_ingest.store import Store, metadata
from tests.chaos.tcpproxy import Proxy
from tests.conftest import POSTGRES_URL
from tests.integration.test_coordination import make_event, queued_jobs

pytestmark = pytest.mark.postgres


async def test_jobs_ride_through_a_database_outage(redis_url):
    proxy = Proxy(0, 5432)
    await proxy.start()
    url = POSTGRES_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.listen_port}")
    store = Store.open(url)
    async with store.engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await store.ensure_schema()
    client = aioredis.Redis.from_url(redis_url)
    coord = Coordinator(client, dedup_ttl=3600)
    rids = [f"0065g00000Out{i:05d}" for i in range(5)]
    await coord.handoff.ingest(
        [make_event(100, {"Name": f"n{i}"}, record_ids=(rid,)) for i, rid in enumerate(rids)],
        path="ws",
    )
    jobs = await queued_jobs(coord)
    ctx = {"coordinator": coord, "store": store, "max_tries": 16, "lease_ms": 5000}
    try:
        await proxy.stop()  # the database goes away: connections refused
        for job_id, (topic, rid) in jobs:
            with pytest.raises(Retry):
                await apply_record({**ctx, "job_id": job_id, "job_try": 1}, topic, rid)
        # Events keep arriving during the outage; they merge, no new jobs.
        (during,) = await coord.handoff.ingest(
            [make_event(200, {"StageName": "late"}, record_ids=(rids[0],))], path="sqs"
        )
        assert during.scheduled == 0
        await proxy.start()  # back, on the same port
        for job_id, (topic, rid) in jobs:
            assert (
                await apply_record({**ctx, "job_id": job_id, "job_try": 2}, topic, rid)
                == "released"
            )
        rows = [r async for r in store.export()]
        assert [r["id"] for r in rows] == rids
        assert rows[0]["fields"] == {"Name": "n0", "StageName": "late"}
        assert await coord.dead_records.list() == []
    finally:
        await proxy.stop()
        await store.close()
        await client.aclose()
