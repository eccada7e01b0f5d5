"""The record jobs' side of Redis: claim, hold, complete, release, dead-letter, reap.

A record with pending changes has exactly one owning job (``job`` in its hash). A
run of that job claims its records (``claim.lua``: owner check, a lease per
record, a fencing token), applies what it read, then completes them
(``complete.lua``: drop what was applied; release, or hand over to one fresh job
when changes came meanwhile) or holds them (``hold.lua``: count a failure, keep
or move them). ``reap.lua`` gives a fresh job to a record whose job vanished.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from ..errors import CoordinationError
from ..routing.positions import POSITION_WIDTH
from .arqjobs import JOB_FUNCTION, JOB_TTL_MS, QUEUE_NAME
from .keys import DEAD_RECORDS, PENDING, lease_key, record_key
from .scripts import call, load, run

__all__ = ["PendingRecord", "RecordJobs"]


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


def _record_keys(records: Sequence[tuple[str, str]]) -> list[str]:
    keys: list[str] = []
    for topic, record_id in records:
        keys.append(record_key(topic, record_id))
        keys.append(lease_key(topic, record_id))
    return keys


class RecordJobs:
    """What a record job's run does to its records in Redis, one round trip each."""

    def __init__(self, client: aioredis.Redis, *, queue_name: str = QUEUE_NAME):
        self.redis = client
        self.queue_name = queue_name
        self._claim = load(client, "claim.lua")
        self._complete = load(client, "complete.lua")
        self._hold = load(client, "hold.lua")
        self._reap = load(client, "reap.lua")
        self._unlease = load(client, "unlease.lua", prelude=False)
        self._forget_gone = load(client, "forget_gone.lua", prelude=False)

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
        reply = await run(
            self._claim,
            f"claiming the records of {job_id}",
            keys=_record_keys(members),
            args=[job_id, token, lease_ms],
        )
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

    @staticmethod
    def lease_keys(records: Sequence[PendingRecord]) -> list[str]:
        """The lease keys of claimed records (what a run keeps alive while it runs)."""
        return [lease_key(r.topic, r.record_id) for r in records]

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
            args.append(record.topic)
            args.append(record.record_id)
        keys = _record_keys([(r.topic, r.record_id) for r in records])
        reply = await run(self._hold, f"holding the records of {job_id}", keys=keys, args=args)
        return [int(n) for n in reply[1:]], reply[0].decode()

    async def release_lease(self, record: PendingRecord) -> None:
        """End a run that will not complete (it failed and retries later). The lease
        lapses by itself within ``AMT_JOB_LEASE_S`` if this fails."""
        await run(
            self._unlease,
            f"releasing the lease of {record.record_id}",
            keys=[lease_key(record.topic, record.record_id)],
            args=[record.token],
        )

    async def release_leases(self, records: Sequence[PendingRecord]) -> None:
        """:meth:`release_lease` for each record, through a cancellation and past
        errors (a lease left behind only expires later)."""
        for record in records:
            with contextlib.suppress(CoordinationError):
                await asyncio.shield(self.release_lease(record))

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
        args: list[Any] = [job_id, self.queue_name, JOB_TTL_MS, JOB_FUNCTION]
        for record in records:
            args.extend(
                (
                    record.version,
                    record.token,
                    record.links,
                    record.topic,
                    record.record_id,
                    # One argument, read by the script only if the record changed
                    # meanwhile (the values are UTF-8 JSON text this service wrote).
                    orjson.dumps(
                        [part.decode() for entry in record.entries.items() for part in entry]
                    ),
                )
            )
        keys = _record_keys([(r.topic, r.record_id) for r in records])
        reply = await run(
            self._complete, f"completing the records of {job_id}", keys=keys, args=args
        )
        return [status.decode() for status in reply[1:]], reply[0].decode()

    async def complete(self, record: PendingRecord, job_id: str) -> tuple[str, str]:
        """:meth:`complete_batch` for one record: ``(status, next_job_id)``."""
        statuses, next_job = await self.complete_batch([record], job_id)
        return statuses[0], next_job if statuses[0] == "handed_over" else ""

    async def dead_letter(self, record: PendingRecord, job_id: str, error: str) -> str:
        """Keep the record's pending changes with the last error, then complete the job."""
        entry = {
            "topic": record.topic,
            "id": record.record_id,
            "org_id": record.org_id,
            "error": error,
            "at": int(time.time() * 1000),
            "changes": {k: {"position": p, "value": v} for k, (p, v) in record.changes.items()},
        }
        await call(
            self.redis.hset(
                DEAD_RECORDS, f"{record.topic}:{record.record_id}", orjson.dumps(entry).decode()
            ),
            "keeping a dead-lettered record",
        )
        status, _ = await self.complete(record, job_id)
        return status

    async def reap(self, *, batch: int = 500) -> list[tuple[str, str, str]]:
        """Give a fresh job to every record whose owning job is gone from arq, and
        forget pending-set members whose record is gone (deleted by hand).

        Returns ``(topic, record_id, new_job_id)`` for each recovered record. Safe to
        run from several workers at once: each check-and-enqueue is atomic.
        """
        return await call(self._reap_all(batch), "reaping")

    async def _reap_all(self, batch: int) -> list[tuple[str, str, str]]:
        recovered: list[tuple[str, str, str]] = []
        async for member in self.redis.sscan_iter(PENDING, count=batch):
            await self._forget_gone(keys=[PENDING, member])
        async for key in self.redis.scan_iter(match=record_key("*", "*"), count=batch):
            _, _, topic, record_id = key.decode().split(":", 3)
            job_id = await self._reap(
                keys=[key], args=[self.queue_name, JOB_TTL_MS, JOB_FUNCTION, topic, record_id]
            )
            if job_id:
                recovered.append((topic, record_id, job_id.decode()))
        return recovered
