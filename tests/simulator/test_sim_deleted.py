"""The simulator's deleted-records resource (PROTOCOL.md section 4) and its control API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sim_helpers import TOKEN, SimFactory, collect_events, subscribe, ws_connect

from amt_ingest.simulator import Simulator
from amt_ingest.simulator.rest import sf_datetime
from amt_ingest.simulator.truth import DeleteLog, iso_ms, parse_iso_ms

API = "/services/data/v61.0"
MINUTE = 60_000


@pytest.fixture
async def sim(make_sim: SimFactory) -> Simulator:
    sim = await make_sim(events=2000, records=80)
    await sim.run()
    return sim


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        sim.sf_url, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as session:
        yield session


async def deleted(
    http: aiohttp.ClientSession, topic: str, start: int | str, end: int | str
) -> tuple[int, Any]:
    params = {
        "start": iso_ms(start) if isinstance(start, int) else start,
        "end": iso_ms(end) if isinstance(end, int) else end,
    }
    async with http.get(f"{API}/sobjects/{topic}/deleted/", params=params) as response:
        return response.status, await response.json()


def deletes_in_stream(sim: Simulator, topic: str) -> list[tuple[str, int]]:
    """Every main-org DELETE the world generated, from its own log of events."""
    return sim.world.deleted_between(topic, 0, sim.world.now_ms)


def test_the_delete_log_keeps_every_delete_until_purged() -> None:
    log = DeleteLog(start_ms=1000)
    log.add("Opportunity", "006A", 2000)
    log.add("Opportunity", "006B", 3000)
    log.add("Opportunity", "006A", 4000)  # deleted again after an undelete
    assert log.between("Opportunity", 0, 10_000) == [("006A", 2000), ("006B", 3000), ("006A", 4000)]
    assert log.between("Opportunity", 2500, 3000) == [("006B", 3000)]
    assert log.earliest_available_ms("Opportunity") is None
    assert log.purge(3500) == 2
    assert log.between("Opportunity", 0, 10_000) == [("006A", 4000)]
    assert log.earliest_available_ms("Opportunity") == 3000
    assert log.earliest_available_ms("Application_Item__c") is None


async def test_deleted_records_of_a_window(sim: Simulator, http: aiohttp.ClientSession) -> None:
    topic = "Opportunity"
    every = deletes_in_stream(sim, topic)
    assert len(every) >= 4
    start, end = every[1][1], every[-2][1]
    if end - start <= MINUTE:
        start = end - MINUTE - 1
    status, body = await deleted(http, topic, start, end)
    assert status == 200
    expected = [(rid, ms) for rid, ms in every if start <= ms <= end]
    assert [(r["id"], parse_iso_ms(r["deletedDate"])) for r in body["deletedRecords"]] == expected
    assert body["deletedRecords"][0]["deletedDate"].endswith("+0000")  # as Salesforce writes it
    # Nothing purged: every delete of the look-back (15 days) is known.
    assert parse_iso_ms(body["earliestDateAvailable"]) == sim.world.now_ms - 15 * 24 * 3600_000
    assert parse_iso_ms(body["latestDateCovered"]) == min(end, sim.world.now_ms)


async def test_a_record_deleted_then_undeleted_stays_listed(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    revived = [
        (topic, rid)
        for topic in ("Opportunity", "External_Attachment__c", "Application_Item__c")
        for rid, _ in deletes_in_stream(sim, topic)
        if not sim.world.record(topic, rid).deleted  # type: ignore[union-attr]
    ]
    assert revived, "the seed undeletes no record"
    topic, rid = revived[0]
    status, body = await deleted(http, topic, sim.world.deletes.start_ms, sim.world.now_ms)
    assert status == 200 and rid in {r["id"] for r in body["deletedRecords"]}


async def test_bad_dates_are_invalid_replication_date(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    now = sim.world.now_ms
    day = 24 * 3600 * 1000
    for start, end in (
        ("yesterday", now),  # not a date
        (now, "2026-13-01T00:00:00Z"),
        (now - MINUTE, now),  # not more than a minute before end
        (now, now - 5 * MINUTE),  # after end
        (now - 31 * day, now),  # a span over 30 days
        (now - 16 * day, now - 15 * day),  # more than 15 days back
    ):
        status, body = await deleted(http, "Opportunity", start, end)
        assert status == 400, (start, end, body)
        assert body[0]["errorCode"] == "INVALID_REPLICATION_DATE"
    status, body = await deleted(http, "Lead", now - 5 * MINUTE, now)
    assert status == 404 and body[0]["errorCode"] == "NOT_FOUND"


async def test_a_bad_token_is_401(sim: Simulator) -> None:
    async with aiohttp.ClientSession(
        sim.sf_url, headers={"Authorization": "Bearer wrong"}
    ) as session:
        status, body = await deleted(session, "Opportunity", 0, sim.world.now_ms)
    assert status == 401 and body[0]["errorCode"] == "INVALID_SESSION_ID"


async def test_a_purged_delete_log_moves_earliest_date_available_up(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    every = deletes_in_stream(sim, "Application_Item__c")
    assert len(every) >= 3
    cut = every[1][1] + 1
    sim.world.deletes.purge(cut)
    start = sim.world.deletes.start_ms
    status, body = await deleted(http, "Application_Item__c", start, sim.world.now_ms + MINUTE)
    assert status == 200
    assert parse_iso_ms(body["earliestDateAvailable"]) == every[1][1]
    assert [r["id"] for r in body["deletedRecords"]] == [rid for rid, ms in every if ms >= cut]


def test_sf_datetime_is_salesforces_form() -> None:
    assert sf_datetime(1795597200123) == "2026-11-25T09:00:00.123+0000"


# --- the control API ---------------------------------------------------------------


async def control(sim: Simulator, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(sim.sf_url, headers={"Authorization": f"Bearer {TOKEN}"}) as s,
        s.request(method, f"/simulator/{path}", json=body) as response,
    ):
        return response.status, await response.json()


async def test_script_steps_generate_the_transactions_asked_for(make_sim: SimFactory) -> None:
    sim = await make_sim(events=300, records=30)
    await sim.run()
    status, body = await control(
        sim,
        "POST",
        "script",
        {
            "steps": [
                {"kind": "create", "topic": "Application_Item__c"},
                {"kind": "delete", "records": "$0"},
                {"kind": "bulk", "topic": "Opportunity", "size": 3, "overflow": True},
                {"kind": "update", "records": "$2", "ws_delay": 5},
                {"kind": "delete", "pick": 1, "topic": "External_Attachment__c"},
                {"kind": "undelete", "records": "$4"},
            ]
        },
    )
    assert status == 200, body
    steps = body["steps"]
    (fresh,) = steps[0]["records"]
    state = sim.world.record("Application_Item__c", fresh)
    assert state is not None and state.deleted  # created, then deleted
    assert fresh in {rid for rid, _ in sim.world.deleted_between("Application_Item__c", 0, 2**62)}
    assert len(steps[2]["records"]) == 3 and steps[3]["records"] == steps[2]["records"]
    (revived,) = steps[5]["records"]
    state = sim.world.record("External_Attachment__c", revived)
    assert state is not None and not state.deleted
    # The bulk went out as a GAP_OVERFLOW, its event id nowhere on the stream.
    async with ws_connect(sim) as ws:
        await subscribe(ws)
        events, _ = await collect_events(ws, sim.stream.log.latest_counter)
    sent = {e["event_id"]: e for e in events}
    assert steps[2]["event_ids"][0] not in sent
    assert any(
        e["payload"]["ChangeEventHeader"]["changeType"] == "GAP_OVERFLOW"
        for e in events[-len(steps) * 3 :]
    )
    # The delayed updates wait for five later events; two came (steps 4 and 5).
    assert not any(i in sent for i in steps[3]["event_ids"])
    assert sim.plan.held == 3


async def test_a_step_the_records_do_not_allow_is_400(make_sim: SimFactory) -> None:
    sim = await make_sim(events=50, records=10)
    await sim.run()
    for steps in (
        [{"kind": "undelete", "records": ["0065g00000NoSuchAA"]}],
        [{"kind": "explode"}],
        [{"kind": "delete", "records": "$3"}],
        "not a list",
    ):
        status, body = await control(sim, "POST", "script", {"steps": steps})
        assert status == 400 and body["error"], steps


async def test_an_sns_outage_sends_everything_to_the_websocket_alone(
    make_sim: SimFactory,
) -> None:
    sim = await make_sim(events=200, records=30, event_log=None)
    assert (await control(sim, "POST", "sns", {"enabled": False}))[1] == {"enabled": False}
    assert sim.plan.sns_down
    status, stats = await control(sim, "GET", "stats")
    assert status == 200 and stats["sns_down"] is True
    assert (await control(sim, "POST", "sns", {"enabled": True}))[0] == 200
    assert not sim.plan.sns_down
    assert (await control(sim, "POST", "sns", {"on": 1}))[0] == 400


def test_while_sns_is_down_every_event_goes_to_the_websocket_alone() -> None:
    from amt_ingest.simulator.delivery import DeliveryPlan, DeliveryRates
    from amt_ingest.simulator.world import World

    world = World(4, 30)
    plan = DeliveryPlan(4, DeliveryRates(sqs_only_rate=0.5, ws_only_rate=0.2))
    before = plan.route_transaction([world.next_event() for _ in range(1)])
    assert before.sns or before.ws
    plan.sns_down = True
    ws, sns = 0, 0
    for _ in range(200):
        world_event = world.next_event()
        out = plan.route_transaction([world_event])
        ws += len(out.ws)
        sns += len(out.sns)
    assert sns == 0 and ws >= 190  # some may still be held back for reordering: none
    assert plan.stats.sns_outage > 0


async def test_the_event_log_names_what_carried_each_change(
    make_sim: SimFactory, tmp_path: Any
) -> None:
    import orjson

    path = tmp_path / "events.jsonl"
    sim = await make_sim(
        events=800, records=40, gap_rate=0.2, overflow_rate=0.5, event_log=path, seed=3
    )
    await sim.run()
    async with ws_connect(sim) as ws:
        await subscribe(ws)
        events, _ = await collect_events(ws, sim.stream.log.latest_counter)
    sent = {e["event_id"]: e["payload"]["ChangeEventHeader"] for e in events}
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert len(lines) == sim.world.stats.events - sim.world.stats.foreign_org_events
    assert all(line["sent_as"] in sent for line in lines)
    overflowed = [line for line in lines if line["sent_as"] != line["event_id"]]
    assert overflowed, "no overflow in this seed"
    assert all(sent[line["sent_as"]]["changeType"] == "GAP_OVERFLOW" for line in overflowed)
    gapped = [line for line in lines if sent[line["sent_as"]]["changeType"].startswith("GAP_")]
    assert len(gapped) > len(overflowed)
    assert {line["change"] for line in lines} >= {"CREATE", "UPDATE", "DELETE"}
