"""The server side of Passport Stream Protocol v1 as plain data (no I/O).

- :func:`encode_replay_id` / :func:`decode_replay_id`: replay ids are the
  base64 of an 8-byte big-endian counter (``AAAAAAAAAAE=`` is 1).
- :class:`StreamLog`: the whole stream in delivery order (events with their
  replay ids, and raw malformed frames between them), the replay window, and
  :meth:`StreamLog.take`, which decides what one subscription sends next.
- :func:`parse_client_frame`: a client text frame as :class:`Subscribe`,
  :class:`Credit` or :class:`ProtocolError` (the error frame to send and the
  close code to use).
- ``*_frame`` helpers build the server frames as JSON bytes.

Decisions PROTOCOL.md leaves open:

- ``subscribed.latest_replay_id`` is the newest replay id in the stream when
  the subscription starts (as in tests/samples/ws-frames.jsonl).
- ``events.latest_replay_id`` and ``heartbeat.latest_replay_id`` are the
  subscription's position: the replay id up to which it has been sent
  everything it subscribed to. It can be past the frame's last event (events
  of other topics are passed over) but never past an event not yet sent, so a
  client may resume from it once it has handed off what it received.
- Malformed items (``--malformed-rate``) go to every subscriber whatever its
  topics: bad event objects inside ``events`` frames (they take a replay id
  and a credit), broken frames on their own (no replay id, no credit).
- A replay id that is not ours, newer than the stream, or older than the
  retention window is refused alike: ``replay_id_expired``, close 4410.
  The id just before the oldest retained event is still a valid resume point.
- :meth:`StreamLog.expire` forces expiry on demand (what 72 hours of downtime
  would do): every replay id up to and including the given one, by default
  the newest, stops being a resume point; ``earliest`` starts after it. A
  subscription that is reading the stream when it happens and is behind that
  point gets ``replay_id_expired`` too.
- The first frame must be ``subscribe`` (within 30 s) and only one is
  allowed per connection; anything else is ``invalid_request``, close 4400.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from amt_ingest.routing.events import TOPICS

__all__ = [
    "CLOSE_INVALID_REQUEST",
    "CLOSE_REPLAY_ID_EXPIRED",
    "Credit",
    "Expired",
    "ProtocolError",
    "StreamLog",
    "Subscribe",
    "Take",
    "decode_replay_id",
    "encode_replay_id",
    "error_frame",
    "events_frame",
    "heartbeat_frame",
    "parse_client_frame",
    "subscribed_frame",
]

CLOSE_INVALID_REQUEST: Final = 4400
CLOSE_REPLAY_ID_EXPIRED: Final = 4410
_MAX_COUNTER: Final = 2**64 - 1


def encode_replay_id(counter: int) -> str:
    return base64.b64encode(counter.to_bytes(8, "big")).decode("ascii")


def decode_replay_id(replay_id: str) -> int | None:
    """The counter behind ``replay_id``, or None if it is not one of ours."""
    try:
        raw = base64.b64decode(replay_id.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    if len(raw) != 8:
        return None
    return int.from_bytes(raw, "big")


# --- Client frames ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscribe:
    topics: tuple[str, ...]
    preset: Literal["latest", "earliest", "custom"]
    replay_id: str | None
    credits: int


@dataclass(frozen=True, slots=True)
class Credit:
    n: int


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """Send ``error_frame(code, message)``, then close with ``close_code``."""

    code: str
    message: str
    close_code: int


def _invalid(message: str) -> ProtocolError:
    return ProtocolError("invalid_request", message, CLOSE_INVALID_REQUEST)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def parse_client_frame(text: str | bytes) -> Subscribe | Credit | ProtocolError:
    """Read one client frame (PROTOCOL.md section 2)."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _invalid("frame is not valid JSON")
    if not isinstance(obj, dict):
        return _invalid("frame is not a JSON object")
    kind = obj.get("type")
    if kind == "credit":
        n = _count(obj.get("n"))
        if n is None:
            return _invalid("credit.n must be a non-negative integer")
        return Credit(n)
    if kind != "subscribe":
        return _invalid(f"unexpected frame type {kind!r}")
    topics = obj.get("topics")
    if not isinstance(topics, list) or not topics or not all(isinstance(t, str) for t in topics):
        return _invalid("subscribe.topics must be a non-empty list of strings")
    unknown = [t for t in topics if t not in TOPICS]
    if unknown:
        return ProtocolError(
            "unknown_topic", f"unknown topic(s): {', '.join(unknown)}", CLOSE_INVALID_REQUEST
        )
    replay = obj.get("replay")
    if not isinstance(replay, dict):
        return _invalid("subscribe.replay must be an object with a preset")
    preset = replay.get("preset")
    replay_id = replay.get("replay_id")
    if preset == "custom":
        if not isinstance(replay_id, str):
            return _invalid("replay preset custom needs a replay_id string")
    elif preset in ("latest", "earliest"):
        replay_id = None
    else:
        return _invalid("replay.preset must be latest, earliest or custom")
    credits = _count(obj.get("credits"))
    if credits is None:
        return _invalid("subscribe.credits must be a non-negative integer")
    return Subscribe(tuple(dict.fromkeys(topics)), preset, replay_id, credits)


