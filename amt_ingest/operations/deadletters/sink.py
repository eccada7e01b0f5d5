"""The dead-letter place for bad input from both paths.

Rejected input goes to an SQS dead-letter queue (found through the redrive
policy of a consumed queue) with the reason as message attributes, so that
operators list and replay one place: a malformed SQS message goes to its own
queue's DLQ, WebSocket rejects to the first queue's. If SQS cannot take it, it goes to a
local JSON-lines file instead: bad input is contained, never lost.

The file is shared with ``dlq`` commands that remove lines from it while the
service may append: both sides hold an exclusive ``flock`` on it, the remover
replaces the file atomically, and an appender that waited on the replaced file
opens the new one (:func:`append_fallback_line`, :func:`rewrite_fallback`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from ...routing.events import Rejected

__all__ = ["DeadLetters", "append_fallback_line", "rewrite_fallback"]

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
            await asyncio.to_thread(append_fallback_line, self.fallback_path, line)
        return "file"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def append_fallback_line(path: Path, line: bytes) -> None:
    """Append one line to the fallback file under its lock (blocking: run it in a thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with path.open("ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            if not _same_file(f.fileno(), path):
                continue  # replaced by a rewrite while we waited: append to the new file
            f.write(line + b"\n")
            return


def rewrite_fallback(path: Path, keep: Callable[[bytes], bool]) -> int:
    """Drop the lines of the fallback file that ``keep`` refuses (and blank lines).

    The kept lines go to a new file that atomically replaces the old one, so a
    crash leaves either file whole. Blocking: run it in a thread. Returns how many
    lines were dropped (0 if the file does not exist).
    """
    while True:
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return 0
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            if not _same_file(f.fileno(), path):
                continue
            lines = f.read().split(b"\n")
            kept = [line for line in lines if line.strip() and keep(line)]
            dropped = sum(1 for line in lines if line.strip()) - len(kept)
            if dropped == 0:
                return 0
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with tmp.open("wb") as out:
                out.write(b"".join(line + b"\n" for line in kept))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)  # still holding the lock on the old file
            return dropped
