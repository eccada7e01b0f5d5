"""The Redis gateway: per-record coordination state, dedup records, cursors, counters.

Redis holds the coordination state and arq only delivers jobs (DESIGN.md section 3).
Keys:

- ``amt:evt:<event_id>``            dedup record (first path, first time, trace context, paths seen)
- ``amt:rec:<topic>:<record_id>``   pending changes ``f:<field>`` = position + JSON value,
                                    ``job`` (owning job id), ``ver`` (change counter), ``org``,
                                    ``fail``/``failed_at``/``retry_delay`` while retrying
- ``amt:pending``                   every record key above (set): the backlog intake waits on
- ``amt:lease:<topic>:<record_id>``  the run of the owning job that works on it (expires)
- ``amt:jobseq``                    source of fresh job ids
- ``amt:openjob``                   the job the last hand-off left open: records join it
                                    until a worker starts it or it is full
- ``amt:fenceseq``                  fencing tokens: one per claim, checked by the store
- ``arq:job:<id>``, ``amt:queue``   arq's job payloads and queue, written by the scripts; a job
                                    applies a batch of records (``[[topic, record_id], ...]``)
- ``amt:cursor:<name>``             WebSocket resume point
- ``amt:throttle``                  the operator's retry throttle (mode, factor)
- ``amt:resync:<id>``, ``amt:resyncs``  resyncs of a type: progress, ids done (resumable)
- ``amt:stats``                     counters (``<kind>:<path>:<topic>`` and reasons)
- ``amt:dead:records``              dead-lettered records (hash: ``<topic>:<id>`` -> JSON)
- ``amt:retrying``                  records whose job is backing off (zset, by failure time)
- ``amt:onepath``                   events seen on one path so far (zset ``<path>:<topic>:<id>``
                                    by first arrival), while both paths run
- ``amt:lags``                      the last 1,000 path lags (ms), newest first
- ``amt:gauges``                    queue depths and WebSocket state, published by services

The scripts are the only writers of ``amt:rec:*``; each runs atomically, so
every race between routers and jobs resolves inside Redis.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..errors import CoordinationError
from ..routing.events import DELETED_FIELD, FULL_FIELD, POSITION_WIDTH, Event, event_effect

__all__ = [
    "JOB_FUNCTION",
    "LEGACY_JOB_FUNCTION",
    "QUEUE_NAME",
    "RECONCILE_FIELD",
    "REREAD_FIELD",
    "Coordinator",
    "IngestResult",
    "PendingRecord",
    "Turn",
    "pending_entries",
    "record_key",
]

QUEUE_NAME: Final = "amt:queue"
JOB_FUNCTION: Final = "apply_records"
#: The one-record job of earlier versions; jobs queued by them still run.
LEGACY_JOB_FUNCTION: Final = "apply_record"
PENDING_KEY: Final = "amt:pending"
#: Pending pseudo-fields (values ``true``) at a position: ``__reread__``, the record
#: changed there in a way no event told (a gap, a resync): read it, and a snapshot
#: older than that position is not its content yet; ``__reconcile__``, a full
#: reconciliation asks whether it still exists: read it, any snapshot will do.
#: Either way a 404 is a tombstone at the marker's position.
REREAD_FIELD: Final = "__reread__"
RECONCILE_FIELD: Final = "__reconcile__"
STATS_KEY: Final = "amt:stats"
RESYNC_FUNCTION: Final = "resync_topic"
RESYNCS_KEY: Final = "amt:resyncs"
RESYNC_TTL_S: Final = 7 * 24 * 3600
THROTTLE_KEY: Final = "amt:throttle"
DEAD_RECORDS_KEY: Final = "amt:dead:records"
RETRYING_KEY: Final = "amt:retrying"
ONE_PATH_KEY: Final = "amt:onepath"
LAGS_KEY: Final = "amt:lags"
GAUGES_KEY: Final = "amt:gauges"
JOB_TTL_MS: Final = 72 * 3600 * 1000  # longer than the 15-retry schedule (about 50 h)
#: Events per ingest script run: bounds how long one run holds Redis (a few ms).
INGEST_CHUNK: Final = 500


T = TypeVar("T")


async def _done(result: Awaitable[T] | T, what: str = "a Redis call") -> T:
    """Await a redis-py asyncio reply (its stubs type replies as ``Awaitable[T] | T``),
    translating Redis and connection errors into :class:`CoordinationError`."""
    try:
        return await result if inspect.isawaitable(result) else result
    except (RedisError, OSError) as exc:
        raise CoordinationError(f"{what} failed: {exc}") from exc


# Forget a pending-set member whose record key is gone.
_FORGET_GONE: Final = """
if redis.call('EXISTS', KEYS[2]) == 0 then return redis.call('SREM', KEYS[1], KEYS[2]) end
return 0
"""


# Drop a lease only if this run still holds it.
_UNLEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# Pop events seen on one path only for longer than the grace window, count them
# per path and topic; each is returned (and so logged) once, by one caller.
_SWEEP_ONE_PATH: Final = """
local cutoff = tonumber(ARGV[1])
local found = redis.call(
  'ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #found, 2 do
  redis.call('ZREM', KEYS[1], found[i])
  local sep = string.find(found[i], ':', string.find(found[i], ':', 1, true) + 1, true)
  redis.call('HINCRBY', KEYS[2], 'onepath:' .. string.sub(found[i], 1, sep - 1), 1)
end
return found
"""


# Drop a dead-lettered record only if it is still the one that was read (same ``at``):
# a newer dead letter of the same record, written meanwhile, stays.
_DROP_DEAD: Final = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and cjson.decode(held)['at'] == tonumber(ARGV[2]) then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


# Keep the newest position seen (and its org) in a hash.
_KEEP_NEWEST: Final = """
local held = redis.call('HGET', KEYS[1], 'position')
if (not held) or held < ARGV[1] then
  redis.call('HSET', KEYS[1], 'position', ARGV[1], 'org', ARGV[2])
end
return 1
"""


def _script(name: str) -> str:
    """A Lua script of this package, with the shared job helpers in front of it."""
    files = resources.files(__package__)
    return files.joinpath("jobs_prelude.lua").read_text() + files.joinpath(name).read_text()


def record_key(topic: str, record_id: str) -> str:
    return f"amt:rec:{topic}:{record_id}"


def lease_key(topic: str, record_id: str) -> str:
    return f"amt:lease:{topic}:{record_id}"


def dedup_key(event_id: str) -> str:
    return f"amt:evt:{event_id}"


def pending_entries(event: Event) -> list[tuple[str, str]]:
    """The pending entries an event contributes to each of its records (same for all).

    Values are JSON text; the tombstone and re-read markers are pseudo-fields.
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


@dataclass(frozen=True, slots=True)
class Turn:
    """Keeps hand-offs that are under way at once in order in Redis: this one's
    ingest script runs after ``previous`` is done (the previous hand-off's ran, or
    it failed), and ``done`` is set once this one's ran."""

    previous: asyncio.Future[None] | None
    done: asyncio.Future[None]

    def finish(self) -> None:
        """This hand-off's scripts ran, or will not run (no events, or it failed):
        the next may go once the one before is done too, never earlier."""
        if self.done.done():
            return
        if self.previous is None or self.previous.done():
            self.done.set_result(None)
        else:
            self.previous.add_done_callback(lambda _: self.finish())


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What Redis decided for one event: ``first``, ``duplicate`` or ``stale``."""

    outcome: str
    first_path: str
    first_context: str
    #: Records this event handed to a job (they had none; jobs are shared per batch).
    scheduled: int
    #: Path lag (ms) when this is the first arrival on the second path, else -1.
    lag_ms: int = -1


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
    token: str
    failures: int = 0
    failed_at_ms: int = 0
    retry_delay_s: float = 0.0
    fence: int = 0
    #: Trace contexts of the events merged since the last run (comma separated).
    links: bytes = b""


def _decode_pending(raw: Mapping[bytes, bytes]) -> dict[str, tuple[str, Any]]:
    changes: dict[str, tuple[str, Any]] = {}
    for key, value in raw.items():
        if key.startswith(b"f:"):
            changes[key[2:].decode()] = (
                value[:POSITION_WIDTH].decode(),
                orjson.loads(value[POSITION_WIDTH:]),
            )
    return changes


def _pending(
    topic: str, record_id: str, flat: Sequence[bytes], token: str, fence: int
) -> PendingRecord:
    raw = dict(zip(flat[::2], flat[1::2], strict=True))
    return PendingRecord(
        topic=topic,
        record_id=record_id,
        org_id=raw.get(b"org", b"").decode(),
        version=raw.get(b"ver", b"0"),
        entries={k: v for k, v in raw.items() if k.startswith(b"f:")},
        changes=_decode_pending(raw),
        token=token,
        failures=int(raw.get(b"fail", b"0")),
        failed_at_ms=int(raw.get(b"failed_at", b"0")),
        retry_delay_s=float(raw.get(b"retry_delay", b"0")),
        fence=fence,
        links=raw.get(b"l", b""),
    )


class Coordinator:
    """All of the service's Redis state, behind methods that say what they promise."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        dedup_ttl: int,
        queue_name: str = QUEUE_NAME,
        job_batch: int = 50,
    ):
        self.redis = client
        self.queue_name = queue_name
        self.dedup_ttl = dedup_ttl
        #: Most records one job applies (the ingest script fills jobs up to it).
        self.job_batch = job_batch
        #: Records pending in Redis as of the last hand-off (read in the same round trip).
        self.last_pending = 0
        self._ingest = client.register_script(_script("ingest.lua"))
        self._complete = client.register_script(_script("complete.lua"))
        self._reap = client.register_script(_script("reap.lua"))
        self._claim = client.register_script(_script("claim.lua"))
        self._hold = client.register_script(_script("hold.lua"))
        self._replay = client.register_script(_script("replay.lua"))
        self._mark = client.register_script(_script("mark.lua"))
        self._unlease = client.register_script(_UNLEASE)
        self._forget_gone = client.register_script(_FORGET_GONE)
        self._sweep = client.register_script(_SWEEP_ONE_PATH)
        self._drop_dead = client.register_script(_DROP_DEAD)

    # -- hand-off ------------------------------------------------------------

    async def ingest(
        self,
        events: Sequence[Event],
        *,
        path: str,
        contexts: Sequence[str] | None = None,
        track_one_path: bool = False,
        turn: Turn | None = None,
    ) -> list[IngestResult]:
        """Hand events off durably, in one round trip. Returns one result per event.

        When this returns, every event is in Redis (deduplicated, merged, a job
        scheduled where needed, the outcome counted). Raises
        :class:`CoordinationError` if any part failed: then nothing may be
        acknowledged, and a redelivery is safe (dedup makes it a no-op).
        ``contexts`` are the events' encoded trace contexts; ``track_one_path``
        keeps first arrivals in ``amt:onepath`` until the other path brings them.
        With ``turn``, the scripts run only after the previous hand-off's did
        (the batch is prepared meanwhile), and ``turn.done`` is set after them.
        """
        try:
            if not events:
                return []
            prepared = [
                self._prepare_chunk(
                    events[start : start + INGEST_CHUNK],
                    path,
                    contexts[start : start + INGEST_CHUNK] if contexts else None,
                    track_one_path,
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
        spec = orjson.dumps(
            {
                "p": path,
                "ttl": self.dedup_ttl,
                "q": self.queue_name,
                "jt": JOB_TTL_MS,
                "fn": JOB_FUNCTION,
                "b": self.job_batch,
                "track": 1 if track_one_path else 0,
                "e": specs,
            }
        )
        return keys, spec

    async def _run_chunk(self, keys: list[str], spec: bytes) -> list[IngestResult]:
        # A plain EVALSHA (one round trip): a pipeline holding a script first
        # asks Redis whether the script is loaded, a round trip of its own.
        try:
            flat = await self._ingest(keys=keys, args=[spec])
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"hand-off to Redis failed: {exc}") from exc
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
            pipe.hincrby(STATS_KEY, name, value)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"counter update failed: {exc}") from exc

    # -- jobs ------------------------------------------------------------------

    async def claim_batch(
        self, members: Sequence[tuple[str, str]], job_id: str, *, token: str, lease_ms: int
    ) -> list[PendingRecord | None] | int:
        """Claim records ``(topic, record_id)`` for one run of ``job_id`` and read
        their pending changes, in one round trip.

        Returns one entry per member: its pending record, or ``None`` when
        ``job_id`` does not own it (nothing to do). If another run of the same job
        holds a lease, nothing is claimed and the lease's remaining milliseconds
        are returned (retry after that).
        """
        keys: list[str] = []
        for topic, record_id in members:
            keys.append(record_key(topic, record_id))
            keys.append(lease_key(topic, record_id))
        try:
            reply = await self._claim(keys=keys, args=[job_id, token, lease_ms])
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"claiming the records of {job_id} failed: {exc}") from exc
        if reply[0] == b"busy":
            return max(1, int(reply[1]))
        fence = int(reply[1])
        return [
            _pending(topic, record_id, flat, token, fence) if flat else None
            for (topic, record_id), flat in zip(members, reply[2:], strict=True)
        ]

    async def claim(
        self, topic: str, record_id: str, job_id: str, *, token: str, lease_ms: int
    ) -> PendingRecord | int | None:
        """:meth:`claim_batch` for one record."""
        claimed = await self.claim_batch(
            [(topic, record_id)], job_id, token=token, lease_ms=lease_ms
        )
        return claimed if isinstance(claimed, int) else claimed[0]

    async def hold(
        self,
        records: Sequence[PendingRecord],
        job_id: str,
        *,
        failed: bool,
        retry_delay_s: float,
        move_after_s: float | None = None,
    ) -> tuple[list[int], str]:
        """End a run for records it did not apply: count a failure on each when
        ``failed`` (a throttled wait is not a failure), drop the run's leases, and
        with ``move_after_s`` hand them to one fresh job due after that many
        seconds (otherwise they stay with ``job_id``, which arq reruns).

        Returns the failures per record (-1 when the job no longer owns it) and the
        fresh job's id (``""`` if none). All records must share the run's token.
        """
        if not records:
            return [], ""
        keys: list[str] = []
        args: list[Any] = [
            job_id,
            records[0].token,
            "1" if failed else "0",
            retry_delay_s,
            self.queue_name if move_after_s is not None else "",
            JOB_TTL_MS,
            JOB_FUNCTION,
            int((move_after_s or 0) * 1000),
        ]
        for record in records:
            keys.append(record_key(record.topic, record.record_id))
            keys.append(lease_key(record.topic, record.record_id))
            args.append(record.topic)
            args.append(record.record_id)
        try:
            reply = await self._hold(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"holding the records of {job_id} failed: {exc}") from exc
        return [int(n) for n in reply[1:]], reply[0].decode()

    async def throttle(self) -> tuple[str | None, float]:
        """The operator's retry throttle: ``(mode, factor)``; mode is None, pause or slow."""
        try:
            raw = await _done(self.redis.hgetall(THROTTLE_KEY))
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"reading the throttle: {exc}") from exc
        mode = raw.get(b"mode")
        return (mode.decode() if mode else None), float(raw.get(b"factor", b"1"))

    async def set_throttle(self, mode: str | None, factor: float = 1.0) -> None:
        if mode is None:
            await _done(self.redis.delete(THROTTLE_KEY))
        else:
            await _done(self.redis.hset(THROTTLE_KEY, mapping={"mode": mode, "factor": factor}))

    async def release_lease(self, record: PendingRecord) -> None:
        """End a run that will not complete (it failed and retries later)."""
        try:
            await self._unlease(
                keys=[lease_key(record.topic, record.record_id)], args=[record.token]
            )
        except (RedisError, OSError) as exc:
            # The lease expires by itself after the job timeout.
            raise CoordinationError(f"releasing the lease of {record.record_id}: {exc}") from exc

    async def complete_batch(
        self, records: Sequence[PendingRecord], job_id: str
    ) -> tuple[list[str], str]:
        """Drop what the run applied; release each record or hand it to a fresh job
        (one for all records handed over), in one round trip.

        Returns the status per record (``released``, ``handed_over`` or
        ``not_owner``) and the fresh job's id (``""`` if none).
        """
        if not records:
            return [], ""
        keys: list[str] = []
        args: list[Any] = [job_id, self.queue_name, JOB_TTL_MS, JOB_FUNCTION]
        for record in records:
            keys.append(record_key(record.topic, record.record_id))
            keys.append(lease_key(record.topic, record.record_id))
            args.extend(
                (
                    record.version,
                    record.token,
                    record.links,
                    record.topic,
                    record.record_id,
                    len(record.entries),
                )
            )
            for key, value in record.entries.items():
                args.append(key)
                args.append(value)
        try:
            reply = await self._complete(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"completing the records of {job_id} failed: {exc}") from exc
        return [status.decode() for status in reply[1:]], reply[0].decode()

    async def complete(self, record: PendingRecord, job_id: str) -> tuple[str, str]:
        """:meth:`complete_batch` for one record: ``(status, next_job_id)``."""
        statuses, next_job = await self.complete_batch([record], job_id)
        return statuses[0], next_job if statuses[0] == "handed_over" else ""

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

    async def reap(self, *, batch: int = 500) -> list[tuple[str, str, str]]:
        """Give a fresh job to every record whose owning job is gone from arq, and
        forget pending-set members whose record is gone (deleted by hand).

        Returns ``(topic, record_id, new_job_id)`` for each recovered record. Safe to
        run from several workers at once: each check-and-enqueue is atomic.
        """
        recovered: list[tuple[str, str, str]] = []
        try:
            async for member in self.redis.sscan_iter(PENDING_KEY, count=batch):
                await self._forget_gone(keys=[PENDING_KEY, member])
            async for key in self.redis.scan_iter(match="amt:rec:*", count=batch):
                _, _, topic, record_id = key.decode().split(":", 3)
                job_id = await self._reap(
                    keys=[key],
                    args=[self.queue_name, JOB_TTL_MS, JOB_FUNCTION, topic, record_id],
                )
                if job_id:
                    recovered.append((topic, record_id, job_id.decode()))
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"reaping failed: {exc}") from exc
        return recovered

    # -- resyncs ---------------------------------------------------------------

    async def mark(
        self, topic: str, record_id: str, changes: Mapping[str, tuple[str, Any]], *, org: str
    ) -> int:
        """Merge positioned changes that no event brought (a re-read marker, a
        tombstone of the deleted-records resource, a reconciliation marker) into the
        record's pending changes, newest wins, and give it a job if none owns it.

        Returns how many were newer than what was pending (0: a no-op).
        """
        args: list[Any] = [org, self.queue_name, JOB_TTL_MS, JOB_FUNCTION, topic, record_id]
        for name, (position, value) in changes.items():
            args.extend((name, position, orjson.dumps(value)))
        try:
            return int(await self._mark(keys=[record_key(topic, record_id)], args=args))
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"marking {topic} {record_id} failed: {exc}") from exc

    async def enqueue_resync(self, topic: str, *, position: str, org: str, resync_id: str) -> None:
        """Queue a resync job of ``topic`` from ``position`` (idempotent per ``resync_id``)."""
        job = orjson.dumps(
            {
                "t": None,
                "f": RESYNC_FUNCTION,
                "a": [topic, position, org, resync_id],
                "k": {},
                "et": int(time.time() * 1000),
            }
        )
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"arq:job:resync:{resync_id}", job, px=JOB_TTL_MS, nx=True)
        pipe.zadd(self.queue_name, {f"resync:{resync_id}": int(time.time() * 1000)}, nx=True)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"queueing the resync of {topic} failed: {exc}") from exc

    async def resync_progress(self, resync_id: str) -> dict[str, str]:
        raw = await _done(self.redis.hgetall(f"amt:resync:{resync_id}"), "reading a resync")
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def update_resync(self, resync_id: str, **fields: str | int) -> None:
        key = f"amt:resync:{resync_id}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, RESYNC_TTL_S)
        pipe.zadd(RESYNCS_KEY, {resync_id: int(time.time() * 1000)}, nx=True)
        await self._execute(pipe, "saving resync progress")

    async def resync_done_ids(self, resync_id: str, ids: Sequence[str]) -> list[bool]:
        if not ids:
            return []
        flags = await _done(
            self.redis.smismember(f"amt:resync:{resync_id}:done", list(ids)), "reading a resync"
        )
        return [bool(f) for f in flags]

    async def resync_mark_done(self, resync_id: str, record_id: str) -> None:
        key = f"amt:resync:{resync_id}:done"
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(key, record_id)
        pipe.expire(key, RESYNC_TTL_S)
        pipe.hincrby(f"amt:resync:{resync_id}", "marked", 1)
        await self._execute(pipe, "saving resync progress")

    @staticmethod
    async def _execute(pipe: Any, what: str) -> list[Any]:
        try:
            return list(await pipe.execute())
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"{what} failed: {exc}") from exc

    async def resyncs(self, limit: int = 50) -> list[dict[str, str]]:
        """Recent resyncs, newest first, with their progress (two round trips)."""
        ids = await _done(self.redis.zrevrange(RESYNCS_KEY, 0, limit - 1), "listing resyncs")
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for raw in ids:
            pipe.hgetall(f"amt:resync:{raw.decode()}")
        out = []
        for raw, progress in zip(ids, await self._execute(pipe, "reading resyncs"), strict=True):
            if progress:
                fields = {k.decode(): v.decode() for k, v in progress.items()}
                out.append({"id": raw.decode(), **fields})
        return out

    # -- cursors and counters ----------------------------------------------------

    async def get_cursor(self, name: str) -> str | None:
        try:
            value = await self.redis.get(f"amt:cursor:{name}")
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"reading the {name} cursor failed: {exc}") from exc
        return value.decode() if value is not None else None

    async def set_cursor(
        self, name: str, replay_id: str, *, position: str | None = None, org: str | None = None
    ) -> None:
        """Save the resume point; ``position``/``org`` of the newest event handed off
        with it are kept beside it (where a resync starts if the point expires)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"amt:cursor:{name}", replay_id)
        if position is not None and org is not None:
            meta = f"amt:cursor:{name}:newest"
            pipe.eval(_KEEP_NEWEST, 1, meta, position, org)
        await self._execute(pipe, f"saving the {name} cursor")

    async def cursor_newest(self, name: str) -> tuple[str, str] | None:
        """``(position, org)`` of the newest event handed off on this cursor, if any."""
        raw = await _done(self.redis.hgetall(f"amt:cursor:{name}:newest"), "reading a cursor")
        if b"position" not in raw:
            return None
        return raw[b"position"].decode(), raw[b"org"].decode()

    async def sweep_one_path(self, *, grace_ms: int, limit: int = 1000) -> list[tuple[str, int]]:
        """Events seen on one path only for longer than ``grace_ms``.

        Each is popped, counted as ``onepath:<path>:<topic>`` and returned once
        as ``("<path>:<topic>:<event_id>", first_seen_ms)``, whichever process
        sweeps first.
        """
        cutoff = int(time.time() * 1000) - grace_ms
        try:
            flat = await self._sweep(keys=[ONE_PATH_KEY, STATS_KEY], args=[cutoff, limit])
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"sweeping one-path events failed: {exc}") from exc
        return [(m.decode(), int(float(t))) for m, t in zip(flat[::2], flat[1::2], strict=True)]

    async def publish_gauges(self, values: Mapping[str, str | int | float]) -> None:
        """Share this process's view (queue depths, WebSocket state) with ``status``."""
        if values:
            await _done(self.redis.hset(GAUGES_KEY, mapping=dict(values)), "publishing gauges")

    async def overview(self) -> dict[str, Any]:
        """Everything ``status`` shows that Redis holds, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(STATS_KEY)
        pipe.lrange(LAGS_KEY, 0, -1)
        pipe.zcard(self.queue_name)
        pipe.scard(PENDING_KEY)
        pipe.zcard(RETRYING_KEY)
        pipe.hlen(DEAD_RECORDS_KEY)
        pipe.zcard(ONE_PATH_KEY)
        pipe.hgetall(GAUGES_KEY)
        pipe.hgetall(THROTTLE_KEY)
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
        ) = await self._execute(pipe, "reading the overview")
        return {
            "resyncs": await self.resyncs(limit=10),
            "stats": {k.decode(): int(v) for k, v in stats.items()},
            "lags_ms": [int(v) for v in lags],
            "queued_jobs": int(queued),
            "pending_records": int(pending),
            "retrying_records": int(retrying),
            "dead_records": int(dead),
            "one_path_pending": int(one_path),
            "gauges": {k.decode(): v.decode() for k, v in gauges.items()},
            "throttle": {k.decode(): v.decode() for k, v in throttle.items()},
        }

    async def stats(self) -> dict[str, int]:
        raw = await _done(self.redis.hgetall(STATS_KEY))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def pending_records(self) -> int:
        """Records waiting in Redis to be applied (queued, running or retrying)."""
        try:
            pending = int(await _done(self.redis.scard(PENDING_KEY)))
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"reading the pending records failed: {exc}") from exc
        self.last_pending = pending
        return pending

    async def dead_records(self) -> list[dict[str, Any]]:
        """Every dead-lettered record, sorted by topic then id."""
        raw = await _done(self.redis.hgetall(DEAD_RECORDS_KEY), "listing dead records")
        entries = [orjson.loads(v) for v in raw.values()]
        return sorted(entries, key=lambda e: (e["topic"], e["id"]))

    async def replay_dead_record(self, entry: dict[str, Any]) -> int:
        """Give a dead-lettered record's changes back to a job; removes the dead letter.

        Returns how many changes were newer than what is pending (0: a no-op), or
        -1 if the dead letter was already replayed. Safe to repeat and to interrupt.
        """
        topic, record_id = entry["topic"], entry["id"]
        args: list[Any] = [
            f"{topic}:{record_id}",
            self.queue_name,
            JOB_TTL_MS,
            JOB_FUNCTION,
            topic,
            record_id,
            entry["org_id"],
        ]
        for name, change in entry["changes"].items():
            args.extend([name, change["position"], orjson.dumps(change["value"])])
        try:
            return int(
                await self._replay(keys=[record_key(topic, record_id), DEAD_RECORDS_KEY], args=args)
            )
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"replaying {topic} {record_id} failed: {exc}") from exc

    async def delete_dead_record(self, entry: dict[str, Any]) -> bool:
        """Drop a dead-lettered record for good, if it is still the one ``entry`` was read as.

        Returns False when it is gone already or was dead-lettered again since
        (then list it again). Safe to repeat.
        """
        field = f"{entry['topic']}:{entry['id']}"
        try:
            dropped = await self._drop_dead(keys=[DEAD_RECORDS_KEY], args=[field, str(entry["at"])])
        except (RedisError, OSError) as exc:
            raise CoordinationError(f"deleting dead record {field} failed: {exc}") from exc
        return int(dropped) == 1
