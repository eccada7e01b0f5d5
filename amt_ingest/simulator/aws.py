"""The simulator's AWS edge: SNS publishing and raw SQS sends (aiobotocore).

Endpoint, region and credentials come from the standard ``AWS_*`` variables
(``AWS_ENDPOINT_URL`` points at moto in tests), read by botocore itself.
Failed calls are retried with capped exponential backoff and logged each time;
an entry SNS refuses as the sender's fault (it would fail forever) is logged
as an error and counted in :attr:`AwsStats.sns_failed`, never dropped quietly.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from typing import Any, Final

import orjson
import structlog
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from amt_ingest.routing.events import TOPICS

__all__ = ["SNS_TOPICS", "AwsStats", "SnsPublisher", "SqsSender", "backoff"]

#: SNS topic name per event topic (PROTOCOL.md section 3).
SNS_TOPICS: Final = {
    "Opportunity": "passport-opportunity",
    "External_Attachment__c": "passport-external-attachment",
    "Application_Item__c": "passport-application-item",
}
_BATCH: Final = 10  # SNS PublishBatch limit
_RETRYABLE: Final = (BotoCoreError, ClientError, OSError, asyncio.TimeoutError)

log = structlog.get_logger("amt_ingest.simulator")


def backoff(initial: float = 0.05, factor: float = 2.0, cap: float = 5.0) -> Iterator[float]:
    """Delays between attempts: initial, initial*factor, ... capped at ``cap``, forever."""
    delay = initial
    while True:
        yield delay
        delay = min(cap, delay * factor)


BackoffFactory = Callable[[], Iterator[float]]


@dataclass(slots=True)
class AwsStats:
    sns_published: int = 0
    sns_retries: int = 0
    sns_failed: int = 0
    sqs_sent: int = 0
    sqs_retries: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _region(region: str | None) -> str | None:
    # botocore reads AWS_DEFAULT_REGION only; honour the newer AWS_REGION too.
    return region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


async def _retry(
    call: Callable[[], Awaitable[Any]],
    what: str,
    delays: Iterator[float],
    on_retry: Callable[[], None],
) -> Any:
    while True:
        try:
            return await call()
        except _RETRYABLE as exc:
            delay = next(delays)
            on_retry()
            log.warning("simulator.aws_retry", call=what, error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)


class SnsPublisher:
    """Publishes events to the per-topic SNS topics with ``PublishBatch``.

    Call :meth:`start` (creates the topics, idempotently), then :meth:`publish`
    per event (waits when the queue is full: that paces generation to what SNS
    accepts), :meth:`drain` to wait until everything queued is published, and
    :meth:`close` at the end.
    """

    def __init__(
        self,
        *,
        region: str | None = None,
        workers_per_topic: int = 2,
        queue_size: int = 2000,
        backoff_factory: BackoffFactory = backoff,
    ) -> None:
        self._region = _region(region)
        self._workers_per_topic = workers_per_topic
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {
            t: asyncio.Queue(queue_size) for t in TOPICS
        }
        self._backoff = backoff_factory
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._workers: list[asyncio.Task[None]] = []
        self.topic_arns: dict[str, str] = {}
        self.stats = AwsStats()

    async def start(self) -> None:
        session = get_session()
        self._client = await self._stack.enter_async_context(
            session.create_client("sns", region_name=self._region)
        )
        for topic, name in SNS_TOPICS.items():
            response = await _retry(
                functools.partial(self._client.create_topic, Name=name),
                "sns.create_topic",
                self._backoff(),
                self._count_retry,
            )
            self.topic_arns[topic] = response["TopicArn"]
        for topic in TOPICS:
            for n in range(self._workers_per_topic):
                task = asyncio.create_task(self._work(topic), name=f"sns-{topic}-{n}")
                self._workers.append(task)
        log.info("simulator.sns_ready", topics=self.topic_arns)

    def _count_retry(self) -> None:
        self.stats.sns_retries += 1

    async def publish(self, event: dict[str, Any]) -> None:
        """Queue one event for publishing (a second call publishes it again)."""
        self._check_workers()
        await self._queues[event["topic"]].put(event)

    @property
    def pending(self) -> int:
        return sum(q.qsize() for q in self._queues.values())

    async def drain(self) -> None:
        """Wait until every queued event has been published (or refused for good)."""
        joins = [asyncio.ensure_future(q.join()) for q in self._queues.values()]
        try:
            while not all(j.done() for j in joins):
                self._check_workers()
                await asyncio.wait([*joins, *self._workers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for j in joins:
                j.cancel()
        self._check_workers()

    def _check_workers(self) -> None:
        for task in self._workers:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError("SNS publisher worker failed") from task.exception()

    async def close(self) -> None:
        unpublished = self.pending
        if unpublished:
            log.warning("simulator.sns_unpublished_at_shutdown", events=unpublished)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        await self._stack.aclose()

    async def _work(self, topic: str) -> None:
        queue = self._queues[topic]
        while True:
            batch = [await queue.get()]
            while len(batch) < _BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._publish_batch(topic, batch)
            finally:
                for _ in batch:
                    queue.task_done()

    async def _publish_batch(self, topic: str, batch: list[dict[str, Any]]) -> None:
        arn = self.topic_arns[topic]
        pending: list[dict[str, Any]] = [
            {
                "Id": str(i),
                "Message": orjson.dumps(event).decode(),
                "MessageAttributes": {
                    "event_type": {"DataType": "String", "StringValue": event["topic"]},
                    "org_id": {"DataType": "String", "StringValue": event["org_id"]},
                },
            }
            for i, event in enumerate(batch)
        ]
        delays = self._backoff()
        while pending:
            response = await _retry(
                functools.partial(
                    self._client.publish_batch, TopicArn=arn, PublishBatchRequestEntries=pending
                ),
                "sns.publish_batch",
                delays,
                self._count_retry,
            )
            failed = response.get("Failed") or []
            self.stats.sns_published += len(pending) - len(failed)
            by_id = {entry["Id"]: entry for entry in pending}
            pending = []
            for failure in failed:
                entry = by_id[failure["Id"]]
                if failure.get("SenderFault"):
                    self.stats.sns_failed += 1
                    log.error(
                        "simulator.sns_refused",
                        topic=topic,
                        code=failure.get("Code"),
                        message=failure.get("Message"),
                        event=entry["Message"][:200],
                    )
                else:
                    pending.append(entry)
            if pending:
                self._count_retry()
                delay = next(delays)
                log.warning("simulator.sns_partial_failure", topic=topic, retry=len(pending))
                await asyncio.sleep(delay)


class SqsSender:
    """Sends raw message bodies straight to SQS queues (for malformed inputs)."""

    def __init__(
        self,
        queue_urls: tuple[str, ...],
        *,
        region: str | None = None,
        backoff_factory: BackoffFactory = backoff,
    ) -> None:
        self._queue_urls = queue_urls
        self._region = _region(region)
        self._backoff = backoff_factory
        self._stack = AsyncExitStack()
        self._client: Any = None
        self.stats = AwsStats()

    async def start(self) -> None:
        session = get_session()
        self._client = await self._stack.enter_async_context(
            session.create_client("sqs", region_name=self._region)
        )

    async def send(self, body: str) -> None:
        """Send ``body`` to every queue."""
        for url in self._queue_urls:
            await _retry(
                functools.partial(self._client.send_message, QueueUrl=url, MessageBody=body),
                "sqs.send_message",
                self._backoff(),
                self._count_retry,
            )
            self.stats.sqs_sent += 1

    def _count_retry(self) -> None:
        self.stats.sqs_retries += 1

    async def close(self) -> None:
        await self._stack.aclose()
