"""Parsing of events, WebSocket frames and SQS bodies, against every sample."""

from __future__ import annotations

import json

import pytest

from amt_ingest.routing.events import (
    DELETED_FIELD,
    REASONS,
    ChangeType,
    ErrorFrame,
    Event,
    EventsFrame,
    HeartbeatFrame,
    Rejected,
    SubscribedFrame,
    parse_event,
    parse_sqs_message,
    parse_ws_frame,
    record_changes,
)
from amt_ingest.routing.positions import position_key
from tests.conftest import SAMPLES

EVENT_SAMPLES = sorted(SAMPLES.glob("event-*.json"))


def load(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


@pytest.mark.parametrize("path", EVENT_SAMPLES, ids=lambda p: p.name)
def test_every_event_sample_is_valid(path):
    obj = json.loads(path.read_text())
    event = parse_event(obj)
    assert isinstance(event, Event), event
    assert event.event_id == obj["event_id"]
    assert event.topic == obj["topic"]
    assert "ChangeEventHeader" not in event.fields


def test_update_with_nulled_field_sets_it_to_none():
    event = parse_event(load("event-opportunity-update-nulled.json"))
    assert isinstance(event, Event)
    (change,) = record_changes(event)
    assert change.values == {
        "Amount": 12500.0,
        "CloseDate": None,
        "LastModifiedDate": "2026-11-25T09:50:01.000Z",
    }
    assert change.deleted is None


def test_update_lists_nulled_field_missing_from_payload():
    obj = load("event-opportunity-update.json")
    obj["payload"]["ChangeEventHeader"]["nulledFields"] = ["AccountId"]
    event = parse_event(obj)
    assert isinstance(event, Event)
    assert record_changes(event)[0].values["AccountId"] is None


def test_multi_record_event_changes_each_record():
    event = parse_event(load("event-items-multi-update.json"))
    assert isinstance(event, Event)
    changes = record_changes(event)
    assert [c.record_id for c in changes] == [
        "a0Y5g000003ItM1EAK",
        "a0Y5g000003ItM2EAK",
        "a0Y5g000003ItM3EAK",
    ]
    assert all(
        c.values == {"Status__c": "Complete", "LastModifiedDate": "2026-11-25T09:52:00.000Z"}
        for c in changes
    )


def test_delete_is_a_tombstone_and_create_clears_it():
    delete = parse_event(load("event-attachment-delete.json"))
    create = parse_event(load("event-attachment-create.json"))
    assert isinstance(delete, Event) and isinstance(create, Event)
    assert record_changes(delete)[0].deleted is True
    assert record_changes(delete)[0].values == {}
    assert record_changes(create)[0].deleted is False
    assert DELETED_FIELD not in record_changes(create)[0].values


def test_gap_events_need_a_reread():
    gap = parse_event(load("event-items-gap-update.json"))
    overflow = parse_event(load("event-opportunity-gap-overflow.json"))
    assert isinstance(gap, Event) and isinstance(overflow, Event)
    assert gap.change_type is ChangeType.GAP_UPDATE
    assert record_changes(gap)[0].reread
    assert overflow.record_ids == []
    assert record_changes(overflow) == []


def test_position_key_orders_like_the_triple():
    triples = [(1, 2, 3), (1, 10, 0), (2, 0, 0), (1, 2, 10), (10**13, 5, 1)]
    keys = [position_key(*t) for t in triples]
    assert sorted(keys) == [position_key(*t) for t in sorted(triples)]
    assert len({len(k) for k in keys}) == 1


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda o: o.update(topic="Lead"), "unknown_topic"),
        (lambda o: o.update(event_id="not-a-uuid"), "invalid_event"),
        (lambda o: o.update(org_id="00X5g000004ZzABEA0"), "invalid_event"),
        (lambda o: o.pop("payload"), "invalid_event"),
        (lambda o: o["payload"].pop("ChangeEventHeader"), "invalid_event"),
        (lambda o: o["payload"]["ChangeEventHeader"].update(changeType="MERGE"), "invalid_event"),
        (lambda o: o["payload"]["ChangeEventHeader"].update(commitTimestamp=-1), "invalid_event"),
        (
            lambda o: o["payload"]["ChangeEventHeader"].update(entityName="Account"),
            "entity_mismatch",
        ),
        (lambda o: o["payload"]["ChangeEventHeader"].update(recordIds=[]), "missing_record_ids"),
        (lambda o: o["payload"]["ChangeEventHeader"].update(recordIds=[""]), "invalid_event"),
    ],
)
def test_invalid_events_are_rejected_with_a_reason(mutate, reason):
    obj = load("event-opportunity-update.json")
    mutate(obj)
    result = parse_event(obj)
    assert isinstance(result, Rejected)
    assert result.reason == reason
    assert result.detail
    assert result.raw  # the input is kept for the dead-letter place


