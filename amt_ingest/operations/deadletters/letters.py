"""The pure core of the ``dlq`` command: dead letters read out of SQS messages, Redis
entries and file lines; stable ids, ages, filters, and what a replay does. No I/O."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from ...coordination.keys import DEAD_RECORDS
from ...policy import org_prefix
from ...routing.events import Event, Rejected, parse_sqs_message

__all__ = [
    "DEAD_LETTER_ATTRIBUTES",
    "JOB_FAILED",
    "PLACES",
    "REDRIVEN",
    "DeadLetter",
    "Filters",
    "Place",
    "Plan",
    "choose_target",
    "file_letter",
    "file_line_id",
    "format_age",
    "letter_json",
    "list_line",
    "parse_age",
    "place_of",
    "plan_replay",
    "queue_name",
    "record_letter",
    "replay_attributes",
    "show_text",
    "sqs_letter",
    "table",
]

Place = Literal["records", "sqs", "file"]

#: The places in the order they are read and listed.
PLACES: Final[tuple[Place, ...]] = ("records", "sqs", "file")

#: Reason of a message that SQS moved to the DLQ by itself (no ``reason`` attribute).
REDRIVEN: Final = "redriven"
#: Reason of a dead-lettered record (its job failed every try).
JOB_FAILED: Final = "job_failed"
#: Message attributes that :class:`~amt_ingest.deadletter.DeadLetters` adds; a replay
#: leaves them behind so the replayed message looks like the original.
DEAD_LETTER_ATTRIBUTES: Final = frozenset(
    {"reason", "detail", "path", "source", "rejected_at", "event_id"}
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter in one place, as read; ``id`` is stable across reads.

    ``at`` is when it became a dead letter (records, rejected input) or, for a
    message SQS redrove, when it was first sent (SQS keeps the original
    ``SentTimestamp``). ``target`` is the queue a replay sends it to (``None``:
    none known). ``handle`` is the SQS receipt handle of this read.
    """

    id: str
    place: Place
    location: str
    reason: str
    detail: str
    at: dt.datetime | None
    topic: str | None = None
    org_id: str | None = None
    event_id: str | None = None
    record_ids: tuple[str, ...] = ()
    body: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    send_attributes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    system: Mapping[str, str] = field(default_factory=dict)
    entry: Mapping[str, Any] | None = None
    target: str | None = None
    handle: str | None = field(default=None, repr=False)


