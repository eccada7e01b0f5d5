"""Reference figures measured in the same run, on the same Redis and endpoints: what
plain arq, a bare WebSocket client and bare SQS calls manage here.

The service's figures are read against these, so a loaded machine moves both.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker, func
from websockets.asyncio.client import connect

from amt_ingest.config import Settings
from amt_ingest.routing.events import EventsFrame, parse_ws_frame
from amt_ingest.simulator.aws import SNS_TOPICS
from amt_ingest.simulator.truth import iso_ms
from amt_ingest.simulator.world import World

from .measure import rate_from_samples

__all__ = [
    "DEFAULTS",
    "arq_enqueue_eps",
    "arq_noop_jps",
    "commit_ms_of",
    "create_queue",
    "prefill_queue",
    "sqs_client",
    "sqs_latency_floor",
    "sqs_raw_eps",
    "ws_raw_eps",
]

#: The service's shipped defaults (worker concurrency, credits, SQS receivers...).
DEFAULTS = {name: info.default for name, info in Settings.model_fields.items()}
_QUEUE = "bench:arq"


async def _noop(ctx: dict[str, Any]) -> None:
    return None


async def arq_enqueue_eps(redis_url: str, *, seconds: float) -> float:
    """Plain ``enqueue_job`` in a sequential loop (a fresh job id each)."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=_QUEUE)
    try:
        done = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            await pool.enqueue_job("noop")
            done += 1
        return done / elapsed
    finally:
        await pool.delete(_QUEUE)
        await pool.aclose()


