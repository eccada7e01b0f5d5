"""Gap events: the record is re-read from Salesforce (the simulator's REST API)."""

from __future__ import annotations

import json
import uuid

import pytest
import redis.asyncio as aioredis

from amt_ingest.coordination import Coordinator
from amt_ingest.jobs import apply_record
from amt_ingest.routing.events import Event, parse_event
from amt_ingest.salesforce.client import SalesforceClient, SalesforceError, parse_modstamp
from amt_ingest.simulator import Simulator, SimulatorOptions
from amt_ingest.simulator.truth import iso_ms
from tests.conftest import SAMPLES
from tests.integration.test_coordination import make_event, queued_jobs

TOKEN = "sf-token"


@pytest.fixture
async def sim():
    simulator = Simulator(
        SimulatorOptions(
            port=0, sf_port=0, sns=False, events=400, rate=0, records=50, token=TOKEN, page_size=7
        )
    )
    await simulator.start()
    await simulator.run()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def coord(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield Coordinator(client, dedup_ttl=3600)
    await client.aclose()


def gap_event(topic: str, record_id: str, ts: int, change: str = "GAP_UPDATE") -> Event:
    obj = json.loads((SAMPLES / "event-items-gap-update.json").read_text())
    obj["event_id"] = str(uuid.uuid4())
    obj["topic"] = topic
    obj["payload"]["ChangeEventHeader"].update(
        entityName=topic,
        recordIds=[record_id],
        changeType=change,
        commitTimestamp=ts,
        commitNumber=ts,
    )
    event = parse_event(obj)
    assert isinstance(event, Event), event
    return event


async def run_all(coord, store, client) -> list[str]:
    outcomes = []
    for job_id, (topic, rid) in await queued_jobs(coord):
        ctx = {
            "coordinator": coord,
            "store": store,
            "salesforce": client,
            "max_tries": 16,
            "job_id": job_id,
            "job_try": 1,
            "lease_ms": 5000,
        }
        outcomes.append(await apply_record(ctx, topic, rid))
    return outcomes


async def test_gap_event_rereads_the_record(sim, coord, store):
    truth = {(r["topic"], r["id"]): r for r in sim.world.truth()}
    (topic, rid), want = next((k, v) for k, v in truth.items() if not v["deleted"])
    client = SalesforceClient(sim.sf_url, token=lambda: TOKEN)
    try:
        snapshot = await client.get_record(topic, rid)
        assert snapshot is not None
        await coord.handoff.ingest([gap_event(topic, rid, snapshot.modstamp_ms - 1000)], path="ws")
        assert await run_all(coord, store, client) == ["released"]
    finally:
        await client.aclose()
    (row,) = [r async for r in store.export()]
    assert row == want


async def test_snapshot_loses_to_a_later_change_and_wins_over_earlier(sim, coord, store):
    truth = {(r["topic"], r["id"]): r for r in sim.world.truth()}
    (topic, rid), want = next(
        (k, v) for k, v in truth.items() if k[0] == "Opportunity" and not v["deleted"]
    )
    client = SalesforceClient(sim.sf_url, token=lambda: TOKEN)
    try:
        snapshot = await client.get_record(topic, rid)
        assert snapshot is not None
        ms = snapshot.modstamp_ms
        await coord.handoff.ingest(
            [
                gap_event(topic, rid, ms - 5000),
                make_event(ms - 10_000, {"StageName": "older"}, record_ids=(rid,)),
                make_event(ms + 10_000, {"StageName": "later"}, record_ids=(rid,)),
            ],
            path="sqs",
        )
        assert await run_all(coord, store, client) == ["released"]
    finally:
        await client.aclose()
    (row,) = [r async for r in store.export()]
    assert row["fields"] == {**want["fields"], "StageName": "later"}


async def test_record_that_salesforce_does_not_have_is_a_tombstone(sim, coord, store):
    client = SalesforceClient(sim.sf_url, token=lambda: TOKEN)
    try:
        rid = "0065g00000NoSuchAA"
        await coord.handoff.ingest(
            [make_event(100, {"Name": "x"}, record_ids=(rid,), change="CREATE")], path="ws"
        )
        await coord.handoff.ingest([gap_event("Opportunity", rid, 200, "GAP_DELETE")], path="ws")
        assert await run_all(coord, store, client) == ["released"]
    finally:
        await client.aclose()
    (row,) = [r async for r in store.export()]
    assert row["deleted"] is True and row["fields"] == {"Name": "x"}


async def test_rest_failures_are_retried_then_raised(sim):
    bad_token = SalesforceClient(
        sim.sf_url, token=lambda: "wrong", delays=lambda: iter([0.01] * 10)
    )
    nowhere = SalesforceClient(
        "http://127.0.0.1:1", token=lambda: TOKEN, attempts=3, delays=lambda: iter([0.01] * 10)
    )
    try:
        with pytest.raises(SalesforceError, match="401"):
            await bad_token.get_record("Opportunity", "006x")
        with pytest.raises(SalesforceError, match="after 3 attempts"):
            await nowhere.get_record("Opportunity", "006x")
    finally:
        await bad_token.aclose()
        await nowhere.aclose()


async def test_modified_since_pages_through_every_record(sim):
    import datetime as dt

    client = SalesforceClient(sim.sf_url, token=lambda: TOKEN)
    try:
        since = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        ids = [i async for i in client.modified_since("Opportunity", since)]
    finally:
        await client.aclose()
    expected = [
        r["id"] for r in sim.world.truth() if r["topic"] == "Opportunity" and not r["deleted"]
    ]
    assert sorted(ids) == sorted(expected)


def test_modstamp_formats():
    assert parse_modstamp("2026-11-25T09:49:18.000Z") == parse_modstamp(
        "2026-11-25T09:49:18.000+0000"
    )
    assert parse_modstamp("2026-11-25T09:49:18.123Z") % 1000 == 123


def overflow_event(topic: str, ts: int) -> Event:
    obj = json.loads((SAMPLES / "event-opportunity-gap-overflow.json").read_text())
    obj["event_id"] = str(uuid.uuid4())
    obj["topic"] = topic
    obj["payload"]["ChangeEventHeader"].update(
        entityName=topic, commitTimestamp=ts, commitNumber=ts
    )
    event = parse_event(obj)
    assert isinstance(event, Event), event
    return event


async def run_queue(coord, store, client) -> list[str]:
    """Run every queued job (resyncs first), as a worker would, until the queue is empty."""
    from amt_ingest.salesforce.resync import resync_topic

    outcomes = []
    while jobs := await queued_jobs(coord):
        for job_id, args in jobs:
            await coord.redis.zrem("amt:queue", job_id)
            ctx = {
                "coordinator": coord,
                "store": store,
                "salesforce": client,
                "max_tries": 16,
                "job_id": job_id,
                "job_try": 1,
                "lease_ms": 5000,
                "resync_rate": 0,
            }
            if job_id.startswith("resync:"):
                outcomes.append(f"resync:{await resync_topic(ctx, *args)}")
            else:
                outcomes.append(await apply_record(ctx, *args))
    return outcomes


async def test_overflow_resyncs_the_type_from_its_commit_time(sim, coord, store):
    truth = [r for r in sim.world.truth() if r["topic"] == "External_Attachment__c"]
    client = SalesforceClient(sim.sf_url, token=lambda: TOKEN)
    try:
        modstamps = {}
        for record in truth:
            snap = await client.get_record(record["topic"], record["id"])
            if snap is not None:
                modstamps[record["id"]] = snap.modstamp_ms
        cut = sorted(modstamps.values())[len(modstamps) // 2]
        overflow = overflow_event("External_Attachment__c", cut)
        (result,) = await coord.handoff.ingest([overflow], path="ws")
        assert result.outcome == "first" and result.scheduled == 1
        # The same overflow on the other path starts nothing more.
        (again,) = await coord.handoff.ingest([overflow], path="sqs")
        assert again.outcome == "duplicate" and again.scheduled == 0
        outcomes = await run_queue(coord, store, client)
    finally:
        await client.aclose()
    expected = {rid for rid, ms in modstamps.items() if ms >= cut}
    deleted = {rid for rid, _ in sim.world.deleted_between("External_Attachment__c", cut, 2**62)}
    assert outcomes[0] == f"resync:{len(expected) + len(deleted)}"
    rows = {r["id"]: r async for r in store.export()}
    assert set(rows) == expected | deleted
    for record in truth:
        if record["id"] in expected:
            assert rows[record["id"]] == record
        elif record["id"] in deleted:
            assert rows[record["id"]]["deleted"] and rows[record["id"]]["fields"] == {}


async def test_a_resync_resumes_where_it_stopped(sim, coord):
    import datetime as dt

    from amt_ingest.salesforce.resync import position_at, run_resync

    client = SalesforceClient(sim.sf_url, token=lambda: TOKEN)
    since = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    marked: list[int] = []

    def stop_after_five(done: int, total: int) -> None:
        marked.append(done)
        if done == 5:
            raise KeyboardInterrupt  # the operator's Ctrl-C

    try:
        with pytest.raises(KeyboardInterrupt):
            await run_resync(
                coord,
                client,
                topic="Opportunity",
                position=position_at(since),
                org="00D5g000004ZzABEA0",
                resync_id="r1",
                rate=0,
                on_progress=stop_after_five,
            )
        again = await run_resync(
            coord,
            client,
            topic="Opportunity",
            position=position_at(since),
            org="00D5g000004ZzABEA0",
            resync_id="r1",
            rate=0,
        )
    finally:
        await client.aclose()
    assert again.already_done == 5
    assert again.marked == again.found - 5
    progress = await coord.resyncs.progress("r1")
    assert progress["state"] == "done" and int(progress["marked"]) == again.found


async def test_resync_command_marks_records_for_the_workers(sim, coord, redis_url):
    import asyncio
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")}
    env.update(
        AMT_REDIS_URL=redis_url,
        AMT_SALESFORCE_BASE_URL=sim.sf_url,
        AMT_PASSPORT_TOKEN=TOKEN,
        AMT_ALLOWED_ORG_IDS="00D5g000004ZzABEA0",
    )
    since = iso_ms(sim.world.deletes.start_ms)  # the simulated org's first instant
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "amt_ingest",
            "resync",
            "Application_Item__c",
            "--since",
            since,
            "--rate",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    truth = [r for r in sim.world.truth() if r["topic"] == "Application_Item__c"]
    alive = [r for r in truth if not r["deleted"]]
    deletes = sim.world.deleted_between("Application_Item__c", 0, sim.world.now_ms)
    assert deletes
    assert f"{len(alive)} records modified and {len(deletes)} deleted" in out.stdout
    # A job per record: the live ones re-read, the deleted ones tombstoned (a record
    # deleted and undeleted since is both, once).
    assert len(await queued_jobs(coord)) == len({r["id"] for r in alive} | {i for i, _ in deletes})
    bad = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "amt_ingest", "resync", "Opportunity", "--since", "yesterday"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "ISO-8601" in bad.stderr
