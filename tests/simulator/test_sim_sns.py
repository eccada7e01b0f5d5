"""SNS publishing (and raw SQS sends) against the moto server."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiobotocore.session import get_session
from sim_helpers import SimFactory, collect_events, subscribe, ws_connect

from amt_ingest.routing.events import Event, Rejected, parse_event, parse_sqs_message
from amt_ingest.simulator.aws import SNS_TOPICS
from amt_ingest.simulator.stream import decode_replay_id

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def queue(aws_env: str) -> AsyncIterator[tuple[Any, str, dict[str, str]]]:
    """An SQS queue subscribed to the three Passport topics: (sqs client, url, arns)."""
    session = get_session()
    async with (
        session.create_client("sns") as sns,
        session.create_client("sqs") as sqs,
    ):
        url = (await sqs.create_queue(QueueName="passport-monitor"))["QueueUrl"]
        attrs = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        arns: dict[str, str] = {}
        for topic, name in SNS_TOPICS.items():
            arns[topic] = (await sns.create_topic(Name=name))["TopicArn"]
            await sns.subscribe(
                TopicArn=arns[topic], Protocol="sqs", Endpoint=attrs["Attributes"]["QueueArn"]
            )
        yield sqs, url, arns


async def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    empty = 0
    while empty < 2:
        got = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageAttributeNames=["All"]
        )
        batch = got.get("Messages", [])
        empty = 0 if batch else empty + 1
        messages += batch
        for message in batch:
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return messages


async def test_events_arrive_as_sns_envelopes(
    make_sim: SimFactory, queue: tuple[Any, str, dict[str, str]]
) -> None:
    sqs, url, arns = queue
    sim = await make_sim(
        events=60,
        sns=True,
        sqs_only_rate=0.3,
        ws_only_rate=0.1,
        dup_rate=0.2,
        ooo_rate=0.2,
        malformed_rate=0.15,
        sqs_queue_urls=(url,),
    )
    await sim.run()
    messages = await drain(sqs, url)
    stats = sim.stats()
    delivery = stats["delivery"]
    assert stats["aws"]["sns_published"] == delivery["sns_publishes"]
    assert len(messages) == delivery["sns_publishes"] + delivery["malformed_sqs"]
    assert delivery["sqs_only"] > 0 and delivery["sns_duplicates"] > 0
    assert delivery["malformed_sqs"] > 0

    sns_ids: Counter[str] = Counter()
    rejected = 0
    message_ids = set()
    for message in messages:
        parsed = parse_sqs_message(message["Body"], message.get("MessageAttributes"))
        if isinstance(parsed, Rejected):
            rejected += 1
            continue
        assert isinstance(parsed, Event)
        envelope = orjson.loads(message["Body"])
        assert envelope["Type"] == "Notification"
        assert envelope["TopicArn"] == arns[parsed.topic]
        assert envelope["MessageAttributes"] == {
            "event_type": {"Type": "String", "Value": parsed.topic},
            "org_id": {"Type": "String", "Value": parsed.org_id},
        }
        assert "replay_id" not in orjson.loads(envelope["Message"])
        message_ids.add(envelope["MessageId"])
        sns_ids[parsed.event_id] += 1
    assert rejected == delivery["malformed_sqs"]
    assert len(message_ids) == sum(sns_ids.values())  # a duplicate has its own MessageId
    assert sum(1 for n in sns_ids.values() if n == 2) == delivery["sns_duplicates"]

    # Every event went at least one way; the ws-only ones never reached SNS.
    async with ws_connect(sim) as ws:
        await subscribe(ws, credits=1000)
        total = decode_replay_id(sim.stream.log.latest_replay_id) or 0
        ws_events, _ = await collect_events(ws, total)
    valid = [p for p in map(parse_event, ws_events) if isinstance(p, Event)]
    assert len(valid) == delivery["ws_entries"]
    ws_ids = {p.event_id for p in valid}
    assert len(ws_ids | set(sns_ids)) == 60
    assert len(ws_ids & set(sns_ids)) == delivery["both"]


async def test_no_sns_routes_everything_to_the_stream(make_sim: SimFactory) -> None:
    sim = await make_sim(events=40, sns=False, sqs_only_rate=0.5)
    await sim.run()
    assert sim.stats()["delivery"]["ws_entries"] == 40
