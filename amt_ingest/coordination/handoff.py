"""The hand-off: a batch of events into Redis in one round trip (``ingest.lua``).

Each event is deduplicated by ``event_id`` (``amt:evt:<id>``), its changes merged
newest-wins into each record's pending changes (``amt:rec:<topic>:<id>``), and each
record that no job owns handed to one; the outcome is counted. When
:meth:`HandOff.ingest` returns, every event is durably handed off: only then may a
source acknowledge its input. This is the router's :class:`~amt_ingest.routing.handoff.HandOff`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from ..errors import LeaseLostError
from ..routing.events import DELETED_FIELD, FULL_FIELD, REREAD_FIELD, Event, event_effect
from ..routing.handoff import IngestResult, Turn
from .arqjobs import JOB_FUNCTION, JOB_TTL_MS, QUEUE_NAME
from .keys import PENDING, STATS, dedup_key, record_key
from .scripts import call, execute, load, run

__all__ = ["INGEST_CHUNK", "HandOff", "pending_entries"]

#: Events per ingest script run: bounds how long one run holds Redis (a few ms).
INGEST_CHUNK: Final = 500


def pending_entries(event: Event) -> list[tuple[str, str]]:
    """The pending entries an event contributes to each of its records (same for all).

    Values are JSON text; the tombstone, full-image and re-read markers are pseudo-fields.
    """
    if not event.record_ids:
        return [(REREAD_FIELD, "true")]
    values, deleted, reread, full = event_effect(event)
    entries = [(name, orjson.dumps(value).decode()) for name, value in values.items()]
    if deleted is not None:
        entries.append((DELETED_FIELD, "true" if deleted else "false"))
    if reread:
        entries.append((REREAD_FIELD, "true"))
    if full:
        entries.append((FULL_FIELD, "true"))
    return entries


class HandOff:
    """Events into Redis, durably, and the size of the backlog they make."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        dedup_ttl: int,
        queue_name: str = QUEUE_NAME,
        job_batch: int = 50,
    ):
        self.redis = client
        self.dedup_ttl = dedup_ttl
        self.queue_name = queue_name
        #: Most records one job applies (the ingest script fills jobs up to it).
        self.job_batch = job_batch
        #: Records pending in Redis as of the last hand-off (read in the same round trip).
        self.last_pending = 0
        self._ingest = load(client, "ingest.lua")

    async def ingest(
        self,
        events: Sequence[Event],
        *,
        path: str,
        contexts: Sequence[str] | None = None,
        track_one_path: bool = False,
        turn: Turn | None = None,
        counts: Mapping[str, int] | None = None,
        lease: str | None = None,
    ) -> list[IngestResult]:
        """Hand events off durably, in one round trip. Returns one result per event.

        When this returns, every event is in Redis (deduplicated, merged, a job
        scheduled where needed, the outcome counted, and ``counts`` added to the
        counters). Raises :class:`~amt_ingest.errors.CoordinationError` if any
        part failed: then nothing may be acknowledged, and a redelivery is safe
        (dedup makes it a no-op). ``contexts`` are the events' encoded trace
        contexts; ``track_one_path`` keeps first arrivals in ``amt:onepath``
        until the other path brings them. With ``turn``, the scripts run only
        after the previous hand-off's did (the batch is prepared meanwhile), and
        ``turn.done`` is set after them. With ``lease`` (the WebSocket leader's
        ``"<replica> <token>"``) Redis takes the events only while that lease is the
        current one, else :class:`~amt_ingest.errors.LeaseLostError` (nothing taken).
        """
        try:
            if not events:
                if counts:
                    await self.count(counts)
                return []
            prepared = [
                self._prepare_chunk(
                    events[start : start + INGEST_CHUNK],
                    path,
                    contexts[start : start + INGEST_CHUNK] if contexts else None,
                    track_one_path,
                    counts if start == 0 else None,
                    lease,
                )
                for start in range(0, len(events), INGEST_CHUNK)
            ]
            if turn is not None and turn.previous is not None:
                await asyncio.shield(turn.previous)
            results: list[IngestResult] = []
            for keys, spec in prepared:
                results.extend(await self._run_chunk(keys, spec))
            return results
        finally:
            if turn is not None:
                turn.finish()

    def _prepare_chunk(
        self,
        events: Sequence[Event],
        path: str,
        contexts: Sequence[str] | None,
        track_one_path: bool,
        counts: Mapping[str, int] | None,
        lease: str | None = None,
    ) -> tuple[list[str], bytes]:
        keys: list[str] = []
        specs: list[list[Any]] = []
        for i, event in enumerate(events):
            record_ids = list(dict.fromkeys(event.record_ids))
            keys.append(dedup_key(event.event_id))
            keys.extend(record_key(event.topic, rid) for rid in record_ids)
            specs.append(
                [
                    contexts[i] if contexts else "",
                    event.position,
                    event.org_id,
                    event.topic,
                    len(record_ids),
                    [part for entry in pending_entries(event) for part in entry],
                    record_ids,
                ]
            )
        spec: dict[str, Any] = {
            "p": path,
            "ttl": self.dedup_ttl,
            "q": self.queue_name,
            "jt": JOB_TTL_MS,
            "fn": JOB_FUNCTION,
            "b": self.job_batch,
            "track": 1 if track_one_path else 0,
            "e": specs,
        }
        if counts:
            spec["c"] = dict(counts)
        if lease is not None:
            spec["lf"] = lease
        return keys, orjson.dumps(spec)

    async def _run_chunk(self, keys: list[str], spec: bytes) -> list[IngestResult]:
        # A plain EVALSHA (one round trip): a pipeline holding a script first
        # asks Redis whether the script is loaded, a round trip of its own.
        flat = await run(self._ingest, "hand-off to Redis", keys=keys, args=[spec])
        if flat[0] == b"fenced":
            raise LeaseLostError("hand-off refused: the WebSocket lease is another replica's")
        self.last_pending = int(flat[-1])
        return [
            IngestResult(
                outcome=flat[i].decode(),
                first_path=flat[i + 1].decode(),
                first_context=flat[i + 2].decode(),
                scheduled=int(flat[i + 3]),
                lag_ms=int(flat[i + 4]),
            )
            for i in range(0, len(flat) - 1, 5)
        ]

    async def count(self, counters: Mapping[str, int]) -> None:
        """Add to the ``amt:stats`` counters (filtered, rejected: outcomes not routed)."""
        if not counters:
            return
        pipe = self.redis.pipeline(transaction=False)
        for name, value in counters.items():
            pipe.hincrby(STATS, name, value)
        await execute(pipe, "counter update")

    async def pending_records(self) -> int:
        """Records waiting in Redis to be applied (queued, running or retrying)."""
        pending = int(await call(self.redis.scard(PENDING), "reading the pending records"))
        self.last_pending = pending
        return pending
