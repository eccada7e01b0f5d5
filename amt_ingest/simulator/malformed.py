"""Malformed input for both paths (tests/samples/ws-frames-malformed.jsonl), seeded."""

from __future__ import annotations

import random
from typing import Any

import orjson

from amt_ingest.simulator.frames import WsBadEvent, WsItem, WsRawFrame
from amt_ingest.simulator.population import BASE62, uuid4_from
from amt_ingest.simulator.truth import CHANGE_ORIGIN, MAIN_ORG_ID, START_MS, iso_ms

__all__ = ["malformed_sqs_body", "malformed_ws_item"]


def _lead_event(rng: random.Random) -> dict[str, Any]:
    return {
        "event_id": uuid4_from(rng),
        "org_id": MAIN_ORG_ID,
        "topic": "Lead",
        "payload": {
            "ChangeEventHeader": {
                "entityName": "Lead",
                "recordIds": ["00Q5g00000" + "".join(rng.choice(BASE62) for _ in range(8))],
                "changeType": "UPDATE",
                "changeOrigin": CHANGE_ORIGIN,
                "transactionKey": uuid4_from(rng),
                "sequenceNumber": 1,
                "commitTimestamp": START_MS,
                "commitNumber": 1,
                "commitUser": "0055g000001hv4SAAQ",
                "changedFields": ["Status"],
                "nulledFields": [],
                "diffFields": [],
            },
            "Status": "Working",
        },
    }


def _bad_id_event(rng: random.Random) -> dict[str, Any]:
    return {"event_id": "not-a-uuid", "org_id": "00D", "topic": "Opportunity", "payload": {}}


def _no_record_ids_event(rng: random.Random) -> dict[str, Any]:
    event = _lead_event(rng)
    event["topic"] = "Application_Item__c"
    header = event["payload"]["ChangeEventHeader"]
    header["entityName"] = "Application_Item__c"
    header["recordIds"] = []
    return event


def malformed_ws_item(rng: random.Random) -> WsItem:
    """One malformed WebSocket item, as in tests/samples/ws-frames-malformed.jsonl."""
    kind = rng.randrange(7)
    if kind == 0:
        return WsRawFrame("{")
    if kind == 1:
        return WsRawFrame('{"type":"mystery"}')
    if kind == 2:
        return WsRawFrame(rng.choice(["null", "[]", ""]))
    if kind == 3:
        return WsBadEvent(_bad_id_event(rng))
    if kind == 4:
        return WsBadEvent(_no_record_ids_event(rng))
    return WsBadEvent(_lead_event(rng))


def malformed_sqs_body(rng: random.Random) -> str:
    """One malformed SQS message body (none of them is a valid event)."""
    kind = rng.randrange(6)
    if kind == 0:
        return "this is not JSON"
    if kind == 1:
        return "[]"
    envelope: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": uuid4_from(rng),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:passport-opportunity",
        "Timestamp": iso_ms(START_MS),
    }
    if kind == 2:
        envelope["Message"] = '{"event_id": "7d7c3c1e-2b2f-4d69'
    elif kind == 3:
        envelope["Type"] = "SubscriptionConfirmation"
        envelope["Message"] = "You have chosen to subscribe to the topic."
    elif kind == 4:
        return orjson.dumps(_lead_event(rng)).decode()
    else:
        # A readable event whose attributes contradict it.
        event = _lead_event(rng)
        event["topic"] = "Opportunity"
        header = event["payload"]["ChangeEventHeader"]
        header["entityName"] = "Opportunity"
        header["recordIds"] = ["006" + "5g0000Zz" + "".join(rng.choice(BASE62) for _ in range(7))]
        envelope["Message"] = orjson.dumps(event).decode()
        envelope["MessageAttributes"] = {
            "event_type": {"Type": "String", "Value": "Application_Item__c"},
            "org_id": {"Type": "String", "Value": MAIN_ORG_ID},
        }
    return orjson.dumps(envelope).decode()
