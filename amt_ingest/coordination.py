"""The Redis gateway: per-record coordination state, dedup records, cursors, counters.

Redis holds the coordination state and arq only delivers jobs (DESIGN.md section 3).
Keys:

- ``amt:evt:<event_id>``            dedup record (first path, first time, trace context, paths seen)
- ``amt:rec:<topic>:<record_id>``   pending changes ``f:<field>`` = position + JSON value,
                                    ``job`` (owning job id), ``ver`` (change counter), ``org``
- ``amt:jobseq``                    source of fresh job ids
- ``arq:job:<id>``, ``amt:queue``   arq's job payloads and queue, written by the scripts
- ``amt:cursor:<name>``             WebSocket resume point
- ``amt:stats``                     counters (``<kind>:<path>:<topic>`` and reasons)
- ``amt:dead:records``              dead-lettered records (hash: ``<topic>:<id>`` -> JSON)

The ingest and complete scripts are the only writers of ``amt:rec:*``; each runs
atomically, so every race between routers and jobs resolves inside Redis.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .errors import CoordinationError
from .events import DELETED_FIELD, POSITION_WIDTH, Event, record_changes

__all__ = [
    "JOB_FUNCTION",
    "QUEUE_NAME",
    "REREAD_FIELD",
    "Coordinator",
    "IngestResult",
    "PendingRecord",
    "pending_entries",
    "record_key",
]

QUEUE_NAME: Final = "amt:queue"
JOB_FUNCTION: Final = "apply_record"
REREAD_FIELD: Final = "__reread__"
STATS_KEY: Final = "amt:stats"
DEAD_RECORDS_KEY: Final = "amt:dead:records"
JOB_TTL_MS: Final = 72 * 3600 * 1000  # longer than the 15-retry schedule (about 36 h)


T = TypeVar("T")


async def _done(result: Awaitable[T] | T) -> T:
    """Await a redis-py asyncio reply (its stubs type replies as ``Awaitable[T] | T``)."""
    return await result if inspect.isawaitable(result) else result


def _script(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


def record_key(topic: str, record_id: str) -> str:
    return f"amt:rec:{topic}:{record_id}"


def dedup_key(event_id: str) -> str:
    return f"amt:evt:{event_id}"


def pending_entries(event: Event) -> list[tuple[str, bytes]]:
    """The pending entries an event contributes to each of its records (same for all).

    Values are JSON; the tombstone and re-read markers are pseudo-fields.
    """
    change = record_changes(event)[0] if event.record_ids else None
    if change is None:
        return [(REREAD_FIELD, b"true")]
    entries = [(name, orjson.dumps(value)) for name, value in change.values.items()]
    if change.deleted is not None:
        entries.append((DELETED_FIELD, b"true" if change.deleted else b"false"))
    if change.reread:
        entries.append((REREAD_FIELD, b"true"))
    return entries


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What Redis decided for one event: ``first``, ``duplicate`` or ``stale``."""

    outcome: str
    first_path: str
    first_ms: int
    first_context: str
    jobs_created: int


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A record's pending changes as a job read them.

    ``entries`` maps pending hash keys (``f:<field>``) to their exact stored value;
    ``changes`` maps field names to ``(position, value)``.
    """

    topic: str
    record_id: str
    org_id: str
    version: bytes
    entries: dict[bytes, bytes]
    changes: dict[str, tuple[str, Any]]
    failures: int


def _decode_pending(raw: Mapping[bytes, bytes]) -> dict[str, tuple[str, Any]]:
    changes: dict[str, tuple[str, Any]] = {}
    for key, value in raw.items():
        if key.startswith(b"f:"):
            changes[key[2:].decode()] = (
                value[:POSITION_WIDTH].decode(),
                orjson.loads(value[POSITION_WIDTH:]),
            )
    return changes


class Coordinator:
    """All of the service's Redis state, behind methods that say what they promise."""

    def __init__(self, client: aioredis.Redis, *, dedup_ttl: int, queue_name: str = QUEUE_NAME):
        self.redis = client
        self.queue_name = queue_name
        self.dedup_ttl = dedup_ttl
        self._ingest = client.register_script(_script("ingest.lua"))
        self._complete = client.register_script(_script("complete.lua"))

    # -- hand-off ------------------------------------------------------------

    async def ingest(
        self,
        events: Sequence[Event],
        *,
        path: str,
        contexts: Sequence[str] | None = None,
    ) -> list[IngestResult]:
        """Hand events off durably, in one round trip. Returns one result per event.

        When this returns, every event is in Redis (deduplicated, merged, a job
        scheduled where needed, the outcome counted). Raises
        :class:`CoordinationError` if any part failed: then nothing may be
        acknowledged, and a redelivery is safe (dedup makes it a no-op).
        """
        if not events:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for i, event in enumerate(events):
            entries = pending_entries(event)
            args: list[Any] = [
                path,
                self.dedup_ttl,
                contexts[i] if contexts else "",
                event.position,
                event.org_id,
                event.topic,
                self.queue_name,
                JOB_TTL_MS,
                JOB_FUNCTION,
                len(entries),
            ]
            for name, value in entries:
                args.append(name)
                args.append(value)
            args.extend(event.record_ids)
            keys = [dedup_key(event.event_id)]
            keys.extend(record_key(event.topic, rid) for rid in event.record_ids)
            await self._ingest(keys=keys, args=args, client=pipe)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"hand-off to Redis failed: {exc}") from exc
        results: list[IngestResult] = []
        for reply in replies:
            if isinstance(reply, Exception):
                raise CoordinationError(f"hand-off to Redis failed: {reply}") from reply
            outcome, first_path, first_ms, ctx, jobs = reply
            results.append(
                IngestResult(
                    outcome=outcome.decode(),
                    first_path=first_path.decode(),
                    first_ms=int(first_ms),
                    first_context=ctx.decode(),
                    jobs_created=int(jobs),
                )
            )
        return results

    async def count(self, counters: Mapping[str, int]) -> None:
        """Add to the ``amt:stats`` counters (filtered, rejected: outcomes not routed)."""
        if not counters:
            return
        pipe = self.redis.pipeline(transaction=False)
        for name, value in counters.items():
            pipe.hincrby(STATS_KEY, name, value)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"counter update failed: {exc}") from exc

    # -- jobs ------------------------------------------------------------------

    async def read_record(self, topic: str, record_id: str, job_id: str) -> PendingRecord | None:
        """The record's pending changes, or ``None`` if ``job_id`` does not own the record."""
        try:
            raw: dict[bytes, bytes] = await _done(self.redis.hgetall(record_key(topic, record_id)))
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"reading {topic} {record_id} failed: {exc}") from exc
        if raw.get(b"job", b"").decode() != job_id:
            return None
        return PendingRecord(
            topic=topic,
            record_id=record_id,
            org_id=raw.get(b"org", b"").decode(),
            version=raw.get(b"ver", b"0"),
            entries={k: v for k, v in raw.items() if k.startswith(b"f:")},
            changes=_decode_pending(raw),
            failures=int(raw.get(b"fail", b"0")),
        )

    async def complete(self, record: PendingRecord, job_id: str) -> tuple[str, str]:
        """Drop what the job applied; release the record or hand it to a fresh job.

        Returns ``(status, next_job_id)`` with status ``released``, ``handed_over``
        or ``not_owner``.
        """
        args: list[Any] = [
            job_id,
            record.version,
            self.queue_name,
            JOB_TTL_MS,
            JOB_FUNCTION,
            record.topic,
            record.record_id,
        ]
        for key, value in record.entries.items():
            args.append(key)
            args.append(value)
        try:
            status, next_id = await self._complete(
                keys=[record_key(record.topic, record.record_id)], args=args
            )
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"completing {record.topic} {record.record_id}: {exc}") from exc
        return status.decode(), next_id.decode()

    async def dead_letter_record(self, record: PendingRecord, job_id: str, error: str) -> str:
        """Keep the record's pending changes with the last error, then complete the job."""
        entry = {
            "topic": record.topic,
            "id": record.record_id,
            "org_id": record.org_id,
            "error": error,
            "at": int(time.time() * 1000),
            "changes": {k: {"position": p, "value": v} for k, (p, v) in record.changes.items()},
        }
        await _done(
            self.redis.hset(
                DEAD_RECORDS_KEY,
                f"{record.topic}:{record.record_id}",
                orjson.dumps(entry).decode(),
            )
        )
        status, _ = await self.complete(record, job_id)
        return status

    # -- cursors and counters ----------------------------------------------------

    async def get_cursor(self, name: str) -> str | None:
        value = await self.redis.get(f"amt:cursor:{name}")
        return value.decode() if value is not None else None

    async def set_cursor(self, name: str, replay_id: str) -> None:
        try:
            await self.redis.set(f"amt:cursor:{name}", replay_id)
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"saving the {name} cursor failed: {exc}") from exc

    async def stats(self) -> dict[str, int]:
        raw = await _done(self.redis.hgetall(STATS_KEY))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def queue_depth(self) -> int:
        return int(await _done(self.redis.zcard(self.queue_name)))

    async def dead_records(self) -> list[dict[str, Any]]:
        raw = await _done(self.redis.hgetall(DEAD_RECORDS_KEY))
        return [orjson.loads(v) for v in raw.values()]