# --- Server frames ---------------------------------------------------------------------


def subscribed_frame(topics: tuple[str, ...], latest_replay_id: str) -> bytes:
    return orjson.dumps(
        {"type": "subscribed", "topics": list(topics), "latest_replay_id": latest_replay_id}
    )


def events_frame(events: list[bytes], latest_replay_id: str, pending_credits: int) -> bytes:
    """An ``events`` frame around already serialized event objects."""
    return b"".join(
        (
            b'{"type":"events","events":[',
            b",".join(events),
            b'],"latest_replay_id":',
            orjson.dumps(latest_replay_id),
            b',"pending_credits":',
            str(pending_credits).encode(),
            b"}",
        )
    )


def heartbeat_frame(latest_replay_id: str, server_time: str) -> bytes:
    return orjson.dumps(
        {"type": "heartbeat", "latest_replay_id": latest_replay_id, "server_time": server_time}
    )


def error_frame(code: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "code": code, "message": message})


# --- The stream ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    counter: int  # replay counter of this event; for a raw frame, that of the event before
    topic: str | None  # None: for every subscriber (malformed items)
    data: bytes  # the serialized event (with replay_id), or the raw frame
    raw: bool


@dataclass(frozen=True, slots=True)
class Take:
    """What a subscription sends next.

    Either one ``raw`` frame, or ``events`` (possibly none) for an events
    frame. ``cursor`` and ``position`` are the subscription's new cursor and
    replay counter (entries of other topics are passed over for free).
    """

    raw: bytes | None
    events: list[bytes]
    cursor: int
    position: int


@dataclass(frozen=True, slots=True)
class Expired:
    """The subscription's cursor fell out of the retention window."""

    message: str


