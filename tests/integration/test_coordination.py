"""Per-record coordination on real Redis: dedup, coalescing, ordering, job hand-over.

Races are injected at exact points by calling the job's steps in order
(read, ingest, complete), never by timing.
"""

from __future__ import annotations

import copy
import json
import time
import uuid

import pytest
import redis.asyncio as aioredis

from amt_ingest.coordination import (
    JOB_FUNCTION,
    QUEUE_NAME,
    Coordinator,
    job_deserializer,
    record_key,
)
from amt_ingest.coordination.handoff import INGEST_CHUNK
from amt_ingest.jobs import apply_record, apply_records
from amt_ingest.routing.events import Event, parse_event
from tests.conftest import SAMPLES

ORG = "00D5g000004ZzABEA0"
RID = "0065g00000AbCdEAAA"


def make_event(
    ts: int,
    fields: dict,
    *,
    change="UPDATE",
    record_ids=(RID,),
    topic="Opportunity",
    event_id=None,
    org=ORG,
) -> Event:
    obj = json.loads((SAMPLES / "event-opportunity-update.json").read_text())
    obj["event_id"] = event_id or str(uuid.uuid4())
    obj["topic"] = topic
    obj["org_id"] = org
    header = obj["payload"]["ChangeEventHeader"]
    header.update(
        entityName=topic,
        recordIds=list(record_ids),
        changeType=change,
        commitTimestamp=ts,
        commitNumber=ts,
        changedFields=list(fields),
    )
    obj["payload"] = {"ChangeEventHeader": header, **fields}
    event = parse_event(obj)
    assert isinstance(event, Event), event
    return event


