"""Every replica's roles and heartbeat, for ``status`` (``amt:replicas``, a hash).

Each service process writes its own entry (a JSON object under its instance id)
every couple of seconds and removes it when it stops; an entry whose heartbeat
stopped stays visible (a killed process) until it is an hour old, then the next
heartbeat of any replica forgets it.
"""

from __future__ import annotations

import time
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from .keys import LEADER_FENCE, LEADER_WS, REPLICAS
from .scripts import call, execute

__all__ = ["FORGET_AFTER_MS", "Replicas"]

#: A replica silent this long is forgotten.
FORGET_AFTER_MS: Final = 3600 * 1000


class Replicas:
    """Write this replica's entry; read everyone's, with the WebSocket lease."""

    def __init__(self, client: aioredis.Redis):
        self.redis = client

    async def beat(self, instance: str, info: dict[str, Any]) -> None:
        """Publish this replica's entry (``heartbeat_ms`` is set here) and forget
        the entries of replicas silent for an hour."""
        now = int(time.time() * 1000)
        entry = {**info, "heartbeat_ms": now}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(REPLICAS, instance, orjson.dumps(entry).decode())
        pipe.hgetall(REPLICAS)
        _, everyone = await execute(pipe, "publishing the replica heartbeat")
        gone = [
            name
            for name, raw in everyone.items()
            if now - int(orjson.loads(raw).get("heartbeat_ms", 0)) > FORGET_AFTER_MS
        ]
        if gone:
            await call(self.redis.hdel(REPLICAS, *gone), "forgetting silent replicas")

    async def leave(self, instance: str) -> None:
        await call(self.redis.hdel(REPLICAS, instance), "removing the replica entry")

    async def overview(self) -> dict[str, Any]:
        """Every replica's entry by instance id, the WebSocket lease's holder
        (``"<instance> <token>"`` or None) and the number of leases ever given."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(REPLICAS)
        pipe.get(LEADER_WS)
        pipe.get(LEADER_FENCE)
        everyone, holder, terms = await execute(pipe, "reading the replicas")
        return {
            "replicas": {k.decode(): orjson.loads(v) for k, v in everyone.items()},
            "ws_lease": holder.decode() if holder is not None else None,
            "ws_terms": int(terms or 0),
        }