_AGE_PART: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_AGE_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> dt.timedelta:
    """``30m``, ``2h``, ``1d``, ``1d12h``, ``90s``, ``1.5h`` as a duration; ValueError otherwise."""
    cleaned = text.strip().lower()
    parts = _AGE_PART.findall(cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise ValueError(f"{text!r} is not an age like 30m, 2h, 1d or 1d12h")
    return dt.timedelta(seconds=sum(float(n) * _AGE_UNITS[u] for n, u in parts))


def format_age(age: dt.timedelta | None) -> str:
    """A short age: ``45s``, ``12m``, ``3h5m``, ``2d4h``; ``-`` when unknown."""
    if age is None:
        return "-"
    seconds = max(0, int(age.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def place_of(letter_id: str) -> Place | None:
    """The place an id names (its prefix), or ``None`` for an id of no place."""
    prefix = letter_id.split(":", 1)[0]
    for place in PLACES:
        if prefix == place:
            return place
    return None


@dataclass(frozen=True, slots=True)
class Filters:
    """What to select. Every filter applies in every place where the fact exists; a
    dead letter whose fact is unknown (an unreadable body has no topic) does not match
    a filter on it. Orgs compare on their first 15 characters."""

    topic: str | None = None
    org: str | None = None
    reason: str | None = None
    older_than: dt.timedelta | None = None
    newer_than: dt.timedelta | None = None
    record_id: str | None = None
    ids: frozenset[str] = frozenset()

    def matches(self, letter: DeadLetter, now: dt.datetime) -> bool:
        if self.ids and letter.id not in self.ids:
            return False
        if self.topic is not None and letter.topic != self.topic:
            return False
        if self.org is not None and (
            letter.org_id is None or org_prefix(letter.org_id) != org_prefix(self.org)
        ):
            return False
        if self.reason is not None and letter.reason != self.reason:
            return False
        if self.record_id is not None and self.record_id not in letter.record_ids:
            return False
        if self.older_than is not None or self.newer_than is not None:
            if letter.at is None:
                return False
            age = now - letter.at
            if self.older_than is not None and age < self.older_than:
                return False
            if self.newer_than is not None and age >= self.newer_than:
                return False
        return True


def _ms(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(int(value) / 1000, dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _iso(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _flat(attributes: Mapping[str, Any] | None) -> dict[str, str]:
    """SQS message attributes as ``name -> value`` (binary values shown as their size)."""
    flat: dict[str, str] = {}
    for name, entry in (attributes or {}).items():
        if not isinstance(entry, Mapping):
            continue
        if "StringValue" in entry:
            flat[name] = str(entry["StringValue"])
        elif "BinaryValue" in entry:
            flat[name] = f"<{len(entry['BinaryValue'])} bytes>"
    return flat


def replay_attributes(attributes: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The message attributes a replay sends: the message's own, in SendMessage's shape,
    without the ones the service added when it rejected the message."""
    rejected = "reason" in (attributes or {})
    out: dict[str, dict[str, Any]] = {}
    for name, entry in (attributes or {}).items():
        if not isinstance(entry, Mapping) or (rejected and name in DEAD_LETTER_ATTRIBUTES):
            continue
        kept: dict[str, Any] = {"DataType": entry.get("DataType", "String")}
        if "StringValue" in entry:
            kept["StringValue"] = entry["StringValue"]
        elif "BinaryValue" in entry:
            kept["BinaryValue"] = entry["BinaryValue"]
        else:
            continue
        out[name] = kept
    return out


@dataclass(frozen=True, slots=True)
class _BodyFacts:
    topic: str | None
    org_id: str | None
    event_id: str | None
    record_ids: tuple[str, ...]


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _body_facts(result: Event | Rejected, body: str, attributes: Mapping[str, str]) -> _BodyFacts:
    """What a body says about its event: exact when it parses, else what can be read."""
    if isinstance(result, Event):
        return _BodyFacts(result.topic, result.org_id, result.event_id, tuple(result.record_ids))
    obj: Any = None
    with contextlib.suppress(orjson.JSONDecodeError):
        obj = orjson.loads(body)
    if isinstance(obj, dict) and isinstance(obj.get("Message"), str) and "event_id" not in obj:
        with contextlib.suppress(orjson.JSONDecodeError):
            obj = orjson.loads(obj["Message"])
    if not isinstance(obj, dict):
        obj = {}
    payload = obj.get("payload")
    header = payload.get("ChangeEventHeader") if isinstance(payload, dict) else None
    header = header if isinstance(header, dict) else {}
    ids = header.get("recordIds")
    record_ids = tuple(r for r in ids if isinstance(r, str)) if isinstance(ids, list) else ()
    return _BodyFacts(
        topic=_str(obj.get("topic")) or attributes.get("event_type"),
        org_id=_str(obj.get("org_id")) or attributes.get("org_id"),
        event_id=_str(obj.get("event_id")) or result.event_id or attributes.get("event_id"),
        record_ids=record_ids,
    )


def _parse(body: str, send_attributes: Mapping[str, Any], max_bytes: int) -> Event | Rejected:
    return parse_sqs_message(body, dict(send_attributes), max_bytes=max_bytes)


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def choose_target(
    attributes: Mapping[str, str],
    system: Mapping[str, str],
    feeding: Sequence[str],
    urls_by_arn: Mapping[str, str],
) -> str | None:
    """The source queue a DLQ message goes back to.

    The queue named by the message (the ``source`` attribute of a rejected SQS
    message, or SQS's ``DeadLetterQueueSourceArn``) when it is one that feeds this
    DLQ; otherwise the first configured queue that does: every configured queue
    feeds the same router, so any of them takes the event.
    """
    source = attributes.get("source")
    if source in feeding:
        return source
    by_arn = urls_by_arn.get(system.get("DeadLetterQueueSourceArn", ""))
    if by_arn in feeding:
        return by_arn
    return feeding[0] if feeding else None


def sqs_letter(
    message: Mapping[str, Any],
    *,
    dlq_url: str,
    feeding: Sequence[str] = (),
    urls_by_arn: Mapping[str, str] | None = None,
    max_body_bytes: int = 256 * 1024,
) -> DeadLetter:
    """A received DLQ message as a dead letter (``feeding``: the source queues of the DLQ)."""
    raw_attributes = message.get("MessageAttributes") or {}
    attributes = _flat(raw_attributes)
    system = {k: str(v) for k, v in (message.get("Attributes") or {}).items()}
    body = str(message.get("Body", ""))
    send = replay_attributes(raw_attributes)
    facts = _body_facts(_parse(body, send, max_body_bytes), body, _flat(send) | attributes)
    rejected = "reason" in attributes
    return DeadLetter(
        id=f"sqs:{queue_name(dlq_url)}:{message['MessageId']}",
        place="sqs",
        location=dlq_url,
        reason=attributes["reason"] if rejected else REDRIVEN,
        detail=attributes.get("detail", "")
        if rejected
        else "moved here by SQS after the source queue's maxReceiveCount receives",
        at=_ms(system.get("SentTimestamp")),
        topic=facts.topic,
        org_id=facts.org_id,
        event_id=facts.event_id,
        record_ids=facts.record_ids,
        body=body,
        attributes=attributes,
        send_attributes=send,
        system=system,
        target=choose_target(attributes, system, feeding, urls_by_arn or {}),
        handle=message.get("ReceiptHandle"),
    )


def record_letter(entry: Mapping[str, Any], *, location: str = DEAD_RECORDS) -> DeadLetter:
    """A dead-lettered record (an ``amt:dead:records`` entry) as a dead letter."""
    return DeadLetter(
        id=f"records:{entry['topic']}:{entry['id']}",
        place="records",
        location=location,
        reason=JOB_FAILED,
        detail=str(entry.get("error", "")),
        at=_ms(entry.get("at")),
        topic=entry["topic"],
        org_id=entry.get("org_id"),
        record_ids=(entry["id"],),
        entry=entry,
    )


def file_line_id(line: bytes) -> str:
    """The stable id of one line of the fallback file (a hash of its content)."""
    return "file:" + hashlib.sha256(line.strip()).hexdigest()[:16]


def file_letter(
    line: bytes, *, path: str, queues: Sequence[str] = (), max_body_bytes: int = 256 * 1024
) -> DeadLetter:
    """One line of the fallback file as a dead letter; it replays into the queue its
    ``source`` names if that is a configured queue, else the first configured one."""
    obj: Any = None
    with contextlib.suppress(orjson.JSONDecodeError):
        obj = orjson.loads(line)
    if not isinstance(obj, dict):
        text = line.decode("utf-8", errors="replace").strip()
        return DeadLetter(
            id=file_line_id(line),
            place="file",
            location=path,
            reason="unreadable",
            detail="not a dead-letter line",
            at=None,
            body=text,
            target=None,
        )
    attributes = {k: str(v) for k, v in obj.items() if k != "body" and v is not None}
    body = _str(obj.get("body")) or ""
    facts = _body_facts(_parse(body, {}, max_body_bytes), body, attributes)
    source = attributes.get("source")
    return DeadLetter(
        id=file_line_id(line),
        place="file",
        location=path,
        reason=attributes.get("reason", "unknown"),
        detail=attributes.get("detail", ""),
        at=_iso(attributes.get("rejected_at")),
        topic=facts.topic,
        org_id=facts.org_id,
        event_id=facts.event_id,
        record_ids=facts.record_ids,
        body=body,
        attributes=attributes,
        target=source if source in queues else (queues[0] if queues else None),
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """What a replay does with one dead letter: send it back (``replay``) or not, and why."""

    replay: bool
    why: str


def plan_replay(letter: DeadLetter, *, force: bool, max_body_bytes: int) -> Plan:
    """Replay or skip. A body that still fails to parse is skipped unless ``force``:
    the poller would only reject it again (a replay loop that can never succeed)."""
    if letter.place == "records":
        changes = len((letter.entry or {}).get("changes", {}))
        return Plan(True, f"{changes} changes merged back into a job (newest wins)")
    if letter.target is None:
        return Plan(False, "no source queue to send it to (AMT_SQS_QUEUE_URLS)")
    result = _parse(letter.body or "", letter.send_attributes, max_body_bytes)
    to = queue_name(letter.target)
    if isinstance(result, Rejected):
        if not force:
            return Plan(
                False,
                f"still malformed ({result.reason}: {result.detail}); a replay would only "
                "be rejected again (--force sends it anyway)",
            )
        return Plan(True, f"sent to {to} although malformed ({result.reason}, --force)")
    return Plan(True, f"event {result.event_id} sent to {to}")


def letter_json(letter: DeadLetter, now: dt.datetime) -> dict[str, Any]:
    """Everything about a dead letter, JSON-ready (the ``--json`` output)."""
    out: dict[str, Any] = {
        "id": letter.id,
        "place": letter.place,
        "location": letter.location,
        "topic": letter.topic,
        "org_id": letter.org_id,
        "reason": letter.reason,
        "detail": letter.detail,
        "event_id": letter.event_id,
        "record_ids": list(letter.record_ids),
        "at": letter.at.isoformat() if letter.at else None,
        "age_s": round((now - letter.at).total_seconds(), 3) if letter.at else None,
        "replays_to": letter.target,
    }
    if letter.place == "records":
        out["entry"] = dict(letter.entry or {})
    else:
        out["body"] = letter.body
        out["attributes"] = dict(letter.attributes)
    if letter.place == "sqs":
        out["system_attributes"] = dict(letter.system)
    return out


def list_line(letter: DeadLetter, now: dt.datetime) -> list[str]:
    """The columns of one ``list`` line: id, place, topic, org, reason, age, event/record."""
    subject = letter.event_id or ",".join(letter.record_ids) or "-"
    return [
        letter.id,
        letter.place,
        letter.topic or "-",
        letter.org_id or "-",
        letter.reason,
        format_age(now - letter.at if letter.at else None),
        subject,
    ]


def table(rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns separated by two spaces."""
    materialized = [list(r) for r in rows]
    if not materialized:
        return []
    widths = [max(len(r[i]) for r in materialized) for i in range(len(materialized[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in materialized
    ]


def _pretty(text: str) -> str:
    try:
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return text


def show_text(letter: DeadLetter, now: dt.datetime) -> str:
    """One dead letter in full, for people."""
    rows: list[tuple[str, str]] = [
        ("id", letter.id),
        ("place", f"{letter.place} ({letter.location})"),
        ("reason", letter.reason),
        ("detail", letter.detail or "-"),
        ("topic", letter.topic or "-"),
        ("org", letter.org_id or "-"),
        ("event id", letter.event_id or "-"),
        ("record ids", ", ".join(letter.record_ids) or "-"),
        (
            "age",
            f"{format_age(now - letter.at)} (since {letter.at.isoformat()})" if letter.at else "-",
        ),
    ]
    if letter.place != "records":
        rows.append(("replays to", letter.target or "- (no queue known)"))
    if letter.place == "sqs":
        system = letter.system
        rows.append(("receive count", system.get("ApproximateReceiveCount", "-")))
        first = _ms(system.get("ApproximateFirstReceiveTimestamp"))
        rows.append(("first received", first.isoformat() if first else "-"))
        sent = _ms(system.get("SentTimestamp"))
        rows.append(("sent", sent.isoformat() if sent else "-"))
        if "DeadLetterQueueSourceArn" in system:
            rows.append(("moved from", system["DeadLetterQueueSourceArn"]))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k + ':':<{width + 1}} {v}" for k, v in rows]
    if letter.attributes:
        lines.append("attributes:")
        lines.extend(f"  {k} = {v}" for k, v in sorted(letter.attributes.items()))
    if letter.place == "records":
        lines.append("changes:")
        changes = (letter.entry or {}).get("changes", {})
        lines.append(orjson.dumps(changes, option=orjson.OPT_INDENT_2).decode())
    else:
        lines.append("body:")
        lines.append(_pretty(letter.body or ""))
        inner = _sns_message(letter.body or "")
        if inner is not None:
            lines.append("SNS Message (decoded):")
            lines.append(_pretty(inner))
    return "\n".join(lines)


def _sns_message(body: str) -> str | None:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict) and obj.get("Type") == "Notification":
        message = obj.get("Message")
        return message if isinstance(message, str) else None
    return None
