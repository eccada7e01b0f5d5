"""Resume points of the WebSocket stream, durable in Redis.

A cursor is saved only after everything up to it was handed off; beside it, the
position and org of the newest event handed off with it (``keep_newest.lua``):
where the resync of a lost window starts if the resume point expires.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from .keys import cursor_key, cursor_newest_key
from .scripts import call, execute, source

__all__ = ["Cursors"]


class Cursors:
    """Read and save resume points by name (one per subscription)."""

    def __init__(self, client: aioredis.Redis):
        self.redis = client

    async def get(self, name: str) -> str | None:
        value = await call(self.redis.get(cursor_key(name)), f"reading the {name} cursor")
        return value.decode() if value is not None else None

    async def set(
        self, name: str, replay_id: str, *, position: str | None = None, org: str | None = None
    ) -> None:
        """Save the resume point; ``position``/``org`` of the newest event handed off
        with it are kept beside it (where a resync starts if the point expires)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(cursor_key(name), replay_id)
        if position is not None and org is not None:
            # EVAL, not a registered script: a pipeline holding one first asks Redis
            # whether it is loaded, a round trip of its own on every hand-off.
            pipe.eval(
                source("keep_newest.lua", prelude=False), 1, cursor_newest_key(name), position, org
            )
        await execute(pipe, f"saving the {name} cursor")

    async def newest(self, name: str) -> tuple[str, str] | None:
        """``(position, org)`` of the newest event handed off on this cursor, if any."""
        raw = await call(self.redis.hgetall(cursor_newest_key(name)), "reading a cursor")
        if b"position" not in raw:
            return None
        return raw[b"position"].decode(), raw[b"org"].decode()
