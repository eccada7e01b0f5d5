"""The simulated Passport org: seeded events in commit order and their ground truth.

Nothing here does I/O or touches an event loop; :mod:`.server` drives it.
:class:`World` generates realistic CDC events (PROTOCOL.md section 1) for the
three topics, one at a time, in commit order (:mod:`.population`), and keeps
the ground truth (:mod:`.truth`): what a correct consumer's store must hold
(section 5) after applying every event of the main org in commit order.
Events of a *foreign* org are generated from a separate population and are
never part of the truth. How each event travels is :mod:`.delivery`'s.

Deterministic for a given seed: the main org's events depend only on ``seed``
and ``records`` (not on the foreign-org rate or any delivery option).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from amt_ingest.simulator.population import Org
from amt_ingest.simulator.truth import (
    FOREIGN_ORG_ID,
    MAIN_ORG_ID,
    START_MS,
    DeleteLog,
    RecordState,
    apply_event,
)

__all__ = ["World", "WorldStats"]

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
        self._main = Org(
            random.Random(f"amt-sim:{seed}:main"),
            org_id,
            records,
            _MAIN_PREFIX,
            start_ms,
            mean_spacing_ms,
            clock,
            fresh_records,
        )
        self._foreign = Org(
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
