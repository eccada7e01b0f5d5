"""Resume points of the WebSocket stream, durable in Redis.

A cursor is saved only after everything up to it was handed off; beside it, the
position and org of the newest event handed off with it (``save_cursor.lua``):
where the resync of a lost window starts if the resume point expires. The
leader saves with its WebSocket lease, and Redis refuses the save when the
lease is no longer its own.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from ..errors import LeaseLostError
from .keys import LEADER_WS, cursor_key, cursor_newest_key
from .scripts import call, load, run

__all__ = ["Cursors"]


class Cursors:
    """Read and save resume points by name (one per subscription)."""

    def __init__(self, client: aioredis.Redis):
        self.redis = client
        self._save = load(client, "save_cursor.lua", prelude=False)

    async def get(self, name: str) -> str | None:
        value = await call(self.redis.get(cursor_key(name)), f"reading the {name} cursor")
        return value.decode() if value is not None else None

    async def set(
        self,
        name: str,
        replay_id: str,
        *,
        position: str | None = None,
        org: str | None = None,
        lease: str | None = None,
    ) -> None:
        """Save the resume point; ``position``/``org`` of the newest event handed off
        with it are kept beside it (where a resync starts if the point expires).
        With ``lease`` (the saver's WebSocket lease) nothing is saved when the lease
        is another's: :class:`~amt_ingest.errors.LeaseLostError`."""
        saved = await run(
            self._save,
            f"saving the {name} cursor",
            keys=[cursor_key(name), cursor_newest_key(name), LEADER_WS],
            args=[
                replay_id,
                position if position is not None and org is not None else "",
                org or "",
                lease or "",
            ],
        )
        if not int(saved):
            raise LeaseLostError(f"the {name} cursor was not saved: the WebSocket lease is gone")

    async def newest(self, name: str) -> tuple[str, str] | None:
        """``(position, org)`` of the newest event handed off on this cursor, if any."""
        raw = await call(self.redis.hgetall(cursor_newest_key(name)), "reading a cursor")
        if b"position" not in raw:
            return None
        return raw[b"position"].decode(), raw[b"org"].decode()
