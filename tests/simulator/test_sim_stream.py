"""The stream protocol decisions, without sockets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from amt_ingest.routing.events import EventsFrame, HeartbeatFrame, SubscribedFrame, parse_ws_frame
from amt_ingest.simulator.stream import (
    Credit,
    Expired,
    ProtocolError,
    StreamLog,
    Subscribe,
    Take,
    decode_replay_id,
    encode_replay_id,
    events_frame,
    heartbeat_frame,
    parse_client_frame,
    subscribed_frame,
)

ALL = frozenset({"Opportunity", "External_Attachment__c", "Application_Item__c"})


def event(n: int, topic: str = "Opportunity") -> dict[str, Any]:
    return {"event_id": f"e{n}", "org_id": "00D", "topic": topic, "payload": {}}


def subscribe(preset: str = "earliest", replay_id: str | None = None) -> Subscribe:
    return Subscribe(("Opportunity",), preset, replay_id, 10)  # type: ignore[arg-type]


def test_replay_ids() -> None:
    assert encode_replay_id(1) == "AAAAAAAAAAE="
    assert encode_replay_id(4) == "AAAAAAAAAAQ="
    assert decode_replay_id("AAAAAAAAAAs=") == 11
    assert decode_replay_id(encode_replay_id(2**40 + 3)) == 2**40 + 3
    for garbage in ("", "not base64!", "AAAA", "AAAAAAAAAAAAAAAA", "é"):
        assert decode_replay_id(garbage) is None


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            {
                "type": "subscribe",
                "topics": ["Opportunity", "Opportunity"],
                "replay": {"preset": "custom", "replay_id": "AAAAAAAAAAQ="},
                "credits": 5,
            },
            Subscribe(("Opportunity",), "custom", "AAAAAAAAAAQ=", 5),
        ),
        (
            {
                "type": "subscribe",
                "topics": ["Opportunity"],
                "replay": {"preset": "latest"},
                "credits": 0,
            },
            Subscribe(("Opportunity",), "latest", None, 0),
        ),
        ({"type": "credit", "n": 500}, Credit(500)),
    ],
)
def test_client_frames(frame: dict[str, Any], expected: object) -> None:
    assert parse_client_frame(orjson.dumps(frame)) == expected


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{", "invalid_request"),
        ("[]", "invalid_request"),
        ('{"type": "hello"}', "invalid_request"),
        ('{"type": "credit", "n": -1}', "invalid_request"),
        ('{"type": "credit", "n": true}', "invalid_request"),
        ('{"type": "subscribe", "topics": [], "replay": {"preset": "latest"}, "credits": 1}',
         "invalid_request"),
        ('{"type": "subscribe", "topics": ["Lead"], "replay": {"preset": "latest"}, "credits": 1}',
         "unknown_topic"),
        ('{"type": "subscribe", "topics": ["Opportunity"], "replay": {"preset": "custom"},'
         ' "credits": 1}', "invalid_request"),
        ('{"type": "subscribe", "topics": ["Opportunity"], "replay": {"preset": "oldest"},'
         ' "credits": 1}', "invalid_request"),
        ('{"type": "subscribe", "topics": ["Opportunity"], "replay": {"preset": "latest"}}',
         "invalid_request"),
    ],
)  # fmt: skip
def test_bad_client_frames(frame: str, code: str) -> None:
    result = parse_client_frame(frame)
    assert isinstance(result, ProtocolError)
    assert result.code == code
    assert result.close_code == 4400


def test_server_frames_parse_with_the_consumer_parser() -> None:
    log = StreamLog()
    log.append_event(event(1) | {"event_id": "1b0c6a4e-8f0f-4d0b-9a63-5f4e1c2d3b01"})
    take = log.take(0, 0, ALL, 10)
    assert isinstance(take, Take)
    frame = parse_ws_frame(events_frame(take.events, encode_replay_id(take.position), 9))
    assert isinstance(frame, EventsFrame)
    assert frame.latest_replay_id == "AAAAAAAAAAE=" and frame.pending_credits == 9
    subscribed = parse_ws_frame(subscribed_frame(("Opportunity",), "AAAAAAAAAAE="))
    assert subscribed == SubscribedFrame(["Opportunity"], "AAAAAAAAAAE=")
    beat = parse_ws_frame(heartbeat_frame("AAAAAAAAAAE=", "2026-11-25T09:49:20.000Z"))
    assert beat == HeartbeatFrame("AAAAAAAAAAE=", "2026-11-25T09:49:20.000Z")


def decoded(take: Take | Expired) -> list[str]:
    assert isinstance(take, Take)
    return [orjson.loads(e)["event_id"] for e in take.events]


def test_take_limits_filters_and_keeps_raw_frames_in_order() -> None:
    log = StreamLog()
    log.append_event(event(1), topic="Opportunity")
    log.append_event(event(2, "Application_Item__c"), topic="Application_Item__c")
    log.append_event(event(3), topic="Opportunity")
    log.append_raw("{")
    log.append_event(event(4, "Lead"), topic=None)  # malformed: for everyone
    topics = frozenset({"Opportunity"})
    first = log.take(0, 0, topics, 1)
    assert decoded(first) == ["e1"]
    # Events of other topics are passed over for free (the position covers them).
    assert isinstance(first, Take) and first.position == 2
    # No credits: nothing to send, the position stays before the next own event.
    stalled = log.take(first.cursor, first.position, topics, 0)
    assert isinstance(stalled, Take) and stalled.events == []
    assert (stalled.cursor, stalled.position) == (first.cursor, 2)
    rest = log.take(stalled.cursor, stalled.position, topics, 10)
    assert decoded(rest) == ["e3"]
    assert isinstance(rest, Take)
    raw = log.take(rest.cursor, rest.position, topics, 10)
    assert isinstance(raw, Take) and raw.raw == b"{" and raw.position == 3
    last = log.take(raw.cursor, raw.position, topics, 10)
    assert decoded(last) == ["e4"]
    assert isinstance(last, Take) and last.cursor == log.end and last.position == 4
    replay_ids = [orjson.loads(e)["replay_id"] for e in last.events]
    assert replay_ids == ["AAAAAAAAAAQ="]


def test_resolve_presets() -> None:
    log = StreamLog()
    for n in range(1, 6):
        log.append_event(event(n), topic="Opportunity")
    assert log.resolve(subscribe("latest")) == (log.end, 5)
    assert log.resolve(subscribe("earliest")) == (0, 0)
    start = log.resolve(subscribe("custom", encode_replay_id(3)))
    assert isinstance(start, tuple)
    assert decoded(log.take(*start, ALL, 10)) == ["e4", "e5"]
    assert log.resolve(subscribe("custom", encode_replay_id(0))) == (0, 0)
    for unknown in (encode_replay_id(6), "garbage"):
        error = log.resolve(subscribe("custom", unknown))
        assert isinstance(error, ProtocolError)
        assert (error.code, error.close_code) == ("replay_id_expired", 4410)


def test_retention_expires_old_replay_ids_and_frees_memory() -> None:
    log = StreamLog(retention=10)
    for n in range(1, 3001):
        log.append_event(event(n), topic="Opportunity")
    assert log.first_counter == 2991
    start = log.resolve(subscribe("earliest"))
    assert isinstance(start, tuple)
    assert decoded(log.take(*start, ALL, 100))[0] == "e2991"
    assert isinstance(log.resolve(subscribe("custom", encode_replay_id(2990))), tuple)
    old = log.resolve(subscribe("custom", encode_replay_id(2989)))
    assert isinstance(old, ProtocolError) and old.close_code == 4410
    assert isinstance(log.take(5, 4, ALL, 10), Expired)
    assert len(log._entries) < 2000
