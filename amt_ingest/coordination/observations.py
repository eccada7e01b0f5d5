"""What the processes share about the system for ``status`` and the gauges: counters
(``amt:stats``), path lags, queue depths (``amt:gauges``), the replicas and the
WebSocket lease, and the sweep of events seen on one path only (``sweep_one_path.lua``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from .arqjobs import QUEUE_NAME
from .keys import (
    DEAD_RECORDS,
    GAUGES,
    LAGS,
    ONE_PATH,
    PENDING,
    RETRYING,
    STATS,
    THROTTLE,
)
from .replicas import Replicas
from .resyncs import Resyncs
from .scripts import call, execute, load, run

__all__ = ["Observations"]


class Observations:
    """Counters, lags, gauges and the one-path sweep."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        resyncs: Resyncs,
        replicas: Replicas,
        queue_name: str = QUEUE_NAME,
    ):
        self.redis = client
        self.resyncs = resyncs
        self.replicas = replicas
        self.queue_name = queue_name
        self._sweep = load(client, "sweep_one_path.lua", prelude=False)

    async def stats(self) -> dict[str, int]:
        raw = await call(self.redis.hgetall(STATS), "reading the counters")
        return {k.decode(): int(v) for k, v in raw.items()}

    async def sweep_one_path(self, *, grace_ms: int, limit: int = 1000) -> list[tuple[str, int]]:
        """Events seen on one path only for longer than ``grace_ms``.

        Each is popped, counted as ``onepath:<path>:<topic>`` and returned once
        as ``("<path>:<topic>:<event_id>", first_seen_ms)``, whichever process
        sweeps first.
        """
        cutoff = int(time.time() * 1000) - grace_ms
        flat = await run(
            self._sweep, "sweeping one-path events", keys=[ONE_PATH, STATS], args=[cutoff, limit]
        )
        return [(m.decode(), int(float(t))) for m, t in zip(flat[::2], flat[1::2], strict=True)]

    async def publish_gauges(self, values: Mapping[str, str | int | float]) -> None:
        """Share this process's view (queue depths, WebSocket state) with ``status``."""
        if values:
            await call(self.redis.hset(GAUGES, mapping=dict(values)), "publishing gauges")

    async def overview(self) -> dict[str, Any]:
        """Everything ``status`` shows that Redis holds, in four round trips."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(STATS)
        pipe.lrange(LAGS, 0, -1)
        pipe.zcard(self.queue_name)
        pipe.scard(PENDING)
        pipe.zcard(RETRYING)
        pipe.hlen(DEAD_RECORDS)
        pipe.zcard(ONE_PATH)
        pipe.hgetall(GAUGES)
        pipe.hgetall(THROTTLE)
        (
            stats,
            lags,
            queued,
            pending,
            retrying,
            dead,
            one_path,
            gauges,
            throttle,
        ) = await execute(pipe, "reading the overview")
        return {
            "resyncs": await self.resyncs.recent(limit=10),
            "stats": {k.decode(): int(v) for k, v in stats.items()},
            "lags_ms": [int(v) for v in lags],
            "queued_jobs": int(queued),
            "pending_records": int(pending),
            "retrying_records": int(retrying),
            "dead_records": int(dead),
            "one_path_pending": int(one_path),
            "gauges": {k.decode(): v.decode() for k, v in gauges.items()},
            "throttle": {k.decode(): v.decode() for k, v in throttle.items()},
            **await self.replicas.overview(),
        }
