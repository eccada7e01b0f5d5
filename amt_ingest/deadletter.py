"""The dead-letter place for bad input from both paths.

Rejected input goes to an SQS dead-letter queue (found through the redrive
policy of a consumed queue) with the reason as message attributes, so that
operators list and replay one place: a malformed SQS message goes to its own
queue's DLQ, WebSocket rejects to the first queue's. If SQS cannot take it, it goes to a
local JSON-lines file instead: bad input is contained, never lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from .events import Rejected

__all__ = ["DeadLetters"]

log = structlog.get_logger("amt_ingest.deadletter")

_MAX_BODY = 256 * 1024 - 4096  # SQS limit, leaving room for the attributes


def _attr(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value[:1024] or "-"}


class DeadLetters:
    def __init__(
        self,
        *,
        sqs: Any | None,
        dlq_url: str | None,
        fallback_path: Path,
        dlq_by_source: dict[str, str] | None = None,
    ):
        self.sqs = sqs
        self.dlq_url = dlq_url
        self.dlq_by_source = dlq_by_source or {}
        self.fallback_path = fallback_path
        self._lock = asyncio.Lock()

    async def put(
        self, rejected: Rejected, *, path: str, source: str, body: str | None = None
    ) -> str:
        """Keep rejected input with its reason; returns where it went (``sqs`` or ``file``).

        ``body`` is the exact input when the caller has it (an SQS message body);
        otherwise the rejection's own copy of the input is kept.
        """
        text = body if body is not None else rejected.raw
        attributes = {
            "reason": _attr(rejected.reason),
            "detail": _attr(rejected.detail),
            "path": _attr(path),
            "source": _attr(source),
            "rejected_at": _attr(dt.datetime.now(dt.UTC).isoformat()),
        }
        if rejected.event_id:
            attributes["event_id"] = _attr(rejected.event_id)
        dlq_url = self.dlq_by_source.get(source, self.dlq_url)
        if self.sqs is not None and dlq_url is not None:
            try:
                await self.sqs.send_message(
                    QueueUrl=dlq_url,
                    MessageBody=(text or "<empty>")[:_MAX_BODY],
                    MessageAttributes=attributes,
                )
                return "sqs"
            except (ClientError, BotoCoreError, OSError) as exc:
                log.warning("dead_letter_sqs_failed", error=str(exc), reason=rejected.reason)
        line = orjson.dumps({"body": text, **{k: v["StringValue"] for k, v in attributes.items()}})
        async with self._lock:
            await asyncio.to_thread(self._append, line)
        return "file"

    def _append(self, line: bytes) -> None:
        self.fallback_path.parent.mkdir(parents=True, exist_ok=True)
        with self.fallback_path.open("ab") as f:
            f.write(line + b"\n")
