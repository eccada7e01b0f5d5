"""Withheld content and expired resume points: what a consumer must heal.

GAP_* events and GAP_OVERFLOW (PROTOCOL.md sections 1 and 4), with the truth
and the REST API still holding every real change; replay ids expired on demand
(section 2, close 4410).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from sim_helpers import TOKEN, SimFactory, collect_events, recv, subscribe, ws_connect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from amt_ingest.routing.events import ChangeType, Event, parse_event, record_changes
from amt_ingest.simulator import Simulator
from amt_ingest.simulator.delivery import OVERFLOW_SEQUENCE, DeliveryPlan, DeliveryRates
from amt_ingest.simulator.frames import WsEvent
from amt_ingest.simulator.stream import (
    Expired,
    ProtocolError,
    StreamLog,
    Subscribe,
    decode_replay_id,
    encode_replay_id,
)
from amt_ingest.simulator.truth import MAIN_ORG_ID, iso_ms
from amt_ingest.simulator.world import World

API = "/services/data/v61.0"


def header(event: dict[str, Any]) -> dict[str, Any]:
    h: dict[str, Any] = event["payload"]["ChangeEventHeader"]
    return h


def transactions(world: World, n: int) -> list[list[dict[str, Any]]]:
    """The next ``n`` events of ``world``, grouped by transaction (the last may be cut)."""
    txns: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for _ in range(n):
        current.append(world.next_event())
        if not world.transaction_open:
            txns.append(current)
            current = []
    if current:
        txns.append(current)
    return txns


def plan_all(
    plan: DeliveryPlan, txns: list[list[dict[str, Any]]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ws: list[dict[str, Any]] = []
    sns: list[dict[str, Any]] = []
    for txn in txns:
        out = plan.route_transaction(txn)
        ws += [i.event for i in out.ws if isinstance(i, WsEvent)]
        sns += out.sns
    out = plan.flush()
    ws += [i.event for i in out.ws if isinstance(i, WsEvent)]
    return ws, sns + out.sns


# --- The plan: pure --------------------------------------------------------------


def test_gap_events_keep_the_header_and_carry_no_fields() -> None:
    txns = transactions(World(4, 60, foreign_org_rate=0.1), 1500)
    originals = {e["event_id"]: e for txn in txns for e in txn}
    plan = DeliveryPlan(4, DeliveryRates(gap_rate=0.3, dup_rate=0.1, ws_only_rate=0.1))
    ws, sns = plan_all(plan, txns)
    gaps: dict[str, str] = {}
    for path in (ws, sns):
        for sent in path:
            original = originals[sent["event_id"]]
            h, real = header(sent), header(original)
            if not h["changeType"].startswith("GAP_"):
                assert sent == original
                continue
            assert sent["org_id"] == MAIN_ORG_ID
            assert h["changeType"] == "GAP_" + real["changeType"]
            assert list(sent["payload"]) == ["ChangeEventHeader"]
            assert (h["changedFields"], h["nulledFields"], h["changeOrigin"]) == ([], [], "")
            unchanged = ("changeType", "changeOrigin", "changedFields", "nulledFields")
            assert {k: v for k, v in h.items() if k not in unchanged} == {
                k: v for k, v in real.items() if k not in unchanged
            }
            event = parse_event(sent)
            assert isinstance(event, Event), event
            assert event.change_type.is_gap and event.fields == {}
            changes = record_changes(event)
            assert [c.record_id for c in changes] == real["recordIds"]
            assert all(c.reread and c.values == {} and c.deleted is None for c in changes)
            gaps[sent["event_id"]] = h["changeType"]
    # Same decision on both paths: an event id is a gap everywhere or nowhere.
    kinds = {(e["event_id"], header(e)["changeType"]) for e in ws + sns}
    assert len(kinds) == len({e["event_id"] for e in ws + sns})
    stats = plan.stats.as_dict()
    assert set(stats["gaps"]) == {"GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"}
    assert all(n > 0 for n in stats["gaps"].values()), stats["gaps"]
    assert Counter(gaps.values()) == stats["gaps"]
    assert stats["gap_events"] == sum(stats["gaps"].values())
    main = sum(1 for e in originals.values() if e["org_id"] == MAIN_ORG_ID)
    assert 0.2 * main < stats["gap_events"] < 0.4 * main
    # Foreign-org events are never gaps.
    assert all(
        e["org_id"] == MAIN_ORG_ID for e in ws + sns if header(e)["changeType"].startswith("GAP_")
    )


def test_gaps_do_not_change_routing_or_generation() -> None:
    txns = transactions(World(6, 50), 800)
    again = transactions(World(6, 50), 800)
    assert txns == again  # the World knows nothing of gaps
    rates = DeliveryRates(dup_rate=0.2, ooo_rate=0.2, ws_only_rate=0.2, sqs_only_rate=0.2)
    plain_ws, plain_sns = plan_all(DeliveryPlan(6, rates), txns)
    gapped = dataclasses.replace(rates, gap_rate=0.5)
    gap_ws, gap_sns = plan_all(DeliveryPlan(6, gapped), txns)
    ids = [e["event_id"] for e in plain_ws], [e["event_id"] for e in plain_sns]
    assert ids == ([e["event_id"] for e in gap_ws], [e["event_id"] for e in gap_sns])
    assert plain_ws != gap_ws


def test_overflow_replaces_the_transaction_on_both_paths() -> None:
    txns = transactions(World(8, 80), 2000)
    plan = DeliveryPlan(8, DeliveryRates(overflow_rate=1.0, dup_rate=0.1))
    ws, sns = plan_all(plan, txns)
    overflowed = 0
    for txn in txns:
        headers = [header(e) for e in txn]
        records = {(e["topic"], r) for e in txn for r in header(e)["recordIds"]}
        # Deletes too: a resync finds them through the deleted-records resource.
        eligible = len(records) >= 2
        key = headers[0]["transactionKey"]
        for path in (ws, sns):
            sent = [e for e in path if header(e)["transactionKey"] == key]
            if not eligible:
                assert {e["event_id"] for e in sent} == {e["event_id"] for e in txn}
                continue
            assert not {e["event_id"] for e in sent} & {e["event_id"] for e in txn}
            topics = list(dict.fromkeys(e["topic"] for e in txn))
            firsts = list({e["event_id"]: e for e in sent}.values())
            assert [e["topic"] for e in firsts] == topics  # one per topic
            for n, event in enumerate(firsts):
                h = header(event)
                assert event["org_id"] == MAIN_ORG_ID
                assert list(event["payload"]) == ["ChangeEventHeader"]
                assert h["changeType"] == "GAP_OVERFLOW" and h["recordIds"] == []
                assert h["sequenceNumber"] == OVERFLOW_SEQUENCE + n
                for name in ("commitTimestamp", "commitNumber", "commitUser"):
                    assert h[name] == headers[0][name]
                parsed = parse_event(event)
                assert isinstance(parsed, Event) and parsed.change_type is ChangeType.GAP_OVERFLOW
                assert record_changes(parsed) == []
        if eligible:
            overflowed += 1
    stats = plan.stats
    assert overflowed == stats.overflow_transactions > 50
    assert any(len(txn) == 1 for txn in txns if len(header(txn[0])["recordIds"]) > 1)
    overflow_ids = {e["event_id"] for e in ws if header(e)["changeType"] == "GAP_OVERFLOW"}
    assert len(overflow_ids) == stats.overflows >= overflowed
    assert stats.overflow_records >= 2 * overflowed
    assert stats.routed == len(overflow_ids) + sum(
        len(t) for t in txns if header(t[0])["transactionKey"] not in overflowed_keys(ws)
    )


def overflowed_keys(events: list[dict[str, Any]]) -> set[str]:
    return {
        header(e)["transactionKey"] for e in events if header(e)["changeType"] == "GAP_OVERFLOW"
    }


def test_withheld_records_deleted_later_are_reported() -> None:
    txns = transactions(World(9, 40), 3000)
    plan = DeliveryPlan(9, DeliveryRates(gap_rate=0.3, overflow_rate=0.5))
    ws, _ = plan_all(plan, txns)
    sent = {e["event_id"]: e for e in ws}
    hidden_at: dict[tuple[str, str], int] = {}
    expected: set[tuple[str, str]] = set()
    for n, event in enumerate(e for txn in txns for e in txn):
        h = header(event)
        keys = [(event["topic"], r) for r in h["recordIds"]]
        delivered = sent.get(event["event_id"])
        if h["changeType"] == "DELETE":
            expected.update(k for k in keys if k in hidden_at)
        elif delivered is None or header(delivered)["changeType"].startswith("GAP_"):
            for key in keys:
                hidden_at.setdefault(key, n)
    assert expected and plan.withheld_then_deleted == expected
    assert plan.stats.withheld_then_deleted == len(expected)


def test_rates_are_validated() -> None:
    with pytest.raises(ValueError, match="gap_rate"):
        DeliveryRates(gap_rate=1.5)
    with pytest.raises(ValueError, match="overflow_rate"):
        DeliveryRates(overflow_rate=-0.1)


# --- The simulator: truth, REST and stats ----------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def query_ids(
    http: aiohttp.ClientSession, sim: Simulator, topic: str, since: int
) -> set[str]:
    q = f"SELECT Id FROM {topic} WHERE SystemModstamp >= {iso_ms(since)}"
    async with http.get(f"{sim.sf_url}{API}/query", params={"q": q}) as response:
        assert response.status == 200
        body = await response.json()
    ids = {r["Id"] for r in body["records"]}
    while not body["done"]:
        status, body = await get(http, sim.sf_url + body["nextRecordsUrl"])
        assert status == 200
        ids |= {r["Id"] for r in body["records"]}
    return ids


async def all_events(sim: Simulator) -> list[dict[str, Any]]:
    total = sim.stream.log.latest_counter
    async with ws_connect(sim) as ws:
        await subscribe(ws, credits=total + 10)
        events, _ = await collect_events(ws, total)
    return events


async def test_truth_is_the_same_with_and_without_withheld_content(
    make_sim: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    stats_path = tmp_path / "stats.json"
    plain = await make_sim(events=700, records=60, seed=5)
    healed = await make_sim(
        events=700, records=60, seed=5, gap_rate=0.2, overflow_rate=0.5, stats=stats_path
    )
    await asyncio.gather(plain.run(), healed.run())
    assert healed.world.truth() == plain.world.truth()
    assert healed.stats()["generated"] == plain.stats()["generated"]

    stats = orjson.loads(stats_path.read_bytes())
    delivery = stats["delivery"]
    assert delivery["gap_events"] > 50 and delivery["overflows"] > 5
    assert delivery["overflow_records"] >= 2 * delivery["overflow_transactions"]
    assert len(stats["withheld_then_deleted"]) == delivery["withheld_then_deleted"]
    assert stats["stream"]["entries"] == delivery["ws_entries"]

    events = await all_events(healed)
    kinds = Counter(header(e)["changeType"] for e in events)
    assert (
        sum(n for k, n in kinds.items() if k.startswith("GAP_"))
        == delivery["gap_events"] + (delivery["overflows"])
    )
    # Every withheld change can be healed from the REST API, which serves the truth.
    truth = {(r["topic"], r["id"]): r for r in healed.world.truth()}
    for event in events:
        h = header(event)
        if h["changeType"] == "GAP_OVERFLOW":
            continue
        if not h["changeType"].startswith("GAP_"):
            continue
        for record_id in h["recordIds"]:
            row = truth[(event["topic"], record_id)]
            status, body = await get(
                http, f"{healed.sf_url}{API}/sobjects/{event['topic']}/{record_id}"
            )
            if row["deleted"]:
                assert status == 404
                continue
            assert status == 200
            state = healed.world.record(event["topic"], record_id)
            assert state is not None and state.modstamp_ms >= h["commitTimestamp"]
            assert body["SystemModstamp"] == iso_ms(state.modstamp_ms)
            assert {k: v for k, v in body.items() if k not in ("attributes", "Id")} == {
                "SystemModstamp": body["SystemModstamp"],
                **row["fields"],
            }


async def test_rest_query_from_an_overflow_finds_every_record_it_hid(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(events=600, records=80, seed=12, overflow_rate=1.0, page_size=5)
    await sim.run()
    hidden: dict[str, list[dict[str, Any]]] = {}
    for txn in transactions(World(12, 80), 600):
        hidden[header(txn[0])["transactionKey"]] = txn
    events = await all_events(sim)
    overflows = [e for e in events if header(e)["changeType"] == "GAP_OVERFLOW"]
    assert len(overflows) == sim.plan.stats.overflows > 10
    seen = {e["event_id"] for e in events}
    for overflow in overflows:
        h = header(overflow)
        txn = hidden[h["transactionKey"]]
        assert not seen & {e["event_id"] for e in txn}
        changed = {
            r for e in txn if e["topic"] == overflow["topic"] for r in header(e)["recordIds"]
        }
        assert changed and h["commitTimestamp"] == header(txn[0])["commitTimestamp"]
        found = await query_ids(http, sim, overflow["topic"], h["commitTimestamp"])
        states = [sim.world.record(overflow["topic"], r) for r in changed]
        assert all(s is not None and s.modstamp_ms >= h["commitTimestamp"] for s in states)
        # Overflowed transactions delete nothing; a later transaction may have.
        live = {s.id for s in states if s is not None and not s.deleted}
        assert live <= found


async def test_a_transaction_cut_by_the_event_count_is_still_delivered(
    make_sim: SimFactory,
) -> None:
    world = World(3, 50)
    cut = next(n for n in itertools.count(1) if world.next_event() and world.transaction_open)
    sim = await make_sim(events=cut, records=50, seed=3)
    await sim.run()
    assert sim.stream.log.latest_counter == cut == sim.plan.stats.routed


# --- Expired resume points -----------------------------------------------------------


def sub(replay_id: str | None = None) -> Subscribe:
    preset = "earliest" if replay_id is None else "custom"
    return Subscribe(("Opportunity",), preset, replay_id, 10)  # type: ignore[arg-type]


def test_stream_log_expire() -> None:
    log = StreamLog()
    for n in range(1, 11):
        log.append_event({"event_id": f"e{n}"}, topic="Opportunity")
    reading = log.resolve(sub(encode_replay_id(2)))
    assert isinstance(reading, tuple)
    log.expire(6)
    for old in (0, 5, 6):
        refused = log.resolve(sub(encode_replay_id(old)))
        assert isinstance(refused, ProtocolError)
        assert (refused.code, refused.close_code) == ("replay_id_expired", 4410)
    assert log.resolve(sub(encode_replay_id(7))) == (7, 7)
    assert log.resolve(sub()) == (6, 6)  # earliest: after the expired events
    assert isinstance(log.take(*reading, frozenset({"Opportunity"}), 5), Expired)
    log.expire(3)  # never moves back
    assert isinstance(log.resolve(sub(encode_replay_id(6))), ProtocolError)
    log.expire()
    assert isinstance(log.resolve(sub(encode_replay_id(10))), ProtocolError)
    assert log.resolve(sub()) == (10, 10)
    log.append_event({"event_id": "e11"}, topic="Opportunity")
    assert log.resolve(sub(encode_replay_id(11))) == (11, 11)
    assert log.resolve(sub()) == (10, 10)
    with pytest.raises(ValueError, match="not in the stream"):
        log.expire(12)


async def closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 2)
    return ws.close_code


async def test_expired_cursor_gets_4410_and_earliest_starts_after_it(
    make_sim: SimFactory,
) -> None:
    sim = await make_sim(events=40, heartbeat_interval=0.2)
    await sim.run()
    async with ws_connect(sim) as ws:
        await subscribe(ws, credits=25)
        events, _ = await collect_events(ws, 25)
    cursor = events[-1]["replay_id"]
    # The consumer is down; its resume point expires.
    sim.expire_replay_ids()
    for resume in (cursor, sim.stream.log.latest_replay_id):
        async with ws_connect(sim) as ws:
            error = await subscribe(ws, preset="custom", replay_id=resume)
            assert (error["type"], error["code"]) == ("error", "replay_id_expired")
            assert await closed_with(ws) == 4410
    async with ws_connect(sim) as ws:
        subscribed = await subscribe(ws, preset="earliest")
        assert subscribed["type"] == "subscribed"
        beat = await recv(ws, 3)  # nothing left to replay
        assert beat["type"] == "heartbeat"
    with pytest.raises(ValueError, match="not a replay id"):
        sim.expire_replay_ids("garbage")


async def test_expiry_closes_a_subscription_reading_behind_it(make_sim: SimFactory) -> None:
    sim = await make_sim(events=30)
    await sim.run()
    async with ws_connect(sim) as ws:
        await subscribe(ws, credits=10)
        events, _ = await collect_events(ws, 10)
        sim.expire_replay_ids(encode_replay_id(20))
        error = await recv(ws)
        assert (error["type"], error["code"]) == ("error", "replay_id_expired")
        assert await closed_with(ws) == 4410
    assert decode_replay_id(events[-1]["replay_id"]) == 10
    async with ws_connect(sim) as ws:
        await subscribe(ws, preset="custom", replay_id=encode_replay_id(21))
        rest, _ = await collect_events(ws, 9)
    assert [decode_replay_id(e["replay_id"]) for e in rest] == list(range(22, 31))
