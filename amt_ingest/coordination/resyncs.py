"""Resyncs in Redis: their queued jobs, their resumable progress, and the marks they
merge into records (``mark.lua``).

A mark is a positioned change no event brought: a re-read marker
(``__reread__``), a tombstone of the deleted-records resource (``__deleted__``),
a reconciliation marker (``__reconcile__``). It merges newest-wins into the
record's pending changes, so it coalesces with live events and keeps to one job
per record.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from .arqjobs import JOB_FUNCTION, JOB_TTL_MS, QUEUE_NAME, RESYNC_FUNCTION, job_payload
from .keys import RESYNCS, arq_job_key, record_key, resync_done_key, resync_key
from .scripts import call, execute, load, run

__all__ = ["RESYNC_TTL_S", "Resyncs"]

#: How long a resync's progress is kept after its last step.
RESYNC_TTL_S: Final = 7 * 24 * 3600


class Resyncs:
    """Queue resyncs, keep their progress, and merge their marks into records."""

    def __init__(self, client: aioredis.Redis, *, queue_name: str = QUEUE_NAME):
        self.redis = client
        self.queue_name = queue_name
        self._mark = load(client, "mark.lua")

    async def mark(
        self, topic: str, record_id: str, changes: Mapping[str, tuple[str, Any]], *, org: str
    ) -> int:
        """Merge positioned changes that no event brought into the record's pending
        changes, newest wins, and give it a job if none owns it.

        Returns how many were newer than what was pending (0: a no-op).
        """
        args: list[Any] = [org, self.queue_name, JOB_TTL_MS, JOB_FUNCTION, topic, record_id]
        for name, (position, value) in changes.items():
            args.extend((name, position, orjson.dumps(value)))
        return int(
            await run(
                self._mark,
                f"marking {topic} {record_id}",
                keys=[record_key(topic, record_id)],
                args=args,
            )
        )

    async def enqueue(self, topic: str, *, position: str, org: str, resync_id: str) -> None:
        """Queue a resync job of ``topic`` from ``position`` (idempotent per ``resync_id``)."""
        job_id = f"resync:{resync_id}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(
            arq_job_key(job_id),
            job_payload(RESYNC_FUNCTION, [topic, position, org, resync_id]),
            px=JOB_TTL_MS,
            nx=True,
        )
        pipe.zadd(self.queue_name, {job_id: int(time.time() * 1000)}, nx=True)
        await execute(pipe, f"queueing the resync of {topic}")

    async def progress(self, resync_id: str) -> dict[str, str]:
        raw = await call(self.redis.hgetall(resync_key(resync_id)), "reading a resync")
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def update(self, resync_id: str, **fields: str | int) -> None:
        key = resync_key(resync_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, RESYNC_TTL_S)
        pipe.zadd(RESYNCS, {resync_id: int(time.time() * 1000)}, nx=True)
        await execute(pipe, "saving resync progress")

    async def done_ids(self, resync_id: str, members: Sequence[str]) -> list[bool]:
        """Which of ``members`` the resync has marked already."""
        if not members:
            return []
        flags = await call(
            self.redis.smismember(resync_done_key(resync_id), list(members)), "reading a resync"
        )
        return [bool(f) for f in flags]

    async def mark_done(self, resync_id: str, member: str) -> None:
        key = resync_done_key(resync_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(key, member)
        pipe.expire(key, RESYNC_TTL_S)
        pipe.hincrby(resync_key(resync_id), "marked", 1)
        await execute(pipe, "saving resync progress")

    async def recent(self, limit: int = 50) -> list[dict[str, str]]:
        """Recent resyncs, newest first, with their progress (two round trips)."""
        ids = await call(self.redis.zrevrange(RESYNCS, 0, limit - 1), "listing resyncs")
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for raw in ids:
            pipe.hgetall(resync_key(raw.decode()))
        out = []
        for raw, progress in zip(ids, await execute(pipe, "reading resyncs"), strict=True):
            if progress:
                fields = {k.decode(): v.decode() for k, v in progress.items()}
                out.append({"id": raw.decode(), **fields})
        return out
