"""The service's telemetry as its consumers see it: an OTLP/HTTP receiver and a scrape.

The test starts a real OTLP/HTTP receiver (decoding with opentelemetry-proto),
runs ``python -m amt_ingest run`` against it with the simulator delivering
every event on both paths, then checks what arrived: spans, metrics, the
``/metrics`` counts of the known workload, and that no secret reached the log
output or the exported telemetry.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import amt_process, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

EVENTS = 40
SECRET_TOKEN = "pp-token-Zq81Kx0mNQ3vW7"
SECRET_AWS = "aws-secret-R9dLm2XqP0sT5uVw"


class OtlpReceiver:
    """Accepts OTLP/HTTP protobuf exports on 127.0.0.1 and keeps them decoded."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.raw = bytearray()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _body(self, request: web.Request) -> bytes:
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.raw.extend(body)
        return body

    async def _traces(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await self._body(request))
        self.traces.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def _metrics(self, request: web.Request) -> web.Response:
        message = ExportMetricsServiceRequest()
        message.ParseFromString(await self._body(request))
        self.metrics.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def spans(self) -> list[tuple[dict[str, str], object]]:
        out = []
        for request in self.traces:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope.spans)
        return out

    def metric_names(self) -> set[str]:
        return {
            metric.name
            for request in self.metrics
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        }


