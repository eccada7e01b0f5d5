"""The pure core of the dlq command: no event loop, no I/O."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest

from amt_ingest.operations.deadletters.letters import (
    DeadLetter,
    Filters,
    choose_target,
    file_letter,
    file_line_id,
    format_age,
    letter_json,
    list_line,
    parse_age,
    place_of,
    plan_replay,
    record_letter,
    replay_attributes,
    show_text,
    sqs_letter,
    table,
)
from amt_ingest.operations.progress import PlainProgress, RichProgress, progress_for
from tests.conftest import SAMPLES

ORG = "00D5g000004ZzABEA0"
QUEUE_A = "http://sqs.local/123456789012/amt-a"
QUEUE_B = "http://sqs.local/123456789012/amt-b"
DLQ = "http://sqs.local/123456789012/amt-a-dlq"
ARN_B = "arn:aws:sqs:us-east-1:123456789012:amt-b"
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
ENVELOPE = json.loads((SAMPLES / "sqs-message-sns-envelope.json").read_text())
RAW = json.loads((SAMPLES / "sqs-message-raw-delivery.json").read_text())


def ms(when: dt.datetime) -> str:
    return str(int(when.timestamp() * 1000))


def received(
    body: str,
    attributes: dict[str, str] | None = None,
    *,
    message_id: str = "5fe8a7c1-0000-4000-8000-000000000001",
    sent: dt.datetime = NOW - dt.timedelta(hours=3),
    **system: str,
) -> dict:
    """A DLQ message as ReceiveMessage returns it."""
    return {
        "MessageId": message_id,
        "ReceiptHandle": "handle-1",
        "Body": body,
        "MessageAttributes": {
            k: {"DataType": "String", "StringValue": v} for k, v in (attributes or {}).items()
        },
        "Attributes": {
            "SentTimestamp": ms(sent),
            "ApproximateReceiveCount": "6",
            "ApproximateFirstReceiveTimestamp": ms(sent + dt.timedelta(seconds=2)),
            **system,
        },
    }


REJECTED_ATTRS = {
    "reason": "invalid_json",
    "detail": "not valid JSON: unexpected character",
    "path": "sqs",
    "source": QUEUE_B,
    "rejected_at": (NOW - dt.timedelta(minutes=5)).isoformat(),
}


# --- ages and ids ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1d12h", 129600),
        ("90s", 90),
        ("1.5h", 5400),
        ("1w", 604800),
        (" 2H ", 7200),
    ],
)
def test_parse_age(text, seconds):
    assert parse_age(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "2", "h", "2x", "-1h", "1h 30m", "1h-", "h1"])
def test_parse_age_refuses(text):
    with pytest.raises(ValueError, match="not an age"):
        parse_age(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-5, "0s"),
        (45, "45s"),
        (720, "12m"),
        (3 * 3600 + 300, "3h5m"),
        (7200, "2h"),
        (2 * 86400 + 4 * 3600, "2d4h"),
        (2 * 86400, "2d"),
    ],
)
def test_format_age(seconds, text):
    assert format_age(None if seconds is None else dt.timedelta(seconds=seconds)) == text


def test_place_of():
    assert place_of("sqs:amt-a-dlq:5fe8") == "sqs"
    assert place_of("records:Opportunity:006") == "records"
    assert place_of("file:0123456789abcdef") == "file"
    assert place_of("queue:x") is None
    assert place_of("") is None


# --- reading SQS dead letters -------------------------------------------------------


def test_redriven_sns_envelope():
    letter = sqs_letter(received(ENVELOPE["Body"]), dlq_url=DLQ, feeding=[QUEUE_A])
    assert letter.id == "sqs:amt-a-dlq:5fe8a7c1-0000-4000-8000-000000000001"
    assert letter.place == "sqs" and letter.location == DLQ
    assert letter.reason == "redriven"
    assert "maxReceiveCount" in letter.detail
    assert letter.topic == "Opportunity" and letter.org_id == ORG
    assert letter.event_id == "7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a"
    assert letter.record_ids == ("0065g00000AbCdEAAA",)
    assert letter.at == NOW - dt.timedelta(hours=3)
    assert letter.target == QUEUE_A
    assert letter.send_attributes == {}
    assert letter.handle == "handle-1"


def test_redriven_raw_delivery_keeps_its_attributes():
    attrs = {k: v["StringValue"] for k, v in RAW["MessageAttributes"].items()}
    letter = sqs_letter(received(RAW["Body"], attrs), dlq_url=DLQ, feeding=[QUEUE_A])
    assert letter.reason == "redriven"
    assert letter.topic == "External_Attachment__c"
    assert letter.send_attributes == {
        "event_type": {"DataType": "String", "StringValue": "External_Attachment__c"},
        "org_id": {"DataType": "String", "StringValue": ORG},
    }


def test_rejected_message_reads_its_reason_and_goes_back_to_its_source():
    letter = sqs_letter(
        received("not json", REJECTED_ATTRS), dlq_url=DLQ, feeding=[QUEUE_A, QUEUE_B]
    )
    assert letter.reason == "invalid_json"
    assert letter.detail.startswith("not valid JSON")
    assert letter.topic is None and letter.org_id is None and letter.event_id is None
    assert letter.target == QUEUE_B
    assert letter.send_attributes == {}  # the service's own attributes stay behind


def test_rejected_event_still_shows_what_its_body_says():
    event = json.loads((SAMPLES / "event-opportunity-update.json").read_text())
    event["topic"] = "Lead"
    attrs = {**REJECTED_ATTRS, "reason": "unknown_topic", "event_id": event["event_id"]}
    letter = sqs_letter(received(json.dumps(event), attrs), dlq_url=DLQ, feeding=[QUEUE_A])
    assert (letter.reason, letter.topic, letter.org_id) == ("unknown_topic", "Lead", ORG)
    assert letter.event_id == event["event_id"]
    assert letter.record_ids == tuple(event["payload"]["ChangeEventHeader"]["recordIds"])


def test_choose_target():
    assert choose_target({"source": QUEUE_B}, {}, [QUEUE_A, QUEUE_B], {}) == QUEUE_B
    # A WebSocket reject names the stream: any queue feeding the DLQ takes it.
    assert choose_target({"source": "ws://passport/stream"}, {}, [QUEUE_A, QUEUE_B], {}) == QUEUE_A
    moved = {"DeadLetterQueueSourceArn": ARN_B}
    assert choose_target({}, moved, [QUEUE_A, QUEUE_B], {ARN_B: QUEUE_B}) == QUEUE_B
    assert choose_target({}, moved, [QUEUE_A], {ARN_B: QUEUE_B}) == QUEUE_A
    assert choose_target({}, {}, [], {}) is None


def test_replay_attributes():
    raw = {
        "event_type": {"DataType": "String", "StringValue": "Opportunity", "StringListValues": []},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        "detail": {"DataType": "String", "StringValue": "kept: not a rejected message"},
    }
    assert replay_attributes(raw) == {
        "event_type": {"DataType": "String", "StringValue": "Opportunity"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        "detail": {"DataType": "String", "StringValue": "kept: not a rejected message"},
    }
    rejected = {**raw, "reason": {"DataType": "String", "StringValue": "invalid_event"}}
    assert set(replay_attributes(rejected)) == {"event_type", "blob"}
    assert replay_attributes(None) == {}


# --- records and the fallback file ---------------------------------------------------------


def record_entry(**extra) -> dict:
    return {
        "topic": "Opportunity",
        "id": "0065g00000AbCdEAAA",
        "org_id": ORG,
        "error": "Opportunity 0065g00000AbCdEAAA: connection refused",
        "at": int((NOW - dt.timedelta(days=2)).timestamp() * 1000),
        "changes": {
            "StageName": {"position": "0" * 45, "value": "A"},
            "Name": {"position": "0" * 45, "value": "n"},
        },
        **extra,
    }


def test_record_letter():
    letter = record_letter(record_entry())
    assert letter.id == "records:Opportunity:0065g00000AbCdEAAA"
    assert (letter.place, letter.reason, letter.topic) == ("records", "job_failed", "Opportunity")
    assert letter.detail.endswith("connection refused")
    assert letter.record_ids == ("0065g00000AbCdEAAA",)
    assert letter.at == NOW - dt.timedelta(days=2)


def file_line(body: str, **attrs: str) -> bytes:
    return json.dumps({"body": body, **attrs}).encode()


def test_file_letter():
    line = file_line(
        ENVELOPE["Body"],
        reason="attribute_mismatch",
        detail="message attribute org_id=...",
        path="sqs",
        source=QUEUE_B,
        rejected_at=(NOW - dt.timedelta(hours=1)).isoformat(),
    )
    letter = file_letter(line, path="/var/dead.jsonl", queues=[QUEUE_A, QUEUE_B])
    assert letter.id == file_line_id(line) == file_line_id(line + b"\n")
    assert letter.id.startswith("file:") and len(letter.id) == 5 + 16
    assert (letter.place, letter.reason, letter.topic) == (
        "file",
        "attribute_mismatch",
        "Opportunity",
    )
    assert letter.at == NOW - dt.timedelta(hours=1)
    assert letter.target == QUEUE_B
    ws = file_letter(
        file_line("{", reason="invalid_json", source="ws://x"), path="f", queues=[QUEUE_A]
    )
    assert ws.target == QUEUE_A
    assert file_letter(file_line("{", reason="invalid_json"), path="f").target is None
    junk = file_letter(b"garbage", path="f", queues=[QUEUE_A])
    assert (junk.reason, junk.body, junk.at) == ("unreadable", "garbage", None)


# --- filters ----------------------------------------------------------------------------


def letters() -> dict[str, DeadLetter]:
    return {
        "envelope": sqs_letter(received(ENVELOPE["Body"]), dlq_url=DLQ, feeding=[QUEUE_A]),
        "junk": sqs_letter(
            received(
                "not json",
                REJECTED_ATTRS,
                message_id="5fe8a7c1-0000-4000-8000-000000000002",
                sent=NOW - dt.timedelta(minutes=5),
            ),
            dlq_url=DLQ,
            feeding=[QUEUE_A],
        ),
        "record": record_letter(record_entry()),
    }


def selected(filters: Filters) -> set[str]:
    return {name for name, letter in letters().items() if filters.matches(letter, NOW)}


def test_no_filter_selects_everything():
    assert selected(Filters()) == {"envelope", "junk", "record"}


def test_each_filter_applies_where_the_fact_exists():
    assert selected(Filters(topic="Opportunity")) == {"envelope", "record"}
    assert selected(Filters(topic="Application_Item__c")) == set()
    assert selected(Filters(org=ORG[:15])) == {"envelope", "record"}  # 15 matches 18
    assert selected(Filters(org="00D5g000009XyZQ")) == set()
    assert selected(Filters(reason="redriven")) == {"envelope"}
    assert selected(Filters(reason="invalid_json")) == {"junk"}
    assert selected(Filters(reason="job_failed")) == {"record"}
    assert selected(Filters(record_id="0065g00000AbCdEAAA")) == {"envelope", "record"}
    ids = frozenset({letters()["junk"].id})
    assert selected(Filters(ids=ids)) == {"junk"}


def test_age_filters():
    assert selected(Filters(older_than=parse_age("1h"))) == {"envelope", "record"}
    assert selected(Filters(older_than=parse_age("1d"))) == {"record"}
    assert selected(Filters(newer_than=parse_age("1h"))) == {"junk"}
    assert selected(Filters(older_than=parse_age("1h"), newer_than=parse_age("1d"))) == {"envelope"}
    # Boundaries: exactly 3h old is older than 3h, not newer than 3h.
    assert "envelope" in selected(Filters(older_than=parse_age("3h")))
    assert "envelope" not in selected(Filters(newer_than=parse_age("3h")))
    undated = file_letter(b"garbage", path="f")
    assert not Filters(older_than=parse_age("1s")).matches(undated, NOW)
    assert not Filters(newer_than=parse_age("1d")).matches(undated, NOW)
    assert Filters().matches(undated, NOW)


# --- what a replay does -----------------------------------------------------------------


def test_plan_replay():
    every = letters()
    plan = plan_replay(every["envelope"], force=False, max_body_bytes=262144)
    assert plan.replay
    assert plan.why == "event 7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a sent to amt-a"
    junk = plan_replay(every["junk"], force=False, max_body_bytes=262144)
    assert not junk.replay
    assert "still malformed (invalid_json" in junk.why and "--force" in junk.why
    forced = plan_replay(every["junk"], force=True, max_body_bytes=262144)
    assert forced.replay and "although malformed" in forced.why
    record = plan_replay(every["record"], force=False, max_body_bytes=262144)
    assert record.replay and record.why.startswith("2 changes merged back")
    nowhere = file_letter(file_line(ENVELOPE["Body"], reason="invalid_json"), path="f")
    assert not plan_replay(nowhere, force=True, max_body_bytes=262144).replay


def test_a_rejected_body_that_parses_now_is_replayed():
    """Rejected for a reason that no longer holds (its contradicting attributes stayed
    behind): the event itself is valid, so it goes back."""
    attrs = {**REJECTED_ATTRS, "reason": "attribute_mismatch"}
    letter = sqs_letter(received(RAW["Body"], attrs), dlq_url=DLQ, feeding=[QUEUE_A])
    assert plan_replay(letter, force=False, max_body_bytes=262144).replay


def test_an_oversized_body_is_not_replayed_blindly():
    letter = sqs_letter(received(ENVELOPE["Body"]), dlq_url=DLQ, feeding=[QUEUE_A])
    assert not plan_replay(letter, force=False, max_body_bytes=1024).replay


# --- output -------------------------------------------------------------------------------


def test_list_line_and_table():
    every = letters()
    assert list_line(every["envelope"], NOW) == [
        every["envelope"].id,
        "sqs",
        "Opportunity",
        ORG,
        "redriven",
        "3h",
        "7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a",
    ]
    assert list_line(every["junk"], NOW)[2:] == ["-", "-", "invalid_json", "5m", "-"]
    assert list_line(every["record"], NOW)[-1] == "0065g00000AbCdEAAA"
    assert table([["a", "bb", "c"], ["ccc", "d", "e"]]) == ["a    bb  c", "ccc  d   e"]
    assert table([]) == []


def test_letter_json_has_everything():
    out = letter_json(letters()["envelope"], NOW)
    assert out["age_s"] == 3 * 3600
    assert out["replays_to"] == QUEUE_A
    assert out["body"] == ENVELOPE["Body"]
    assert out["system_attributes"]["ApproximateReceiveCount"] == "6"
    assert json.loads(json.dumps(out)) == out
    record = letter_json(letters()["record"], NOW)
    assert record["entry"]["changes"]["StageName"]["value"] == "A"
    assert "body" not in record


def test_show_text():
    text = show_text(letters()["envelope"], NOW)
    assert "receive count:  6" in text
    sent = NOW - dt.timedelta(hours=3)
    assert f"first received: {(sent + dt.timedelta(seconds=2)).isoformat()}" in text
    assert '  "Type": "Notification",' in text  # the body, pretty-printed
    assert "SNS Message (decoded):" in text
    assert '  "event_id": "7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a",' in text
    junk = show_text(letters()["junk"], NOW)
    assert "  reason = invalid_json" in junk
    assert junk.endswith("body:\nnot json")


# --- progress -------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_progress_off_a_terminal():
    out = io.StringIO()
    progress = progress_for(out, io.StringIO())
    assert isinstance(progress, PlainProgress)
    progress.begin("replaying", 2)
    progress.advance()
    progress.line("[1/2] x: done")
    progress.end()
    assert out.getvalue() == "[1/2] x: done\n"


def test_rich_bar_on_a_terminal():
    out, err = io.StringIO(), Terminal()
    progress = progress_for(out, err)
    assert isinstance(progress, RichProgress)
    progress.begin("replaying", 4)
    progress.advance(2)
    progress.line("[2/4] x: done")
    progress.bar.refresh()
    progress.end()
    assert "replaying" in err.getvalue() and "2/4" in err.getvalue()
    assert out.getvalue() == "[2/4] x: done\n"  # not a terminal: plain lines there
