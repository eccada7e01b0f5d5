"""Property: no input makes a parser raise; every input is accepted or rejected with a reason."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amt_ingest.events import (
    REASONS,
    Event,
    EventsFrame,
    Rejected,
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
