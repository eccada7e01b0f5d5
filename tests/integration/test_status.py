"""``status`` and ``trace`` against real Redis and a real /readyz."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis

from amt_ingest.cli import main
from amt_ingest.coordination import Coordinator
from amt_ingest.events import parse_event
from amt_ingest.health import HealthServer
from amt_ingest.telemetry.tracing import event_trace_id
from tests.unit.test_events import load


async def test_status_once_shows_what_redis_and_readyz_hold(redis_url, monkeypatch, capsys):
    client = aioredis.Redis.from_url(redis_url)
    coord = Coordinator(client, dedup_ttl=3600)
    event = parse_event(load("event-opportunity-update.json"))
    await coord.ingest([event], path="ws", track_one_path=True)
    await coord.ingest([event], path="sqs", track_one_path=True)
    await coord.publish_gauges({"ws:connected": 0, "ws:state_for_s": 12.5, "ws:reconnects": 4})

    async def failing() -> tuple[bool, str]:
        return False, "websocket=down 90s sqs=failing"

    health = HealthServer(host="127.0.0.1", port=0, checks={"sources": failing})
    await health.start()
    monkeypatch.setenv("AMT_REDIS_URL", redis_url)
    url = f"http://127.0.0.1:{health.bound_port}"
    try:
        code = await asyncio.to_thread(
            main, ["status", "--once", "--json", "--interval", "0.1", "--url", url]
        )
    finally:
        await health.stop()
        await client.aclose()
    assert code == 0
    view = json.loads(capsys.readouterr().out)
    rows = {(r["path"], r["topic"]): r for r in view["events"]}
    assert rows[("ws", "Opportunity")]["total"] == 1
    assert rows[("sqs", "Opportunity")]["duplicates"] == 1
    assert view["path_lag_ms"]["samples"] == 1
    assert view["one_path_pending"] == 0
    assert view["queues"]["arq"] == 1
    assert view["websocket"]["connected"] is False and view["websocket"]["reconnects"] == 4
    assert view["ready"]["checks"]["sources"]["ok"] is False


def test_status_names_an_unreachable_redis(monkeypatch, capsys):
    monkeypatch.setenv("AMT_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["status", "--once"]) == 1
    assert "AMT_REDIS_URL" in capsys.readouterr().err


def test_trace_prints_the_event_trace_id(capsys):
    assert main(["trace", "e-1", "e-2"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[0] == f"e-1 {event_trace_id('e-1'):032x}"
    assert lines[1] == f"e-2 {event_trace_id('e-2'):032x}"
