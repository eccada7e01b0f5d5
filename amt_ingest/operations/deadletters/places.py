"""The three dead-letter places, read and settled: SQS dead-letter queues, dead
records in Redis, the local fallback file."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from ...aws import dead_letter_queue_url
from ...coordination import Coordinator
from ...errors import AwsError
from ..progress import Progress
from .letters import DeadLetter, file_letter, file_line_id, queue_name, record_letter, sqs_letter
from .sink import rewrite_fallback

__all__ = ["FileDeadLetters", "RecordDeadLetters", "SqsDeadLetters", "chunks"]

_BATCH: Final = 10  # SQS batch calls take at most 10 entries


async def _aws(what: str, call: Any) -> Any:
    try:
        return await call
    except (ClientError, BotoCoreError, OSError) as exc:
        raise AwsError(f"{what}: {exc}") from exc


def chunks(items: Sequence[Any], size: int = _BATCH) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SqsDeadLetters:
    """The DLQs of the configured source queues, read without losing a message.

    Use as an async context manager: every message read stays held (invisible,
    its visibility extended every half ``visibility_timeout``) until it is
    settled (deleted) or released; leaving the context releases the rest
    (visibility 0), so they are back in their DLQ at once.
    """

    def __init__(
        self,
        sqs: Any,
        *,
        queue_urls: Sequence[str],
        visibility_timeout: int = 60,
        wait_seconds: int = 1,
        max_body_bytes: int = 256 * 1024,
        warn: Callable[[str], None] = lambda _: None,
    ):
        self.sqs = sqs
        self.queue_urls = list(queue_urls)
        self.visibility_timeout = visibility_timeout
        self.wait_seconds = wait_seconds
        self.max_body_bytes = max_body_bytes
        self.warn = warn
        #: DLQ url -> the configured source queues whose redrive policy names it.
        self.feeding: dict[str, list[str]] = {}
        self.urls_by_arn: dict[str, str] = {}
        #: (DLQ url, message id) -> receipt handle, for every message held.
        self.held: dict[tuple[str, str], str] = {}
        self._extender: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SqsDeadLetters:
        self._extender = asyncio.create_task(self._extend())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._extender is not None:
            self._extender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._extender
        await self.release(list(self.held))

    async def discover(self) -> None:
        """Find each source queue's DLQ (redrive policy) and the source queues' ARNs."""
        for url in self.queue_urls:
            dlq = await dead_letter_queue_url(self.sqs, url)
            if dlq is None:
                self.warn(f"{url} has no dead-letter queue (no redrive policy)")
                continue
            attrs = await _aws(
                f"reading the attributes of {url}",
                self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]),
            )
            self.urls_by_arn[attrs["Attributes"]["QueueArn"]] = url
            self.feeding.setdefault(dlq, []).append(url)

    async def _depth(self, dlq: str) -> int | None:
        attrs = await _aws(
            f"reading the attributes of {dlq}",
            self.sqs.get_queue_attributes(
                QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages", "RedrivePolicy"]
            ),
        )
        values = attrs.get("Attributes", {})
        if values.get("RedrivePolicy"):
            self.warn(
                f"{dlq} has a redrive policy of its own: reading it counts towards that "
                "policy's maxReceiveCount"
            )
        depth = values.get("ApproximateNumberOfMessages")
        return int(depth) if depth is not None else None

    async def scan(
        self,
        *,
        keep: Callable[[DeadLetter], bool],
        enough: Callable[[int], bool],
        progress: Progress,
        dlq_names: frozenset[str] | None = None,
    ) -> list[DeadLetter]:
        """Read every DLQ (or those named) until empty or ``enough(found)``; return the
        dead letters ``keep`` selects, held. Those not selected are released."""
        found: list[DeadLetter] = []
        unselected: list[tuple[str, str]] = []
        try:
            for dlq, feeding in self.feeding.items():
                if dlq_names is not None and queue_name(dlq) not in dlq_names:
                    continue
                if enough(len(found)):
                    break
                progress.begin(f"reading {queue_name(dlq)}", await self._depth(dlq))
                while not enough(len(found)):
                    reply = await _aws(
                        f"receiving from {dlq}",
                        self.sqs.receive_message(
                            QueueUrl=dlq,
                            MaxNumberOfMessages=_BATCH,
                            WaitTimeSeconds=self.wait_seconds,
                            VisibilityTimeout=self.visibility_timeout,
                            MessageSystemAttributeNames=["All"],
                            MessageAttributeNames=["All"],
                        ),
                    )
                    messages = reply.get("Messages", [])
                    if not messages:
                        break
                    for message in messages:
                        key = (dlq, str(message["MessageId"]))
                        seen = key in self.held
                        self.held[key] = str(message["ReceiptHandle"])
                        if seen:  # delivered twice (SQS is at-least-once): listed once
                            continue
                        progress.advance()
                        letter = sqs_letter(
                            message,
                            dlq_url=dlq,
                            feeding=feeding,
                            urls_by_arn=self.urls_by_arn,
                            max_body_bytes=self.max_body_bytes,
                        )
                        if not enough(len(found)) and keep(letter):
                            found.append(letter)
                        else:
                            unselected.append(key)
                progress.end()
        finally:
            await self.release(unselected)
        # The receipt handle of the latest receive is the one that is valid.
        return [replace(letter, handle=self.held.get(_key(letter))) for letter in found]

    async def release(self, keys: Sequence[tuple[str, str]]) -> None:
        """Make held messages visible again at once (best effort: else the timeout does)."""
        await self._change_visibility(keys, 0, forget=True)

    async def _extend(self) -> None:
        while True:
            await asyncio.sleep(self.visibility_timeout / 2)
            await self._change_visibility(list(self.held), self.visibility_timeout, forget=False)

    async def _change_visibility(
        self, keys: Sequence[tuple[str, str]], seconds: int, *, forget: bool
    ) -> None:
        by_queue: dict[str, list[tuple[str, str]]] = {}
        for key in keys:
            if key in self.held:
                by_queue.setdefault(key[0], []).append(key)
        for dlq, queue_keys in by_queue.items():
            for chunk in chunks(queue_keys):
                handles = [(k, self.held.get(k)) for k in chunk]
                entries = [
                    {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": seconds}
                    for i, (_, h) in enumerate(handles)
                    if h is not None
                ]
                if not entries:
                    continue
                try:
                    reply = await self.sqs.change_message_visibility_batch(
                        QueueUrl=dlq, Entries=entries
                    )
                    failed = reply.get("Failed", [])
                except (ClientError, BotoCoreError, OSError) as exc:
                    failed = [{"Message": str(exc)}] * len(entries)
                if failed and seconds == 0:
                    self.warn(
                        f"{len(failed)} messages of {queue_name(dlq)} stay hidden until their "
                        f"visibility timeout lapses ({self.visibility_timeout} s at most): "
                        f"{failed[0].get('Message', failed[0].get('Code'))}"
                    )
                elif failed:
                    self.warn(f"extending the visibility of {len(failed)} messages failed")
                if forget:
                    for k in chunk:
                        self.held.pop(k, None)

    async def send(self, letter: DeadLetter) -> None:
        """Send a dead letter's body (and attributes) to its target queue."""
        if letter.target is None or letter.body is None:
            raise ValueError(f"{letter.id} has no target queue or no body to send")
        kwargs: dict[str, Any] = {"QueueUrl": letter.target, "MessageBody": letter.body}
        if letter.send_attributes:
            kwargs["MessageAttributes"] = {k: dict(v) for k, v in letter.send_attributes.items()}
        await _aws(f"sending {letter.id} to {letter.target}", self.sqs.send_message(**kwargs))

    async def delete(self, letters: Sequence[DeadLetter]) -> dict[str, str | None]:
        """Delete held messages from their DLQ; returns id -> ``None`` or why it failed."""
        outcome: dict[str, str | None] = {}
        by_queue: dict[str, list[DeadLetter]] = {}
        for letter in letters:
            by_queue.setdefault(letter.location, []).append(letter)
        for dlq, queue_letters in by_queue.items():
            for chunk in chunks(queue_letters):
                reply = await _aws(
                    f"deleting from {dlq}",
                    self.sqs.delete_message_batch(
                        QueueUrl=dlq,
                        Entries=[
                            {"Id": str(i), "ReceiptHandle": self.held.get(_key(m), m.handle)}
                            for i, m in enumerate(chunk)
                        ],
                    ),
                )
                failures = {f["Id"]: f for f in reply.get("Failed", [])}
                for i, letter in enumerate(chunk):
                    failure = failures.get(str(i))
                    if failure is None:
                        self.held.pop(_key(letter), None)
                        outcome[letter.id] = None
                    else:
                        outcome[letter.id] = (
                            f"{failure.get('Code')}: {failure.get('Message', '')}".strip()
                        )
        return outcome


