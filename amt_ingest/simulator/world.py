"""The simulated Passport org as plain data: seeded events, ground truth, delivery plan.

Nothing here does I/O or touches an event loop; :mod:`.server` drives it.

- :class:`World` generates realistic CDC events (PROTOCOL.md section 1) for the
  three topics, one at a time, in commit order, and keeps the ground truth:
  what a correct consumer's store must hold (section 5) after applying every
  event of the main org in commit order. Events of a *foreign* org are
  generated from a separate population and are never part of the truth.
- :class:`DeliveryPlan` decides, per generated transaction, how its events
  travel: on the WebSocket stream, through SNS, or both; once or twice on
  each; delayed within a small window on each path independently; whether
  Passport withholds their content (a ``GAP_*`` event instead of the change,
  or one ``GAP_OVERFLOW`` per topic instead of the whole transaction); and
  which malformed inputs to interleave. It never changes what happened, only
  how it is seen: the truth always holds the real changes, and the REST API
  (:mod:`.rest`) serves it, so withheld content can be re-read.

Both are deterministic for a given seed: the main org's events depend only on
``seed`` and ``records`` (not on the foreign-org rate or any delivery option,
gaps and overflows included), and the plan draws from its own random streams.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import random
import string
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Generic, TypeVar

import orjson

from amt_ingest.routing.events import TOPICS

__all__ = [
    "CHANGE_ORIGIN",
    "FOREIGN_ORG_ID",
    "MAIN_ORG_ID",
    "OVERFLOW_SEQUENCE",
    "START_MS",
    "DeleteLog",
    "Deliveries",
    "DeliveryPlan",
    "DeliveryRates",
    "DeliveryStats",
    "RecordState",
    "Reorderer",
    "World",
    "WorldStats",
    "WsBadEvent",
    "WsEvent",
    "WsItem",
    "WsRawFrame",
    "apply_event",
    "event_summary",
    "gap_event",
    "iso_ms",
    "overflow_event",
    "parse_iso_ms",
    "truth_jsonl",
]

MAIN_ORG_ID: Final = "00D5g000004ZzABEA0"
FOREIGN_ORG_ID: Final = "00D5g000009XyZQEA0"
#: 2026-11-25T09:00:00Z, the commit time the simulated history starts from.
START_MS: Final = 1795597200000
CHANGE_ORIGIN: Final = "com/salesforce/api/soap/61.0;client=Passport"
#: sequenceNumber of a transaction's first GAP_OVERFLOW event (the next topic's is +1):
#: past any real event of the transaction, as in tests/samples/event-opportunity-gap-overflow.json.
OVERFLOW_SEQUENCE: Final = 100_001

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_BASE62: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase

# Share of the population per topic (the rest goes to Application_Item__c).
_SHARES: Final = {"Opportunity": 0.4, "External_Attachment__c": 0.3}
# Record id prefix (key prefix + pod) per topic; ids are prefix + 8 base62 chars.
_MAIN_PREFIX: Final = {
    "Opportunity": "0065g00000",
    "External_Attachment__c": "a0X5g00000",
    "Application_Item__c": "a0Y5g00000",
}
_FOREIGN_PREFIX: Final = {
    "Opportunity": "0067Q00000",
    "External_Attachment__c": "a0X7Q00000",
    "Application_Item__c": "a0Y7Q00000",
}

# Fields an UPDATE may change, with their relative weights.
_UPDATABLE: Final[dict[str, tuple[tuple[str, int], ...]]] = {
    "Opportunity": (
        ("StageName", 6),
        ("Amount", 3),
        ("CloseDate", 2),
        ("Program__c", 1),
        ("AccountId", 1),
        ("Name", 1),
    ),
    "External_Attachment__c": (
        ("Status__c", 6),
        ("File_URL__c", 2),
        ("Size_Bytes__c", 2),
        ("Document_Type__c", 1),
        ("Name", 1),
    ),
    "Application_Item__c": (
        ("Status__c", 6),
        ("Due_Date__c", 3),
        ("Notes__c", 3),
        ("Item_Type__c", 1),
        ("Name", 1),
    ),
}
# Fields an UPDATE may set to null.
_NULLABLE: Final[dict[str, frozenset[str]]] = {
    "Opportunity": frozenset({"Amount", "CloseDate", "Program__c"}),
    "External_Attachment__c": frozenset({"File_URL__c", "Size_Bytes__c"}),
    "Application_Item__c": frozenset({"Due_Date__c", "Notes__c"}),
}
# Fields a multi-record UPDATE (one value for several records) may change.
_BULK: Final[dict[str, tuple[str, ...]]] = {
    "Opportunity": ("StageName", "CloseDate"),
    "External_Attachment__c": ("Status__c",),
    "Application_Item__c": ("Status__c", "Due_Date__c"),
}

_STAGES: Final = ("Started", "Submitted", "Admitted", "Enrolled", "Withdrawn")
_TERMS: Final = ("Fall 2027", "Spring 2027", "Fall 2028")
_PROGRAMS: Final = (
    "MSc Data Science",
    "MSc Computer Science",
    "MBA",
    "MA Economics",
    "BSc Biology",
    "MEng Robotics",
    "LLM International Law",
    "PhD Physics",
)
_SURNAMES: Final = (
    "Okafor",
    "Nguyen",
    "Garcia",
    "Schmidt",
    "Kowalski",
    "Tanaka",
    "Haddad",
    "Silva",
    "Murphy",
    "Ivanova",
    "Mensah",
    "Larsen",
    "Chen",
    "Patel",
    "Rossi",
)
_DOC_TYPES: Final = {
    "Transcript": "Official transcript.pdf",
    "Passport": "Passport scan.pdf",
    "CV": "Curriculum vitae.pdf",
    "Reference Letter": "Reference letter.pdf",
    "Personal Statement": "Personal statement.docx",
    "Test Score Report": "Test score report.pdf",
}
_DOC_STATUSES: Final = ("Requested", "Received", "Under Review", "Accepted", "Rejected")
_ITEM_TYPES: Final = (
    "Reference",
    "Interview",
    "Application Fee",
    "Test Score",
    "Essay",
    "Transcript",
)
_ITEM_STATUSES: Final = ("Open", "In Progress", "Complete", "Waived")
_NOTES: Final = (
    "Reminder sent to referee",
    "Waived by admissions officer",
    "Awaiting payment confirmation",
    "Interview scheduled",
    "Score report received from testing agency",
    "Applicant asked for an extension",
    "Escalated to program director",
)

_TXN_RATE: Final = 0.12  # share of transactions with more than one change
_MULTI_RATE: Final = 0.05  # share of changes that are multi-record updates
_DELETE_RATE: Final = 0.04  # share of changes to a live record that delete it
_UNDELETE_RATE: Final = 0.35  # chance that picking a deleted record undeletes it
_NULL_RATE: Final = 0.15  # chance that an updated nullable field becomes null


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


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


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


# --- Event generation ------------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    """A record as Salesforce holds it (including null fields)."""

    topic: str
    id: str
    created: bool = False
    deleted: bool = False
    values: dict[str, Any] = field(default_factory=dict)
    version: int = 1


@dataclass(slots=True)
class _Txn:
    key: str
    commit_ms: int
    commit_number: int
    user: str
    sequence: int = 0


class _Org:
    """One org's record population and commit clock."""

    def __init__(
        self,
        rng: random.Random,
        org_id: str,
        records: int,
        prefixes: dict[str, str],
        start_ms: int,
        mean_spacing_ms: float,
        clock: Callable[[], int] | None = None,
        fresh_records: bool = False,
    ) -> None:
        if records < 1:
            raise ValueError("records must be at least 1")
        self.rng = rng
        self.org_id = org_id
        self._clock = clock
        self._clock_ms = start_ms if clock is None else clock()
        self._mean_spacing = mean_spacing_ms
        self._commit_number = 74487681000
        self._users = [f"0055g00000{self._alnum(8)}" for _ in range(5)]
        self._programs = [f"a0B5g00000{self._alnum(8)}" for _ in _PROGRAMS]
        self._accounts = [f"0015g00000{self._alnum(8)}" for _ in range(max(3, records // 4))]
        n_opp = max(1, round(records * _SHARES["Opportunity"]))
        n_att = min(records - n_opp, round(records * _SHARES["External_Attachment__c"]))
        counts = {
            "Opportunity": n_opp,
            "External_Attachment__c": n_att,
            "Application_Item__c": records - n_opp - n_att,
        }
        self._prefixes = prefixes
        self._by_id: dict[str, _Slot] = {}
        self.slots: list[_Slot] = []
        self.by_topic: dict[str, list[_Slot]] = {t: [] for t in TOPICS}
        for topic in TOPICS:
            for _ in range(counts[topic]):
                slot = _Slot(topic, self._new_id(topic))
                self._by_id[slot.id] = slot
                self.slots.append(slot)
                self.by_topic[topic].append(slot)
        # Records not created yet, in the order fresh-records mode creates them (popped
        # from the end): every type mixed in, each record once.
        self._fresh: list[_Slot] = []
        if fresh_records:
            self._fresh = list(self.slots)
            self.rng.shuffle(self._fresh)

    def _alnum(self, n: int) -> str:
        return "".join(self.rng.choice(_BASE62) for _ in range(n))

    # -- transactions

    def _begin(self) -> _Txn:
        rng = self.rng
        spacing = max(1, round(rng.expovariate(1.0 / self._mean_spacing)))
        if self._clock is None:
            self._clock_ms += spacing
        else:
            # Real time, never backwards: equal instants are ordered by commitNumber.
            self._clock_ms = max(self._clock_ms, self._clock())
        self._commit_number += rng.randint(1, 60)
        return _Txn(_uuid4(rng), self._clock_ms, self._commit_number, rng.choice(self._users))

    @property
    def now_ms(self) -> int:
        """The org's clock: the real time with a clock, else the last commit time."""
        return self._clock_ms if self._clock is None else max(self._clock_ms, self._clock())

    def next_transaction(self) -> list[dict[str, Any]]:
        """The events of the next transaction, in sequence order, applied to the slots."""
        rng = self.rng
        txn = self._begin()
        if self._fresh:
            txn.sequence = 1
            return [self._create(txn, self._fresh.pop())]
        size = rng.randint(2, 3) if rng.random() < _TXN_RATE else 1
        return [self._change(txn) for _ in range(size)]

    def scripted_transaction(
        self,
        kind: str,
        *,
        topic: str,
        record_ids: list[str],
        size: int,
        fields: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """One transaction chosen by a test rather than by chance (see :meth:`World.script`)."""
        txn = self._begin()
        txn.sequence = 1
        if kind == "create":
            slot = _Slot(topic, self._new_id(topic))
            self.slots.append(slot)
            self.by_topic[topic].append(slot)
            self._by_id[slot.id] = slot
            return [self._create(txn, slot)]
        if kind == "bulk":
            live = [s for s in self.by_topic[topic] if s.created and not s.deleted]
            if len(live) < size:
                raise ValueError(f"fewer than {size} live {topic} records")
            slots = self.rng.sample(live, size)
            values = (
                dict(fields) if fields else {n: self._new_value(slots[0], n) for n in _BULK[topic]}
            )
            return [self._apply_update(txn, topic, slots, values)]
        slots = [self._slot(record_id) for record_id in record_ids]
        if not slots:
            raise ValueError(f"{kind} needs record ids")
        events: list[dict[str, Any]] = []
        for slot in slots:
            if kind == "delete" and slot.created and not slot.deleted:
                events.append(self._delete(txn, slot))
            elif kind == "undelete" and slot.deleted:
                events.append(self._undelete(txn, slot))
            elif kind == "update" and slot.created and not slot.deleted and fields:
                events.append(self._apply_update(txn, slot.topic, [slot], dict(fields)))
            elif kind == "update" and slot.created and not slot.deleted:
                events.append(self._update(txn, slot))
            else:
                raise ValueError(
                    f"cannot {kind} {slot.id} (created {slot.created}, deleted {slot.deleted})"
                )
            txn.sequence += 1
        return events

    def _slot(self, record_id: str) -> _Slot:
        slot = self._by_id.get(record_id)
        if slot is None:
            raise ValueError(f"no record {record_id} in this org")
        return slot

    def _new_id(self, topic: str) -> str:
        record_id = self._prefixes[topic] + self._alnum(8)
        while record_id in self._by_id:
            record_id = self._prefixes[topic] + self._alnum(8)
        return record_id

    def _change(self, txn: _Txn) -> dict[str, Any]:
        rng = self.rng
        txn.sequence += 1
        if rng.random() < _MULTI_RATE:
            event = self._multi_update(txn)
            if event is not None:
                return event
        slot = rng.choice(self.slots)
        if slot.deleted and rng.random() >= _UNDELETE_RATE:
            # Never touch a deleted record except to undelete it: pick another.
            for _ in range(20):
                other = rng.choice(self.slots)
                if not other.deleted:
                    slot = other
                    break
        if not slot.created:
            return self._create(txn, slot)
        if slot.deleted:
            return self._undelete(txn, slot)
        if rng.random() < _DELETE_RATE:
            return self._delete(txn, slot)
        return self._update(txn, slot)

    def _event(
        self,
        txn: _Txn,
        topic: str,
        record_ids: list[str],
        change: str,
        fields: dict[str, Any],
        *,
        changed: list[str] | None = None,
        nulled: list[str] | None = None,
    ) -> dict[str, Any]:
        header = {
            "entityName": topic,
            "recordIds": record_ids,
            "changeType": change,
            "changeOrigin": CHANGE_ORIGIN,
            "transactionKey": txn.key,
            "sequenceNumber": txn.sequence,
            "commitTimestamp": txn.commit_ms,
            "commitNumber": txn.commit_number,
            "commitUser": txn.user,
            "changedFields": changed or [],
            "nulledFields": nulled or [],
            "diffFields": [],
        }
        return {
            "event_id": _uuid4(self.rng),
            "org_id": self.org_id,
            "topic": topic,
            "payload": {"ChangeEventHeader": header, **fields},
        }

    def _create(self, txn: _Txn, slot: _Slot) -> dict[str, Any]:
        now = iso_ms(txn.commit_ms)
        slot.values = self._initial_values(slot)
        slot.values["CreatedDate"] = now
        slot.values["LastModifiedDate"] = now
        slot.created = True
        fields = {k: v for k, v in slot.values.items() if v is not None}
        return self._event(txn, slot.topic, [slot.id], "CREATE", fields)

    def _undelete(self, txn: _Txn, slot: _Slot) -> dict[str, Any]:
        slot.values["LastModifiedDate"] = iso_ms(txn.commit_ms)
        slot.deleted = False
        fields = {k: v for k, v in slot.values.items() if v is not None}
        return self._event(txn, slot.topic, [slot.id], "UNDELETE", fields)

    def _delete(self, txn: _Txn, slot: _Slot) -> dict[str, Any]:
        slot.deleted = True
        return self._event(txn, slot.topic, [slot.id], "DELETE", {})

    def _update(self, txn: _Txn, slot: _Slot) -> dict[str, Any]:
        rng = self.rng
        names, weights = zip(*_UPDATABLE[slot.topic], strict=True)
        wanted = dict.fromkeys(rng.choices(names, weights, k=rng.randint(1, 3)))
        values: dict[str, Any] = {}
        for name in wanted:
            value = self._new_value(slot, name)
            if value != slot.values.get(name):
                values[name] = value
        return self._apply_update(txn, slot.topic, [slot], values)

    def _multi_update(self, txn: _Txn) -> dict[str, Any] | None:
        rng = self.rng
        topic = rng.choice(TOPICS)
        pool = self.by_topic[topic]
        want = rng.randint(2, 4)
        chosen: dict[str, _Slot] = {}
        for _ in range(30):
            if len(chosen) == want or not pool:
                break
            slot = rng.choice(pool)
            if slot.created and not slot.deleted:
                chosen[slot.id] = slot
        if len(chosen) < 2:
            return None
        slots = list(chosen.values())
        bulk = _BULK[topic]
        names = rng.sample(bulk, rng.randint(1, len(bulk)))
        values = {name: self._new_value(slots[0], name) for name in names}
        return self._apply_update(txn, topic, slots, values)

    def _apply_update(
        self, txn: _Txn, topic: str, slots: list[_Slot], values: dict[str, Any]
    ) -> dict[str, Any]:
        values["LastModifiedDate"] = iso_ms(txn.commit_ms)
        for slot in slots:
            slot.values.update(values)
        nulled = [name for name, value in values.items() if value is None]
        return self._event(
            txn,
            topic,
            [s.id for s in slots],
            "UPDATE",
            values,
            changed=list(values),
            nulled=nulled,
        )

    # -- field values

    def _parent(self) -> str:
        pool = self.by_topic["Opportunity"]
        for _ in range(10):
            slot = self.rng.choice(pool)
            if slot.created and not slot.deleted:
                return slot.id
        return self.rng.choice(pool).id

    def _date(self, first: date, days: int) -> str:
        return (first + timedelta(days=self.rng.randrange(days))).isoformat()

    def _initial_values(self, slot: _Slot) -> dict[str, Any]:
        rng = self.rng
        if slot.topic == "Opportunity":
            program = rng.randrange(len(_PROGRAMS))
            name = (
                f"{rng.choice(_TERMS)} - {_PROGRAMS[program]} - "
                f"{rng.choice(string.ascii_uppercase)}. {rng.choice(_SURNAMES)}"
            )
            return {
                "Name": name,
                "StageName": "Started",
                "CloseDate": self._date(date(2027, 1, 1), 365),
                "AccountId": rng.choice(self._accounts),
                "Amount": self._new_value(slot, "Amount") if rng.random() < 0.6 else None,
                "Program__c": self._programs[program],
            }
        if slot.topic == "External_Attachment__c":
            doc_type = rng.choice(list(_DOC_TYPES))
            return {
                "Name": _DOC_TYPES[doc_type],
                "Opportunity__c": self._parent(),
                "Document_Type__c": doc_type,
                "File_URL__c": f"https://files.example.edu/passport/{slot.id}/v1",
                "Status__c": "Requested",
                "Size_Bytes__c": self._new_value(slot, "Size_Bytes__c"),
            }
        item_type = rng.choice(_ITEM_TYPES)
        return {
            "Name": f"{item_type} {rng.randint(1, 3)}",
            "Opportunity__c": self._parent(),
            "Item_Type__c": item_type,
            "Status__c": "Open",
            "Due_Date__c": self._date(date(2026, 12, 1), 180),
            "Notes__c": rng.choice(_NOTES) if rng.random() < 0.3 else None,
        }

    def _new_value(self, slot: _Slot, name: str) -> Any:
        rng = self.rng
        if name in _NULLABLE[slot.topic] and rng.random() < _NULL_RATE:
            return None
        match name:
            case "StageName":
                return rng.choice(_STAGES)
            case "Amount":
                return float(rng.randrange(5000, 45001, 250))
            case "CloseDate":
                return self._date(date(2027, 1, 1), 365)
            case "Program__c":
                return rng.choice(self._programs)
            case "AccountId":
                return rng.choice(self._accounts)
            case "Name" if slot.topic == "Opportunity":
                return (
                    f"{rng.choice(_TERMS)} - {rng.choice(_PROGRAMS)} - "
                    f"{rng.choice(string.ascii_uppercase)}. {rng.choice(_SURNAMES)}"
                )
            case "Name" if slot.topic == "External_Attachment__c":
                return rng.choice(list(_DOC_TYPES.values()))
            case "Name":
                return f"{rng.choice(_ITEM_TYPES)} {rng.randint(1, 3)}"
            case "Document_Type__c":
                return rng.choice(list(_DOC_TYPES))
            case "File_URL__c":
                slot.version += 1
                return f"https://files.example.edu/passport/{slot.id}/v{slot.version}"
            case "Size_Bytes__c":
                return rng.randint(20_000, 5_000_000)
            case "Status__c" if slot.topic == "External_Attachment__c":
                return rng.choice(_DOC_STATUSES)
            case "Status__c":
                return rng.choice(_ITEM_STATUSES)
            case "Item_Type__c":
                return rng.choice(_ITEM_TYPES)
            case "Due_Date__c":
                return self._date(date(2026, 12, 1), 180)
            case "Notes__c":
                return rng.choice(_NOTES)
        raise AssertionError(f"no generator for {slot.topic}.{name}")


@dataclass(slots=True)
class WorldStats:
    """What the World generated. Topic and change-type counts cover the main org only."""

    events: int = 0
    transactions: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    by_change_type: Counter[str] = field(default_factory=Counter)
    by_topic_and_change_type: Counter[tuple[str, str]] = field(default_factory=Counter)
    multi_record_events: int = 0
    foreign_org_events: int = 0

    def as_dict(self) -> dict[str, Any]:
        nested: dict[str, dict[str, int]] = {}
        for (topic, change), n in sorted(self.by_topic_and_change_type.items()):
            nested.setdefault(topic, {})[change] = n
        return {
            "events": self.events,
            "main_org_events": self.events - self.foreign_org_events,
            "foreign_org_events": self.foreign_org_events,
            "transactions": self.transactions,
            "multi_record_events": self.multi_record_events,
            "by_topic": dict(sorted(self.by_topic.items())),
            "by_change_type": dict(sorted(self.by_change_type.items())),
            "by_topic_and_change_type": nested,
        }


class World:
    """A seeded Passport org: events in commit order plus the ground truth.

    ``records`` is the size of the main org's population (40% Opportunity,
    30% External_Attachment__c, 30% Application_Item__c); records are created
    as they are first picked. With ``foreign_org_rate`` > 0 that share of the
    events comes from a second org (``foreign_org_id``) with its own records,
    which the truth leaves out.

    For benchmarks: ``clock`` (epoch milliseconds) replaces the simulated commit
    clock, so ``commitTimestamp`` is when the event was generated (latency from
    commit can be measured); ``fresh_records`` makes every main-org event create
    a record not seen before (one single-record ``CREATE`` per transaction, no
    coalescing possible) until the population is used up, then events go on as
    usual.
    """

    def __init__(
        self,
        seed: int,
        records: int,
        org_id: str = MAIN_ORG_ID,
        *,
        foreign_org_rate: float = 0.0,
        foreign_org_id: str = FOREIGN_ORG_ID,
        foreign_records: int | None = None,
        start_ms: int = START_MS,
        mean_spacing_ms: float = 250.0,
        clock: Callable[[], int] | None = None,
        fresh_records: bool = False,
    ) -> None:
        if not 0.0 <= foreign_org_rate <= 1.0:
            raise ValueError("foreign_org_rate must be within [0, 1]")
        if foreign_org_id == org_id:
            raise ValueError("the foreign org must differ from the main org")
        self.org_id = org_id
        self.foreign_org_id = foreign_org_id
        self._foreign_rate = foreign_org_rate
        self._main = _Org(
            random.Random(f"amt-sim:{seed}:main"),
            org_id,
            records,
            _MAIN_PREFIX,
            start_ms,
            mean_spacing_ms,
            clock,
            fresh_records,
        )
        self._foreign = _Org(
            random.Random(f"amt-sim:{seed}:foreign"),
            foreign_org_id,
            foreign_records or max(3, records // 5),
            _FOREIGN_PREFIX,
            start_ms,
            mean_spacing_ms * 4,
            clock,
        )
        self._org_rng = random.Random(f"amt-sim:{seed}:org-choice")
        self._pending: list[dict[str, Any]] = []
        self._states: dict[tuple[str, str], RecordState] = {}
        self.stats = WorldStats()
        #: The main org's deletes, for the deleted-records resource.
        self.deletes = DeleteLog(self._main.now_ms)

    @property
    def now_ms(self) -> int:
        """The main org's clock (the real time with ``clock``, else its last commit)."""
        return self._main.now_ms

    def script(
        self,
        kind: str,
        *,
        topic: str = "Opportunity",
        record_ids: list[str] | None = None,
        size: int = 3,
        fields: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The events of one main-org transaction chosen by a test, in sequence order.

        ``kind``: ``create`` (a new record of ``topic``, beyond the population),
        ``delete``, ``undelete`` or ``update`` (each of ``record_ids``), ``bulk``
        (one update of ``size`` live records of ``topic``, the same values for
        all). An update or a bulk sets ``fields`` when given (any names: a field
        no random change touches stays as the script left it), else fields
        chosen at random. Call it between transactions (not while :attr:`transaction_open`).
        Raises ValueError when the records do not allow it. Scripted
        transactions change what follows: the events after them are no longer
        those of the seed alone.
        """
        if self._pending:
            raise ValueError("a transaction is still open")
        events = self._main.scripted_transaction(
            kind, topic=topic, record_ids=list(record_ids or ()), size=size, fields=fields
        )
        self.stats.transactions += 1
        for event in events:
            self._account(event)
        return events

    def next_event(self) -> dict[str, Any]:
        """The next event, shaped as PROTOCOL.md section 1 without ``replay_id``.

        The returned object belongs to the caller (the World keeps no reference).
        """
        if not self._pending:
            foreign = self._foreign_rate > 0 and self._org_rng.random() < self._foreign_rate
            org = self._foreign if foreign else self._main
            self._pending = org.next_transaction()
            self._pending.reverse()
            self.stats.transactions += 1
        event = self._pending.pop()
        self._account(event)
        return event

    @property
    def transaction_open(self) -> bool:
        """True while the last event :meth:`next_event` returned has more of its
        transaction still to come (the next events share its ``transactionKey``)."""
        return bool(self._pending)

    def _account(self, event: dict[str, Any]) -> None:
        stats = self.stats
        stats.events += 1
        if event["org_id"] != self.org_id:
            stats.foreign_org_events += 1
            return
        header = event["payload"]["ChangeEventHeader"]
        topic, change = event["topic"], header["changeType"]
        stats.by_topic[topic] += 1
        stats.by_change_type[change] += 1
        stats.by_topic_and_change_type[(topic, change)] += 1
        if len(header["recordIds"]) > 1:
            stats.multi_record_events += 1
        apply_event(self._states, event)
        if change == "DELETE":
            for record_id in header["recordIds"]:
                self.deletes.add(topic, record_id, header["commitTimestamp"])

    # -- the truth

    def truth(self) -> list[dict[str, Any]]:
        """Every main-org record that received an event, sorted by topic then id."""
        return [self._states[key].as_truth() for key in sorted(self._states)]

    def record(self, topic: str, record_id: str) -> RecordState | None:
        """The record's true current state (deleted ones included), or None if unseen."""
        return self._states.get((topic, record_id))

    def live_ids(self, topic: str) -> list[str]:
        """Ids of the main org's live records of ``topic``, sorted."""
        return sorted(r for (t, r), s in self._states.items() if t == topic and not s.deleted)

    def deleted_between(self, topic: str, start_ms: int, end_ms: int) -> list[tuple[str, int]]:
        """``(id, deleted_ms)`` of the main org's deletes of ``topic`` in the window."""
        return self.deletes.between(topic, start_ms, end_ms)

    def earliest_delete_available_ms(self, topic: str) -> int | None:
        return self.deletes.earliest_available_ms(topic)

    def modified_since(self, topic: str, since_ms: int) -> list[RecordState]:
        """Live records of ``topic`` whose last change committed at or after ``since_ms``,
        oldest change first (like ``SELECT Id ... WHERE SystemModstamp >= ...``)."""
        found = [
            s
            for (t, _), s in self._states.items()
            if t == topic and not s.deleted and s.modstamp_ms >= since_ms
        ]
        found.sort(key=lambda s: (s.modstamp_ms, s.id))
        return found


def event_summary(event: dict[str, Any], *, sent_as: str) -> dict[str, Any]:
    """One line of the event log: a real change, and the id of what carried it
    (itself, its ``GAP_*`` form, or the ``GAP_OVERFLOW`` that replaced it)."""
    header = event["payload"]["ChangeEventHeader"]
    return {
        "event_id": event["event_id"],
        "sent_as": sent_as,
        "topic": event["topic"],
        "change": header["changeType"],
        "records": list(header["recordIds"]),
        "commit_ms": header["commitTimestamp"],
    }


# --- Withheld content ----------------------------------------------------------------

_GAPPABLE: Final = frozenset({"CREATE", "UPDATE", "DELETE", "UNDELETE"})


def _header(event: dict[str, Any]) -> dict[str, Any]:
    header: dict[str, Any] = event["payload"]["ChangeEventHeader"]
    return header


def gap_event(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` as Passport sends it when it withholds the content: ``GAP_<change>``.

    Same event id, org, topic and header (record ids, position, transaction),
    an empty ``changeOrigin`` and no field values (tests/samples/event-items-gap-update.json).
    """
    header = dict(_header(event))
    header.update(
        recordIds=list(header["recordIds"]),
        changeType="GAP_" + header["changeType"],
        changeOrigin="",
        changedFields=[],
        nulledFields=[],
        diffFields=[],
    )
    return {
        "event_id": event["event_id"],
        "org_id": event["org_id"],
        "topic": event["topic"],
        "payload": {"ChangeEventHeader": header},
    }


def overflow_event(
    transaction: list[dict[str, Any]], topic: str, *, sequence: int, event_id: str
) -> dict[str, Any]:
    """The ``GAP_OVERFLOW`` event that stands for every change to ``topic`` in ``transaction``.

    No record ids; the transaction's key, commit time, commit number and user
    (tests/samples/event-opportunity-gap-overflow.json).
    """
    first = _header(transaction[0])
    header = {
        "entityName": topic,
        "recordIds": [],
        "changeType": "GAP_OVERFLOW",
        "changeOrigin": "",
        "transactionKey": first["transactionKey"],
        "sequenceNumber": sequence,
        "commitTimestamp": first["commitTimestamp"],
        "commitNumber": first["commitNumber"],
        "commitUser": first["commitUser"],
        "changedFields": [],
        "nulledFields": [],
        "diffFields": [],
    }
    return {
        "event_id": event_id,
        "org_id": transaction[0]["org_id"],
        "topic": topic,
        "payload": {"ChangeEventHeader": header},
    }


# --- Delivery ----------------------------------------------------------------------

T = TypeVar("T")


class Reorderer(Generic[T]):
    """Delays items within a window of later items on one path.

    With probability ``rate`` a pushed item is held until 1..``window`` later
    items have been pushed; :meth:`flush` releases whatever is still held.
    """

    def __init__(self, rng: random.Random, rate: float, window: int) -> None:
        self._rng = rng
        self._rate = rate
        self._window = max(1, window)
        self._tick = 0
        self._seq = 0
        self._held: list[tuple[int, int, T]] = []
        self.delayed = 0

    def push(self, item: T, *, delay: int | None = None) -> list[T]:
        """Push one item; returns the items released now, in delivery order.

        ``delay`` forces a hold of that many later items (0 releases at once).
        """
        self._tick += 1
        if delay is None:
            delay = 0
            if self._rate > 0 and self._rng.random() < self._rate:
                delay = self._rng.randint(1, self._window)
                self.delayed += 1
        out: list[T] = []
        if delay > 0:
            heapq.heappush(self._held, (self._tick + delay, self._seq, item))
            self._seq += 1
        else:
            out.append(item)
        while self._held and self._held[0][0] <= self._tick:
            out.append(heapq.heappop(self._held)[2])
        return out

    def flush(self) -> list[T]:
        out = [entry[2] for entry in sorted(self._held)]
        self._held.clear()
        return out

    def __len__(self) -> int:
        return len(self._held)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRates:
    """Per-event probabilities. ``ws_only_rate + sqs_only_rate`` must not exceed 1.

    Without SNS (``sns=False``) every event goes to the WebSocket stream.
    Malformed SQS bodies are planned only with ``malformed_sqs=True`` (a queue
    to send them to exists).

    Withheld content concerns the main org only. ``gap_rate`` is per
    CREATE/UPDATE/DELETE/UNDELETE event (sent as ``GAP_<change>``).
    ``overflow_rate`` is per *eligible* transaction: one that changes at least
    two records; it is sent as one ``GAP_OVERFLOW`` per topic it touched, and
    its events not at all. A resync lists the live records it changed (``SELECT
    Id ... WHERE SystemModstamp >= <commit time>``) and the deletes it hid (the
    deleted-records resource).
    """

    dup_rate: float = 0.0
    ooo_rate: float = 0.0
    ooo_window: int = 8
    ws_only_rate: float = 0.0
    sqs_only_rate: float = 0.0
    malformed_rate: float = 0.0
    gap_rate: float = 0.0
    overflow_rate: float = 0.0
    sns: bool = True
    malformed_sqs: bool = False

    def __post_init__(self) -> None:
        for name in (
            "dup_rate",
            "ooo_rate",
            "ws_only_rate",
            "sqs_only_rate",
            "malformed_rate",
            "gap_rate",
            "overflow_rate",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.ws_only_rate + self.sqs_only_rate > 1.0:
            raise ValueError("ws_only_rate + sqs_only_rate must not exceed 1")
        if self.ooo_window < 1:
            raise ValueError("ooo_window must be at least 1")


@dataclass(slots=True)
class DeliveryStats:
    """What the plan did. ``routed`` counts events as delivered (overflows, not
    the events they replaced); ``sns_outage`` those that went to the WebSocket
    alone because SNS was down (:attr:`DeliveryPlan.sns_down`). ``gaps`` counts
    events sent as ``GAP_<change>`` by that type; ``overflows`` the GAP_OVERFLOW
    events, ``overflow_events`` the events they replaced and ``overflow_records``
    the records those changed (per overflow event). ``withheld_then_deleted`` counts
    :attr:`DeliveryPlan.withheld_then_deleted`."""

    routed: int = 0
    sns_outage: int = 0
    ws_only: int = 0
    sqs_only: int = 0
    both: int = 0
    ws_entries: int = 0
    sns_publishes: int = 0
    ws_duplicates: int = 0
    sns_duplicates: int = 0
    ws_delayed: int = 0
    sns_delayed: int = 0
    malformed_ws: int = 0
    malformed_sqs: int = 0
    gaps: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(sorted("GAP_" + c for c in _GAPPABLE), 0))
    )
    overflows: int = 0
    overflow_transactions: int = 0
    overflow_events: int = 0
    overflow_records: int = 0
    withheld_then_deleted: int = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(sorted(value.items())) if isinstance(value, Counter) else value
        out["gap_events"] = sum(self.gaps.values())
        return out


class DeliveryPlan:
    """Decides how each generated event reaches the consumer (pure, seeded).

    Feed it whole transactions in commit order (:meth:`route_transaction`);
    ``org_id`` is the main org, the only one whose content is ever withheld.
    """

    def __init__(
        self,
        seed: int,
        rates: DeliveryRates,
        *,
        org_id: str = MAIN_ORG_ID,
        keep_log: bool = False,
    ) -> None:
        self.rates = rates
        self.org_id = org_id
        #: While True, nothing is published to SNS: every event goes to the WebSocket
        #: alone (an SNS outage; the WebSocket log is then the only copy).
        self.sns_down = False
        #: Fill :attr:`Deliveries.log` with a line per main-org change.
        self.keep_log = keep_log
        self._rng = random.Random(f"amt-sim:{seed}:route")
        self._bad_rng = random.Random(f"amt-sim:{seed}:malformed")
        self._gap_rng = random.Random(f"amt-sim:{seed}:gap")
        self._overflow_rng = random.Random(f"amt-sim:{seed}:overflow")
        self._withheld: set[tuple[str, str]] = set()
        #: Main-org records a GAP_*/GAP_OVERFLOW hid a change of and that were
        #: deleted later (they may be undeleted since). A consumer re-reading one
        #: after that delete got a 404, so its truth ``fields`` may legitimately
        #: differ from a correct store (``deleted`` may not). Empty without gaps.
        self.withheld_then_deleted: set[tuple[str, str]] = set()
        self._ws: Reorderer[WsItem] = Reorderer(
            random.Random(f"amt-sim:{seed}:ws-order"), rates.ooo_rate, rates.ooo_window
        )
        self._sns: Reorderer[dict[str, Any]] = Reorderer(
            random.Random(f"amt-sim:{seed}:sns-order"), rates.ooo_rate, rates.ooo_window
        )
        self.stats = DeliveryStats()

    def route_transaction(
        self,
        events: list[dict[str, Any]],
        *,
        overflow: bool = False,
        ws_delay: int | None = None,
    ) -> Deliveries:
        """How the events of one transaction (in sequence order) are delivered,
        plus anything released or injected now.

        For scripted scenarios: ``overflow`` sends the transaction as
        ``GAP_OVERFLOW`` events whatever the rate; ``ws_delay`` holds each of its
        events back on the WebSocket until that many later events were pushed.
        """
        sent = self._overflow(events) if overflow else self._withhold(events)
        out = Deliveries()
        if self.keep_log:
            out.log.extend(self._log_lines(events, sent))
        for event in sent:
            out.extend(self._route(event, ws_delay=ws_delay))
        return out

    def _log_lines(
        self, events: list[dict[str, Any]], sent: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        carriers = {e["topic"]: e["event_id"] for e in sent if not _header(e)["recordIds"]}
        lines = []
        for event in events:
            if event["org_id"] != self.org_id:
                continue
            overflowed = event["event_id"] not in {e["event_id"] for e in sent}
            carrier = carriers[event["topic"]] if overflowed else event["event_id"]
            lines.append(event_summary(event, sent_as=carrier))
        return lines

    def route(self, event: dict[str, Any]) -> Deliveries:
        """:meth:`route_transaction` for an event that is a transaction of its own."""
        return self.route_transaction([event])

    def _withhold(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events to send for ``events``: as they are, as GAP events, or overflows."""
        rates, stats = self.rates, self.stats
        main = [e for e in events if e["org_id"] == self.org_id]
        if not main or (rates.gap_rate == 0 and rates.overflow_rate == 0):
            return events
        if (
            rates.overflow_rate > 0
            and len(main) == len(events)
            and self._overflow_ok(events)
            and self._overflow_rng.random() < rates.overflow_rate
        ):
            return self._overflow(events)
        sent: list[dict[str, Any]] = []
        for event in events:
            hide = (
                rates.gap_rate > 0
                and event["org_id"] == self.org_id
                and _header(event)["changeType"] in _GAPPABLE
                and self._gap_rng.random() < rates.gap_rate
            )
            self._track(event, hidden=hide)
            if hide:
                event = gap_event(event)
                stats.gaps[_header(event)["changeType"]] += 1
            sent.append(event)
        return sent

    @staticmethod
    def _overflow_ok(events: list[dict[str, Any]]) -> bool:
        records: set[str] = set()
        for event in events:
            header = _header(event)
            if header["changeType"] not in _GAPPABLE:
                return False
            records.update(header["recordIds"])
        return len(records) >= 2

    def _overflow(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        stats = self.stats
        by_topic: dict[str, set[str]] = {}
        for event in events:
            self._track(event, hidden=True)
            by_topic.setdefault(event["topic"], set()).update(_header(event)["recordIds"])
        stats.overflow_transactions += 1
        stats.overflow_events += len(events)
        sent: list[dict[str, Any]] = []
        for n, (topic, records) in enumerate(by_topic.items()):
            sent.append(
                overflow_event(
                    events,
                    topic,
                    sequence=OVERFLOW_SEQUENCE + n,
                    event_id=_uuid4(self._overflow_rng),
                )
            )
            stats.overflows += 1
            stats.overflow_records += len(records)
        return sent

    def _track(self, event: dict[str, Any], *, hidden: bool) -> None:
        """Remember main-org records whose content was withheld, and which of them
        were deleted afterwards (see :attr:`withheld_then_deleted`)."""
        if event["org_id"] != self.org_id:
            return
        header = _header(event)
        keys = [(event["topic"], r) for r in header["recordIds"]]
        if header["changeType"] == "DELETE":
            # A hidden delete withholds no field: the re-read's 404 is the whole content.
            for key in keys:
                if key in self._withheld and key not in self.withheld_then_deleted:
                    self.withheld_then_deleted.add(key)
                    self.stats.withheld_then_deleted += 1
        elif hidden:
            self._withheld.update(keys)

    def _route(self, event: dict[str, Any], *, ws_delay: int | None = None) -> Deliveries:
        rates, rng, stats = self.rates, self._rng, self.stats
        stats.routed += 1
        on_ws, on_sns = True, rates.sns
        if rates.sns:
            draw = rng.random()
            if draw < rates.ws_only_rate:
                on_sns = False
                stats.ws_only += 1
            elif draw < rates.ws_only_rate + rates.sqs_only_rate:
                on_ws = False
                stats.sqs_only += 1
            else:
                stats.both += 1
        if on_sns and self.sns_down:
            on_ws, on_sns = True, False
            stats.sns_outage += 1
        out = Deliveries()
        if on_ws:
            out.ws.extend(self._ws.push(WsEvent(event), delay=ws_delay))
            stats.ws_entries += 1
            if rates.dup_rate > 0 and rng.random() < rates.dup_rate:
                later = rng.randint(0, rates.ooo_window)
                out.ws.extend(self._ws.push(WsEvent(event), delay=later))
                stats.ws_entries += 1
                stats.ws_duplicates += 1
        if on_sns:
            out.sns.extend(self._sns.push(event))
            stats.sns_publishes += 1
            if rates.dup_rate > 0 and rng.random() < rates.dup_rate:
                later = rng.randint(0, rates.ooo_window)
                out.sns.extend(self._sns.push(event, delay=later))
                stats.sns_publishes += 1
                stats.sns_duplicates += 1
        stats.ws_delayed, stats.sns_delayed = self._ws.delayed, self._sns.delayed
        if rates.malformed_rate > 0:
            bad = self._bad_rng
            if bad.random() < rates.malformed_rate:
                out.ws.append(malformed_ws_item(bad))
                stats.malformed_ws += 1
            if rates.malformed_sqs and bad.random() < rates.malformed_rate:
                out.sqs_raw.append(malformed_sqs_body(bad))
                stats.malformed_sqs += 1
        return out

    def flush(self) -> Deliveries:
        """Release everything still held back (at the end of a run)."""
        return Deliveries(ws=self._ws.flush(), sns=self._sns.flush())

    @property
    def held(self) -> int:
        return len(self._ws) + len(self._sns)


# --- Malformed inputs --------------------------------------------------------------


def _lead_event(rng: random.Random) -> dict[str, Any]:
    return {
        "event_id": _uuid4(rng),
        "org_id": MAIN_ORG_ID,
        "topic": "Lead",
        "payload": {
            "ChangeEventHeader": {
                "entityName": "Lead",
                "recordIds": ["00Q5g00000" + "".join(rng.choice(_BASE62) for _ in range(8))],
                "changeType": "UPDATE",
                "changeOrigin": CHANGE_ORIGIN,
                "transactionKey": _uuid4(rng),
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
        "MessageId": _uuid4(rng),
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
        header["recordIds"] = ["006" + "5g0000Zz" + "".join(rng.choice(_BASE62) for _ in range(7))]
        envelope["Message"] = orjson.dumps(event).decode()
        envelope["MessageAttributes"] = {
            "event_type": {"Type": "String", "Value": "Application_Item__c"},
            "org_id": {"Type": "String", "Value": MAIN_ORG_ID},
        }
    return orjson.dumps(envelope).decode()
