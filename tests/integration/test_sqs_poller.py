"""The SQS poller against a moto server and real Redis."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from amt_ingest import aws
from amt_ingest.config import Settings
from amt_ingest.coordination import Coordinator
from amt_ingest.operations.deadletters.sink import DeadLetters
from amt_ingest.routing.router import Router
from amt_ingest.sources.sqs import SqsPoller
from tests.conftest import SAMPLES

ORG = "00D5g000004ZzABEA0"


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


def make_poller(
    settings: Settings,
    sqs,
    queue_url: str,
    coordinator: Coordinator,
    dead_letters: DeadLetters,
    *,
    router: Router | None = None,
    **options,
) -> SqsPoller:
    """A poller whose router hands off to ``coordinator`` and dead-letters to
    ``dead_letters`` (a router given without dead letters gets these)."""
    router = router or Router(coordinator.handoff)
    router.dead_letters = router.dead_letters or dead_letters
    return SqsPoller(settings, sqs=sqs, queue_url=queue_url, router=router, **options)


@pytest.fixture
async def env(aws_env, redis_url, tmp_path: Path):
    settings = Settings(redis_url=redis_url, sqs_wait_seconds=0, allowed_org_ids=[ORG])
    boot = await aws.bootstrap(settings)
    client = aioredis.Redis.from_url(redis_url)
    coordinator = Coordinator(client, dedup_ttl=3600)
    async with aws.client(settings, "sqs") as sqs:
        yield settings, boot, sqs, coordinator, tmp_path
    await client.aclose()


async def drain(poller: SqsPoller, sqs, queue_url: str) -> None:
    """Poll until the queue is empty and nothing is in flight."""
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    for _ in range(300):
        await asyncio.sleep(0.1)
        attrs = await sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
        a = attrs["Attributes"]
        if (
            a["ApproximateNumberOfMessages"] == "0"
            and a["ApproximateNumberOfMessagesNotVisible"] == "0"
        ):
            break
    stop.set()
    await asyncio.wait_for(task, 10)


async def receive_all(sqs, url: str) -> list[dict]:
    out = []
    while True:
        reply = await sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            VisibilityTimeout=60,
        )
        if not reply.get("Messages"):
            return out
        out.extend(reply["Messages"])


async def test_both_body_shapes_are_handed_off_and_deleted(env):
    settings, boot, sqs, coordinator, tmp = env
    envelope = sample("sqs-message-sns-envelope.json")
    raw = sample("sqs-message-raw-delivery.json")
    await sqs.send_message(QueueUrl=boot.queue_url, MessageBody=envelope["Body"])
    await sqs.send_message(
        QueueUrl=boot.queue_url,
        MessageBody=raw["Body"],
        MessageAttributes={
            k: {"DataType": "String", "StringValue": v["StringValue"]}
            for k, v in raw["MessageAttributes"].items()
        },
    )
    # The same event again, as SNS would re-publish it under a new MessageId.
    await sqs.send_message(QueueUrl=boot.queue_url, MessageBody=envelope["Body"])
    dead = DeadLetters(sqs=sqs, dlq_url=boot.dlq_url, fallback_path=tmp / "dead.jsonl")
    poller = make_poller(
        settings,
        sqs,
        boot.queue_url,
        coordinator,
        dead,
        router=Router(coordinator.handoff, allowed_orgs=[ORG]),
    )
    await drain(poller, sqs, boot.queue_url)
    stats = await coordinator.observations.stats()
    assert stats["first:sqs:Opportunity"] == 1
    assert stats["first:sqs:External_Attachment__c"] == 1
    assert stats["duplicate:sqs:Opportunity"] == 1
    assert poller.state.deleted == 3
    assert await receive_all(sqs, boot.dlq_url) == []


async def test_malformed_goes_to_the_dlq_with_its_reason_and_the_rest_goes_on(env):
    settings, boot, sqs, coordinator, tmp = env
    envelope = json.loads(sample("sqs-message-sns-envelope.json")["Body"])
    truncated = json.dumps(envelope)[:150]
    foreign = sample("event-opportunity-update.json")
    foreign["org_id"] = "00D5g000009XyZQEA0"
    bodies = [
        "not json",
        truncated,
        json.dumps({"event_id": "x"}),
        json.dumps(foreign),
        sample("sqs-message-raw-delivery.json")["Body"],
    ]
    for body in bodies:
        await sqs.send_message(QueueUrl=boot.queue_url, MessageBody=body)
    dead = DeadLetters(sqs=sqs, dlq_url=boot.dlq_url, fallback_path=tmp / "dead.jsonl")
    poller = make_poller(
        settings,
        sqs,
        boot.queue_url,
        coordinator,
        dead,
        router=Router(coordinator.handoff, allowed_orgs=[ORG]),
    )
    await drain(poller, sqs, boot.queue_url)
    dlq = await receive_all(sqs, boot.dlq_url)
    reasons = sorted(m["MessageAttributes"]["reason"]["StringValue"] for m in dlq)
    assert reasons == ["invalid_event", "invalid_json", "invalid_json"]
    assert {m["Body"] for m in dlq} == {"not json", truncated, json.dumps({"event_id": "x"})}
    assert all(m["MessageAttributes"]["path"]["StringValue"] == "sqs" for m in dlq)
    stats = await coordinator.observations.stats()
    assert (
        stats["filtered:sqs:Opportunity"] == 1
    )  # unknown org: filtered and counted, not dead-lettered
    assert stats["first:sqs:External_Attachment__c"] == 1
    assert stats["rejected:sqs:invalid_json"] == 2
    assert not (tmp / "dead.jsonl").exists()


async def test_dead_letters_fall_back_to_a_file_when_sqs_refuses(env):
    from amt_ingest.routing.events import parse_sqs_message

    _, boot, sqs, _, tmp = env
    rejected = parse_sqs_message("{")
    dead = DeadLetters(sqs=sqs, dlq_url=boot.dlq_url + "-missing", fallback_path=tmp / "dead.jsonl")
    assert await dead.put(rejected, path="ws", source="test") == "file"
    (line,) = (tmp / "dead.jsonl").read_text().splitlines()
    assert json.loads(line)["reason"] == "invalid_json"
    assert json.loads(line)["body"] == "{"


async def test_handoff_failure_hands_messages_back_after_patience(env):
    settings, boot, sqs, _, tmp = env
    await sqs.send_message(
        QueueUrl=boot.queue_url, MessageBody=sample("sqs-message-raw-delivery.json")["Body"]
    )
    broken = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # nothing listens there
    broken_coord = Coordinator(broken, dedup_ttl=60)
    dead = DeadLetters(sqs=sqs, dlq_url=boot.dlq_url, fallback_path=tmp / "dead.jsonl")
    poller = make_poller(
        settings,
        sqs,
        boot.queue_url,
        broken_coord,
        dead,
        delays=lambda: iter([0.2] * 100),
        handoff_patience=1.0,
        release_delay=2,
    )
    messages = await poller._receive()
    assert len(messages) == 1
    await poller._handle(messages)
    assert poller.state.deleted == 0
    # Handed back, to come again shortly: not at once (each receive counts
    # towards the redrive policy), and not after the full visibility timeout.
    again = await sqs.receive_message(QueueUrl=boot.queue_url, MaxNumberOfMessages=10)
    assert again.get("Messages", []) == []
    await asyncio.sleep(2.5)
    again = await sqs.receive_message(QueueUrl=boot.queue_url, MaxNumberOfMessages=10)
    assert len(again.get("Messages", [])) == 1
    await broken.aclose()


async def test_handoff_retries_in_place_while_redis_is_down(env, redis_url):
    from tests.chaos.tcpproxy import Proxy

    settings, boot, sqs, _, tmp = env
    port = int(redis_url.split(":")[2].split("/")[0])
    proxy = Proxy(0, port)
    await proxy.start()
    client = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{proxy.listen_port}/{redis_url.rsplit('/', 1)[1]}"
    )
    coordinator = Coordinator(client, dedup_ttl=60)
    await sqs.send_message(
        QueueUrl=boot.queue_url, MessageBody=sample("sqs-message-raw-delivery.json")["Body"]
    )
    poller = make_poller(
        settings,
        sqs,
        boot.queue_url,
        coordinator,
        DeadLetters(sqs=sqs, dlq_url=boot.dlq_url, fallback_path=tmp / "d.jsonl"),
        delays=lambda: iter([0.2] * 100),
    )
    (message,) = await poller._receive()
    await proxy.stop()  # Redis is gone
    handling = asyncio.create_task(poller._handle([message]))
    await asyncio.sleep(1.0)
    assert not handling.done()  # still trying, the message still held
    await proxy.start()  # Redis is back
    await asyncio.wait_for(handling, 10)
    assert poller.state.deleted == 1
    stats = await coordinator.observations.stats()
    assert stats["first:sqs:External_Attachment__c"] == 1
    await client.aclose()
    await proxy.stop()


async def test_visibility_is_extended_while_the_hand_off_hangs(env, redis_url):
    from tests.chaos.tcpproxy import Proxy

    settings, boot, sqs, _, tmp = env
    settings = settings.model_copy(update={"sqs_visibility_timeout": 5})
    port = int(redis_url.split(":")[2].split("/")[0])
    proxy = Proxy(0, port)
    await proxy.start()
    slow = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{proxy.listen_port}/{redis_url.rsplit('/', 1)[1]}"
    )
    coordinator = Coordinator(slow, dedup_ttl=60)
    await slow.ping()
    await sqs.send_message(
        QueueUrl=boot.queue_url, MessageBody=sample("sqs-message-raw-delivery.json")["Body"]
    )
    poller = make_poller(
        settings,
        sqs,
        boot.queue_url,
        coordinator,
        DeadLetters(sqs=sqs, dlq_url=boot.dlq_url, fallback_path=tmp / "d.jsonl"),
    )
    (message,) = await poller._receive()
    proxy.hold()  # Redis hangs: the hand-off takes longer than the visibility timeout
    handling = asyncio.create_task(poller._handle([message]))
    await asyncio.sleep(8)
    again = await sqs.receive_message(QueueUrl=boot.queue_url, MaxNumberOfMessages=10)
    assert again.get("Messages", []) == []  # still invisible: extended, not redelivered
    proxy.release()
    await asyncio.wait_for(handling, 10)
    assert poller.state.deleted == 1
    await asyncio.sleep(6)
    again = await sqs.receive_message(QueueUrl=boot.queue_url, MaxNumberOfMessages=10)
    assert again.get("Messages", []) == []  # deleted for good
    await slow.aclose()
    await proxy.stop()


async def test_partial_delete_failure_is_reported_not_raised(env):
    settings, boot, sqs, coordinator, tmp = env
    await sqs.send_message(QueueUrl=boot.queue_url, MessageBody="x")
    poller = make_poller(
        settings,
        sqs,
        boot.queue_url,
        coordinator,
        DeadLetters(sqs=None, dlq_url=None, fallback_path=tmp / "d.jsonl"),
    )
    (message,) = await poller._receive()
    await poller._delete([message, {"ReceiptHandle": "not-a-receipt-handle"}])
    assert poller.state.deleted == 1


async def test_polling_pauses_while_too_many_records_are_pending(env):
    settings, boot, sqs, coordinator, tmp = env
    router = Router(coordinator.handoff, max_pending_records=1, capacity_poll_s=0.05)
    from tests.integration.test_coordination import make_event

    # One record pending (no worker runs): intake is at its high-water mark.
    await router.route([make_event(100, {"Name": "x"})], path="ws")
    for _ in range(3):
        await sqs.send_message(
            QueueUrl=boot.queue_url, MessageBody=sample("sqs-message-raw-delivery.json")["Body"]
        )
    poller = make_poller(
        settings,
        sqs,
        boot.queue_url,
        coordinator,
        DeadLetters(sqs=None, dlq_url=None, fallback_path=tmp / "d.jsonl"),
        router=router,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    await asyncio.sleep(1.0)
    assert poller.state.received == 0 and router.paused  # not polling: messages stay in SQS
    await coordinator.redis.delete("amt:pending")  # the workers caught up
    for _ in range(300):
        if poller.state.deleted == 3:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert poller.state.deleted == 3


async def test_each_queue_dead_letters_into_its_own_dlq(env):
    settings, boot, sqs, coordinator, tmp = env
    other = await aws.bootstrap(settings, queue_name="amt-ingest-second")
    dead = DeadLetters(
        sqs=sqs,
        dlq_url=boot.dlq_url,
        dlq_by_source={boot.queue_url: boot.dlq_url, other.queue_url: other.dlq_url},
        fallback_path=tmp / "d.jsonl",
    )
    await sqs.send_message(QueueUrl=other.queue_url, MessageBody="{broken")
    poller = make_poller(settings, sqs, other.queue_url, coordinator, dead)
    await drain(poller, sqs, other.queue_url)
    assert [m["Body"] for m in await receive_all(sqs, other.dlq_url)] == ["{broken"]
    assert await receive_all(sqs, boot.dlq_url) == []


async def test_throttling_errors_are_retried_not_fatal(env):
    """An SQS endpoint that throttles ReceiveMessage and DeleteMessageBatch for a while."""
    from aiohttp import ClientSession, web

    settings, boot, sqs, coordinator, tmp = env
    upstream = settings.aws_endpoint_url or boot.queue_url.split("/1234")[0]
    throttled: Counter = Counter()
    budget = {"AmazonSQS.ReceiveMessage": 6, "AmazonSQS.DeleteMessageBatch": 2}

    async def proxy(request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        if budget.get(target, 0) > 0:
            budget[target] -= 1
            throttled[target] += 1
            return web.json_response(
                {"__type": "com.amazonaws.sqs#RequestThrottled", "message": "Rate exceeded"},
                status=400,
                headers={"x-amzn-query-error": "RequestThrottled;Sender"},
            )
        async with (
            ClientSession() as session,
            session.request(
                request.method,
                upstream + request.path_qs,
                headers=request.headers,
                data=await request.read(),
            ) as reply,
        ):
            body = await reply.read()
            headers = {
                k: v
                for k, v in reply.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
            }
            return web.Response(status=reply.status, body=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    for _ in range(5):
        await sqs.send_message(
            QueueUrl=boot.queue_url, MessageBody=sample("sqs-message-raw-delivery.json")["Body"]
        )
    throttling = settings.model_copy(update={"aws_endpoint_url": f"http://127.0.0.1:{port}"})
    try:
        async with aws.client(throttling, "sqs") as slow_sqs:
            poller = make_poller(
                throttling,
                slow_sqs,
                boot.queue_url,
                coordinator,
                DeadLetters(sqs=None, dlq_url=None, fallback_path=tmp / "d.jsonl"),
                delays=lambda: iter([0.1] * 1000),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(poller.run(stop))
            # botocore backs off up to 20 s between its own retries of a throttled call.
            for _ in range(900):
                if poller.state.deleted == 5:
                    break
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.wait_for(task, 10)
    finally:
        await runner.cleanup()
    assert poller.state.deleted == 5
    assert throttled["AmazonSQS.ReceiveMessage"] == 6  # more than botocore retries alone
    assert throttled["AmazonSQS.DeleteMessageBatch"] == 2
    assert (await coordinator.observations.stats())["first:sqs:External_Attachment__c"] == 1