def test_rejection_reasons_are_a_closed_set():
    with pytest.raises(ValueError, match="unknown rejection reason"):
        Rejected("whatever", "x")


def test_ws_sample_frames():
    frames = [
        parse_ws_frame(line) for line in (SAMPLES / "ws-frames.jsonl").read_text().splitlines()
    ]
    subscribed, events, heartbeat, error = frames
    assert isinstance(subscribed, SubscribedFrame)
    assert subscribed.latest_replay_id == "AAAAAAAAAAM="
    assert isinstance(events, EventsFrame)
    assert [type(i) for i in events.items] == [Event, Event]
    assert events.items[1].replay_id == "AAAAAAAAAAQ="
    assert events.pending_credits == 498
    assert isinstance(heartbeat, HeartbeatFrame)
    assert isinstance(error, ErrorFrame)
    assert error.code == "replay_id_expired"


def test_ws_malformed_frames_are_rejected_with_reasons():
    lines = (SAMPLES / "ws-frames-malformed.jsonl").read_text().splitlines()
    raw = [json.loads(line) for line in lines]
    results = [parse_ws_frame(r) for r in raw]
    assert [r.reason if isinstance(r, Rejected) else None for r in results] == [
        "invalid_json",
        "invalid_json",
        "not_an_object",
        "not_an_object",
        None,
        None,
        "unknown_frame_type",
    ]
    bad_id, bad_topic = results[4], results[5]
    assert isinstance(bad_id, EventsFrame) and isinstance(bad_topic, EventsFrame)
    assert [i.reason for i in bad_id.items] == ["invalid_event"]
    assert [i.reason for i in bad_topic.items] == ["unknown_topic"]


def test_ws_oversized_frame_is_rejected():
    result = parse_ws_frame("x" * 2000, max_bytes=1000)
    assert isinstance(result, Rejected) and result.reason == "oversized"


def test_sqs_sns_envelope():
    message = load("sqs-message-sns-envelope.json")
    event = parse_sqs_message(message["Body"], message["MessageAttributes"])
    assert isinstance(event, Event)
    assert event.event_id == "7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a"
    assert event.fields["StageName"] == "Submitted"


def test_sqs_raw_delivery():
    message = load("sqs-message-raw-delivery.json")
    event = parse_sqs_message(message["Body"], message["MessageAttributes"])
    assert isinstance(event, Event)
    assert event.topic == "External_Attachment__c"
    assert event.replay_id is None


def test_sqs_truncated_envelope_is_rejected():
    body = load("sqs-message-sns-envelope.json")["Body"]
    assert isinstance(parse_sqs_message(body[:200]), Rejected)
    envelope = json.loads(body)
    envelope["Message"] = envelope["Message"][:100]
    result = parse_sqs_message(json.dumps(envelope))
    assert isinstance(result, Rejected) and result.reason == "invalid_envelope"
    del envelope["Message"]
    result = parse_sqs_message(json.dumps(envelope))
    assert isinstance(result, Rejected) and result.reason == "invalid_envelope"


def test_sqs_attribute_contradicting_event_is_rejected():
    message = load("sqs-message-raw-delivery.json")
    message["MessageAttributes"]["event_type"]["StringValue"] = "Opportunity"
    result = parse_sqs_message(message["Body"], message["MessageAttributes"])
    assert isinstance(result, Rejected) and result.reason == "attribute_mismatch"


@pytest.mark.parametrize("body", ["", "{", "null", "[]", '"text"', b"\xff\xfe"])
def test_sqs_garbage_bodies_are_rejected(body):
    result = parse_sqs_message(body)
    assert isinstance(result, Rejected)
    assert result.reason in REASONS