def _attrs(span: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in span.attributes:  # type: ignore[attr-defined]
        v = a.value
        out[a.key] = v.string_value or v.int_value or v.double_value or v.bool_value
    return out


def _scrape(port: int) -> dict[str, Counter[tuple[tuple[str, str], ...]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: dict[str, Counter[tuple[tuple[str, str], ...]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(
                sorted(
                    (k, v)
                    for k, v in sample.labels.items()
                    if k != "le" and not k.startswith("otel_scope_")
                )
            )
            out.setdefault(sample.name, Counter())[labels] += sample.value
    return out


def _by(samples: Counter[tuple[tuple[str, str], ...]], label: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for labels, value in samples.items():
        out[dict(labels).get(label, "")] += value
    return out


async def _until(condition, *, within: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.25)


async def test_otlp_export_metrics_scrape_and_no_secrets(aws_env, redis_url, tmp_path: Path):
    receiver = OtlpReceiver()
    await receiver.start()
    ws_port, sf_port, http_port = free_port(), free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AMT_", "OTEL_"))}
    base |= {"AWS_SECRET_ACCESS_KEY": SECRET_AWS, "AMT_REDIS_URL": redis_url}
    boot = subprocess.run(  # noqa: ASYNC221 (before anything runs)
        [sys.executable, "-m", "amt_ingest", "bootstrap"],
        env=base,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    queue_url = json.loads(boot.stdout)["queue_url"]
    env = {
        **base,
        "AMT_PASSPORT_WS_URL": f"ws://127.0.0.1:{ws_port}/stream",
        "AMT_PASSPORT_TOKEN": SECRET_TOKEN,
        "AMT_SALESFORCE_BASE_URL": f"http://127.0.0.1:{sf_port}",
        "AMT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
        "AMT_SQS_QUEUE_URLS": queue_url,
        "AMT_SQS_WAIT_SECONDS": "1",
        "AMT_HTTP_PORT": str(http_port),
        "AMT_LOG_FORMAT": "json",
        "AMT_LOG_LEVEL": "debug",
        "AMT_GAUGE_INTERVAL_S": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_TRACES_SAMPLER": "always_on",
    }
    log_path = tmp_path / "service.log"
    truth = tmp_path / "truth.jsonl"
    client = aioredis.Redis.from_url(redis_url)
    with open(log_path, "wb") as log:  # noqa: ASYNC230
        service = amt_process("run", env=env, output=log)
        simulator = amt_process(
            "simulate",
            "--port",
            str(ws_port),
            "--sf-port",
            str(sf_port),
            "--token",
            SECRET_TOKEN,
            "--events",
            str(EVENTS),
            "--records",
            "20",
            "--rate",
            "0",
            "--sqs-queue-url",
            queue_url,
            "--truth",
            str(truth),
            env=base,
        )
        try:

            async def both_paths_done() -> bool:
                assert service.poll() is None, log_path.read_text()[-3000:]
                stats = {k.decode(): int(v) for k, v in (await client.hgetall("amt:stats")).items()}
                firsts = sum(v for k, v in stats.items() if k.startswith("first:"))
                crossed = sum(v for k, v in stats.items() if k.startswith("cross:"))
                return firsts == EVENTS and crossed == EVENTS

            await _until(both_paths_done, within=120, what="every event on both paths")
            await _until(
                lambda: (
                    len([s for _, s in receiver.spans() if s.name.startswith("apply ")]) >= 1
                    and "amt.events" in receiver.metric_names()
                ),
                within=60,
                what="spans and metrics exported",
            )

            async def duplicates_in_redis() -> int:
                stats = await client.hgetall("amt:stats")
                return sum(int(v) for k, v in stats.items() if k.startswith(b"duplicate:"))

            redis_before = await duplicates_in_redis()
            scraped = _scrape(http_port)
            redis_after = await duplicates_in_redis()
            service.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(service.wait, 30)
        finally:
            for proc in (service, simulator):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            await client.aclose()
            await receiver.stop()
    output = log_path.read_text()
    assert code == 0, output[-3000:]

    # /metrics after the known workload: exact counts.
    events = _by(scraped["amt_events_total"], "outcome")
    # Each event once per path; SQS is at-least-once, so a redelivery may add a
    # duplicate, which the Redis counters (all processes) show the same way.
    assert events["first"] == EVENTS and events["duplicate"] >= EVENTS, events
    assert redis_before <= events["duplicate"] <= redis_after, (events, redis_before, redis_after)
    assert sum(scraped["amt_path_lag_seconds_count"].values()) == EVENTS
    assert "amt_jobs_total" in scraped and "amt_e2e_latency_seconds_count" in scraped
    assert any(dict(k).get("queue") == "arq" for k in scraped["amt_queue_depth"])
    for labels in scraped["amt_events_total"]:
        assert {k for k, _ in labels} == {"path", "topic", "outcome"}

    # OTLP: spans of every kind, from the named service, with the event attributes.
    spans = receiver.spans()
    assert {res["service.name"] for res, _ in spans} == {"amt_ingest"}
    names = Counter(s.name.split(" ")[0] for _, s in spans)  # type: ignore[attr-defined]
    assert names["process"] >= 2 * EVENTS and names["receive"] >= 2 and names["apply"] >= 1
    outcomes = Counter(
        _attrs(s)["amt.outcome"]
        for _, s in spans
        if s.name.startswith("process ")  # type: ignore[attr-defined]
    )
    assert outcomes["first"] == EVENTS and outcomes["duplicate"] >= EVENTS
    # Every duplicate links to its event's first arrival, a span that was exported.
    process = [s for _, s in spans if s.name.startswith("process ")]  # type: ignore[attr-defined]
    firsts = {
        (s.trace_id, s.span_id)  # type: ignore[attr-defined]
        for s in process
        if _attrs(s)["amt.outcome"] == "first"
    }
    duplicates = [s for s in process if _attrs(s)["amt.outcome"] == "duplicate"]
    linked = [
        s
        for s in duplicates
        if any(
            (link.trace_id, link.span_id) in firsts
            and link.trace_id == s.trace_id  # type: ignore[attr-defined]
            and {a.key: a.value.string_value for a in link.attributes}
            == {"amt.link": "first_arrival"}
            for link in s.links  # type: ignore[attr-defined]
        )
    ]
    assert len(linked) == len(duplicates) >= EVENTS
    assert {"amt.events", "amt.path.lag", "amt.jobs", "amt.queue.depth"} <= receiver.metric_names()

    # Secrets: not in any log line, not in any exported byte.
    assert SECRET_TOKEN not in output
    assert SECRET_AWS not in output
    assert SECRET_TOKEN.encode() not in receiver.raw
    assert SECRET_AWS.encode() not in receiver.raw
    assert '"event":"event_routed"' in output.replace(" ", "")
    routed = [json.loads(line) for line in output.splitlines() if '"event_routed"' in line]
    assert len(routed) == EVENTS + events["duplicate"]
    assert all(line["trace_id"] and line["span_id"] for line in routed)
