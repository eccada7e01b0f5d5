"""The gateway's two edges: its Lua scripts, and Redis errors turned into ours.

Every script is a ``.lua`` file beside the Python that calls it; :func:`load`
puts ``prelude.lua`` (the key names and the arq helpers every script shares) in
front of it. :func:`call` is the one place where a Redis or connection error
becomes :class:`~amt_ingest.errors.CoordinationError`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Sequence
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from ..errors import CoordinationError

__all__ = ["call", "execute", "load", "run", "source"]

T = TypeVar("T")


@cache
def source(name: str, *, prelude: bool = True) -> str:
    """The text of script ``name`` as Redis runs it: the prelude (unless the script
    needs none of it), then the file."""
    files = resources.files(__package__)
    text = files.joinpath(name).read_text()
    return files.joinpath("prelude.lua").read_text() + text if prelude else text


def load(client: aioredis.Redis, name: str, *, prelude: bool = True) -> AsyncScript:
    """Script ``name`` registered on ``client`` (run with EVALSHA, loaded when missing)."""
    return client.register_script(source(name, prelude=prelude))


async def call(result: Awaitable[T] | T, what: str) -> T:
    """Await a redis-py reply (its stubs type replies as ``Awaitable[T] | T``); a
    Redis or connection error raises :class:`CoordinationError` saying ``what`` failed."""
    try:
        return await result if inspect.isawaitable(result) else result
    except (RedisError, OSError) as exc:
        raise CoordinationError(f"{what} failed: {exc}") from exc


async def execute(pipe: Any, what: str) -> list[Any]:
    """Run a pipeline, translating its errors like :func:`call`."""
    return list(await call(pipe.execute(), what))


async def run(script: AsyncScript, what: str, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Run a loaded script (EVALSHA), translating its errors like :func:`call`."""
    try:
        return await script(keys=list(keys), args=list(args))
    except (RedisError, OSError) as exc:
        raise CoordinationError(f"{what} failed: {exc}") from exc
