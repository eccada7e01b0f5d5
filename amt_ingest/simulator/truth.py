"""The ground truth of the simulated org: each record as a correct store holds it, and
the delete log Salesforce's deleted-records resource reads (pure, no I/O)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from amt_ingest.routing.events import TOPICS

__all__ = [
    "CHANGE_ORIGIN",
    "FOREIGN_ORG_ID",
    "MAIN_ORG_ID",
    "START_MS",
    "DeleteLog",
    "RecordState",
    "apply_event",
    "iso_ms",
    "parse_iso_ms",
    "truth_jsonl",
]

MAIN_ORG_ID: Final = "00D5g000004ZzABEA0"
FOREIGN_ORG_ID: Final = "00D5g000009XyZQEA0"
#: 2026-11-25T09:00:00Z, the commit time the simulated history starts from.
START_MS: Final = 1795597200000
CHANGE_ORIGIN: Final = "com/salesforce/api/soap/61.0;client=Passport"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as ``2026-11-25T09:49:18.123Z``."""
    return f"{_iso_seconds(ms // 1000)}.{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_seconds(seconds: int) -> str:
    # Formatting a datetime costs more than generating the rest of an event.
    return f"{_EPOCH + timedelta(seconds=seconds):%Y-%m-%dT%H:%M:%S}"


def parse_iso_ms(text: str) -> int | None:
    """An ISO-8601 instant (``Z`` or offset; a naive one is UTC) as epoch ms, or None."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(milliseconds=1)


# --- Ground truth ----------------------------------------------------------------


@dataclass(slots=True)
class RecordState:
    """A record as a correct store holds it after every event so far.

    ``modstamp_ms`` is the commit time of the last change (its SystemModstamp).
    """

    topic: str
    id: str
    org_id: str
    deleted: bool
    fields: dict[str, Any]
    modstamp_ms: int

    def as_truth(self) -> dict[str, Any]:
        """The PROTOCOL.md section 5 export line (as an object)."""
        return {
            "topic": self.topic,
            "id": self.id,
            "org_id": self.org_id,
            "deleted": self.deleted,
            "fields": dict(self.fields),
        }


def apply_event(states: dict[tuple[str, str], RecordState], event: dict[str, Any]) -> None:
    """Apply one event to ``states`` as Salesforce committed it (CDC rules, section 1).

    Events must be applied in commit order; this function does not look at
    positions. GAP events carry no content and leave the fields unchanged.
    """
    topic: str = event["topic"]
    payload: dict[str, Any] = event["payload"]
    header: dict[str, Any] = payload["ChangeEventHeader"]
    change = header["changeType"]
    values = {k: v for k, v in payload.items() if k != "ChangeEventHeader"}
    for name in header.get("nulledFields", []):
        values.setdefault(name, None)
    for record_id in dict.fromkeys(header["recordIds"]):
        state = states.get((topic, record_id))
        if state is None:
            state = RecordState(topic, record_id, event["org_id"], False, {}, 0)
            states[(topic, record_id)] = state
        if change in ("CREATE", "UNDELETE"):
            state.fields.update(values)
            state.deleted = False
        elif change == "UPDATE":
            state.fields.update(values)
        elif change == "DELETE":
            state.deleted = True
        state.modstamp_ms = header["commitTimestamp"]


def truth_jsonl(records: list[dict[str, Any]]) -> bytes:
    """Truth records as JSON lines (one object per line, trailing newline)."""
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


class DeleteLog:
    """Salesforce's delete log, as its deleted-records resource reads it.

    Every delete of the main org, per topic, in commit order. A record deleted
    and undeleted later stays listed at its delete (each delete is kept, the
    stricter reading of "Get Deleted Records" for a consumer: its tombstone must
    lose to the later undelete). :meth:`purge` drops old entries, as
    Salesforce's background purge does; ``earliestDateAvailable`` is then the
    newest purged delete (None before any purge: the resource answers the start
    of its look-back). ``start_ms`` is the org's first instant.
    """

    def __init__(self, start_ms: int) -> None:
        self.start_ms = start_ms
        self._entries: dict[str, list[tuple[int, str]]] = {t: [] for t in TOPICS}
        self._purged: dict[str, int] = {}

    def add(self, topic: str, record_id: str, deleted_ms: int) -> None:
        self._entries[topic].append((deleted_ms, record_id))

    def between(self, topic: str, start_ms: int, end_ms: int) -> list[tuple[str, int]]:
        """``(id, deleted_ms)`` of the deletes with ``start_ms <= deleted_ms <= end_ms``."""
        return [(rid, ms) for ms, rid in self._entries[topic] if start_ms <= ms <= end_ms]

    def earliest_available_ms(self, topic: str) -> int | None:
        """The newest delete of ``topic`` purged from the log, None if none was."""
        return self._purged.get(topic)

    def purge(self, before_ms: int) -> int:
        """Forget every delete older than ``before_ms``; returns how many went."""
        dropped = 0
        for topic, entries in self._entries.items():
            old = [entry for entry in entries if entry[0] < before_ms]
            if old:
                self._purged[topic] = max(self._purged.get(topic, 0), max(ms for ms, _ in old))
                self._entries[topic] = [entry for entry in entries if entry[0] >= before_ms]
                dropped += len(old)
        return dropped