class StreamLog:
    """Every stream entry in delivery order, addressed by absolute index.

    ``retention`` > 0 keeps only the newest ``retention`` events replayable
    (older entries are eventually freed); 0 keeps everything.
    """

    def __init__(self, retention: int = 0) -> None:
        if retention < 0:
            raise ValueError("retention must be >= 0")
        self._retention = retention
        self._entries: list[_Entry] = []
        self._base = 0  # absolute index of _entries[0]
        self._latest = 0  # counter of the newest event
        self._expired = 0  # custom resumes from a counter below this are refused (expire())
        self._after: dict[int, int] = {0: 0}  # counter -> absolute index right after it

    # -- writing

    def append_event(self, event: dict[str, Any], *, topic: str | None = None) -> str:
        """Append an event; returns the replay id given to it.

        ``topic=None`` (for malformed items) sends it to every subscriber;
        otherwise only subscribers of ``topic`` see it.
        """
        self._latest += 1
        replay_id = encode_replay_id(self._latest)
        wire = dict(event)
        wire["replay_id"] = replay_id
        self._entries.append(_Entry(self._latest, topic, orjson.dumps(wire), False))
        self._after[self._latest] = self.end
        self._trim()
        return replay_id

    def append_raw(self, text: str) -> None:
        """Append a raw (malformed) frame, sent to every subscriber as is."""
        self._entries.append(_Entry(self._latest, None, text.encode("utf-8"), True))

    def expire(self, through: int | None = None) -> None:
        """Drop every event up to and including counter ``through`` (default: the newest).

        Afterwards a custom subscribe from any replay id up to ``through`` (that
        one included) is refused with ``replay_id_expired`` (close 4410),
        ``earliest`` starts with the next event, and a subscription still
        positioned before it expires on its next read. Expiry only moves forward.
        """
        if through is None:
            through = self._latest
        if not 0 <= through <= self._latest:
            raise ValueError(f"counter {through} is not in the stream (latest {self._latest})")
        self._expired = max(self._expired, through + 1)
        self._trim()

    def _trim(self) -> None:
        if not self._retention and not self._expired:
            return
        start = self.start_index
        if start - self._base < max(1024, self._retention):
            return
        drop = start - self._base
        del self._entries[:drop]
        self._base = start
        for counter in [c for c in self._after if c < self.first_counter - 1]:
            del self._after[counter]

    # -- reading

    @property
    def latest_counter(self) -> int:
        return self._latest

    @property
    def latest_replay_id(self) -> str:
        return encode_replay_id(self._latest)

    @property
    def first_counter(self) -> int:
        """The oldest replayable event's counter (``latest_counter + 1`` if none is)."""
        first = max(1, self._expired)
        if self._retention:
            first = max(first, self._latest - self._retention + 1)
        return first

    @property
    def oldest_resume_counter(self) -> int:
        """The oldest counter a custom subscribe may resume after."""
        return max(self.first_counter - 1, self._expired)

    @property
    def start_index(self) -> int:
        """Absolute index where replay from ``earliest`` starts."""
        return self._after[self.first_counter - 1]

    @property
    def end(self) -> int:
        """Absolute index after the last entry."""
        return self._base + len(self._entries)

    def resolve(self, subscribe: Subscribe) -> tuple[int, int] | ProtocolError:
        """Starting ``(cursor, position)`` for a subscription, or why it cannot start."""
        if subscribe.preset == "latest":
            return self.end, self._latest
        if subscribe.preset == "earliest":
            return self.start_index, self.first_counter - 1
        assert subscribe.replay_id is not None
        counter = decode_replay_id(subscribe.replay_id)
        if counter is None or counter > self._latest:
            return ProtocolError(
                "replay_id_expired",
                f"replay id {subscribe.replay_id!r} is unknown",
                CLOSE_REPLAY_ID_EXPIRED,
            )
        if counter < self.oldest_resume_counter:
            return ProtocolError(
                "replay_id_expired",
                f"replay id {subscribe.replay_id} is outside the retention window",
                CLOSE_REPLAY_ID_EXPIRED,
            )
        return self._after[counter], counter

    def take(
        self, cursor: int, position: int, topics: frozenset[str], limit: int
    ) -> Take | Expired:
        """What to send from ``cursor``: up to ``limit`` events, or one raw frame.

        Events of other topics are passed over (they advance the position
        without using credits); a raw frame is returned alone, in order.
        """
        if cursor < self.start_index:
            return Expired("the subscription fell behind the retention window")
        entries, base = self._entries, self._base
        index, end = cursor, self.end
        events: list[bytes] = []
        while index < end:
            entry = entries[index - base]
            if entry.raw:
                if events:
                    break
                return Take(entry.data, [], index + 1, position)
            if entry.topic is None or entry.topic in topics:
                if len(events) >= limit:
                    break
                events.append(entry.data)
            position = entry.counter
            index += 1
        return Take(None, events, index, position)
