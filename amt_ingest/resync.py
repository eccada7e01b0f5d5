"""Resyncs: every record of a type modified since an instant is re-read.

Three things start one: a ``GAP_OVERFLOW`` event (its first arrival queues a
``resync_topic`` job from the overflow's position), an expired WebSocket resume
point (one per type, from the last handed-off event), and an operator
(``python -m amt_ingest resync TOPIC --since ISO``). A resync only marks
records for a re-read; their own record jobs do the reading, so re-reads
coalesce with live events and keep to one job per record.

Progress lives in Redis (``amt:resync:<id>``, ids done in a set), so a resync
that is interrupted resumes where it stopped when it runs again, and the
status view can show it. Marking is rate-limited (records per second).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from arq import Retry

from .coordination import Coordinator
from .errors import CoordinationError
from .events import position_key
from .salesforce import SalesforceClient, SalesforceError

__all__ = ["ResyncResult", "position_at", "resync_topic", "run_resync"]

log = structlog.get_logger("amt_ingest.resync")

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ResyncResult:
    found: int
    marked: int
    already_done: int
    finished: bool = True


def position_at(instant: dt.datetime) -> str:
    """The position of an instant: before every change committed in that millisecond."""
    return position_key(int(instant.timestamp() * 1000), 0, 0)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


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
) -> ResyncResult:
    """Mark every record of ``topic`` modified at or after ``position`` for a re-read.

    Safe to run again with the same ``resync_id``: records already marked are
    skipped. With ``budget_s`` it stops marking after that many seconds and says
    so (``finished`` False): run it again to continue. Raises
    :class:`SalesforceError` or :class:`CoordinationError`.
    """
    started = time.monotonic()
    since_ms = int(position[:15])
    since = dt.datetime.fromtimestamp(since_ms / 1000, dt.UTC)
    await coordinator.update_resync(
        resync_id,
        topic=topic,
        since=_iso(since_ms),
        org=org,
        state="listing",
        updated=int(time.time() * 1000),
    )
    ids = [record_id async for record_id in salesforce.modified_since(topic, since)]
    await coordinator.update_resync(resync_id, state="marking", total=len(ids))
    done_flags = await coordinator.resync_done_ids(resync_id, ids)
    already = sum(done_flags)
    marked = 0
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.monotonic()
    for record_id, done in zip(ids, done_flags, strict=True):
        if done:
            continue
        if budget_s is not None and time.monotonic() - started > budget_s:
            await coordinator.update_resync(resync_id, updated=int(time.time() * 1000))
            return ResyncResult(found=len(ids), marked=marked, already_done=already, finished=False)
        if interval:
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(next_at, time.monotonic()) + interval
        await coordinator.mark_for_reread(topic, record_id, position=position, org=org)
        await coordinator.resync_mark_done(resync_id, record_id)
        marked += 1
        if on_progress is not None:
            on_progress(already + marked, len(ids))
    await coordinator.update_resync(resync_id, state="done", updated=int(time.time() * 1000))
    log.info(
        "resync_done",
        resync_id=resync_id,
        topic=topic,
        since=_iso(since_ms),
        found=len(ids),
        marked=marked,
        already_done=already,
    )
    return ResyncResult(found=len(ids), marked=marked, already_done=already, finished=True)


async def resync_topic(
    ctx: dict[str, Any], topic: str, position: str, org: str, resync_id: str
) -> int:
    """arq job: a resync started by a GAP_OVERFLOW event or an expired resume point."""
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
        )
    except (SalesforceError, CoordinationError) as exc:
        log.warning("resync_retry", resync_id=resync_id, topic=topic, error=str(exc))
        raise Retry(defer=30) from exc
    if not result.finished:
        raise Retry(defer=0.1)
    return result.marked
