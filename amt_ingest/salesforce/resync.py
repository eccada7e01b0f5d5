"""Resyncs: every change of a type in a window is learnt again from Salesforce.

Three things start a window's resync: a ``GAP_OVERFLOW`` event (its first
arrival queues a ``resync_topic`` job from the overflow's position), an expired
WebSocket resume point (one per type, from a little before the last handed-off
event: ``AMT_RESYNC_OVERLAP_S``), and an operator (``python -m amt_ingest resync
TOPIC --since ISO``). A window's resync asks two things: the records modified in
it that are still live (the query), each marked for a re-read; and the deletes
in it (the deleted-records resource), each a tombstone at its ``deletedDate``.
Both go through the records' own jobs, newest wins, so re-reads and tombstones
coalesce with live events and keep to one job per record: a tombstone older than
a change already applied (an undelete) does not win.

When Salesforce no longer knows every delete of the window
(``earliestDateAvailable`` after its start, or a start beyond its look-back),
the resync says so once: an error event ``resync_deletes_unknown`` with both
dates, the ``amt.resync.deletes_unknown`` counter and ``status``. The remedy is
a full reconciliation (``resync TOPIC --full``, :func:`run_full_resync`): every
record the store holds as live is read again, and those Salesforce answers 404
for become tombstones.

Progress lives in Redis (``amt:resync:<id>``, what is done in a set), so a
resync that is interrupted resumes where it stopped when it runs again, and the
status view can show it. Marking is rate-limited (records per second).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from arq import Retry

from ..coordination import Coordinator
from ..errors import CoordinationError, StoreError
from ..routing.events import DELETED_FIELD, RECONCILE_FIELD, REREAD_FIELD
from ..routing.positions import position_key, position_ms
from ..store import Store
from ..telemetry.metrics import Metrics
from .client import SalesforceClient, SalesforceError, tombstone_position

__all__ = [
    "ResyncResult",
    "position_at",
    "resync_topic",
    "run_full_resync",
    "run_resync",
]

log = structlog.get_logger("amt_ingest.resync")

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ResyncResult:
    """``found``: records to learn again (live ones modified in the window, and its
    deletes; for a full reconciliation, the live records of the store); ``deleted``:
    the window's deletes among them; ``marked``: how many this run handed to their
    jobs; ``deletes_known_from``: set (ISO) when deletes before it may be missing."""

    found: int
    marked: int
    already_done: int
    finished: bool = True
    deleted: int = 0
    deletes_known_from: str | None = None


@dataclass(frozen=True, slots=True)
class _Mark:
    member: str  # in the resync's done set
    record_id: str
    org: str
    changes: dict[str, tuple[str, Any]]


def position_at(instant: dt.datetime) -> str:
    """The position of an instant: before every change committed in that millisecond."""
    return position_key(int(instant.timestamp() * 1000), 0, 0)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def _now_ms() -> int:
    return int(time.time() * 1000)


async def run_resync(
    coordinator: Coordinator,
    salesforce: SalesforceClient,
    *,
    topic: str,
    position: str,
    org: str,
    resync_id: str,
    rate: float,
    on_progress: Progress | None = None,
    budget_s: float | None = None,
    metrics: Metrics | None = None,
) -> ResyncResult:
    """Learn again every change of ``topic`` from ``position`` to now: mark the live
    records modified since for a re-read, and tombstone the deletes.

    Safe to run again with the same ``resync_id``: what is marked is skipped, and
    the window keeps the end of its first run. With ``budget_s`` it stops marking
    after that many seconds and says so (``finished`` False): run it again to
    continue. Raises :class:`SalesforceError` or :class:`CoordinationError`.
    """
    started = time.monotonic()
    since_ms = position_ms(position)
    progress = await coordinator.resyncs.progress(resync_id)
    end_ms = int(progress.get("end_ms") or _now_ms())
    await coordinator.resyncs.update(
        resync_id,
        topic=topic,
        since=_iso(since_ms),
        end_ms=end_ms,
        org=org,
        state="listing",
        updated=_now_ms(),
    )
    since = dt.datetime.fromtimestamp(since_ms / 1000, dt.UTC)
    ids = [record_id async for record_id in salesforce.modified_since(topic, since)]
    deletes = await salesforce.deleted_records(topic, since_ms, end_ms)
    known_from = None
    if deletes.known_from_ms is not None:
        known_from = _iso(deletes.known_from_ms)
        if "deletes_known_from" not in progress:
            await _report_unknown_deletes(
                coordinator, metrics, resync_id, topic, since_ms, deletes.known_from_ms
            )
    marks = [_Mark(rid, rid, org, {REREAD_FIELD: (position, True)}) for rid in ids]
    marks += [
        _Mark(f"d:{rid}", rid, org, {DELETED_FIELD: (tombstone_position(ms), True)})
        for rid, ms in sorted(deletes.records.items())
    ]
    await coordinator.resyncs.update(
        resync_id, state="marking", total=len(marks), deleted=len(deletes.records)
    )
    marked, already, finished = await _mark_all(
        coordinator, resync_id, topic, marks, rate, on_progress, budget_s, started
    )
    result = ResyncResult(
        found=len(marks),
        marked=marked,
        already_done=already,
        finished=finished,
        deleted=len(deletes.records),
        deletes_known_from=known_from,
    )
    if finished:
        log.info(
            "resync_done",
            resync_id=resync_id,
            topic=topic,
            since=_iso(since_ms),
            until=_iso(end_ms),
            found=len(ids),
            deleted=len(deletes.records),
            marked=marked,
            already_done=already,
        )
    return result


async def _report_unknown_deletes(
    coordinator: Coordinator,
    metrics: Metrics | None,
    resync_id: str,
    topic: str,
    since_ms: int,
    known_from_ms: int,
) -> None:
    """Say once per resync that Salesforce no longer knows every delete of its window."""
    await coordinator.resyncs.update(resync_id, deletes_known_from=_iso(known_from_ms))
    await coordinator.handoff.count({f"deletes_unknown:resync:{topic}": 1})
    if metrics is not None:
        metrics.resync_deletes_unknown.add(1, {"topic": topic})
    log.error(
        "resync_deletes_unknown",
        resync_id=resync_id,
        topic=topic,
        window_start=_iso(since_ms),
        earliest_date_available=_iso(known_from_ms),
        hint=f"deletes before earliest_date_available may be missing from the store: "
        f"run `python -m amt_ingest resync {topic} --full`",
    )


async def run_full_resync(
    coordinator: Coordinator,
    store: Store,
    *,
    topic: str,
    org: str | None,
    resync_id: str,
    rate: float,
    on_progress: Progress | None = None,
    budget_s: float | None = None,
) -> ResyncResult:
    """A full reconciliation of ``topic``: have every record the store holds as live
    (of ``org``, or every org) read again by its job. A record Salesforce answers
    404 for becomes a tombstone at the instant the reconciliation started; a
    snapshot is applied by its ``SystemModstamp``, whatever its age.

    Resumable with the same ``resync_id`` like :func:`run_resync`. Raises
    :class:`CoordinationError` or :class:`StoreError`.
    """
    started = time.monotonic()
    progress = await coordinator.resyncs.progress(resync_id)
    at_ms = int(progress.get("end_ms") or _now_ms())
    position = position_key(at_ms, 0, 0)
    await coordinator.resyncs.update(
        resync_id,
        topic=topic,
        since="full",
        end_ms=at_ms,
        org=org or "*",
        state="listing",
        updated=_now_ms(),
    )
    live = await store.live_records(topic, org=org)
    marks = [
        _Mark(rid, rid, record_org, {RECONCILE_FIELD: (position, True)}) for rid, record_org in live
    ]
    await coordinator.resyncs.update(resync_id, state="marking", total=len(marks))
    marked, already, finished = await _mark_all(
        coordinator, resync_id, topic, marks, rate, on_progress, budget_s, started
    )
    if finished:
        log.info(
            "resync_done",
            resync_id=resync_id,
            topic=topic,
            since="full",
            found=len(marks),
            marked=marked,
            already_done=already,
        )
    return ResyncResult(found=len(marks), marked=marked, already_done=already, finished=finished)


async def _mark_all(
    coordinator: Coordinator,
    resync_id: str,
    topic: str,
    marks: Sequence[_Mark],
    rate: float,
    on_progress: Progress | None,
    budget_s: float | None,
    started: float,
) -> tuple[int, int, bool]:
    """Hand each mark not done yet to its record, at most ``rate`` per second;
    returns ``(marked, already_done, finished)``."""
    done_flags = await coordinator.resyncs.done_ids(resync_id, [m.member for m in marks])
    already = sum(done_flags)
    marked = 0
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    for mark, done in zip(marks, done_flags, strict=True):
        if done:
            continue
        if budget_s is not None and time.monotonic() - started > budget_s:
            await coordinator.resyncs.update(resync_id, updated=_now_ms())
            return marked, already, False
        if interval:
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(next_at, time.monotonic()) + interval
        await coordinator.resyncs.mark(topic, mark.record_id, mark.changes, org=mark.org)
        await coordinator.resyncs.mark_done(resync_id, mark.member)
        marked += 1
        if on_progress is not None:
            on_progress(already + marked, len(marks))
    await coordinator.resyncs.update(resync_id, state="done", updated=_now_ms())
    return marked, already, True


async def resync_topic(
    ctx: dict[str, Any], topic: str, position: str, org: str, resync_id: str
) -> int:
    """arq job: a resync started by a GAP_OVERFLOW event or an expired resume point."""
    telemetry = ctx.get("telemetry")
    try:
        result = await run_resync(
            ctx["coordinator"],
            ctx["salesforce"],
            topic=topic,
            position=position,
            org=org,
            resync_id=resync_id,
            rate=ctx.get("resync_rate", 100.0),
            # A run stays well inside the job timeout that every job of the worker
            # shares (arq derives its in-progress timeout, and so how soon a killed
            # record job reruns, from the longest one); long resyncs continue in the
            # next run, skipping what is done.
            budget_s=ctx.get("resync_budget_s"),
            metrics=telemetry.metrics if telemetry is not None else None,
        )
    except (SalesforceError, CoordinationError, StoreError) as exc:
        log.warning("resync_retry", resync_id=resync_id, topic=topic, error=str(exc))
        raise Retry(defer=30) from exc
    if not result.finished:
        raise Retry(defer=0.1)
    return result.marked
