"""The Passport event and its wire formats, as plain functions (no I/O).

Everything that arrives from outside passes through here first:

- :func:`parse_event` validates one event object (PROTOCOL.md section 1);
- :func:`parse_ws_frame` reads one WebSocket text frame (section 2);
- :func:`parse_sqs_message` reads one SQS message body, SNS envelope or raw
  delivery (section 3).

Each returns a result, never raises on bad input: a valid :class:`Event` or a
:class:`Rejected` carrying a short machine-readable ``reason`` and a readable
``detail``. The reasons are a closed set (:data:`REASONS`), used as metric
labels and as the ``reason`` attribute of dead letters.

:func:`record_changes` turns an event into what it does to each record it
names: field values at the event's position, and the tombstone flag.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .positions import position_key

__all__ = [
    "DELETED_FIELD",
    "FULL_FIELD",
    "REASONS",
    "RECONCILE_FIELD",
    "REREAD_FIELD",
    "TOPICS",
    "ChangeType",
    "Effect",
    "ErrorFrame",
    "Event",
    "EventsFrame",
    "Frame",
    "Header",
    "HeartbeatFrame",
    "RecordChange",
    "Rejected",
    "SubscribedFrame",
    "event_effect",
    "parse_event",
    "parse_sqs_message",
    "parse_ws_frame",
    "record_changes",
]

TOPICS: Final = ("Opportunity", "External_Attachment__c", "Application_Item__c")
Topic = Literal["Opportunity", "External_Attachment__c", "Application_Item__c"]

#: Every rejection reason the parsers can give.
REASONS: Final = frozenset(
    {
        "invalid_json",  # not JSON, or not UTF-8
        "not_an_object",  # JSON, but not an object where one is required
        "invalid_event",  # an event object whose fields fail validation
        "unknown_topic",  # a topic that is not one of TOPICS
        "entity_mismatch",  # header.entityName differs from topic
        "missing_record_ids",  # a change other than GAP_OVERFLOW without recordIds
        "invalid_envelope",  # an SNS notification envelope that is truncated or wrong
        "attribute_mismatch",  # message attributes contradict the event
        "unknown_frame_type",  # a WebSocket frame with an unknown or missing type
        "invalid_frame",  # a known WebSocket frame type with a wrong shape
        "oversized",  # bigger than the configured limit
    }
)

#: Name of the pseudo-field that carries a record's tombstone flag.
DELETED_FIELD: Final = "__deleted__"
#: Pseudo-field of a full image (an ``UNDELETE``, a re-read snapshot): it carries
#: every non-null field, so at its position each field it does not carry is null.
FULL_FIELD: Final = "__full__"
#: Pending marker (value ``true``) at a position: the record changed there in a way
#: no event told (a gap, a resync): read it, and a snapshot older than that position
#: is not its content yet. A 404 is a tombstone at the marker's position.
REREAD_FIELD: Final = "__reread__"
#: Pending marker of a full reconciliation: read the record, any snapshot will do;
#: a 404 is a tombstone at the marker's position.
RECONCILE_FIELD: Final = "__reconcile__"

_ORG_ID = re.compile(r"^00D[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?$")


class ChangeType(StrEnum):
    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    UNDELETE = "UNDELETE"
    GAP_CREATE = "GAP_CREATE"
    GAP_UPDATE = "GAP_UPDATE"
    GAP_DELETE = "GAP_DELETE"
    GAP_UNDELETE = "GAP_UNDELETE"
    GAP_OVERFLOW = "GAP_OVERFLOW"

    @property
    def is_gap(self) -> bool:
        return self.value.startswith("GAP_")


class Header(BaseModel):
    """The CDC ``ChangeEventHeader``; unknown header keys are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    entityName: str
    recordIds: list[str]
    changeType: ChangeType
    changeOrigin: str = ""
    transactionKey: str
    sequenceNumber: int = Field(ge=0)
    commitTimestamp: int = Field(ge=0)
    commitNumber: int = Field(ge=0)
    commitUser: str = ""
    changedFields: list[str] = Field(default_factory=list)
    nulledFields: list[str] = Field(default_factory=list)
    diffFields: list[str] = Field(default_factory=list)


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow")

    ChangeEventHeader: Header


