"""Property: no input makes a parser raise; every input is accepted or rejected with a reason."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amt_ingest.routing.events import (
    REASONS,
    Event,
    EventsFrame,
    Rejected,
    parse_event,
    parse_sqs_message,
    parse_ws_frame,
)
from tests.conftest import SAMPLES

EVENTS = [json.loads(p.read_text()) for p in sorted(SAMPLES.glob("event-*.json"))]
ENVELOPE = json.loads(json.loads((SAMPLES / "sqs-message-sns-envelope.json").read_text())["Body"])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_events(draw):
    event = json.loads(json.dumps(draw(st.sampled_from(EVENTS))))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(event) if p]
        path = draw(st.sampled_from(paths))
        parent = event
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return event


def check(result, *, frame: bool) -> None:
    if isinstance(result, Rejected):
        assert result.reason in REASONS and result.detail
    elif frame and isinstance(result, EventsFrame):
        for item in result.items:
            assert isinstance(item, Event | Rejected)
            if isinstance(item, Rejected):
                assert item.reason in REASONS and item.detail


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data):
    check(parse_ws_frame(data), frame=True)
    check(parse_sqs_message(data), frame=False)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_events())
def test_mutated_real_events(event):
    text = json.dumps(event)
    check(parse_ws_frame(json.dumps({"type": "events", "events": [event]})), frame=True)
    check(parse_sqs_message(text), frame=False)
    envelope = dict(ENVELOPE, Message=text)
    check(parse_sqs_message(json.dumps(envelope)), frame=False)


@settings(max_examples=200)
@given(st.text(max_size=200), st.integers(0, 400))
def test_truncated_envelopes(junk, cut):
    body = json.dumps(ENVELOPE)[:cut] + junk
    check(parse_sqs_message(body), frame=False)


def _same_result(obj) -> None:
    """parse_event (with its shortcut for plain events) answers as the models do."""
    from amt_ingest.routing.events import _validated_event, parse_event

    expected = _validated_event(copy.deepcopy(obj))
    result = parse_event(obj)
    assert type(result) is type(expected)
    assert result == expected  # events: every field but raw; rejections: all of them
    if isinstance(result, Event):
        assert result.raw == obj
        assert result.header.model_fields_set == expected.header.model_fields_set
        assert result.header.model_dump() == expected.header.model_dump()
        assert list(result.fields) == list(expected.fields)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_events())
def test_the_shortcut_for_plain_events_agrees_with_the_models(event):
    _same_result(event)


_DELETE = object()

# Values that the models accept after coercing or normalising them, or refuse;
# fields left out.
_variants = [
    *((f"header.{name}", _DELETE) for name in ("recordIds", "transactionKey", "commitNumber")),
    *((f"header.{name}", _DELETE) for name in ("changeOrigin", "commitUser", "diffFields")),
    ("payload.ChangeEventHeader", _DELETE),
    ("replay_id", _DELETE),
    ("event_id", "7D7C3C1E-2B2F-4D69-9A0E-3F1F3B1D2C4A"),
    ("event_id", "{7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a}"),
    ("event_id", "7d7c3c1e2b2f4d699a0e3f1f3b1d2c4a"),
    ("event_id", "urn:uuid:7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a"),
    ("event_id", "7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a\n"),
    ("org_id", "00D5g000004ZzABEA0\n"),
    ("org_id", "00D5g000004ZzAB"),
    ("org_id", "00X5g000004ZzABEA0"),
    ("org_id", 5),
    ("event_id", "not-a-uuid"),
    ("payload", []),
    ("header.transactionKey", None),
    ("replay_id", 12),
    ("replay_id", None),
    ("topic", "Lead"),
    ("header.sequenceNumber", "7"),
    ("header.sequenceNumber", True),
    ("header.sequenceNumber", 7.0),
    ("header.commitTimestamp", -1),
    ("header.changeType", "create"),
    ("header.recordIds", ("a", "b")),
    ("header.recordIds", ["a", ""]),
    ("header.recordIds", []),
    ("header.entityName", "Account"),
    ("header.extraHeaderKey", {"kept": True}),
    ("header.changedFields", None),
    ("payload.Amount", None),
]


@pytest.mark.parametrize(("path", "value"), _variants)
@pytest.mark.parametrize(
    "sample", EVENTS, ids=lambda e: e["payload"]["ChangeEventHeader"]["changeType"]
)
def test_the_shortcut_agrees_on_coerced_and_refused_values(sample, path, value):
    event = json.loads(json.dumps(sample))
    where, _, key = path.rpartition(".")
    target = {
        "": event,
        "payload": event["payload"],
        "header": event["payload"]["ChangeEventHeader"],
    }[where]
    if value is _DELETE:
        target.pop(key, None)
    else:
        target[key] = value
    _same_result(event)
    result = parse_event(event)
    if path == "event_id" and isinstance(result, Event):
        assert result.event_id == "7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a"  # normalised


def test_the_shortcut_agrees_on_what_is_not_an_event():
    for obj in (None, [], "x", 1, {}, {"payload": {}}, {1: 2}):
        _same_result(obj)
    for sample in EVENTS:  # keys JSON cannot have, from a caller that is not a parser
        event = copy.deepcopy(sample)
        event["payload"][1] = "x"
        _same_result(event)
        event = copy.deepcopy(sample)
        event[2] = "ignored"
        _same_result(event)
