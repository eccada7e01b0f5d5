"""The router on real Redis: org filter and backpressure."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from amt_ingest.coordination import Coordinator
from amt_ingest.routing.router import Router
from tests.integration.test_coordination import make_event, queued_jobs, run_job

ORG = "00D5g000004ZzABEA0"


@pytest.fixture
async def coord(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield Coordinator(client, dedup_ttl=3600)
    await client.aclose()


async def test_other_orgs_are_filtered_and_counted(coord):
    router = Router(coord.handoff, allowed_orgs=[ORG])
    ours = make_event(100, {"StageName": "A"})
    theirs = make_event(
        100, {"StageName": "B"}, record_ids=("0065g00000ZzZzZAAA",), org="00D5g000009XyZQEA0"
    )
    report = await router.route([ours, theirs], path="ws")
    assert report.outcomes == {"first": 1, "filtered": 1}
    stats = await coord.observations.stats()
    assert stats["filtered:ws:Opportunity"] == 1
    assert len(await queued_jobs(coord)) == 1


async def test_intake_waits_while_too_many_records_are_pending(coord, store):
    router = Router(coord.handoff, max_pending_records=3, capacity_poll_s=0.02)
    events = [
        make_event(100, {"Name": f"n{i}"}, record_ids=(f"0065g00000AbCd{i:04d}",)) for i in range(3)
    ]
    await router.route(events, path="sqs")
    waiter = asyncio.create_task(router.wait_for_capacity())
    await asyncio.sleep(0.2)
    assert not waiter.done() and router.paused
    # Workers catch up: one record is applied and leaves the pending set.
    job_id, (topic, rid) = (await queued_jobs(coord))[0]
    assert await run_job(coord, store, job_id, topic, rid) == "released"
    await coord.redis.zrem("amt:queue", job_id)
    await asyncio.wait_for(waiter, 5)
    assert not router.paused


async def test_wait_for_capacity_returns_on_stop(coord):
    router = Router(coord.handoff, max_pending_records=1, capacity_poll_s=0.02)
    await router.route([make_event(100, {"Name": "x"})], path="ws")
    stop = asyncio.Event()
    waiter = asyncio.create_task(router.wait_for_capacity(stop))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    stop.set()
    await asyncio.wait_for(waiter, 5)
