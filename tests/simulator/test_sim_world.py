"""The pure simulator parts: event generation, ground truth, delivery plan."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from typing import Any

import orjson
import pytest

from amt_ingest.routing.events import (
    Event,
    EventsFrame,
    Rejected,
    parse_event,
    parse_sqs_message,
    parse_ws_frame,
    record_changes,
)
from amt_ingest.simulator.delivery import DeliveryPlan, DeliveryRates, Reorderer
from amt_ingest.simulator.frames import WsBadEvent, WsEvent, WsRawFrame
from amt_ingest.simulator.truth import (
    FOREIGN_ORG_ID,
    MAIN_ORG_ID,
    START_MS,
    iso_ms,
    parse_iso_ms,
    truth_jsonl,
)
from amt_ingest.simulator.world import World

ID_PATTERN = {
    "Opportunity": re.compile(r"^006[A-Za-z0-9]{15}$"),
    "External_Attachment__c": re.compile(r"^a0X[A-Za-z0-9]{15}$"),
    "Application_Item__c": re.compile(r"^a0Y[A-Za-z0-9]{15}$"),
}


def generate(world: World, n: int) -> list[dict[str, Any]]:
    return [world.next_event() for _ in range(n)]


@pytest.fixture(scope="module")
def history() -> tuple[World, list[dict[str, Any]]]:
    world = World(7, 200, foreign_org_rate=0.1)
    return world, generate(world, 4000)


def header(event: dict[str, Any]) -> dict[str, Any]:
    h: dict[str, Any] = event["payload"]["ChangeEventHeader"]
    return h


def fields(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event["payload"].items() if k != "ChangeEventHeader"}


def test_same_seed_same_events() -> None:
    assert generate(World(3, 50), 500) == generate(World(3, 50), 500)
    assert generate(World(3, 50), 50) != generate(World(4, 50), 50)


def test_main_org_events_do_not_depend_on_the_foreign_org() -> None:
    plain = generate(World(5, 80), 300)
    mixed = [e for e in generate(World(5, 80, foreign_org_rate=0.3), 450)]
    assert [e for e in mixed if e["org_id"] == MAIN_ORG_ID][:250] == plain[:250]


def test_every_event_is_valid_and_shaped_like_protocol(
    history: tuple[World, list[dict[str, Any]]],
) -> None:
    _, events = history
    for event in events:
        parsed = parse_event(event)
        assert isinstance(parsed, Event), parsed
        assert "replay_id" not in event
        assert list(event) == ["event_id", "org_id", "topic", "payload"]
        h = header(event)
        assert h["entityName"] == event["topic"]
        assert all(ID_PATTERN[event["topic"]].match(r) for r in h["recordIds"])
        body = fields(event)
        if h["changeType"] in ("CREATE", "UNDELETE"):
            assert h["changedFields"] == []
            assert body and None not in body.values()
        elif h["changeType"] == "UPDATE":
            assert h["changedFields"] == list(body)
            assert "LastModifiedDate" in body
            assert h["nulledFields"] == [k for k, v in body.items() if v is None]
        else:
            assert h["changeType"] == "DELETE"
            assert body == {}
        if "LastModifiedDate" in body:
            assert body["LastModifiedDate"] == iso_ms(h["commitTimestamp"])


def test_positions_increase_in_commit_order(
    history: tuple[World, list[dict[str, Any]]],
) -> None:
    _, events = history
    for org in (MAIN_ORG_ID, FOREIGN_ORG_ID):
        headers = [header(e) for e in events if e["org_id"] == org]
        assert headers[0]["commitTimestamp"] > START_MS
        for before, after in itertools.pairwise(headers):
            if after["transactionKey"] == before["transactionKey"]:
                assert after["commitTimestamp"] == before["commitTimestamp"]
                assert after["commitNumber"] == before["commitNumber"]
                assert after["sequenceNumber"] == before["sequenceNumber"] + 1
            else:
                assert after["commitTimestamp"] > before["commitTimestamp"]
                assert after["commitNumber"] > before["commitNumber"]
                assert after["sequenceNumber"] == 1
        assert any(h["sequenceNumber"] > 1 for h in headers)  # transactions occur


def test_lifecycle_is_respected_and_all_kinds_occur(
    history: tuple[World, list[dict[str, Any]]],
) -> None:
    _, events = history
    state: dict[tuple[str, str], str] = {}  # "live" or "deleted"
    kinds: Counter[str] = Counter()
    for event in events:
        h = header(event)
        kind = h["changeType"]
        kinds[kind] += 1
        ids = h["recordIds"]
        if len(ids) > 1:
            kinds["multi"] += 1
            assert kind == "UPDATE"
            assert 2 <= len(ids) <= 4
            assert len(set(ids)) == len(ids)
        if h["nulledFields"]:
            kinds["nulled"] += 1
        for record_id in ids:
            key = (event["org_id"], record_id)
            before = state.get(key)
            if kind == "CREATE":
                assert before is None
                state[key] = "live"
            elif kind == "UNDELETE":
                assert before == "deleted"
                state[key] = "live"
            else:
                assert before == "live", (kind, record_id)
                state[key] = "deleted" if kind == "DELETE" else "live"
    for kind in ("CREATE", "UPDATE", "DELETE", "UNDELETE", "multi", "nulled"):
        assert kinds[kind] >= 5, kinds


def test_truth_equals_an_independent_replay(
    history: tuple[World, list[dict[str, Any]]],
) -> None:
    world, events = history
    # Replay the events shuffled, ordered again only by their positions,
    # through the consumer-side parser and CDC rules of amt_ingest.events.
    shuffled = list(events)
    random.Random(1).shuffle(shuffled)
    parsed = [parse_event(e) for e in shuffled if e["org_id"] == MAIN_ORG_ID]
    assert all(isinstance(p, Event) for p in parsed)
    ordered = sorted((p for p in parsed if isinstance(p, Event)), key=lambda p: p.position)
    store: dict[tuple[str, str], dict[str, Any]] = {}
    for event in ordered:
        for change in record_changes(event):
            row = store.setdefault(
                (change.topic, change.record_id),
                {
                    "topic": change.topic,
                    "id": change.record_id,
                    "org_id": change.org_id,
                    "deleted": False,
                    "fields": {},
                },
            )
            row["fields"].update(change.values)
            if change.deleted is not None:
                row["deleted"] = change.deleted
    expected = [store[key] for key in sorted(store)]
    assert world.truth() == expected
    assert any(r["deleted"] for r in expected)
    assert any(None in r["fields"].values() for r in expected)


def test_foreign_org_records_are_not_in_the_truth(
    history: tuple[World, list[dict[str, Any]]],
) -> None:
    world, events = history
    foreign_ids = {
        r for e in events if e["org_id"] == FOREIGN_ORG_ID for r in header(e)["recordIds"]
    }
    main_ids = {r for e in events if e["org_id"] == MAIN_ORG_ID for r in header(e)["recordIds"]}
    truth = world.truth()
    assert foreign_ids
    assert not foreign_ids & main_ids
    assert {r["id"] for r in truth} == main_ids
    assert {r["org_id"] for r in truth} == {MAIN_ORG_ID}
    assert world.stats.foreign_org_events == sum(1 for e in events if e["org_id"] != MAIN_ORG_ID)


def test_truth_is_sorted_json_lines(history: tuple[World, list[dict[str, Any]]]) -> None:
    world, _ = history
    truth = world.truth()
    assert [(r["topic"], r["id"]) for r in truth] == sorted((r["topic"], r["id"]) for r in truth)
    lines = truth_jsonl(truth).decode().splitlines()
    assert [orjson.loads(line) for line in lines] == truth
    assert list(truth[0]) == ["topic", "id", "org_id", "deleted", "fields"]


def test_rest_view_matches_truth(history: tuple[World, list[dict[str, Any]]]) -> None:
    world, events = history
    last = {}
    for e in events:
        if e["org_id"] == MAIN_ORG_ID:
            for r in header(e)["recordIds"]:
                last[(e["topic"], r)] = header(e)["commitTimestamp"]
    for row in world.truth():
        state = world.record(row["topic"], row["id"])
        assert state is not None
        assert state.modstamp_ms == last[(row["topic"], row["id"])]
    since = sorted(last.values())[len(last) // 2]
    recent = world.modified_since("Opportunity", since)
    assert recent
    assert all(s.modstamp_ms >= since and not s.deleted for s in recent)
    assert [s.modstamp_ms for s in recent] == sorted(s.modstamp_ms for s in recent)


def test_iso_round_trip() -> None:
    assert iso_ms(START_MS) == "2026-11-25T09:00:00.000Z"
    assert iso_ms(START_MS + 49 * 60_000 + 18_123) == "2026-11-25T09:49:18.123Z"
    assert parse_iso_ms("2026-11-25T09:49:18.123Z") == START_MS + 49 * 60_000 + 18_123
    assert parse_iso_ms("2026-11-25T10:00:00+01:00") == START_MS
    assert parse_iso_ms("yesterday") is None


# --- Delivery plan ---------------------------------------------------------------


def run_plan(
    rates: DeliveryRates, events: list[dict[str, Any]], seed: int = 1
) -> tuple[DeliveryPlan, list[Any], list[dict[str, Any]], list[str]]:
    plan = DeliveryPlan(seed, rates)
    ws: list[Any] = []
    sns: list[dict[str, Any]] = []
    sqs: list[str] = []
    for event in events:
        out = plan.route(event)
        ws += out.ws
        sns += out.sns
        sqs += out.sqs_raw
    out = plan.flush()
    return plan, ws + out.ws, sns + out.sns, sqs + out.sqs_raw


def ids(items: list[Any]) -> list[str]:
    return [
        (i.event if isinstance(i, WsEvent) else i)["event_id"]
        for i in items
        if not isinstance(i, WsRawFrame | WsBadEvent)
    ]


def test_plan_default_sends_everything_once_in_order() -> None:
    events = generate(World(2, 50), 300)
    expected = [e["event_id"] for e in events]
    _, ws, sns, sqs = run_plan(DeliveryRates(), events)
    assert ids(ws) == expected
    assert ids(sns) == expected
    assert sqs == []
    _, ws, sns, _ = run_plan(DeliveryRates(sns=False, sqs_only_rate=0.5), events)
    assert ids(ws) == expected
    assert sns == []


def test_plan_routes_duplicates_and_reorders_per_path() -> None:
    events = generate(World(2, 50), 2000)
    rates = DeliveryRates(
        dup_rate=0.1, ooo_rate=0.2, ooo_window=5, ws_only_rate=0.1, sqs_only_rate=0.15
    )
    plan, ws, sns, _ = run_plan(rates, events)
    again = run_plan(rates, events)
    assert (ids(ws), ids(sns)) == (ids(again[1]), ids(again[2]))
    stats = plan.stats
    ws_count, sns_count = Counter(ids(ws)), Counter(ids(sns))
    every = {e["event_id"] for e in events}
    assert set(ws_count) | set(sns_count) == every
    assert len(every - set(sns_count)) == stats.ws_only > 0
    assert len(every - set(ws_count)) == stats.sqs_only > 0
    assert sum(1 for n in ws_count.values() if n == 2) == stats.ws_duplicates > 0
    assert sum(1 for n in sns_count.values() if n == 2) == stats.sns_duplicates > 0
    assert max(ws_count.values()) == max(sns_count.values()) == 2
    assert len(ws) == stats.ws_entries and len(sns) == stats.sns_publishes
    order = {e["event_id"]: i for i, e in enumerate(events)}
    first_ws = [order[i] for i in dict.fromkeys(ids(ws))]
    first_sns = [order[i] for i in dict.fromkeys(ids(sns))]
    assert first_ws != sorted(first_ws)
    assert first_sns != sorted(first_sns)
    assert first_ws != first_sns


def test_reorderer_delays_within_the_window() -> None:
    window = 4
    reorderer: Reorderer[int] = Reorderer(random.Random(3), 0.5, window)
    out: list[int] = []
    for n in range(1000):
        out += reorderer.push(n)
    out += reorderer.flush()
    assert sorted(out) == list(range(1000))
    assert out != sorted(out)
    position = {n: i for i, n in enumerate(out)}
    for n in range(1000):
        overtaken_by = sum(1 for m in range(n + 1, min(1000, n + 50)) if position[m] < position[n])
        assert overtaken_by <= window


def test_malformed_items_are_all_rejected() -> None:
    events = generate(World(2, 50), 600)
    rates = DeliveryRates(malformed_rate=0.3, malformed_sqs=True)
    plan, ws, _, sqs = run_plan(rates, events)
    bad_ws = [i for i in ws if isinstance(i, WsRawFrame | WsBadEvent)]
    assert len(bad_ws) == plan.stats.malformed_ws > 50
    assert len(sqs) == plan.stats.malformed_sqs > 50
    for item in bad_ws:
        if isinstance(item, WsRawFrame):
            assert isinstance(parse_ws_frame(item.text), Rejected), item
        else:
            frame = parse_ws_frame(orjson.dumps({"type": "events", "events": [item.obj]}))
            assert isinstance(frame, EventsFrame)
            assert isinstance(frame.items[0], Rejected), item
    reasons = {
        r.reason for r in (parse_sqs_message(body) for body in sqs) if isinstance(r, Rejected)
    }
    assert all(isinstance(parse_sqs_message(body), Rejected) for body in sqs)
    assert {"invalid_json", "unknown_topic", "invalid_envelope", "attribute_mismatch"} <= reasons
    # Without a queue no malformed SQS bodies are planned.
    _, _, _, none = run_plan(DeliveryRates(malformed_rate=0.3), events)
    assert none == []


def test_rates_are_validated() -> None:
    with pytest.raises(ValueError, match="must not exceed 1"):
        DeliveryRates(ws_only_rate=0.6, sqs_only_rate=0.6)
    with pytest.raises(ValueError, match="dup_rate"):
        DeliveryRates(dup_rate=1.5)
    with pytest.raises(ValueError, match="foreign_org_rate"):
        World(1, 10, foreign_org_rate=2.0)
