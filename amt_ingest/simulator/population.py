"""The simulated orgs' records and how they change: seeded transactions of realistic
CDC events for the three topics (PROTOCOL.md section 1), and scripted ones (pure)."""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from amt_ingest.routing.events import TOPICS
from amt_ingest.simulator.truth import CHANGE_ORIGIN, iso_ms
from amt_ingest.simulator.values import PROGRAMS, FieldValues

__all__ = ["BASE62", "Org", "Slot", "uuid4_from"]

BASE62: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase
# Share of the population per topic (the rest goes to Application_Item__c).
_SHARES: Final = {"Opportunity": 0.4, "External_Attachment__c": 0.3}
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
_BULK: Final[dict[str, tuple[str, ...]]] = {
    "Opportunity": ("StageName", "CloseDate"),
    "External_Attachment__c": ("Status__c",),
    "Application_Item__c": ("Status__c", "Due_Date__c"),
}

_TXN_RATE: Final = 0.12  # share of transactions with more than one change
_MULTI_RATE: Final = 0.05  # share of changes that are multi-record updates
_DELETE_RATE: Final = 0.04  # share of changes to a live record that delete it
_UNDELETE_RATE: Final = 0.35  # chance that picking a deleted record undeletes it


def uuid4_from(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# --- Event generation ------------------------------------------------------------


@dataclass(slots=True)
class Slot:
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


class Org:
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
        self._programs = [f"a0B5g00000{self._alnum(8)}" for _ in PROGRAMS]
        self._accounts = [f"0015g00000{self._alnum(8)}" for _ in range(max(3, records // 4))]
        n_opp = max(1, round(records * _SHARES["Opportunity"]))
        n_att = min(records - n_opp, round(records * _SHARES["External_Attachment__c"]))
        counts = {
            "Opportunity": n_opp,
            "External_Attachment__c": n_att,
            "Application_Item__c": records - n_opp - n_att,
        }
        self._prefixes = prefixes
        self._by_id: dict[str, Slot] = {}
        self.slots: list[Slot] = []
        self.by_topic: dict[str, list[Slot]] = {t: [] for t in TOPICS}
        for topic in TOPICS:
            for _ in range(counts[topic]):
                slot = Slot(topic, self._new_id(topic))
                self._by_id[slot.id] = slot
                self.slots.append(slot)
                self.by_topic[topic].append(slot)
        # Records not created yet, in the order fresh-records mode creates them (popped
        # from the end): every type mixed in, each record once.
        self.values = FieldValues(
            rng, programs=self._programs, accounts=self._accounts, by_topic=self.by_topic
        )
        self._fresh: list[Slot] = []
        if fresh_records:
            self._fresh = list(self.slots)
            self.rng.shuffle(self._fresh)

    def _alnum(self, n: int) -> str:
        return "".join(self.rng.choice(BASE62) for _ in range(n))

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
        return _Txn(uuid4_from(rng), self._clock_ms, self._commit_number, rng.choice(self._users))

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
            slot = Slot(topic, self._new_id(topic))
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
                dict(fields) if fields else {n: self.values.new(slots[0], n) for n in _BULK[topic]}
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

    def _slot(self, record_id: str) -> Slot:
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
            "event_id": uuid4_from(self.rng),
            "org_id": self.org_id,
            "topic": topic,
            "payload": {"ChangeEventHeader": header, **fields},
        }

    def _create(self, txn: _Txn, slot: Slot) -> dict[str, Any]:
        now = iso_ms(txn.commit_ms)
        slot.values = self.values.initial(slot)
        slot.values["CreatedDate"] = now
        slot.values["LastModifiedDate"] = now
        slot.created = True
        fields = {k: v for k, v in slot.values.items() if v is not None}
        return self._event(txn, slot.topic, [slot.id], "CREATE", fields)

    def _undelete(self, txn: _Txn, slot: Slot) -> dict[str, Any]:
        slot.values["LastModifiedDate"] = iso_ms(txn.commit_ms)
        slot.deleted = False
        fields = {k: v for k, v in slot.values.items() if v is not None}
        return self._event(txn, slot.topic, [slot.id], "UNDELETE", fields)

    def _delete(self, txn: _Txn, slot: Slot) -> dict[str, Any]:
        slot.deleted = True
        return self._event(txn, slot.topic, [slot.id], "DELETE", {})

    def _update(self, txn: _Txn, slot: Slot) -> dict[str, Any]:
        rng = self.rng
        names, weights = zip(*_UPDATABLE[slot.topic], strict=True)
        wanted = dict.fromkeys(rng.choices(names, weights, k=rng.randint(1, 3)))
        values: dict[str, Any] = {}
        for name in wanted:
            value = self.values.new(slot, name)
            if value != slot.values.get(name):
                values[name] = value
        return self._apply_update(txn, slot.topic, [slot], values)

    def _multi_update(self, txn: _Txn) -> dict[str, Any] | None:
        rng = self.rng
        topic = rng.choice(TOPICS)
        pool = self.by_topic[topic]
        want = rng.randint(2, 4)
        chosen: dict[str, Slot] = {}
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
        values = {name: self.values.new(slots[0], name) for name in names}
        return self._apply_update(txn, topic, slots, values)

    def _apply_update(
        self, txn: _Txn, topic: str, slots: list[Slot], values: dict[str, Any]
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
