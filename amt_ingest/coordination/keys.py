"""Every Redis key the service uses, named once.

:data:`LAYOUT` lists them with their type and what they hold; docs/architecture.md's
"Redis keys" table is checked against it (tests/unit/test_docs.py). The Lua scripts
name the same keys through the table at the top of ``prelude.lua``, checked against
this module too (tests/unit/test_coordination_layout.py).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEAD_RECORDS",
    "FENCE_SEQUENCE",
    "GAUGES",
    "JOB_SEQUENCE",
    "LAGS",
    "LAYOUT",
    "LEADER_FENCE",
    "LEADER_WS",
    "ONE_PATH",
    "OPEN_JOB",
    "PENDING",
    "QUEUE",
    "REPLICAS",
    "RESYNCS",
    "RETRYING",
    "STATS",
    "THROTTLE",
    "arq_job_key",
    "cursor_key",
    "cursor_newest_key",
    "dedup_key",
    "lease_key",
    "record_key",
    "resync_done_key",
    "resync_key",
]

PENDING: Final = "amt:pending"
JOB_SEQUENCE: Final = "amt:jobseq"
OPEN_JOB: Final = "amt:openjob"
FENCE_SEQUENCE: Final = "amt:fenceseq"
QUEUE: Final = "amt:queue"
THROTTLE: Final = "amt:throttle"
RESYNCS: Final = "amt:resyncs"
STATS: Final = "amt:stats"
DEAD_RECORDS: Final = "amt:dead:records"
RETRYING: Final = "amt:retrying"
ONE_PATH: Final = "amt:onepath"
LAGS: Final = "amt:lags"
GAUGES: Final = "amt:gauges"
LEADER_WS: Final = "amt:leader:ws"
LEADER_FENCE: Final = "amt:leader:ws:fence"
REPLICAS: Final = "amt:replicas"


def dedup_key(event_id: str) -> str:
    return f"amt:evt:{event_id}"


def record_key(topic: str, record_id: str) -> str:
    return f"amt:rec:{topic}:{record_id}"


def lease_key(topic: str, record_id: str) -> str:
    return f"amt:lease:{topic}:{record_id}"


def cursor_key(name: str) -> str:
    return f"amt:cursor:{name}"


def cursor_newest_key(name: str) -> str:
    return f"amt:cursor:{name}:newest"


def resync_key(resync_id: str) -> str:
    return f"amt:resync:{resync_id}"


def resync_done_key(resync_id: str) -> str:
    return f"amt:resync:{resync_id}:done"


def arq_job_key(job_id: str) -> str:
    """arq's payload of a job (written by the scripts, in arq's own layout)."""
    return f"arq:job:{job_id}"


#: pattern -> (Redis type, what it holds). The patterns are what the docs show.
LAYOUT: Final[dict[str, tuple[str, str]]] = {
    "amt:evt:<event_id>": ("hash", "dedup record: first path, first time, trace context"),
    "amt:rec:<topic>:<record_id>": ("hash", "a record's pending changes, owner job, counters"),
    "amt:lease:<topic>:<record_id>": ("string", "the run of the owning job that holds it"),
    PENDING: ("set", "every record key with pending changes"),
    JOB_SEQUENCE: ("counter", "source of fresh job ids"),
    OPEN_JOB: ("hash", "the job the last hand-off left open"),
    FENCE_SEQUENCE: ("counter", "fencing tokens, one per claim"),
    "arq:job:<id>": ("string", "arq's job payloads"),
    QUEUE: ("sorted set", "arq's queue"),
    "amt:cursor:<name>": ("string", "the WebSocket resume point"),
    "amt:cursor:<name>:newest": ("hash", "position and org of the newest event handed off"),
    THROTTLE: ("hash", "the operator's retry throttle"),
    "amt:resync:<id>": ("hash", "a resync's progress"),
    "amt:resync:<id>:done": ("set", "what a resync has marked"),
    RESYNCS: ("sorted set", "recent resync ids"),
    STATS: ("hash", "counters"),
    DEAD_RECORDS: ("hash", "dead-lettered records"),
    RETRYING: ("sorted set", "records whose job is backing off"),
    ONE_PATH: ("sorted set", "events seen on one path so far"),
    LAGS: ("list", "the last 1,000 path lags"),
    GAUGES: ("hash", "queue depths and WebSocket state, published by services"),
    LEADER_WS: ("string", "the WebSocket lease: the replica that subscribes, and its token"),
    LEADER_FENCE: ("counter", "WebSocket lease tokens, one per new holder"),
    REPLICAS: ("hash", "every replica's roles and heartbeat, published by each"),
}
