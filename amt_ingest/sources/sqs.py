"""The SQS poller: long polling on one queue, delete only after durable hand-off.

Each receive takes up to 10 messages (20 s wait). Valid events are routed in
one batch; malformed messages are moved to the queue's dead-letter queue at
once with the reason as message attributes (they can never succeed). Only
then are the handled messages deleted with DeleteMessageBatch, whose ``Failed``
entries are logged (the message comes back and dedup makes it a no-op). If
Redis fails the hand-off, it is retried in place for a while (every receive
counts towards the redrive policy, so a valid event must not bounce); then
nothing is deleted and the messages come back a little later.
While a batch is in flight its visibility is extended every half timeout. On
stop, a long poll in flight has a second to return, then it is cancelled; what
it brought goes back to the queue at once (visibility 0).

Every replica that runs SQS intake polls the same queues: SQS hands each message
to one receiver at a time, and a message that two replicas receive (its
visibility lapsed) is one event twice, which the hand-off deduplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import structlog
from botocore.exceptions import BotoCoreError, ClientError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from ..config import Settings
from ..errors import CoordinationError
from ..policy import backoff
from ..routing.events import Event, Rejected, parse_sqs_message
from ..routing.router import Router

__all__ = ["PollerState", "SqsPoller"]

log = structlog.get_logger("amt_ingest.sources.sqs")

#: How long a receive in flight may still take once the poller is told to stop.
STOP_PATIENCE_S: Final = 1.0


@dataclass
class PollerState:
    last_poll_ok_at: float | None = None
    consecutive_errors: int = 0
    received: int = 0
    deleted: int = 0
    dead_lettered: int = 0


class SqsPoller:
    def __init__(
        self,
        settings: Settings,
        *,
        sqs: Any,
        queue_url: str,
        router: Router,
        delays: Callable[[], Iterator[float]] | None = None,
        handoff_patience: float = 60.0,
        release_delay: int = 30,
    ):
        self.settings = settings
        self.sqs = sqs
        self.queue_url = queue_url
        self.router = router
        self.delays = delays or (lambda: backoff(0.5, 20.0))
        #: How long a batch waits for Redis before it is handed back to SQS.
        self.handoff_patience = handoff_patience
        #: After giving up, the batch comes back this many seconds later.
        self.release_delay = release_delay
        self.state = PollerState()
        self.log = log.bind(queue_url=queue_url)
        self.queue_name = queue_url.rstrip("/").rsplit("/", 1)[-1]
        self.telemetry = router.telemetry

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; a receive in flight gets ``STOP_PATIENCE_S`` to
        return, and what it brought is handed back (visibility 0)."""
        delays = self.delays()
        while not stop.is_set():
            try:
                await self.router.wait_for_capacity(stop)  # polling pauses while workers lag
                if stop.is_set():
                    return
                started_ns = time.time_ns()
                messages = await self._receive_unless_stopped(stop)
            except (ClientError, BotoCoreError, OSError, CoordinationError) as exc:
                self.state.consecutive_errors += 1
                delay = next(delays)
                self.log.warning("sqs_receive_failed", error=str(exc), retry_in_s=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                continue
            delays = self.delays()
            self.state.consecutive_errors = 0
            self.state.last_poll_ok_at = time.monotonic()
            if not messages:
                continue
            self.state.received += len(messages)
            self.telemetry.metrics.sqs_batch.record(len(messages), {"queue": self.queue_name})
            # Only receives that brought messages are traced: an empty long poll
            # every 20 s per receiver would bury them.
            with self.telemetry.tracer.start_as_current_span(
                f"receive {self.queue_name}",
                kind=SpanKind.CLIENT,
                start_time=started_ns,
                attributes=self._attributes("receive", "ReceiveMessage", len(messages)),
            ):
                if stop.is_set():
                    await self._release(messages, "shutting down")
                    return
                await self._handle(messages, stop)

    def _attributes(self, operation: str, name: str, count: int) -> dict[str, str | int]:
        return {
            "messaging.system": "aws_sqs",
            "messaging.operation.type": operation,
            "messaging.operation.name": name,
            "messaging.destination.name": self.queue_name,
            "messaging.batch.message_count": count,
            "server.address": self.queue_url.split("/")[2] if "//" in self.queue_url else "",
        }

    def _settle_span(self, name: str, count: int) -> trace.Span:
        return self.telemetry.tracer.start_span(
            f"settle {self.queue_name}",
            kind=SpanKind.CLIENT,
            attributes=self._attributes("settle", name, count),
        )

    async def _receive_unless_stopped(self, stop: asyncio.Event) -> list[dict[str, Any]]:
        """A receive; when ``stop`` comes during its long poll, it has
        ``STOP_PATIENCE_S`` to return (what it brings is handed back at once), then it
        is cancelled: a stopping process does not wait out a 20 s poll."""
        receive = asyncio.ensure_future(self._receive())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({receive, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():
                await asyncio.wait({receive}, timeout=STOP_PATIENCE_S)
        finally:
            stopper.cancel()
            if not receive.done():
                # Messages SQS sent just as the poll was cancelled stay invisible for
                # the visibility timeout, then come back: nothing is lost.
                receive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(receive, stopper, return_exceptions=True)
        if receive.cancelled():
            return []
        return receive.result()

    async def _receive(self) -> list[dict[str, Any]]:
        reply = await self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=self.settings.sqs_wait_seconds,
            VisibilityTimeout=self.settings.sqs_visibility_timeout,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(reply.get("Messages", []))

    async def _hand_off(
        self, events: list[Event], rejects: Counter[str], stop: asyncio.Event | None
    ) -> bool:
        """Route the batch; while Redis fails, retry in place (visibility is being
        extended) for up to ``handoff_patience`` seconds. True once handed off."""
        delays = self.delays()
        started = time.monotonic()
        while True:
            try:
                if events or rejects:
                    await self.router.route(events, path="sqs", counts=rejects)
                return True
            except CoordinationError as exc:
                delay = next(delays)
                give_up = (
                    stop is not None and stop.is_set()
                ) or time.monotonic() - started + delay > self.handoff_patience
                self.log.warning(
                    "sqs_handoff_failed", error=str(exc), retry_in_s=None if give_up else delay
                )
                if give_up:
                    return False
                if stop is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _handle(
        self, messages: list[dict[str, Any]], stop: asyncio.Event | None = None
    ) -> None:
        extender = asyncio.create_task(self._extend_visibility(messages))
        try:
            events: list[Event] = []
            event_messages: list[dict[str, Any]] = []
            rejected_messages: list[dict[str, Any]] = []
            rejects: Counter[str] = Counter()
            bad: list[Rejected] = []
            for message in messages:
                result = parse_sqs_message(
                    message.get("Body", ""),
                    message.get("MessageAttributes"),
                    max_bytes=self.settings.sqs_max_body_bytes,
                )
                if isinstance(result, Rejected):
                    rejected_messages.append(message)
                    bad.append(result)
                else:
                    events.append(result)
                    event_messages.append(message)
            if bad:
                rejects = await self.router.reject(
                    bad,
                    path="sqs",
                    source=self.queue_url,
                    what="message",
                    bodies=[m.get("Body", "") for m in rejected_messages],
                    details=[
                        {"queue_url": self.queue_url, "message_id": m.get("MessageId")}
                        for m in rejected_messages
                    ],
                )
            self.state.dead_lettered += len(rejected_messages)
            if not await self._hand_off(events, rejects, stop):
                await self._delete(rejected_messages)  # already in the dead-letter queue
                # Back soon, but not at once: every receive counts towards the redrive
                # policy's maxReceiveCount, and a valid event must not be redriven.
                await self._release(
                    event_messages,
                    "hand-off failed",
                    visibility=0 if stop is not None and stop.is_set() else self.release_delay,
                )
                return
        finally:
            extender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await extender
        await self._delete(messages)

    async def _delete(self, messages: list[dict[str, Any]]) -> None:
        if not messages:
            return
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
        ]
        with trace.use_span(
            self._settle_span("DeleteMessageBatch", len(entries)), end_on_exit=True
        ):
            try:
                reply = await self.sqs.delete_message_batch(
                    QueueUrl=self.queue_url, Entries=entries
                )
            except (ClientError, BotoCoreError, OSError) as exc:
                # The messages come back after the visibility timeout; dedup makes them no-ops.
                self.log.warning("sqs_delete_failed", error=str(exc), count=len(entries))
                trace.get_current_span().set_status(trace.StatusCode.ERROR, str(exc))
                return
            failed = reply.get("Failed", [])
            if failed:
                trace.get_current_span().set_attribute("amt.failed_count", len(failed))
        self.state.deleted += len(entries) - len(failed)
        for failure in failed:
            self.log.warning(
                "sqs_delete_entry_failed",
                code=failure.get("Code"),
                message=failure.get("Message"),
                sender_fault=failure.get("SenderFault"),
            )

    async def _release(
        self, messages: list[dict[str, Any]], reason: str, *, visibility: int = 0
    ) -> None:
        """Make messages visible again after ``visibility`` seconds (0: at once)."""
        if not messages:
            return
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": visibility}
            for i, m in enumerate(messages)
        ]
        span = self._settle_span("ChangeMessageVisibilityBatch", len(entries))
        span.set_attribute("amt.visibility_timeout_s", visibility)
        with trace.use_span(span, end_on_exit=True):
            try:
                await self.sqs.change_message_visibility_batch(
                    QueueUrl=self.queue_url, Entries=entries
                )
                self.log.info("sqs_released", count=len(entries), reason=reason)
            except (ClientError, BotoCoreError, OSError) as exc:
                self.log.warning("sqs_release_failed", error=str(exc), count=len(entries))
                span.set_status(trace.StatusCode.ERROR, str(exc))

    async def _extend_visibility(self, messages: list[dict[str, Any]]) -> None:
        timeout = self.settings.sqs_visibility_timeout
        while True:
            await asyncio.sleep(timeout / 2)
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": timeout}
                for i, m in enumerate(messages)
            ]
            span = self._settle_span("ChangeMessageVisibilityBatch", len(entries))
            span.set_attribute("amt.visibility_timeout_s", timeout)
            with trace.use_span(span, end_on_exit=True):
                try:
                    await self.sqs.change_message_visibility_batch(
                        QueueUrl=self.queue_url, Entries=entries
                    )
                except (ClientError, BotoCoreError, OSError) as exc:
                    self.log.warning("sqs_extend_visibility_failed", error=str(exc))
                    span.set_status(trace.StatusCode.ERROR, str(exc))
