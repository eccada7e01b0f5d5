"""``status`` and ``trace`` against real Redis and a real /readyz."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import redis.asyncio as aioredis

from amt_ingest.cli import main
from amt_ingest.coordination import Coordinator, Leadership
from amt_ingest.operations.health import HealthServer
from amt_ingest.routing.events import parse_event
from amt_ingest.telemetry.tracing import event_trace_id
from tests.unit.test_events import load


def _amt(*args: str, redis: str) -> subprocess.CompletedProcess[str]:
    """The command as operators run it (its logging set up in its own process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")}
    env |= {"AMT_REDIS_URL": redis, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "amt_ingest", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_status_once_shows_what_redis_and_readyz_hold(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    coord = Coordinator(client, dedup_ttl=3600)
    event = parse_event(load("event-opportunity-update.json"))
    await coord.handoff.ingest([event], path="ws", track_one_path=True)
    await coord.handoff.ingest([event], path="sqs", track_one_path=True)
    leader = await Leadership(client, replica="r1.abc", ttl_ms=60_000).acquire()
    assert leader is not None
    entry = {"name": "r1", "roles": ["websocket", "sqs", "worker"], "websocket": "leader"}
    await coord.replicas.beat(
        "r1.abc", entry | {"connected": False, "state_for_s": 12.5, "reconnects": 4}
    )
    await coord.replicas.beat("r2.def", entry | {"name": "r2", "websocket": "standby"})

    async def failing() -> tuple[bool, str]:
        return False, "websocket=down 90s sqs=failing"

    health = HealthServer(host="127.0.0.1", port=0, checks={"sources": failing})
    await health.start()
    url = f"http://127.0.0.1:{health.bound_port}"
    try:
        done = await asyncio.to_thread(
            _amt, "status", "--once", "--json", "--interval", "0.1", "--url", url, redis=redis_url
        )
    finally:
        await health.stop()
        await client.aclose()
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    rows = {(r["path"], r["topic"]): r for r in view["events"]}
    assert rows[("ws", "Opportunity")]["total"] == 1
    assert rows[("sqs", "Opportunity")]["duplicates"] == 1
    assert view["path_lag_ms"]["samples"] == 1
    assert view["one_path_pending"] == 0
    assert view["queues"]["arq"] == 1
    assert view["websocket"]["connected"] is False and view["websocket"]["reconnects"] == 4
    assert view["websocket"]["leader"] == "r1" and view["websocket"]["leader_changes"] == 1
    assert [(r["name"], r["leads"], r["websocket"]) for r in view["replicas"]] == [
        ("r1", True, "leader"),
        ("r2", False, "standby"),
    ]
    assert view["ready"]["checks"]["sources"]["ok"] is False


def test_status_names_an_unreachable_redis():
    done = _amt("status", "--once", redis="redis://127.0.0.1:1/0")
    assert done.returncode == 1
    assert "AMT_REDIS_URL" in done.stderr


def test_trace_prints_the_event_trace_id(capsys):
    assert main(["trace", "e-1", "e-2"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[0] == f"e-1 {event_trace_id('e-1'):032x}"
    assert lines[1] == f"e-2 {event_trace_id('e-2'):032x}"
