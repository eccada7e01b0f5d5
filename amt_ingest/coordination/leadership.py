"""One WebSocket subscriber at a time: a lease in Redis with a fencing token.

Replicas that run WebSocket intake compete for ``amt:leader:ws`` (``leadership.lua``):
the holder subscribes, the others stand by. The lease lives ``ttl_ms`` and the
leader renews it well inside that; a leader that cannot renew it stops handing
off before the lease can pass to another. Every new holder gets a larger token
(``amt:leader:ws:fence``): the hand-off and the cursor save carry the holder's
lease (``"<replica> <token>"``) and Redis refuses them when it is no longer the
current one, so a leader that lost its lease (a frozen process) cannot hand off
or move the cursor after its successor took over.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from .keys import LEADER_FENCE, LEADER_WS
from .scripts import call, load, run

__all__ = ["Held", "Leadership"]


@dataclass(frozen=True, slots=True)
class Held:
    """A lease this replica holds: its token, and the value the fence compares."""

    replica: str
    token: int

    @property
    def value(self) -> str:
        return f"{self.replica} {self.token}"


class Leadership:
    """Acquire, renew and release the WebSocket lease for one replica."""

    def __init__(self, client: aioredis.Redis, *, replica: str, ttl_ms: int):
        self.redis = client
        self.replica = replica
        self.ttl_ms = ttl_ms
        self._lease = load(client, "leadership.lua", prelude=False)

    async def acquire(self) -> Held | None:
        """The lease, if this replica holds it now (taken, or renewed); None if another does."""
        token = int(
            await run(
                self._lease,
                "acquiring the WebSocket lease",
                keys=[LEADER_WS, LEADER_FENCE],
                args=["acquire", self.replica, self.ttl_ms],
            )
        )
        return Held(self.replica, token) if token else None

    async def renew(self, held: Held) -> bool:
        """Extend the lease; False when it is no longer this holder's (stop at once)."""
        return bool(
            await run(
                self._lease,
                "renewing the WebSocket lease",
                keys=[LEADER_WS, LEADER_FENCE],
                args=["renew", self.replica, self.ttl_ms, held.token],
            )
        )

    async def release(self, held: Held) -> bool:
        """Give the lease up (a stopping leader), so that a standby takes over at once."""
        return bool(
            await run(
                self._lease,
                "releasing the WebSocket lease",
                keys=[LEADER_WS, LEADER_FENCE],
                args=["release", self.replica, self.ttl_ms, held.token],
            )
        )

    async def holder(self) -> str | None:
        """The lease's value now (``"<replica> <token>"``), or None when it is free."""
        value = await call(self.redis.get(LEADER_WS), "reading the WebSocket lease")
        return value.decode() if value is not None else None
