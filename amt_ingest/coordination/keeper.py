"""Leases kept alive while their holder lives: how a killed run's work is picked up in seconds.

A job run holds two kinds of lease: arq's in-progress key of its job (a worker
starts a job only when that key is absent) and a lease on each record it claimed
(``amt:lease:<topic>:<id>``). Both are short (``AMT_JOB_LEASE_S``, 10 s by
default) and this process renews them every third of that while the run is under
way (``renew.lua``, one round trip for every lease the process holds). When the
process dies, renewals stop, the leases lapse within the lease time and another
worker reruns the job; a run that merely stalls past its lease loses its records
to the rerun, and the store's fence refuses its late write.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog

from ..errors import CoordinationError
from .scripts import load, run

__all__ = ["Hold", "LeaseKeeper"]

log = structlog.get_logger("amt_ingest.coordination")


@dataclass(eq=False)
class Hold:
    """Leases one run holds: their keys and the values it set on them."""

    what: str
    ttl_ms: int
    keys: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)

    def add(self, keys: Sequence[str], value: str) -> None:
        """Keep ``keys`` (set to ``value`` by this run) alive too."""
        self.keys.extend(keys)
        self.values.extend([value] * len(keys))

    def drop(self, indexes: set[int]) -> None:
        kept = [i for i in range(len(self.keys)) if i not in indexes]
        self.keys = [self.keys[i] for i in kept]
        self.values = [self.values[i] for i in kept]


class LeaseKeeper:
    """Renews the leases of every run in this process, every third of the shortest lease."""

    def __init__(self, client: aioredis.Redis):
        self.redis = client
        self._renew = load(client, "renew.lua", prelude=False)
        self._holds: dict[int, Hold] = {}
        self._ids = itertools.count()
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def hold(self, what: str, *, ttl_ms: int) -> Iterator[Hold]:
        """Keep the leases added to the hold alive until the block ends."""
        hold = Hold(what, ttl_ms)
        key = next(self._ids)
        self._holds[key] = hold
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._keep(), name="lease-keeper")
        try:
            yield hold
        finally:
            del self._holds[key]

    @property
    def held(self) -> int:
        """Leases held now (by runs under way in this process)."""
        return sum(len(h.keys) for h in self._holds.values())

    async def _keep(self) -> None:
        while self._holds:
            await asyncio.sleep(min(h.ttl_ms for h in self._holds.values()) / 3000)
            try:
                await self.renew()
            except CoordinationError as exc:
                # The leases lapse if this goes on: other workers then rerun the jobs.
                log.warning("job_leases_not_renewed", error=str(exc), leases=self.held)

    async def renew(self) -> None:
        """One renewal of every lease held now. A lease that is gone (its run
        released it, or it lapsed) is no longer renewed; one that another run
        holds is logged: this run stalled past its lease."""
        by_ttl: dict[int, list[Hold]] = {}
        for hold in list(self._holds.values()):
            if hold.keys:
                by_ttl.setdefault(hold.ttl_ms, []).append(hold)
        for ttl_ms, holds in by_ttl.items():
            # A run may add leases during the round trip: they go at the end.
            sizes = [len(h.keys) for h in holds]
            keys = [k for h in holds for k in h.keys]
            values = [v for h in holds for v in h.values]
            reply = await run(self._renew, "renewing job leases", keys=keys, args=[ttl_ms, *values])
            missed = {int(reply[i]) - 1: int(reply[i + 1]) == 1 for i in range(0, len(reply), 2)}
            at = 0
            for hold, size in zip(holds, sizes, strict=True):
                mine = {i - at: taken for i, taken in missed.items() if at <= i < at + size}
                at += size
                taken = [hold.keys[i] for i, by_other in mine.items() if by_other]
                if taken:
                    log.warning("job_lease_lost", run=hold.what, keys=taken[:5], lost=len(taken))
                hold.drop(set(mine))
