"""Dead-lettered records in Redis (``amt:dead:records``): listed, replayed into a job
(``replay.lua``) or dropped (``drop_dead.lua``). A record job puts them there after
its last try (:meth:`amt_ingest.coordination.records.RecordJobs.dead_letter`).
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from .arqjobs import JOB_FUNCTION, JOB_TTL_MS, QUEUE_NAME
from .keys import DEAD_RECORDS, record_key
from .scripts import call, load, run

__all__ = ["DeadRecords"]


class DeadRecords:
    """The dead-lettered records: list, replay, delete."""

    #: Where they are, for the ``dlq`` command's output.
    location = DEAD_RECORDS

    def __init__(self, client: aioredis.Redis, *, queue_name: str = QUEUE_NAME):
        self.redis = client
        self.queue_name = queue_name
        self._replay = load(client, "replay.lua")
        self._drop = load(client, "drop_dead.lua", prelude=False)

    async def list(self) -> list[dict[str, Any]]:
        """Every dead-lettered record, sorted by topic then id."""
        raw = await call(self.redis.hgetall(DEAD_RECORDS), "listing dead records")
        entries = [orjson.loads(v) for v in raw.values()]
        return sorted(entries, key=lambda e: (e["topic"], e["id"]))

    async def count(self) -> int:
        return int(await call(self.redis.hlen(DEAD_RECORDS), "counting dead records"))

    async def replay(self, entry: dict[str, Any]) -> int:
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
        return int(
            await run(
                self._replay,
                f"replaying {topic} {record_id}",
                keys=[record_key(topic, record_id), DEAD_RECORDS],
                args=args,
            )
        )

    async def delete(self, entry: dict[str, Any]) -> bool:
        """Drop a dead-lettered record for good, if it is still the one ``entry`` was read as.

        Returns False when it is gone already or was dead-lettered again since
        (then list it again). Safe to repeat.
        """
        field = f"{entry['topic']}:{entry['id']}"
        dropped = await run(
            self._drop,
            f"deleting dead record {field}",
            keys=[DEAD_RECORDS],
            args=[field, str(entry["at"])],
        )
        return int(dropped) == 1