@pytest.fixture
async def coord(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield Coordinator(client, dedup_ttl=3600)
    await client.aclose()


async def queued_jobs(coord: Coordinator) -> list[tuple[str, list]]:
    """``(job_id, [topic, record_id])`` per record of each queued job, in queue order."""
    ids = await coord.redis.zrange(QUEUE_NAME, 0, -1)
    jobs = []
    for job_id in ids:
        raw = await coord.redis.get(b"arq:job:" + job_id)
        data = job_deserializer(raw)
        if data["f"] == JOB_FUNCTION:
            (members,) = data["a"]
            jobs.extend((job_id.decode(), member) for member in members)
        else:
            jobs.append((job_id.decode(), data["a"]))
    return jobs


async def claim(coord: Coordinator, job_id: str, topic: str = "Opportunity", rid: str = RID):
    record = await coord.records.claim(topic, rid, job_id, token=uuid.uuid4().hex, lease_ms=5000)
    assert not isinstance(record, int)
    return record


def job_ctx(coord: Coordinator, store, job_id: str) -> dict:
    return {
        "coordinator": coord,
        "store": store,
        "max_tries": 16,
        "job_id": job_id,
        "job_try": 1,
        "lease_ms": 5000,
    }


async def mark_started(coord: Coordinator, job_id: str | bytes) -> None:
    """What arq does before it runs a job: its in-progress key (no record joins it now)."""
    job = job_id.decode() if isinstance(job_id, bytes) else job_id
    await coord.redis.set(f"arq:in-progress:{job}", b"1", px=60_000)


async def run_job(coord: Coordinator, store, job_id: str, topic="Opportunity", rid=RID) -> str:
    """Run one record of a job (the job's other records are left to their own runs)."""
    await mark_started(coord, job_id)
    return await apply_record(job_ctx(coord, store, job_id), topic, rid)


async def run_queued_jobs(coord: Coordinator, store) -> int:
    """Run every queued record job as a worker would, and the jobs they hand over;
    returns the runs. Every record must end released or handed over."""
    runs = 0
    while job_ids := await coord.redis.zrange(QUEUE_NAME, 0, -1):
        for job_id in job_ids:
            await mark_started(coord, job_id)
            data = job_deserializer(await coord.redis.get(b"arq:job:" + job_id))
            assert data["f"] == JOB_FUNCTION, data
            statuses = await apply_records(job_ctx(coord, store, job_id.decode()), *data["a"])
            assert set(statuses) <= {"released", "handed_over"}, statuses
            await coord.redis.zrem(QUEUE_NAME, job_id)
            await coord.redis.delete(b"arq:job:" + job_id, b"arq:in-progress:" + job_id)
            runs += 1
    return runs


async def test_same_event_on_both_paths_is_applied_once(coord):
    event = make_event(100, {"StageName": "Submitted"})
    (first,) = await coord.handoff.ingest([event], path="ws")
    (second,) = await coord.handoff.ingest([event], path="sqs")
    assert (first.outcome, second.outcome) == ("first", "duplicate")
    assert second.first_path == "ws"
    assert len(await queued_jobs(coord)) == 1
    stats = await coord.observations.stats()
    assert stats["first:ws:Opportunity"] == 1 and stats["duplicate:sqs:Opportunity"] == 1


async def test_a_batch_longer_than_one_script_run_is_taken_in_order(coord):
    """The hand-off runs the ingest script per chunk of a batch: every event is
    taken in order, a repeat inside the batch (in the next chunk) is a duplicate,
    and a record id listed twice in one event is one record."""
    other = "0065g00000ZzZzZAAA"
    events = [
        make_event(100 + i, {"StageName": f"S{i}"}, record_ids=(RID, other, RID))
        for i in range(INGEST_CHUNK + 20)
    ]
    batch = [*events, events[3]]
    results = await coord.handoff.ingest(batch, path="ws")
    assert [r.outcome for r in results] == ["first"] * len(events) + ["duplicate"]
    assert sum(r.scheduled for r in results) == 2  # one per record, not per event
    stats = await coord.observations.stats()
    assert stats["first:ws:Opportunity"] == len(events)
    assert stats["duplicate:ws:Opportunity"] == 1
    for record_id in (RID, other):
        held = await coord.redis.hget(record_key("Opportunity", record_id), "f:StageName")
        assert held is not None and held.endswith(f'"S{len(events) - 1}"'.encode())
        assert int(await coord.redis.hget(record_key("Opportunity", record_id), "ver")) == len(
            events
        )


async def test_burst_for_one_record_coalesces_into_one_job(coord):
    events = [make_event(100 + i, {"StageName": f"S{i}", f"F{i}__c": i}) for i in range(50)]
    results = await coord.handoff.ingest(events, path="ws")
    assert sum(r.scheduled for r in results) == 1
    ((job_id, args),) = await queued_jobs(coord)
    assert args == ["Opportunity", RID]
    pending = await claim(coord, job_id)
    assert pending is not None
    assert pending.changes["StageName"][1] == "S49"
    assert len(pending.changes) == 51


async def test_older_event_while_queued_does_not_replace_newer(coord):
    await coord.handoff.ingest([make_event(200, {"StageName": "new"})], path="ws")
    (late,) = await coord.handoff.ingest([make_event(100, {"StageName": "old"})], path="sqs")
    assert late.outcome == "stale"
    ((job_id, _),) = await queued_jobs(coord)
    pending = await claim(coord, job_id)
    assert pending is not None and pending.changes["StageName"][1] == "new"


async def test_event_after_job_read_is_handed_to_a_fresh_job(coord, store):
    await coord.handoff.ingest([make_event(100, {"StageName": "A", "Name": "n"})], path="ws")
    ((job1, _),) = await queued_jobs(coord)
    record = await claim(coord, job1)
    assert record is not None
    # The job has read the pending changes; an event arrives now.
    (during,) = await coord.handoff.ingest([make_event(200, {"StageName": "B"})], path="ws")
    assert during.scheduled == 0  # the record is owned: no second job
    await store.apply("Opportunity", RID, record.org_id, record.changes)
    status, job2 = await coord.records.complete(record, job1)
    assert status == "handed_over" and job2 != job1
    assert await run_job(coord, store, job2) == "released"
    (row,) = [r async for r in store.export()]
    assert row["fields"] == {"StageName": "B", "Name": "n"}
    assert not await coord.redis.exists(record_key("Opportunity", RID))


async def test_event_after_completion_gets_a_new_job(coord, store):
    await coord.handoff.ingest([make_event(100, {"StageName": "A"})], path="ws")
    ((job1, _),) = await queued_jobs(coord)
    assert await run_job(coord, store, job1) == "released"
    # arq has not yet marked job1 finished (its job key and in-progress key still
    # exist): arq's own _job_id dedup would drop this event; the fresh id does not.
    assert await coord.redis.exists(f"arq:job:{job1}")
    (after,) = await coord.handoff.ingest([make_event(200, {"StageName": "B"})], path="sqs")
    assert after.scheduled == 1
    jobs = [j for j, _ in await queued_jobs(coord)]
    job2 = next(j for j in jobs if j != job1)
    assert await run_job(coord, store, job2) == "released"
    (row,) = [r async for r in store.export()]
    assert row["fields"]["StageName"] == "B"


async def test_stale_job_does_not_touch_the_record(coord, store):
    await coord.handoff.ingest([make_event(100, {"StageName": "A"})], path="ws")
    assert await run_job(coord, store, "r:not-the-owner") == "not_owner"
    assert [r async for r in store.export()] == []


async def test_newer_pending_value_survives_completion_of_older(coord, store):
    await coord.handoff.ingest([make_event(100, {"StageName": "A"})], path="ws")
    ((job1, _),) = await queued_jobs(coord)
    record = await claim(coord, job1)
    assert record is not None
    await coord.handoff.ingest([make_event(300, {"StageName": "C"})], path="ws")
    await coord.handoff.ingest(
        [make_event(200, {"StageName": "B"})], path="ws"
    )  # older than C: stale
    await store.apply("Opportunity", RID, record.org_id, record.changes)
    status, job2 = await coord.records.complete(record, job1)
    assert status == "handed_over"
    after = await claim(coord, job2)
    assert after is not None and after.changes["StageName"][1] == "C"


async def test_multi_record_event_schedules_each_record(coord, store):
    ids = ("a0Y5g000003ItM1EAK", "a0Y5g000003ItM2EAK", "a0Y5g000003ItM3EAK")
    event = make_event(100, {"Status__c": "Complete"}, record_ids=ids, topic="Application_Item__c")
    (result,) = await coord.handoff.ingest([event], path="ws")
    assert result.scheduled == 3
    for job_id, (topic, rid) in await queued_jobs(coord):
        assert await run_job(coord, store, job_id, topic, rid) == "released"
    rows = [r async for r in store.export()]
    assert [r["id"] for r in rows] == list(ids)
    assert all(r["fields"] == {"Status__c": "Complete"} for r in rows)


async def test_delete_then_late_update_keeps_tombstone(coord, store):
    await coord.handoff.ingest([make_event(100, {"Name": "x"}, change="CREATE")], path="ws")
    await coord.handoff.ingest([make_event(300, {}, change="DELETE")], path="ws")
    await coord.handoff.ingest([make_event(200, {"StageName": "late"})], path="sqs")
    ((job, _),) = await queued_jobs(coord)
    assert await run_job(coord, store, job) == "released"
    (row,) = [r async for r in store.export()]
    assert row["deleted"] is True
    assert row["fields"] == {"Name": "x", "StageName": "late"}


async def test_failing_store_retries_then_dead_letters(coord):
    from arq import Retry

    from amt_ingest.store import Store

    await coord.handoff.ingest([make_event(100, {"StageName": "A"})], path="ws")
    ((job, _),) = await queued_jobs(coord)
    # A real database that refuses connections (nothing listens on port 1).
    down = Store.open("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    ctx = {"coordinator": coord, "store": down, "max_tries": 3, "job_id": job, "lease_ms": 5000}
    with pytest.raises(Retry) as info:
        await apply_record({**ctx, "job_try": 1}, "Opportunity", RID)
    assert info.value.defer_score >= 31_000
    # A new event arrives while the job backs off: it merges, no new job.
    (during,) = await coord.handoff.ingest([make_event(200, {"Name": "N"})], path="sqs")
    assert during.scheduled == 0
    with pytest.raises(Retry) as info:
        await apply_record({**ctx, "job_try": 2}, "Opportunity", RID)
    assert info.value.defer_score >= 2**4 * 1000 + 30_000
    assert await apply_record({**ctx, "job_try": 3}, "Opportunity", RID) == "dead_lettered"
    await down.close()
    (dead,) = await coord.dead_records.list()
    assert "Connect call failed" in dead["error"] or "refused" in dead["error"]
    assert set(dead["changes"]) == {"StageName", "Name"}
    assert not await coord.redis.exists(record_key("Opportunity", RID))


async def run_worker_burst(coord: Coordinator, store, redis_url: str):
    """A real arq worker of the service, in burst mode: it runs what is queued, then ends."""
    from amt_ingest.config import Settings
    from amt_ingest.jobs import build_worker, create_arq_pool
    from amt_ingest.salesforce.client import SalesforceClient

    settings = Settings(redis_url=redis_url)
    salesforce = SalesforceClient("http://127.0.0.1:1", token=lambda: "unused")
    pool = await create_arq_pool(settings)
    worker = build_worker(
        settings,
        pool=pool,
        coordinator=coord,
        store=store,
        salesforce=salesforce,
        handle_signals=False,
        burst=True,
    )
    try:
        await worker.main()
    finally:
        await pool.aclose()
        await salesforce.aclose()
    return worker


async def test_arq_worker_runs_the_jobs(coord, store, redis_url):
    events = []
    for i in range(20):
        rid = f"0065g00000AbCd{i:04d}"
        events.append(make_event(100 + i, {"Name": f"r{i}"}, record_ids=(rid,), change="CREATE"))
        events.append(make_event(50 + i, {"StageName": "early"}, record_ids=(rid,)))
    dup = copy.copy(events[0])
    await coord.handoff.ingest(events, path="ws")
    await coord.handoff.ingest([dup], path="sqs")
    worker = await run_worker_burst(coord, store, redis_url)
    # The 20 records of one hand-off share one job, plus the reaper's cron run if
    # a tick fell inside the test.
    assert worker.jobs_complete in (1, 2) and worker.jobs_failed == 0
    rows = [r async for r in store.export()]
    assert len(rows) == 20
    assert all(
        r["fields"]["StageName"] == "early" and r["fields"]["Name"].startswith("r") for r in rows
    )
    assert await coord.redis.keys("amt:rec:*") == []
    assert await coord.handoff.pending_records() == 0


async def test_a_job_queued_by_an_earlier_version_still_runs(coord, store, redis_url):
    """Jobs of one record (``apply_record(topic, record_id)``) queued before an
    upgrade are run by the worker of this version."""
    from amt_ingest.coordination import LEGACY_JOB_FUNCTION

    await coord.handoff.ingest([make_event(100, {"StageName": "A"})], path="ws")
    ((job, _),) = await queued_jobs(coord)
    raw = json.loads(await coord.redis.get(f"arq:job:{job}"))
    raw.update(f=LEGACY_JOB_FUNCTION, a=["Opportunity", RID])
    await coord.redis.set(f"arq:job:{job}", json.dumps(raw))
    worker = await run_worker_burst(coord, store, redis_url)
    assert worker.jobs_failed == 0
    (row,) = [r async for r in store.export()]
    assert row["fields"] == {"StageName": "A"}
    assert await coord.handoff.pending_records() == 0


async def test_reaper_recovers_a_record_whose_job_vanished(coord, store):
    await coord.handoff.ingest([make_event(100, {"StageName": "A"})], path="ws")
    ((job1, _),) = await queued_jobs(coord)
    assert await coord.records.reap() == []  # a queued job is alive
    await coord.redis.set(f"arq:in-progress:{job1}", b"1")
    await coord.redis.delete(f"arq:job:{job1}")
    assert await coord.records.reap() == []  # a running job is alive
    # arq failed the job for good (timeout, expired key): it is gone.
    await coord.redis.delete(f"arq:in-progress:{job1}")
    await coord.redis.zrem(QUEUE_NAME, job1)
    ((topic, rid, job2),) = await coord.records.reap()
    assert (topic, rid) == ("Opportunity", RID) and job2 != job1
    assert await coord.records.reap() == []
    # The old job, should it run after all, no longer owns the record.
    assert await run_job(coord, store, job1) == "not_owner"
    assert await run_job(coord, store, job2) == "released"
    (row,) = [r async for r in store.export()]
    assert row["fields"] == {"StageName": "A"}


async def test_two_runs_of_one_job_never_overlap_on_a_record(coord, store):
    from arq import Retry

    await coord.handoff.ingest([make_event(100, {"StageName": "A"})], path="ws")
    ((job, _),) = await queued_jobs(coord)
    first = await coord.records.claim("Opportunity", RID, job, token="run-1", lease_ms=60_000)
    assert first is not None and not isinstance(first, int)
    # arq reran the job (its in-progress key lapsed) while run 1 still works.
    busy = await coord.records.claim("Opportunity", RID, job, token="run-2", lease_ms=60_000)
    assert isinstance(busy, int) and 0 < busy <= 60_000
    ctx = {
        "coordinator": coord,
        "store": store,
        "max_tries": 16,
        "job_id": job,
        "job_try": 1,
        "lease_ms": 60_000,
    }
    with pytest.raises(Retry):
        await apply_record(ctx, "Opportunity", RID)
    assert [r async for r in store.export()] == []
    await store.apply("Opportunity", RID, first.org_id, first.changes)
    assert (await coord.records.complete(first, job))[0] == "released"
    # The rerun, when it comes back, finds nothing left to do.
    assert await apply_record(ctx, "Opportunity", RID) == "not_owner"


async def test_concurrent_routers_on_one_record_schedule_one_job(redis_url, store):
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
    coords = [Coordinator(c, dedup_ttl=3600) for c in clients]
    events = [make_event(1000 + i, {"StageName": f"S{i}"}) for i in range(200)]
    import asyncio

    results = await asyncio.gather(
        *(
            coords[i % 4].handoff.ingest(events[i::4], path="ws" if i % 2 else "sqs")
            for i in range(4)
        ),
        *(coords[i % 4].handoff.ingest(events[i::4], path="sqs") for i in range(4)),
    )
    flat = [r for batch in results for r in batch]
    assert sum(r.outcome == "first" for r in flat) + sum(r.outcome == "stale" for r in flat) == 200
    assert sum(r.outcome == "duplicate" for r in flat) == 200
    assert sum(r.scheduled for r in flat) == 1
    ((job, _),) = await queued_jobs(coords[0])
    assert await run_job(coords[0], store, job) == "released"
    (row,) = [r async for r in store.export()]
    assert row["fields"]["StageName"] == "S199"
    for c in clients:
        await c.aclose()


async def test_throttle_holds_retries_without_using_them(coord):
    from arq import Retry

    from amt_ingest.policy import PAUSE_RECHECK_S
    from amt_ingest.store import Store

    await coord.handoff.ingest([make_event(100, {"StageName": "A"})], path="ws")
    ((job, _),) = await queued_jobs(coord)
    down = Store.open("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    ctx = {"coordinator": coord, "store": down, "max_tries": 16, "job_id": job, "lease_ms": 5000}
    with pytest.raises(Retry):
        await apply_record({**ctx, "job_try": 1}, "Opportunity", RID)
    await coord.throttle.set("pause")
    for attempt in range(2, 6):  # arq reruns the job; each run is held, none counts
        with pytest.raises(Retry) as info:
            await apply_record({**ctx, "job_try": attempt}, "Opportunity", RID)
        assert info.value.defer_score == PAUSE_RECHECK_S * 1000
    record = await claim(coord, job)
    assert record.failures == 1
    await coord.records.release_lease(record)
    # Slow: the scheduled delay (>= 31 s) is stretched tenfold from the failure.
    await coord.throttle.set("slow", 10)
    with pytest.raises(Retry) as info:
        await apply_record({**ctx, "job_try": 6}, "Opportunity", RID)
    assert info.value.defer_score > 280_000
    await coord.throttle.set(None)
    with pytest.raises(Retry):  # resumed: the retry runs (and fails again: failure 2)
        await apply_record({**ctx, "job_try": 7}, "Opportunity", RID)
    record = await claim(coord, job)
    assert record.failures == 2
    await down.close()


async def test_dead_lettered_record_is_listed_and_replayed_once(coord, store, redis_url):
    import asyncio
    import os
    import subprocess
    import sys

    from amt_ingest.store import Store

    await coord.handoff.ingest(
        [make_event(100, {"StageName": "A", "Name": "n"}, change="CREATE")], path="ws"
    )
    ((job, _),) = await queued_jobs(coord)
    down = Store.open("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    ctx = {"coordinator": coord, "store": down, "max_tries": 1, "job_id": job, "lease_ms": 5000}
    assert await apply_record({**ctx, "job_try": 1}, "Opportunity", RID) == "dead_lettered"
    await down.close()
    # A newer event for the record arrives after it was dead-lettered.
    await coord.handoff.ingest([make_event(300, {"StageName": "C"})], path="sqs")

    env = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")}
    env["AMT_REDIS_URL"] = redis_url
    listed = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "amt_ingest",
            "dlq",
            "list",
            "--source",
            "records",
            "--topic",
            "Opportunity",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    (letter,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert letter["id"] == f"records:Opportunity:{RID}"
    assert letter["reason"] == "job_failed"
    entry = letter["entry"]
    assert entry["id"] == RID
    assert "Connect call failed" in entry["error"]
    dry = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "amt_ingest", "dlq", "replay", "--source", "records", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert f"would replay records:Opportunity:{RID}: 3 changes merged back" in dry.stdout
    assert len(await coord.dead_records.list()) == 1

    # Name and the tombstone come back; StageName@100 loses to the pending C@300.
    assert await coord.dead_records.replay(entry) == 2
    assert await coord.dead_records.replay(entry) == -1  # repeated: a no-op
    for job_id, (topic, rid) in await queued_jobs(coord):
        await run_job(coord, store, job_id, topic, rid)
    (row,) = [r async for r in store.export()]
    assert row["fields"] == {"StageName": "C", "Name": "n"}
    assert row["deleted"] is False
    assert await coord.dead_records.list() == []


async def test_a_run_that_lost_its_lease_cannot_write_after_its_successor(coord, store):
    """A worker process frozen past its lease (and arq's in-progress timeout): arq reruns
    the job elsewhere; when the frozen run wakes up, the store refuses its write."""
    await coord.handoff.ingest([make_event(100, {"StageName": "A"})], path="ws")
    ((job, _),) = await queued_jobs(coord)
    frozen = await coord.records.claim("Opportunity", RID, job, token="run-1", lease_ms=50)
    assert frozen is not None and not isinstance(frozen, int)
    import asyncio

    await asyncio.sleep(0.1)  # run 1 is frozen; its lease lapses
    # Meanwhile a newer change arrives and the rerun (another process) takes over.
    await coord.handoff.ingest([make_event(200, {"StageName": "B"})], path="sqs")
    rerun = await coord.records.claim("Opportunity", RID, job, token="run-2", lease_ms=60_000)
    assert rerun is not None and not isinstance(rerun, int)
    assert rerun.fence > frozen.fence
    await store.apply("Opportunity", RID, ORG, rerun.changes, fence=rerun.fence)
    assert (await coord.records.complete(rerun, job))[0] == "released"
    # Run 1 wakes up and tries to write what it read: refused.
    from amt_ingest.errors import FencedError

    with pytest.raises(FencedError):
        await store.apply("Opportunity", RID, ORG, frozen.changes, fence=frozen.fence)
    (row,) = [r async for r in store.export()]
    assert row["fields"] == {"StageName": "B"}


async def test_a_workers_in_progress_key_lives_the_job_lease_not_the_job_timeout(
    redis_url, tmp_path
):
    """arq would set a running job's in-progress key for the longest function timeout
    + 10 s (130 s by default), and rerun a SIGKILLed worker's job only after that:
    the workers set it for AMT_JOB_LEASE_S and renew it instead (test_leases.py)."""
    from amt_ingest.config import Settings
    from amt_ingest.jobs import build_worker, create_arq_pool
    from amt_ingest.salesforce.client import SalesforceClient
    from amt_ingest.store import Store

    settings = Settings(redis_url=redis_url, job_timeout=120, job_lease_s=7)
    pool = await create_arq_pool(settings)
    salesforce = SalesforceClient("http://127.0.0.1:1", token=lambda: "unused")
    store = Store.open(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    try:
        worker = build_worker(
            settings,
            pool=pool,
            coordinator=Coordinator(pool, dedup_ttl=60),
            store=store,
            salesforce=salesforce,
            handle_signals=False,
        )
        assert worker.in_progress_timeout_s == 7
    finally:
        await pool.aclose()
        await salesforce.aclose()
        await store.close()


# --- batches: one job run applies the records of one hand-off ------------------------


def rids(n: int) -> list[str]:
    return [f"0065g00000BaTc{i:04d}" for i in range(n)]


async def test_records_of_one_hand_off_share_jobs_up_to_the_batch_size(redis_url, store):
    client = aioredis.Redis.from_url(redis_url)
    coord = Coordinator(client, dedup_ttl=3600, job_batch=2)
    events = [
        make_event(100 + i, {"Name": f"n{i}"}, record_ids=(rid,)) for i, rid in enumerate(rids(5))
    ]
    results = await coord.handoff.ingest(events, path="ws")
    assert [r.scheduled for r in results] == [1] * 5
    jobs: dict[str, list[str]] = {}
    for job_id, (_, rid) in await queued_jobs(coord):
        jobs.setdefault(job_id, []).append(rid)
    assert sorted(len(members) for members in jobs.values()) == [1, 2, 2]
    assert await coord.handoff.pending_records() == 5
    assert await run_queued_jobs(coord, store) == 3
    rows = [r async for r in store.export()]
    assert sorted(r["id"] for r in rows) == rids(5)
    assert await coord.handoff.pending_records() == 0
    await client.aclose()


async def test_a_batch_claim_takes_nothing_while_another_run_holds_a_record(coord):
    ids = rids(2)
    await coord.handoff.ingest(
        [make_event(100, {"Name": "x"}, record_ids=(rid,)) for rid in ids], path="ws"
    )
    ((job, _), (same, _)) = await queued_jobs(coord)
    assert job == same
    members = [("Opportunity", rid) for rid in ids]
    first = await coord.records.claim("Opportunity", ids[1], job, token="run-1", lease_ms=60_000)
    assert first is not None and not isinstance(first, int)
    busy = await coord.records.claim_batch(members, job, token="run-2", lease_ms=60_000)
    assert isinstance(busy, int) and 0 < busy <= 60_000
    # No lease was taken on the free record: a third run could claim it.
    assert await coord.redis.get(f"amt:lease:Opportunity:{ids[0]}") is None


async def test_one_bad_record_does_not_hold_back_its_batch(redis_url):
    """The shared transaction fails on one record: each record is then written on its
    own; the good ones are applied and released, the bad one retried by its job."""
    from arq import Retry

    from amt_ingest.store import Store, metadata
    from tests.conftest import POSTGRES_URL

    client = aioredis.Redis.from_url(redis_url)
    coord = Coordinator(client, dedup_ttl=3600)
    pg = Store.open(POSTGRES_URL)
    async with pg.engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await pg.ensure_schema()
    good, bad = rids(3)[:2], rids(3)[2]
    events = [make_event(100, {"Name": "fine"}, record_ids=(rid,)) for rid in good]
    # account_id is VARCHAR(18): PostgreSQL refuses this value.
    events.append(make_event(100, {"AccountId": "0015g" * 8}, record_ids=(bad,)))
    await coord.handoff.ingest(events, path="ws")
    ((job, _), *_) = await queued_jobs(coord)
    members = [["Opportunity", rid] for rid in (*good, bad)]
    with pytest.raises(Retry) as info:
        await apply_records(job_ctx(coord, pg, job), members)
    assert info.value.defer_score >= 30_000  # the first retry's delay
    rows = [r async for r in pg.export()]
    assert sorted(r["id"] for r in rows) == good
    record = await claim(coord, job, rid=bad)  # still this job's, arq reruns it
    assert record.failures == 1
    assert await coord.redis.zscore("amt:retrying", record_key("Opportunity", bad)) is not None
    assert await coord.handoff.pending_records() == 1
    await pg.close()
    await client.aclose()


async def test_failures_of_different_counts_move_to_jobs_of_their_own(coord):
    from amt_ingest.store import Store

    ids = rids(2)
    await coord.handoff.ingest(
        [make_event(100, {"Name": "x"}, record_ids=(rid,)) for rid in ids], path="ws"
    )
    ((job, _), _) = await queued_jobs(coord)
    # The second record has failed three times before (its earlier job was retried).
    await coord.redis.hset(record_key("Opportunity", ids[1]), "fail", 3)
    down = Store.open("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    before_ms = int(time.time() * 1000)
    statuses = await apply_records(job_ctx(coord, down, job), [["Opportunity", rid] for rid in ids])
    assert statuses == {"moved": 2}  # no rerun of this job
    await down.close()
    queued = await coord.redis.zrange(QUEUE_NAME, 0, -1, withscores=True)
    fresh = {job_id.decode(): score for job_id, score in queued if job_id.decode() != job}
    assert len(fresh) == 2
    failures = {}
    for rid in ids:
        owner = (await coord.redis.hget(record_key("Opportunity", rid), "job")).decode()
        assert owner in fresh
        # Due after its own delay: (failures ** 4) + 30 s and more.
        failures[rid] = int(await coord.redis.hget(record_key("Opportunity", rid), "fail"))
        assert fresh[owner] >= before_ms + (failures[rid] ** 4 + 30) * 1000
    assert failures == {ids[0]: 1, ids[1]: 4}


async def test_a_throttled_retry_moves_out_and_its_batch_goes_on(coord, store):
    ids = rids(2)
    await coord.handoff.ingest(
        [make_event(100, {"Name": "x"}, record_ids=(rid,)) for rid in ids], path="ws"
    )
    ((job, _), _) = await queued_jobs(coord)
    retrying = record_key("Opportunity", ids[0])
    await coord.redis.hset(
        retrying, mapping={"fail": 1, "failed_at": int(time.time() * 1000), "retry_delay": 31}
    )
    await coord.throttle.set("pause")
    statuses = await apply_records(job_ctx(coord, store, job), [["Opportunity", r] for r in ids])
    assert statuses == {"moved": 1, "released": 1}
    rows = [r async for r in store.export()]
    assert [r["id"] for r in rows] == [ids[1]]
    owner = (await coord.redis.hget(retrying, "job")).decode()
    assert owner != job and int(await coord.redis.hget(retrying, "fail")) == 1  # not a try
    await coord.throttle.set(None)


async def test_the_reaper_forgets_pending_records_that_are_gone(coord):
    await coord.handoff.ingest([make_event(100, {"Name": "x"})], path="ws")
    assert await coord.handoff.pending_records() == 1
    await coord.redis.delete(record_key("Opportunity", RID))  # an operator's hand
    assert await coord.records.reap() == []
    assert await coord.handoff.pending_records() == 0


async def test_records_join_the_open_job_until_a_worker_starts_it(redis_url, store):
    client = aioredis.Redis.from_url(redis_url)
    coord = Coordinator(client, dedup_ttl=3600, job_batch=3)
    ids = rids(6)

    async def hand_off(i: int) -> None:
        await coord.handoff.ingest(
            [make_event(100 + i, {"Name": f"n{i}"}, record_ids=(ids[i],))], path="ws"
        )

    for i in range(4):  # four hand-offs, no worker yet: one job fills up, then the next
        await hand_off(i)
    jobs: dict[str, list[str]] = {}
    for job_id, (_, rid) in await queued_jobs(coord):
        jobs.setdefault(job_id, []).append(rid)
    assert list(jobs.values()) == [ids[:3], ids[3:4]]
    (first_job, second_job) = jobs
    # A worker starts the second job (arq's in-progress mark): it takes no more records.
    await client.set(f"arq:in-progress:{second_job}", b"1", px=5000)
    await hand_off(4)
    # A job arq will retry later (its retry counter exists) takes none either.
    third_job = (await queued_jobs(coord))[-1][0]
    assert third_job not in (first_job, second_job)
    await client.set(f"arq:retry:{third_job}", 1, px=5000)
    await hand_off(5)
    fourth_job = (await queued_jobs(coord))[-1][0]
    assert fourth_job != third_job
    await client.delete(f"arq:in-progress:{second_job}", f"arq:retry:{third_job}")
    # Every record joined exactly one job, and each is applied once.
    assert await run_queued_jobs(coord, store) == 4
    assert sorted([r["id"] async for r in store.export()]) == ids
    assert await coord.handoff.pending_records() == 0
    await client.aclose()


async def test_records_that_changed_during_a_run_go_together_to_one_fresh_job(coord, store):
    ids = rids(3)
    await coord.handoff.ingest(
        [make_event(100, {"Name": "a"}, record_ids=(rid,)) for rid in ids], path="ws"
    )
    ((job, _), _, _) = await queued_jobs(coord)
    members = [("Opportunity", rid) for rid in ids]
    claimed = await coord.records.claim_batch(members, job, token="run-1", lease_ms=60_000)
    assert not isinstance(claimed, int) and all(r is not None for r in claimed)
    records = [r for r in claimed if r is not None]
    # Two of the three records change while the run writes.
    await coord.handoff.ingest(
        [make_event(200, {"Name": "b"}, record_ids=(rid,)) for rid in ids[1:]], path="sqs"
    )
    for record in records:
        await store.apply(record.topic, record.record_id, record.org_id, record.changes)
    statuses, next_job = await coord.records.complete_batch(records, job)
    assert statuses == ["released", "handed_over", "handed_over"] and next_job
    assert [(j, m) for j, m in await queued_jobs(coord) if j != job] == [
        (next_job, ["Opportunity", rid]) for rid in ids[1:]
    ]
    assert await coord.handoff.pending_records() == 2
    await coord.redis.delete(f"arq:job:{job}")
    await coord.redis.zrem(QUEUE_NAME, job)
    assert await run_queued_jobs(coord, store) == 1
    rows = {r["id"]: r["fields"]["Name"] async for r in store.export()}
    assert rows == {ids[0]: "a", ids[1]: "b", ids[2]: "b"}
    assert await coord.handoff.pending_records() == 0


async def test_a_handed_over_record_keeps_only_what_changed_during_the_run(coord, store):
    """complete.lua drops the entries a run applied that nothing replaced meanwhile
    (read from their one JSON argument, non-ASCII text included), and keeps the rest."""
    await coord.handoff.ingest(
        [make_event(100, {"Name": "Zoë", "StageName": "A", "Amount": 5})], path="ws"
    )
    ((job1, _),) = await queued_jobs(coord)
    record = await claim(coord, job1)
    assert record is not None
    await coord.handoff.ingest([make_event(200, {"StageName": "B"})], path="ws")
    await store.apply("Opportunity", RID, record.org_id, record.changes)
    status, job2 = await coord.records.complete(record, job1)
    assert status == "handed_over"
    after = await claim(coord, job2)
    assert after is not None
    assert set(after.changes) == {"StageName"} and after.changes["StageName"][1] == "B"
