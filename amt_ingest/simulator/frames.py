"""What the simulator sends: items of the WebSocket log (a valid event, a malformed
event object, a malformed raw frame) and the deliveries of one step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Deliveries", "WsBadEvent", "WsEvent", "WsItem", "WsRawFrame"]


@dataclass(frozen=True, slots=True)
class WsEvent:
    """A valid event for the WebSocket stream (it gets a replay id there)."""

    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WsBadEvent:
    """A malformed event object: sent inside an ``events`` frame to every subscriber."""

    obj: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WsRawFrame:
    """A malformed whole frame, sent as this text."""

    text: str


WsItem = WsEvent | WsBadEvent | WsRawFrame


@dataclass(slots=True)
class Deliveries:
    """What to send now: appended to the stream, published to SNS, sent raw to SQS;
    ``log``: the event log lines of the main-org changes routed (with ``keep_log``)."""

    ws: list[WsItem] = field(default_factory=list)
    sns: list[dict[str, Any]] = field(default_factory=list)
    sqs_raw: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: Deliveries) -> None:
        self.ws.extend(other.ws)
        self.sns.extend(other.sns)
        self.sqs_raw.extend(other.sqs_raw)
        self.log.extend(other.log)
