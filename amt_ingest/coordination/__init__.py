"""The Redis gateway: all of the service's coordination state (DESIGN.md section 3).

Redis holds the per-record state; arq only delivers jobs. One gateway per idea,
each beside the Lua scripts it calls, all on one Redis client:

- :mod:`.handoff` (``ingest.lua``): events in, deduplicated, merged, jobs scheduled;
- :mod:`.records` (``claim.lua``, ``complete.lua``, ``hold.lua``, ``reap.lua``,
  ``unlease.lua``, ``forget_gone.lua``): what a record job's run does to its records;
- :mod:`.resyncs` (``mark.lua``): resync jobs, their progress, their marks;
- :mod:`.deadrecords` (``replay.lua``, ``drop_dead.lua``): dead-lettered records;
- :mod:`.cursors` (``keep_newest.lua``): WebSocket resume points;
- :mod:`.keeper` (``renew.lua``): the leases of this process's job runs, kept alive;
- :mod:`.leadership` (``leadership.lua``): the WebSocket lease, one subscriber at a time;
- :mod:`.replicas`: every replica's roles and heartbeat;
- :mod:`.throttle`: the operator's retry throttle;
- :mod:`.observations` (``sweep_one_path.lua``): counters, lags, gauges, overview.

:mod:`.keys` names every key once, :mod:`.arqjobs` holds arq's job format,
:mod:`.scripts` loads the scripts (``prelude.lua`` in front) and maps Redis errors to
:class:`~amt_ingest.errors.CoordinationError`, the only error this package raises.
The scripts are the only writers of ``amt:rec:*``; each runs atomically, so every
race between routers and jobs resolves inside Redis.

May import: :mod:`amt_ingest.routing` (the event model, the router's seams) and
:mod:`amt_ingest.errors`; nothing above it.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from .arqjobs import (
    IN_PROGRESS_VALUE,
    JOB_FUNCTION,
    JOB_TTL_MS,
    LEGACY_JOB_FUNCTION,
    QUEUE_NAME,
    RESYNC_FUNCTION,
    in_progress_key,
    job_deserializer,
    job_serializer,
)
from .cursors import Cursors
from .deadrecords import DeadRecords
from .handoff import HandOff, pending_entries
from .keeper import Hold, LeaseKeeper
from .keys import record_key
from .leadership import Held, Leadership
from .observations import Observations
from .records import PendingRecord, RecordJobs
from .replicas import Replicas
from .resyncs import Resyncs
from .throttle import Throttle

__all__ = [
    "IN_PROGRESS_VALUE",
    "JOB_FUNCTION",
    "JOB_TTL_MS",
    "LEGACY_JOB_FUNCTION",
    "QUEUE_NAME",
    "RESYNC_FUNCTION",
    "Coordinator",
    "Cursors",
    "DeadRecords",
    "HandOff",
    "Held",
    "Hold",
    "Leadership",
    "LeaseKeeper",
    "Observations",
    "PendingRecord",
    "RecordJobs",
    "Replicas",
    "Resyncs",
    "Throttle",
    "in_progress_key",
    "job_deserializer",
    "job_serializer",
    "pending_entries",
    "record_key",
]


class Coordinator:
    """The gateways on one Redis client. It speaks for none of them itself: callers
    name the one they mean (``coordinator.handoff.ingest(...)``,
    ``coordinator.records.claim_batch(...)``)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        dedup_ttl: int,
        queue_name: str = QUEUE_NAME,
        job_batch: int = 50,
    ):
        self.redis = client
        self.handoff = HandOff(
            client, dedup_ttl=dedup_ttl, queue_name=queue_name, job_batch=job_batch
        )
        self.records = RecordJobs(client, queue_name=queue_name)
        self.resyncs = Resyncs(client, queue_name=queue_name)
        self.dead_records = DeadRecords(client, queue_name=queue_name)
        self.cursors = Cursors(client)
        self.leases = LeaseKeeper(client)
        self.replicas = Replicas(client)
        self.throttle = Throttle(client)
        self.observations = Observations(
            client, resyncs=self.resyncs, replicas=self.replicas, queue_name=queue_name
        )