class _WireEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_id: str
    org_id: str
    topic: str
    replay_id: str | None = None
    payload: _Payload

    @field_validator("event_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value))
        except ValueError as exc:
            raise ValueError("must be a UUID") from exc

    @field_validator("org_id")
    @classmethod
    def _org(cls, value: str) -> str:
        if not _ORG_ID.match(value):
            raise ValueError("must be a 15 or 18 character Salesforce org id starting 00D")
        return value


@dataclass(frozen=True, slots=True)
class Event:
    """A validated Passport event.

    ``fields`` is the CDC payload without its header, exactly as it came in.
    ``raw`` is the event object as received, for dead letters and replays.
    """

    event_id: str
    org_id: str
    topic: Topic
    replay_id: str | None
    header: Header
    fields: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def position(self) -> str:
        return position_key(
            self.header.commitTimestamp, self.header.commitNumber, self.header.sequenceNumber
        )

    @property
    def change_type(self) -> ChangeType:
        return self.header.changeType

    @property
    def record_ids(self) -> list[str]:
        return self.header.recordIds


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why an input was refused. ``raw`` is the offending input, for the dead-letter place."""

    reason: str
    detail: str
    raw: str = field(default="", repr=False)
    replay_id: str | None = None
    event_id: str | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown rejection reason {self.reason!r}")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "event"
    return f"{loc}: {err['msg']}"


def _to_text(raw: str | bytes) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    return raw


# An event_id as str(uuid.UUID(...)) writes it: such a value is kept as it is.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_TOPIC_SET: Final = frozenset(TOPICS)


_HEADER_FIELDS: Final = tuple(Header.model_fields)
_HEADER_FIELD_SET: Final = frozenset(_HEADER_FIELDS)
_CHANGE_TYPES: Final = {change.value: change for change in ChangeType}
_object_setattr = object.__setattr__


def _str_list(value: Any) -> list[str] | None:
    if type(value) is not list:
        return None
    for item in value:
        if type(item) is not str:
            return None
    return list(value)


def _plain_header(obj: dict[Any, Any]) -> Header | None:
    """The header, when each field already has the exact type the model wants
    (nothing to coerce): the Header the model would build, built directly as
    ``model_construct`` builds one. Else None."""
    entity = obj.get("entityName")
    key = obj.get("transactionKey")
    origin = obj.get("changeOrigin", "")
    user = obj.get("commitUser", "")
    change = obj.get("changeType")
    change_type = _CHANGE_TYPES.get(change) if type(change) is str else None
    if (
        change_type is None
        or type(entity) is not str
        or type(key) is not str
        or type(origin) is not str
        or type(user) is not str
    ):
        return None
    numbers = []
    for name in ("sequenceNumber", "commitTimestamp", "commitNumber"):
        number = obj.get(name)
        if type(number) is not int or number < 0:
            return None
        numbers.append(number)
    lists = []
    for name in ("recordIds", "changedFields", "nulledFields", "diffFields"):
        # recordIds is required; the others default to an empty list.
        items = _str_list(obj.get(name) if name == "recordIds" else obj.get(name, []))
        if items is None:
            return None
        lists.append(items)
    extra = {}
    for name, value in obj.items():
        if name not in _HEADER_FIELD_SET:
            if type(name) is not str:
                return None
            extra[name] = value
    header = Header.__new__(Header)
    # In the model's field order, as validation fills __dict__.
    _object_setattr(
        header,
        "__dict__",
        {
            "entityName": entity,
            "recordIds": lists[0],
            "changeType": change_type,
            "changeOrigin": origin,
            "transactionKey": key,
            "sequenceNumber": numbers[0],
            "commitTimestamp": numbers[1],
            "commitNumber": numbers[2],
            "commitUser": user,
            "changedFields": lists[1],
            "nulledFields": lists[2],
            "diffFields": lists[3],
        },
    )
    _object_setattr(header, "__pydantic_fields_set__", set(obj))  # extra keys count as set
    _object_setattr(header, "__pydantic_extra__", extra)
    _object_setattr(header, "__pydantic_private__", None)
    return header


def _plain_event(obj: Any) -> Event | None:
    """The event when ``obj`` has the plain shape Passport sends (exact types, a
    canonical event id, nothing to coerce) and is valid; else None, and
    :func:`_validated_event` decides. What this accepts, that accepts too, with
    an equal result: it is only the cheaper way to the same answer."""
    if type(obj) is not dict:
        return None
    event_id = obj.get("event_id")
    org_id = obj.get("org_id")
    topic = obj.get("topic")
    replay_id = obj.get("replay_id")
    payload = obj.get("payload")
    if (
        type(event_id) is not str
        or not _CANONICAL_UUID.match(event_id)
        or type(org_id) is not str
        or not _ORG_ID.match(org_id)
        or type(topic) is not str
        or topic not in _TOPIC_SET
        or (replay_id is not None and type(replay_id) is not str)
        or type(payload) is not dict
    ):
        return None
    fields: dict[str, Any] = {}
    header_obj: Any = None
    for key, value in payload.items():
        if type(key) is not str:
            return None
        if key == "ChangeEventHeader":
            header_obj = value
        else:
            fields[key] = value
    if type(header_obj) is not dict:
        return None
    header = _plain_header(header_obj)
    if header is None:
        return None
    if header.entityName != topic:
        return None
    if header.changeType is not ChangeType.GAP_OVERFLOW and not header.recordIds:
        return None
    if not all(header.recordIds):
        return None
    return Event(
        event_id=event_id,
        org_id=org_id,
        topic=topic,  # type: ignore[arg-type]  # one of TOPICS
        replay_id=replay_id,
        header=header,
        fields=fields,
        raw=obj,
    )


def parse_event(obj: Any, *, raw: str = "") -> Event | Rejected:
    """Validate one decoded event object (PROTOCOL.md section 1)."""
    return _plain_event(obj) or _validated_event(obj, raw=raw)


def _validated_event(obj: Any, *, raw: str = "") -> Event | Rejected:
    """:func:`parse_event` by the models alone: every coercion, every reason."""
    replay_id = obj.get("replay_id") if isinstance(obj, dict) else None
    replay_id = replay_id if isinstance(replay_id, str) else None
    event_id = obj.get("event_id") if isinstance(obj, dict) else None
    event_id = event_id if isinstance(event_id, str) else None

    def reject(reason: str, detail: str) -> Rejected:
        text = raw or _dumps_or_repr(obj)
        return Rejected(reason, detail, text, replay_id=replay_id, event_id=event_id)

    if not isinstance(obj, dict):
        return reject("not_an_object", f"an event must be a JSON object, got {_kind(obj)}")
    topic = obj.get("topic")
    if isinstance(topic, str) and topic not in TOPICS:
        return reject("unknown_topic", f"unknown record type {topic!r}")
    try:
        wire = _WireEvent.model_validate(obj)
    except ValidationError as exc:
        return reject("invalid_event", _first_error(exc))
    if wire.topic not in TOPICS:  # not a str above
        return reject("unknown_topic", f"unknown record type {wire.topic!r}")
    header = wire.payload.ChangeEventHeader
    if header.entityName != wire.topic:
        return reject(
            "entity_mismatch",
            f"header entityName {header.entityName!r} differs from topic {wire.topic!r}",
        )
    if header.changeType is not ChangeType.GAP_OVERFLOW and not header.recordIds:
        return reject("missing_record_ids", f"{header.changeType} event lists no recordIds")
    if any(not isinstance(r, str) or not r for r in header.recordIds):
        return reject("invalid_event", "payload.ChangeEventHeader.recordIds: empty record id")
    fields = dict(wire.payload.model_extra or {})
    return Event(
        event_id=wire.event_id,
        org_id=wire.org_id,
        topic=wire.topic,  # type: ignore[arg-type]  # checked against TOPICS above
        replay_id=wire.replay_id,
        header=header,
        fields=fields,
        raw=obj,
    )


def _kind(obj: Any) -> str:
    return {dict: "object", list: "array", str: "string", type(None): "null"}.get(
        type(obj), type(obj).__name__
    )


def _dumps_or_repr(obj: Any) -> str:
    try:
        return orjson.dumps(obj).decode()
    except TypeError:
        return repr(obj)


def _loads(raw: str | bytes) -> tuple[Any, Rejected | None]:
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError as exc:
        return None, Rejected("invalid_json", f"not valid JSON: {exc}", _to_text(raw))


# --- WebSocket frames (PROTOCOL.md section 2) ---------------------------------


@dataclass(frozen=True, slots=True)
class SubscribedFrame:
    topics: list[str]
    latest_replay_id: str | None


@dataclass(frozen=True, slots=True)
class EventsFrame:
    """An ``events`` frame: each item parsed on its own, in stream order."""

    items: list[Event | Rejected]
    latest_replay_id: str | None
    pending_credits: int | None


@dataclass(frozen=True, slots=True)
class HeartbeatFrame:
    latest_replay_id: str | None
    server_time: str | None


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    code: str
    message: str


Frame = SubscribedFrame | EventsFrame | HeartbeatFrame | ErrorFrame


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def parse_ws_frame(raw: str | bytes, *, max_bytes: int | None = None) -> Frame | Rejected:
    """Read one server frame. A frame that cannot be read is a :class:`Rejected`;
    a readable ``events`` frame carries its bad events as :class:`Rejected` items."""
    if max_bytes is not None and len(raw) > max_bytes:
        return Rejected("oversized", f"frame of {len(raw)} bytes exceeds {max_bytes}", "")
    obj, err = _loads(raw)
    if err is not None:
        return err
    if not isinstance(obj, dict):
        return Rejected(
            "not_an_object", f"a frame must be a JSON object, got {_kind(obj)}", _to_text(raw)
        )
    kind = obj.get("type")
    if kind == "events":
        events = obj.get("events")
        if not isinstance(events, list):
            return Rejected("invalid_frame", "events frame without an events list", _to_text(raw))
        credits = obj.get("pending_credits")
        return EventsFrame(
            items=[parse_event(e) for e in events],
            latest_replay_id=_opt_str(obj, "latest_replay_id"),
            pending_credits=credits if isinstance(credits, int) else None,
        )
    if kind == "heartbeat":
        return HeartbeatFrame(_opt_str(obj, "latest_replay_id"), _opt_str(obj, "server_time"))
    if kind == "subscribed":
        topics = obj.get("topics")
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            return Rejected(
                "invalid_frame", "subscribed frame without a topics list", _to_text(raw)
            )
        return SubscribedFrame(topics, _opt_str(obj, "latest_replay_id"))
    if kind == "error":
        code = obj.get("code")
        if not isinstance(code, str):
            return Rejected("invalid_frame", "error frame without a code", _to_text(raw))
        return ErrorFrame(code, _opt_str(obj, "message") or "")
    return Rejected("unknown_frame_type", f"unknown frame type {kind!r}", _to_text(raw))


# --- SQS bodies (PROTOCOL.md section 3) ---------------------------------------


def _attribute(attrs: Any, name: str) -> str | None:
    """A string attribute from SQS (StringValue) or SNS envelope (Value) shapes."""
    if not isinstance(attrs, dict):
        return None
    entry = attrs.get(name)
    if not isinstance(entry, dict):
        return None
    value = entry.get("StringValue", entry.get("Value"))
    return value if isinstance(value, str) else None


def parse_sqs_message(
    body: str | bytes,
    message_attributes: dict[str, Any] | None = None,
    *,
    max_bytes: int | None = None,
) -> Event | Rejected:
    """Read one SQS message body: an SNS notification envelope or a raw event."""
    if max_bytes is not None and len(body) > max_bytes:
        return Rejected("oversized", f"body of {len(body)} bytes exceeds {max_bytes}", "")
    obj, err = _loads(body)
    if err is not None:
        return err
    text = _to_text(body)
    if not isinstance(obj, dict):
        return Rejected("not_an_object", f"a body must be a JSON object, got {_kind(obj)}", text)
    attrs: Any = message_attributes
    if "Type" in obj and "event_id" not in obj:
        if obj.get("Type") != "Notification":
            return Rejected(
                "invalid_envelope",
                f"SNS message of type {obj.get('Type')!r}, not Notification",
                text,
            )
        message = obj.get("Message")
        if not isinstance(message, str):
            return Rejected("invalid_envelope", "SNS envelope without a Message string", text)
        inner, err = _loads(message)
        if err is not None:
            return Rejected("invalid_envelope", f"SNS Message is not JSON: {err.detail}", text)
        obj, attrs = inner, obj.get("MessageAttributes")
    result = parse_event(obj, raw=text)
    if isinstance(result, Rejected):
        return result
    for name, expected in (("event_type", result.topic), ("org_id", result.org_id)):
        value = _attribute(attrs, name)
        if value is not None and value != expected:
            return Rejected(
                "attribute_mismatch",
                f"message attribute {name}={value!r} but the event says {expected!r}",
                text,
                event_id=result.event_id,
            )
    return result


# --- What an event does to each record -----------------------------------------


@dataclass(frozen=True, slots=True)
class RecordChange:
    """The effect of one event on one record.

    ``values`` maps field name to new value (``None`` for a nulled field);
    ``deleted`` is the tombstone flag the event sets, or ``None`` if it does
    not touch it. ``reread`` marks a gap event whose content must be fetched;
    ``full`` an event that carries every non-null field (an ``UNDELETE``): a
    field it does not carry is null at its position.
    """

    topic: Topic
    record_id: str
    org_id: str
    position: str
    values: dict[str, Any]
    deleted: bool | None
    reread: bool
    full: bool = False


class Effect(NamedTuple):
    """What an event does to each of its records (see :class:`RecordChange`)."""

    values: dict[str, Any]
    deleted: bool | None
    reread: bool
    full: bool


def event_effect(event: Event) -> Effect:
    """What the event does to each of its records, by the CDC rules of PROTOCOL.md
    section 1 (the same for every record id).

    An ``UNDELETE`` is a full image: it carries the restored record's non-null
    fields, so a field it leaves out is null (a change that nulled it may have
    been lost while the record was deleted). A ``CREATE`` carries the non-null
    fields too, but a record is created once: every field it leaves out that the
    store knows comes from a later change, so it nulls nothing.
    """
    kind = event.change_type
    if kind is ChangeType.CREATE:
        return Effect(dict(event.fields), False, False, False)
    if kind is ChangeType.UNDELETE:
        return Effect(dict(event.fields), False, False, True)
    if kind is ChangeType.UPDATE:
        values = dict(event.fields)
        for name in event.header.nulledFields:
            values.setdefault(name, None)
        return Effect(values, None, False, False)
    if kind is ChangeType.DELETE:
        return Effect({}, True, False, False)
    return Effect({}, None, True, False)  # GAP_*: content unknown, re-read needed


def record_changes(event: Event) -> list[RecordChange]:
    """The event's effect (:func:`event_effect`) on each of its records."""
    values, deleted, reread, full = event_effect(event)
    return [
        RecordChange(
            topic=event.topic,
            record_id=record_id,
            org_id=event.org_id,
            position=event.position,
            values=values,
            deleted=deleted,
            reread=reread,
            full=full,
        )
        for record_id in dict.fromkeys(event.record_ids)
    ]
