"""arq's job format, as the gateway writes it: the queue, the job functions, payloads.

The scripts write arq's keys themselves (``arq:job:<id>`` and the queue entry, in the
same atomic step as the record state), in arq 0.28's layout with the JSON
serializer; this module and ``prelude.lua`` are the only places that know it (hence
the exact arq pin in pyproject.toml).
"""

from __future__ import annotations

import time
from typing import Any, Final

import orjson

from .keys import QUEUE

__all__ = [
    "IN_PROGRESS_VALUE",
    "JOB_FUNCTION",
    "JOB_TTL_MS",
    "LEGACY_JOB_FUNCTION",
    "QUEUE_NAME",
    "RESYNC_FUNCTION",
    "in_progress_key",
    "job_deserializer",
    "job_payload",
    "job_serializer",
]

QUEUE_NAME: Final = QUEUE
#: The record job: applies the pending changes of a batch of records.
JOB_FUNCTION: Final = "apply_records"
#: The one-record job of earlier versions; jobs queued by them still run.
LEGACY_JOB_FUNCTION: Final = "apply_record"
#: The resync job of a type (``GAP_OVERFLOW``, an expired resume point).
RESYNC_FUNCTION: Final = "resync_topic"
#: How long a job key lives: longer than the 15-retry schedule (about 50 h).
JOB_TTL_MS: Final = 72 * 3600 * 1000


#: What arq's in-progress key of a running job holds.
IN_PROGRESS_VALUE: Final = "1"


def in_progress_key(job_id: str) -> str:
    """arq's in-progress key of a job: a worker starts the job only while it is absent.
    The service's workers set it for ``AMT_JOB_LEASE_S`` and renew it while the job
    runs (:mod:`.keeper`), so a killed worker's job runs again within that time."""
    return f"arq:in-progress:{job_id}"


def job_serializer(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data)


def job_deserializer(raw: bytes) -> dict[str, Any]:
    value = orjson.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("an arq job must be a JSON object")
    return value


def job_payload(function: str, args: list[Any]) -> bytes:
    """An arq job's payload (what ``enqueue`` in prelude.lua writes), enqueued now."""
    return job_serializer(
        {"t": None, "f": function, "a": args, "k": {}, "et": int(time.time() * 1000)}
    )
