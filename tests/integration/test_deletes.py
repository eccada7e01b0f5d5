"""Deletes learnt again: the deleted-records resource, resync tombstones, full reconciliation.

Against the simulator's REST API (its truth and delete log), real Redis and the
real stores; the record jobs run as a worker runs them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from typing import Any

import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from structlog.testing import capture_logs

from amt_ingest.coordination import Coordinator
from amt_ingest.operations.status import build_view
from amt_ingest.routing.events import DELETED_FIELD
from amt_ingest.routing.positions import position_key
from amt_ingest.salesforce.client import SalesforceClient
from amt_ingest.salesforce.resync import position_at, run_full_resync, run_resync
from amt_ingest.simulator import Simulator, SimulatorOptions
from amt_ingest.simulator.truth import iso_ms
from amt_ingest.telemetry.metrics import Metrics
from tests.integration.test_coordination import queued_jobs
from tests.integration.test_reread import run_queue

TOKEN = "sf-token"
ORG = "00D5g000004ZzABEA0"
TOPICS = ("Opportunity", "External_Attachment__c", "Application_Item__c")


async def simulator(**options: Any) -> Simulator:
    defaults: dict[str, Any] = {
        "port": 0,
        "sf_port": 0,
        "sns": False,
        "events": 1500,
        "rate": 0,
        "records": 60,
        "token": TOKEN,
    }
    sim = Simulator(SimulatorOptions(**(defaults | options)))
    await sim.start()
    await sim.run()
    return sim


@pytest.fixture
async def sim():
    s = await simulator()
    yield s
    await s.stop()


@pytest.fixture
async def seeded():
    """Commit times from the seeded clock: 1,500 events over about five minutes."""
    s = await simulator(wall_clock=False, deleted_max_span_s=120, deleted_lookback_s=3600)
    yield s
    await s.stop()


@pytest.fixture
async def coord(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield Coordinator(client, dedup_ttl=3600)
    await client.aclose()


def client_for(sim: Simulator, **options: Any) -> SalesforceClient:
    return SalesforceClient(sim.sf_url, token=lambda: TOKEN, **options)


def every_delete(sim: Simulator, topic: str) -> dict[str, int]:
    newest: dict[str, int] = {}
    for rid, ms in sim.world.deleted_between(topic, 0, 2**62):
        newest[rid] = max(ms, newest.get(rid, 0))
    return newest


async def test_a_long_window_is_read_in_calls_of_the_longest_span(seeded: Simulator):
    client = client_for(
        seeded,
        deleted_max_span_s=120,
        deleted_lookback_s=7200,
        clock=lambda: seeded.world.now_ms / 1000,
    )
    start, end = seeded.world.deletes.start_ms, seeded.world.now_ms
    assert end - start > 2 * 120_000
    try:
        for topic in TOPICS:
            got = await client.deleted_records(topic, start, end)
            assert got.known_from_ms is None
            assert got.records == every_delete(seeded, topic)
    finally:
        await client.aclose()
    per_topic = seeded.salesforce.requests["deleted"] / len(TOPICS)
    assert per_topic >= (end - start) / 120_000


async def test_a_window_older_than_the_lookback_says_from_when_deletes_are_known(
    seeded: Simulator,
):
    now = seeded.world.now_ms / 1000
    # The service's look-back: 240 s, less a tenth kept for clock skew.
    client = client_for(seeded, deleted_lookback_s=240, deleted_max_span_s=120, clock=lambda: now)
    start = seeded.world.deletes.start_ms
    assert seeded.world.now_ms - start > 240_000
    try:
        got = await client.deleted_records("Opportunity", start, seeded.world.now_ms)
    finally:
        await client.aclose()
    oldest = seeded.world.now_ms - 216_000
    assert got.known_from_ms is not None and abs(got.known_from_ms - oldest) < 1000
    expected = {r: ms for r, ms in every_delete(seeded, "Opportunity").items() if ms >= oldest}
    assert expected and set(got.records) == set(expected)


async def test_a_purged_delete_log_says_from_when_deletes_are_known(sim: Simulator):
    every = sorted(every_delete(sim, "Application_Item__c").values())
    assert len(every) >= 3
    sim.world.deletes.purge(every[1] + 1)
    client = client_for(sim)
    try:
        got = await client.deleted_records(
            "Application_Item__c", sim.world.deletes.start_ms, sim.world.now_ms
        )
    finally:
        await client.aclose()
    assert got.known_from_ms == every[1]
    assert sorted(got.records.values()) == sorted(ms for ms in every if ms > every[1])


async def test_a_window_salesforce_refuses_is_reported_not_retried(sim: Simulator):
    # The simulator looks back 15 days: a client that believes in 60 asks for more.
    client = client_for(sim, deleted_lookback_s=60 * 24 * 3600, deleted_max_span_s=30 * 24 * 3600)
    end = sim.world.now_ms
    try:
        got = await client.deleted_records("Opportunity", end - 20 * 24 * 3600_000, end)
    finally:
        await client.aclose()
    assert got.known_from_ms == end and got.records == {}


async def test_a_resync_tombstones_the_deletes_of_its_window(sim: Simulator, coord, store):
    topic = "Opportunity"
    deletes = every_delete(sim, topic)
    gone = [rid for rid in deletes if sim.world.record(topic, rid).deleted]  # type: ignore[union-attr]
    revived = [rid for rid in deletes if rid not in gone]
    assert gone and revived, "the seed needs deleted and undeleted records"
    start = sim.world.deletes.start_ms
    # The store knew two of the deleted records as live (from before the window), and
    # one revived record from its undelete (newer than its delete).
    known_live = gone[:2]
    for rid in known_live:
        await store.apply(
            topic, rid, ORG, {"Name": ("0" * 45, "old"), DELETED_FIELD: ("0" * 45, False)}
        )
    # The undelete event, as it came: at its commit instant (a re-read snapshot of that
    # instant sits after it).
    undeleted_at = position_key(sim.world.record(topic, revived[0]).modstamp_ms, 1, 1)  # type: ignore[union-attr]
    await store.apply(
        topic,
        revived[0],
        ORG,
        {"Name": (undeleted_at, "back"), DELETED_FIELD: (undeleted_at, False)},
    )
    client = client_for(sim)
    try:
        result = await run_resync(
            coord,
            client,
            topic=topic,
            position=position_at(dt.datetime.fromtimestamp(start / 1000, dt.UTC)),
            org=ORG,
            resync_id="w1",
            rate=0,
        )
        assert result.finished and result.deletes_known_from is None
        assert result.deleted == len(deletes)
        await run_queue(coord, store, client)
    finally:
        await client.aclose()
    rows = {r["id"]: r async for r in store.export() if r["topic"] == topic}
    truth = {r["id"]: r for r in sim.world.truth() if r["topic"] == topic}
    for rid in gone:
        assert rows[rid]["deleted"] is True
        assert rows[rid]["org_id"] == ORG
        # Known only by its tombstone, or by what the store had before it.
        assert rows[rid]["fields"] == ({"Name": "old"} if rid in known_live else {})
    for rid in revived:
        assert rows[rid] == truth[rid]  # re-read: the undelete wins over the tombstone
    progress = await coord.resyncs.progress("w1")
    assert progress["state"] == "done" and int(progress["deleted"]) == len(deletes)


async def test_unknown_deletes_are_an_error_event_a_metric_and_in_status(sim: Simulator, coord):
    sim.world.deletes.purge(sim.world.now_ms)  # every delete so far is gone from the log
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    start = sim.world.deletes.start_ms
    client = client_for(sim)
    try:
        with capture_logs() as logs:
            # Twice (the second run resumes the first): said once.
            results = [
                await run_resync(
                    coord,
                    client,
                    topic="External_Attachment__c",
                    position=position_at(dt.datetime.fromtimestamp(start / 1000, dt.UTC)),
                    org=ORG,
                    resync_id="w2",
                    rate=0,
                    metrics=metrics,
                )
                for _ in range(2)
            ]
    finally:
        await client.aclose()
    result = results[0]
    assert result.deletes_known_from is not None
    assert results[1].deletes_known_from == result.deletes_known_from
    errors = [e for e in logs if e["event"] == "resync_deletes_unknown"]
    assert len(errors) == 1
    (error,) = errors
    assert error["log_level"] == "error" and error["topic"] == "External_Attachment__c"
    assert error["window_start"] == dt.datetime.fromtimestamp(start / 1000, dt.UTC).isoformat(
        timespec="milliseconds"
    )
    assert error["earliest_date_available"] == result.deletes_known_from
    assert "resync External_Attachment__c --full" in error["hint"]
    data = reader.get_metrics_data()
    points = [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "amt.resync.deletes_unknown"
        for p in m.data.data_points
    ]
    assert [(dict(p.attributes), p.value) for p in points] == [
        ({"topic": "External_Attachment__c"}, 1)
    ]
    view = build_view(await coord.observations.overview(), None, 1.0, None)
    assert view["deletes_unknown"] == {"External_Attachment__c": 1}
    (row,) = [r for r in view["resyncs"] if r["id"] == "w2"]
    assert row["deletes_known_from"] == result.deletes_known_from


async def test_a_full_reconciliation_tombstones_what_salesforce_no_longer_has(
    sim: Simulator, coord, store
):
    truth = {(r["topic"], r["id"]): r for r in sim.world.truth()}
    topic = "Application_Item__c"
    mine = [r for (t, _), r in truth.items() if t == topic]
    # The store holds every record of the topic as live, with stale content.
    for record in mine:
        await store.apply(
            topic,
            record["id"],
            ORG,
            {"Name": ("0" * 45, "stale"), DELETED_FIELD: ("0" * 45, False)},
        )
    deleted = {r["id"] for r in mine if r["deleted"]}
    assert deleted and len(deleted) < len(mine)
    stops = []

    def stop_after_three(done: int, total: int) -> None:
        stops.append((done, total))
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await run_full_resync(
            coord,
            store,
            topic=topic,
            org=None,
            resync_id="f1",
            rate=0,
            on_progress=stop_after_three,
        )
    again = await run_full_resync(coord, store, topic=topic, org=ORG, resync_id="f1", rate=0)
    assert again.found == len(mine) and again.already_done == 3
    assert again.marked == len(mine) - 3
    client = client_for(sim)
    try:
        await run_queue(coord, store, client)
    finally:
        await client.aclose()
    rows = {r["id"]: r async for r in store.export() if r["topic"] == topic}
    for record in mine:
        got = rows[record["id"]]
        if record["id"] in deleted:
            assert got["deleted"] is True and got["fields"] == {"Name": "stale"}
        else:
            assert got == record
    # Nothing left live that Salesforce does not have: a second reconciliation finds
    # only live records, each re-read to what it already is.
    assert {rid for rid, _ in await store.live_records(topic)} == {
        r["id"] for r in mine if not r["deleted"]
    }


async def test_the_resync_command_full_and_with_deletes_unknown(
    sim: Simulator, redis_url, tmp_path
):
    from amt_ingest.store import Store

    db = tmp_path / "store.db"
    store = Store.open(f"sqlite+aiosqlite:///{db}")
    await store.ensure_schema()
    live = [r for r in sim.world.truth() if r["topic"] == "Opportunity"][:4]
    for record in live:
        await store.apply("Opportunity", record["id"], ORG, {"Name": ("0" * 45, "x")})
    await store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")}
    env.update(
        AMT_REDIS_URL=redis_url,
        AMT_DATABASE_URL=f"sqlite+aiosqlite:///{db}",
        AMT_SALESFORCE_BASE_URL=sim.sf_url,
        AMT_PASSPORT_TOKEN=TOKEN,
        AMT_ALLOWED_ORG_IDS=ORG,
    )

    def amt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "amt_ingest", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    full = await asyncio.to_thread(
        amt, "resync", "Opportunity", "--full", "--rate", "0", "--id", "f2"
    )
    assert full.returncode == 0, full.stderr
    assert "4 live records in the store, 4 marked" in full.stdout
    client = aioredis.Redis.from_url(redis_url)
    try:
        coord = Coordinator(client, dedup_ttl=60)
        assert len(await queued_jobs(coord)) == 4
        sim.world.deletes.purge(sim.world.now_ms)
        since = iso_ms(sim.world.deletes.start_ms)
        late = await asyncio.to_thread(
            amt, "resync", "Opportunity", "--since", since, "--rate", "0"
        )
        assert late.returncode == 3, late.stderr
        assert "no longer knows every delete before" in late.stderr
        assert "resync Opportunity --full" in late.stderr
        both = await asyncio.to_thread(amt, "resync", "Opportunity", "--full", "--since", since)
        assert both.returncode == 2 and "not allowed with" in both.stderr
    finally:
        await client.aclose()