async def arq_noop_jps(redis_url: str, *, jobs: int) -> float:
    """An arq worker with the service's ``max_jobs`` and ``poll_delay`` draining
    ``jobs`` queued no-op jobs (burst mode): jobs per second."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=_QUEUE)
    try:
        for start in range(0, jobs, 500):
            await asyncio.gather(
                *(pool.enqueue_job("noop") for _ in range(start, min(jobs, start + 500)))
            )
        worker = Worker(
            functions=[func(_noop, name="noop")],
            redis_pool=pool,
            queue_name=_QUEUE,
            burst=True,
            max_jobs=DEFAULTS["worker_max_jobs"],
            poll_delay=DEFAULTS["worker_poll_delay"],
            keep_result=0,
            handle_signals=False,
            log_results=False,
        )
        started = time.perf_counter()
        await worker.main()
        elapsed = time.perf_counter() - started
        completed = worker.jobs_complete
        await worker.close()
        return completed / elapsed
    finally:
        await pool.delete(_QUEUE)
        await pool.aclose()


async def ws_raw_eps(url: str, token: str, *, expected: int, parse: bool) -> float | None:
    """A websockets client reading the simulator's stream as the service does
    (``AMT_WS_CREDITS`` credits, a credit back per frame), no Redis: events per second.

    ``parse=False`` only decodes the JSON; ``parse=True`` runs the service's frame
    parser (validation of every event) as well.
    """
    credits = DEFAULTS["ws_credits"]
    max_bytes = DEFAULTS["ws_max_frame_bytes"]
    samples: list[tuple[float, float]] = []
    received = 0
    async with connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        max_size=max_bytes,
        proxy=None,
        open_timeout=10,
    ) as ws:
        subscribe = {
            "type": "subscribe",
            "topics": list(SNS_TOPICS),
            "replay": {"preset": "earliest"},
            "credits": credits,
        }
        await ws.send(orjson.dumps(subscribe).decode())
        async with asyncio.timeout(120):
            while received < expected:
                message = await ws.recv()
                if parse:
                    frame = parse_ws_frame(message, max_bytes=max_bytes)
                    n = len(frame.items) if isinstance(frame, EventsFrame) else 0
                else:
                    obj = orjson.loads(message)
                    n = len(obj["events"]) if obj.get("type") == "events" else 0
                if n:
                    received += n
                    samples.append((time.perf_counter(), received))
                    await ws.send(orjson.dumps({"type": "credit", "n": n}).decode())
    return rate_from_samples(samples)


def sqs_client(endpoint: str) -> Any:
    """An aiobotocore SQS client context for the moto server (as the service configures it)."""
    return get_session().create_client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=AioConfig(
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=20,
        ),
    )


async def create_queue(sqs: Any, name: str, *, max_receive_count: int = 5) -> str:
    """A queue with a dead-letter queue (redrive policy), as ``bootstrap`` makes them,
    but subscribed to nothing; returns its URL (idempotent)."""
    dlq_url = (await sqs.create_queue(QueueName=f"{name}-dlq"))["QueueUrl"]
    attrs = await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    redrive = {
        "deadLetterTargetArn": attrs["Attributes"]["QueueArn"],
        "maxReceiveCount": str(max_receive_count),
    }
    reply = await sqs.create_queue(
        QueueName=name,
        Attributes={
            "RedrivePolicy": orjson.dumps(redrive).decode(),
            "VisibilityTimeout": str(DEFAULTS["sqs_visibility_timeout"]),
        },
    )
    return str(reply["QueueUrl"])


def sns_envelope(event: dict[str, Any], *, account: str = "123456789012") -> str:
    """The SQS body SNS delivers for ``event`` without raw delivery (PROTOCOL.md section 3)."""
    arn = f"arn:aws:sns:us-east-1:{account}:{SNS_TOPICS[event['topic']]}"
    return orjson.dumps(
        {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": arn,
            "Message": orjson.dumps(event).decode(),
            "Timestamp": iso_ms(time.time_ns() // 1_000_000),
            "SignatureVersion": "1",
            "Signature": "EXAMPLE",
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService.pem",
            "UnsubscribeURL": f"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={arn}",
            "MessageAttributes": {
                "event_type": {"Type": "String", "Value": event["topic"]},
                "org_id": {"Type": "String", "Value": event["org_id"]},
            },
        }
    ).decode()


async def prefill_queue(sqs: Any, queue_url: str, *, events: int, records: int, seed: int) -> None:
    """Put ``events`` simulated events on the queue as SNS envelopes (SendMessageBatch:
    much faster on moto than publishing through SNS)."""
    world = World(seed, records)
    batch: list[dict[str, Any]] = []
    for i in range(events):
        batch.append({"Id": str(i % 10), "MessageBody": sns_envelope(world.next_event())})
        if len(batch) == 10 or i == events - 1:
            reply = await sqs.send_message_batch(QueueUrl=queue_url, Entries=batch)
            if reply.get("Failed"):
                raise RuntimeError(f"prefilling {queue_url}: {reply['Failed'][:1]}")
            batch = []


async def _bare_consumers(
    sqs: Any,
    queue_urls: Sequence[str],
    *,
    handle: Callable[[list[dict[str, Any]], int, float], bool],
    idle: Callable[[], bool] = lambda: False,
    give_up_after: float,
) -> None:
    """The service's receivers per queue, each: receive 10 with all attributes (1 s
    long polls), DeleteMessageBatch, then ``handle(messages, failed deletes,
    received at ms)``; until ``handle`` or, after an empty receive, ``idle()`` says
    done, or ``give_up_after`` seconds."""
    done = asyncio.Event()

    async def loop(url: str) -> None:
        while not done.is_set():
            reply = await sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                VisibilityTimeout=DEFAULTS["sqs_visibility_timeout"],
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            received_ms = time.time() * 1000
            messages = reply.get("Messages", [])
            if not messages:
                if idle():
                    done.set()
                continue
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ]
            answer = await sqs.delete_message_batch(QueueUrl=url, Entries=entries)
            if handle(messages, len(answer.get("Failed", [])), received_ms):
                done.set()

    loops = [
        asyncio.create_task(loop(url))
        for url in queue_urls
        for _ in range(DEFAULTS["sqs_receivers_per_queue"])
    ]
    try:
        await asyncio.wait_for(done.wait(), give_up_after)
    except TimeoutError:
        pass
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)


async def sqs_raw_eps(
    sqs: Any, queue_urls: Sequence[str], *, expected: int, give_up_after: float = 120
) -> float | None:
    """Receive 10 + DeleteMessageBatch only, with the service's receivers per queue and
    visibility timeout: messages per second until ``expected`` are gone.

    The long-poll wait is 1 s instead of the service's 20: while messages are
    queued a receive returns at once either way, and a poll abandoned at the end
    must not hold messages that arrive later (moto keeps serving it).
    """
    samples: list[tuple[float, float]] = []
    deleted = 0

    def deleted_now(messages: list[dict[str, Any]], failed: int, _received_ms: float) -> bool:
        nonlocal deleted
        deleted += len(messages) - failed
        samples.append((time.perf_counter(), deleted))
        return deleted >= expected

    await _bare_consumers(sqs, queue_urls, handle=deleted_now, give_up_after=give_up_after)
    return rate_from_samples(samples)


def commit_ms_of(body: str) -> int | None:
    """The commitTimestamp of the event in an SQS body (SNS envelope or raw)."""
    try:
        outer = orjson.loads(body)
        event = orjson.loads(outer["Message"]) if "Message" in outer else outer
        return int(event["payload"]["ChangeEventHeader"]["commitTimestamp"])
    except (ValueError, KeyError, TypeError):
        return None


async def sqs_latency_floor(
    sqs: Any, queue_url: str, *, expected: int, until: Callable[[], bool], give_up_after: float
) -> list[float]:
    """What the endpoint alone costs on the SQS path: a bare consumer (the service's
    receivers per queue, receive 10 with all attributes, delete batch) on the queue
    the simulator publishes to through SNS. Returns, per message, the time it was
    received minus its event's commit timestamp (ms).

    Stops once ``expected`` messages came, or ``until()`` holds and a receive came
    back empty, or after ``give_up_after`` seconds. Long polls of 1 s, as in
    :func:`sqs_raw_eps`: a poll abandoned at the end must not take later messages.
    """
    latencies: list[float] = []

    def received(messages: list[dict[str, Any]], _failed: int, received_ms: float) -> bool:
        for message in messages:
            commit = commit_ms_of(message.get("Body", ""))
            if commit is not None:
                latencies.append(received_ms - commit)
        return len(latencies) >= expected

    await _bare_consumers(
        sqs, [queue_url], handle=received, idle=until, give_up_after=give_up_after
    )
    return latencies
