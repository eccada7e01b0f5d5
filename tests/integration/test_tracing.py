"""Span trees and metrics of real runs, read from the SDK's in-memory exporter and reader.

One event reaches the service on both paths (the simulator's WebSocket and a
moto SQS queue); its arrivals and the job that applies it must be one trace,
linked as DESIGN.md section 4 says. A burst for one record must give one job
span that links every coalesced event.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from amt_ingest import aws
from amt_ingest.config import Settings
from amt_ingest.coordination import QUEUE_NAME, Coordinator, job_deserializer
from amt_ingest.jobs import apply_records
from amt_ingest.operations.deadletters.sink import DeadLetters
from amt_ingest.routing.events import parse_event
from amt_ingest.routing.router import Router
from amt_ingest.telemetry import Telemetry, setup_telemetry
from amt_ingest.telemetry.tracing import event_trace_id
from tests.conftest import SAMPLES
from tests.integration.test_coordination import mark_started
from tests.integration.test_sqs_poller import drain, make_poller
from tests.integration.test_websocket import handed_off

pytestmark = pytest.mark.timeout(60)


class Traced:
    def __init__(self, settings: Settings):
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        self.telemetry = setup_telemetry(
            settings,
            span_processors=(SimpleSpanProcessor(self.spans),),
            metric_readers=(self.reader,),
        )

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name.startswith(prefix)]

    def sums(self, name: str) -> Counter[tuple[tuple[str, Any], ...]]:
        """Counter values of one instrument, by their sorted attributes."""
        out: Counter[tuple[tuple[str, Any], ...]] = Counter()
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            out[tuple(sorted(point.attributes.items()))] += point.value
        return out


async def run_jobs(coord: Coordinator, store: Any, telemetry: Telemetry) -> int:
    runs = 0
    while job_ids := await coord.redis.zrange(QUEUE_NAME, 0, -1):
        for job_id in job_ids:
            await mark_started(coord, job_id)
            raw = await coord.redis.get(b"arq:job:" + job_id)
            (members,) = job_deserializer(raw)["a"]
            ctx = {
                "coordinator": coord,
                "store": store,
                "max_tries": 16,
                "job_id": job_id.decode(),
                "job_try": 1,
                "lease_ms": 5000,
                "telemetry": telemetry,
            }
            statuses = await apply_records(ctx, members)
            assert set(statuses) <= {"released", "handed_over"}, statuses
            await coord.redis.zrem(QUEUE_NAME, job_id)
            await coord.redis.delete(b"arq:job:" + job_id, b"arq:in-progress:" + job_id)
            runs += 1
    return runs


def record_applies(traced: Traced) -> list[ReadableSpan]:
    """The ``apply <topic>`` spans (one per record a run worked on)."""
    return [s for s in traced.named("apply ") if s.name != "apply batch"]


def eid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def by_event(spans: list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(str(span.attributes["amt.event_id"]), []).append(span)
    return out


async def test_one_event_on_both_paths_is_one_linked_trace(rig, aws_env, store, tmp_path: Path):
    r = await rig(events=3, records=3, seed=7)
    await r.sim.run()
    settings = r.settings(sqs_wait_seconds=0)
    traced = Traced(settings)
    telemetry = traced.telemetry
    telemetry.instrument_redis(r.coord.redis)
    telemetry.instrument_engine(store.engine)
    router = Router(r.coord.handoff, telemetry=telemetry, track_one_path=True)

    # Path 1: the WebSocket brings the three events.
    running = r.start(settings, router=router)
    await handed_off(running, 3)
    running.stop.set()
    await asyncio.wait_for(running.task, 10)
    sent = [orjson.loads(e.data) for e in r.log._entries if not e.raw]
    # Path 2: SQS brings the second of them again, as raw delivery.
    event = {k: v for k, v in sent[1].items() if k != "replay_id"}
    boot = await aws.bootstrap(settings)
    async with aws.client(settings, "sqs") as sqs:
        await sqs.send_message(QueueUrl=boot.queue_url, MessageBody=json.dumps(event))
        dead = DeadLetters(sqs=sqs, dlq_url=boot.dlq_url, fallback_path=tmp_path / "dead")
        poller = make_poller(settings, sqs, boot.queue_url, r.coord, dead, router=router)
        await drain(poller, sqs, boot.queue_url)
    runs = await run_jobs(r.coord, store, telemetry)
    assert runs >= 1

    event_id = event["event_id"]
    arrivals = by_event(traced.named("process "))[event_id]
    first, second = sorted(arrivals, key=lambda s: s.start_time or 0)
    trace_id = event_trace_id(event_id)
    assert first.context.trace_id == second.context.trace_id == trace_id
    assert first.kind is second.kind is SpanKind.CONSUMER
    assert (first.attributes["amt.path"], first.attributes["amt.outcome"]) == ("ws", "first")
    assert (second.attributes["amt.path"], second.attributes["amt.outcome"]) == ("sqs", "duplicate")
    assert first.attributes["messaging.system"] == "passport"
    assert second.attributes["messaging.system"] == "aws_sqs"
    assert first.attributes["amt.topic"] == event["topic"]
    assert (
        first.attributes["amt.record_id"] == event["payload"]["ChangeEventHeader"]["recordIds"][0]
    )
    # The duplicate links to the first arrival, and each arrival to its batch's receive span.
    linked = {link.context.span_id for link in second.links}
    assert first.context.span_id in linked
    ws_receive = [s for s in traced.named("receive passport")]
    sqs_receive = [s for s in traced.named("receive amt-ingest-monitor")]
    assert sqs_receive and ws_receive
    assert sqs_receive[0].kind is SpanKind.CLIENT
    assert sqs_receive[0].attributes["messaging.operation.type"] == "receive"
    assert sqs_receive[0].attributes["messaging.batch.message_count"] == 1
    assert {s.context.span_id for s in sqs_receive} & linked
    assert {s.context.span_id for s in ws_receive} & {link.context.span_id for link in first.links}
    # Settling: the delete of the SQS message and the WebSocket credit, inside their receive.
    settles = traced.named("settle amt-ingest-monitor")
    assert any(s.attributes["messaging.operation.name"] == "DeleteMessageBatch" for s in settles)
    assert all(s.parent and s.parent.span_id == sqs_receive[0].context.span_id for s in settles)
    assert traced.named("settle passport")
    # Redis calls are children of the receive spans.
    receive_ids = {s.context.span_id for s in ws_receive + sqs_receive}
    redis_spans = [s for s in traced.finished() if s.attributes.get("db.system") == "redis"]
    assert any(s.parent and s.parent.span_id in receive_ids for s in redis_spans)
    assert all(s.parent is not None for s in redis_spans), "library spans never stand alone"
    # The job that applied it: parent is the first arrival, linked to it, in the same trace.
    applies = record_applies(traced)
    (job,) = [
        s for s in applies if s.attributes["amt.record_id"] == first.attributes["amt.record_id"]
    ]
    assert job.context.trace_id == trace_id
    assert job.parent is not None and job.parent.span_id == first.context.span_id
    assert first.context.span_id in {link.context.span_id for link in job.links}
    assert job.attributes["amt.job_outcome"] == "applied"
    # The run's SQL statements are children of the run's span: the record's own
    # when the run had one record, else the batch span that the record's links.
    run_span = {
        link.context.span_id
        for link in job.links
        if (link.attributes or {}).get("amt.link") == "job_run"
    } or {job.context.span_id}
    sql = [s for s in traced.finished() if s.parent and s.parent.span_id in run_span]
    assert any(s.attributes.get("db.system") in ("sqlite", "postgresql") for s in sql), [
        s.name for s in sql
    ]

    # Metrics of the same run.
    events = traced.sums("amt.events")
    topic = first.attributes["amt.topic"]
    assert events[(("outcome", "first"), ("path", "ws"), ("topic", topic))] >= 1
    assert events[(("outcome", "duplicate"), ("path", "sqs"), ("topic", topic))] == 1
    # One job outcome per record a run applied.
    assert sum(traced.sums("amt.jobs").values()) == len(applies)
    stats = await r.coord.observations.stats()
    assert stats[f"cross:ws:{topic}"] == 1
    assert len(await r.coord.redis.lrange("amt:lags", 0, -1)) == 1
    # The other two were seen on the WebSocket only so far.
    assert await r.coord.redis.zcard("amt:onepath") == 2


async def test_a_coalesced_job_links_every_event(redis_url, store):
    client = aioredis.Redis.from_url(redis_url)
    coord = Coordinator(client, dedup_ttl=3600)
    traced = Traced(Settings(redis_url=redis_url))
    router = Router(coord.handoff, telemetry=traced.telemetry)
    base = json.loads((SAMPLES / "event-opportunity-update.json").read_text())
    events = []
    for i in range(5):
        raw = json.loads(json.dumps(base))
        raw["event_id"] = eid(f"coalesce-{i}")
        raw["payload"]["ChangeEventHeader"]["commitNumber"] += i
        raw["payload"]["StageName"] = f"Stage {i}"
        parsed = parse_event(raw)
        assert not hasattr(parsed, "reason"), parsed
        events.append(parsed)
    for event in events:  # five batches: the job is created by the first
        await router.route([event], path="ws")
    assert await run_jobs(coord, store, traced.telemetry) == 1
    (job,) = record_applies(traced)
    assert not traced.named("apply batch")  # a run of one record has no batch span
    process = {s.attributes["amt.event_id"]: s for s in traced.named("process ")}
    assert (
        job.parent is not None and job.parent.span_id == process[eid("coalesce-0")].context.span_id
    )
    assert job.context.trace_id == event_trace_id(eid("coalesce-0"))
    assert [link.context.span_id for link in job.links] == [
        process[eid(f"coalesce-{i}")].context.span_id for i in range(5)
    ]
    assert job.attributes["amt.events"] == 5
    latency = traced.sums("amt.jobs")
    assert latency[(("outcome", "applied"), ("topic", "Opportunity"))] == 1
    await client.aclose()


async def test_links_of_a_run_are_dropped_and_later_ones_kept(redis_url, store):
    """Events that arrive while a job runs are linked by the next run, not by both."""
    client = aioredis.Redis.from_url(redis_url)
    coord = Coordinator(client, dedup_ttl=3600)
    traced = Traced(Settings(redis_url=redis_url))
    router = Router(coord.handoff, telemetry=traced.telemetry)
    base = json.loads((SAMPLES / "event-opportunity-update.json").read_text())

    def event(i: int) -> Any:
        raw = json.loads(json.dumps(base))
        raw["event_id"] = eid(f"later-{i}")
        raw["payload"]["ChangeEventHeader"]["commitNumber"] += i
        raw["payload"]["StageName"] = f"Stage {i}"
        return parse_event(raw)

    await router.route([event(0), event(1)], path="ws")
    ((job_id, _),) = await client.zrange(QUEUE_NAME, 0, -1, withscores=True)
    record = await coord.records.claim(
        "Opportunity",
        base["payload"]["ChangeEventHeader"]["recordIds"][0],
        job_id.decode(),
        token="t",
        lease_ms=5000,
    )
    assert record is not None and not isinstance(record, int)
    await router.route([event(2)], path="ws")  # arrives while the run works
    status, _ = await coord.records.complete(record, job_id.decode())
    assert status == "handed_over"
    links = await client.hget(
        f"amt:rec:Opportunity:{base['payload']['ChangeEventHeader']['recordIds'][0]}", "l"
    )
    process = {s.attributes["amt.event_id"]: s for s in traced.named("process ")}
    assert links is not None
    assert links.decode()[32:48] == format(process[eid("later-2")].context.span_id, "016x")
    assert b"," not in links
    await client.aclose()


async def test_a_batch_run_has_a_span_that_each_record_links(redis_url, store):
    """Three records of one hand-off, one run: each record's apply span is in its
    event's trace and links the run's span, under which the shared SQL runs."""
    client = aioredis.Redis.from_url(redis_url)
    coord = Coordinator(client, dedup_ttl=3600)
    traced = Traced(Settings(redis_url=redis_url))
    traced.telemetry.instrument_engine(store.engine)
    router = Router(coord.handoff, telemetry=traced.telemetry)
    base = json.loads((SAMPLES / "event-opportunity-update.json").read_text())
    events = []
    for i in range(3):
        raw = json.loads(json.dumps(base))
        raw["event_id"] = eid(f"batch-{i}")
        raw["payload"]["ChangeEventHeader"]["recordIds"] = [f"0065g00000BaTc{i:04d}"]
        events.append(parse_event(raw))
    await router.route(events, path="ws")
    assert await run_jobs(coord, store, traced.telemetry) == 1
    (batch,) = traced.named("apply batch")
    assert batch.kind is SpanKind.CONSUMER and batch.parent is None
    assert batch.attributes["messaging.batch.message_count"] == 3
    applies = record_applies(traced)
    assert len(applies) == 3
    process = {s.attributes["amt.event_id"]: s for s in traced.named("process ")}
    for i, span in enumerate(sorted(applies, key=lambda s: str(s.attributes["amt.record_id"]))):
        arrival = process[eid(f"batch-{i}")]
        assert span.context.trace_id == event_trace_id(eid(f"batch-{i}"))
        assert span.parent is not None and span.parent.span_id == arrival.context.span_id
        run_links = [
            link for link in span.links if (link.attributes or {}).get("amt.link") == "job_run"
        ]
        assert [link.context.span_id for link in run_links] == [batch.context.span_id]
        assert span.attributes["amt.job_outcome"] == "applied"
    sql = [
        s for s in traced.finished() if s.attributes.get("db.system") in ("sqlite", "postgresql")
    ]
    assert sql and all(s.parent and s.parent.span_id == batch.context.span_id for s in sql)
    await client.aclose()
