"""The operator's retry throttle (``throttle pause|slow|resume``), shared by every worker."""

from __future__ import annotations

import redis.asyncio as aioredis

from .keys import THROTTLE
from .scripts import call

__all__ = ["Throttle"]


class Throttle:
    """Read and set ``amt:throttle``: a mode (None, ``pause`` or ``slow``) and a factor."""

    def __init__(self, client: aioredis.Redis):
        self.redis = client

    async def get(self) -> tuple[str | None, float]:
        """``(mode, factor)``; mode is None, ``pause`` or ``slow``."""
        raw = await call(self.redis.hgetall(THROTTLE), "reading the throttle")
        mode = raw.get(b"mode")
        return (mode.decode() if mode else None), float(raw.get(b"factor", b"1"))

    async def set(self, mode: str | None, factor: float = 1.0) -> None:
        if mode is None:
            await call(self.redis.delete(THROTTLE), "clearing the throttle")
        else:
            await call(
                self.redis.hset(THROTTLE, mapping={"mode": mode, "factor": factor}),
                "setting the throttle",
            )
