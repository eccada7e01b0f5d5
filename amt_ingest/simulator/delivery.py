"""How each generated event reaches the consumer, decided per transaction (pure, seeded).

:class:`DeliveryPlan` routes events to the WebSocket stream, through SNS, or
both; once or twice on each; delayed within a small window on each path
independently; whether Passport withholds their content (a ``GAP_*`` event
instead of the change, or one ``GAP_OVERFLOW`` per topic instead of the whole
transaction); and which malformed inputs (:mod:`.malformed`) to interleave. It
never changes what happened, only how it is seen: the truth always holds the
real changes, and the REST API (:mod:`.rest`) serves it, so withheld content
can be re-read. The plan draws from its own random streams.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from amt_ingest.simulator.frames import Deliveries, WsEvent, WsItem
from amt_ingest.simulator.malformed import malformed_sqs_body, malformed_ws_item
from amt_ingest.simulator.population import uuid4_from
from amt_ingest.simulator.truth import MAIN_ORG_ID

__all__ = [
    "OVERFLOW_SEQUENCE",
    "DeliveryPlan",
    "DeliveryRates",
    "DeliveryStats",
    "Reorderer",
    "event_summary",
    "gap_event",
    "overflow_event",
]

#: sequenceNumber of a transaction's first GAP_OVERFLOW event (the next topic's is +1):
#: past any real event of the transaction, as in tests/samples/event-opportunity-gap-overflow.json.
OVERFLOW_SEQUENCE: Final = 100_001


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
                    event_id=uuid4_from(self._overflow_rng),
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