def _key(letter: DeadLetter) -> tuple[str, str]:
    return (letter.location, letter.id.rsplit(":", 1)[1])


class RecordDeadLetters:
    """Dead-lettered records in Redis (through the coordinator's atomic scripts)."""

    def __init__(self, coordinator: Coordinator):
        self.coordinator = coordinator
        self.location = coordinator.dead_records.location

    async def scan(
        self, *, keep: Callable[[DeadLetter], bool], enough: Callable[[int], bool]
    ) -> list[DeadLetter]:
        found: list[DeadLetter] = []
        for entry in await self.coordinator.dead_records.list():
            if enough(len(found)):
                break
            letter = record_letter(entry, location=self.location)
            if keep(letter):
                found.append(letter)
        return found

    async def replay(self, letter: DeadLetter) -> str:
        merged = await self.coordinator.dead_records.replay(dict(letter.entry or {}))
        return "already replayed" if merged < 0 else f"replayed, {merged} changes back in a job"

    async def delete(self, letter: DeadLetter) -> str | None:
        """None when deleted, else why not."""
        if await self.coordinator.dead_records.delete(dict(letter.entry or {})):
            return None
        return "gone already, or dead-lettered again since it was read (list it again)"


class FileDeadLetters:
    """The local fallback file of :class:`~amt_ingest.deadletter.DeadLetters`."""

    def __init__(self, path: Path, *, queues: Sequence[str], max_body_bytes: int):
        self.path = path
        self.queues = list(queues)
        self.max_body_bytes = max_body_bytes

    def _read(self) -> list[bytes]:
        try:
            return [line for line in self.path.read_bytes().split(b"\n") if line.strip()]
        except FileNotFoundError:
            return []

    async def scan(
        self, *, keep: Callable[[DeadLetter], bool], enough: Callable[[int], bool]
    ) -> list[DeadLetter]:
        found: list[DeadLetter] = []
        seen: set[str] = set()
        for line in await asyncio.to_thread(self._read):
            if enough(len(found)):
                break
            letter = file_letter(
                line, path=str(self.path), queues=self.queues, max_body_bytes=self.max_body_bytes
            )
            if letter.id not in seen and keep(letter):
                seen.add(letter.id)
                found.append(letter)
        return found

    async def remove(self, ids: Iterable[str]) -> int:
        """Drop the lines with these ids (atomically, under the file's lock)."""
        drop = frozenset(ids)
        return await asyncio.to_thread(
            rewrite_fallback, self.path, lambda line: file_line_id(line) not in drop
        )
