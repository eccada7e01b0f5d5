"""Gaps healed end to end: gap events, an overflowed transaction, and a resume point
that expires while the service is down. Afterwards the store equals the truth.

The simulator withholds the content of some changes (``GAP_*``), replaces some
transactions by one ``GAP_OVERFLOW``, and keeps only a short replay window.
The service is stopped long enough for its WebSocket cursor to fall out of
that window, then started again: it must resubscribe from ``earliest``,
resync every type, and re-read what it cannot know from Salesforce's REST
API (the simulator's, answering from its truth).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port
from tests.e2e.test_pipeline import ORG, _env, _export, _run, _stop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def agree(truth: list[dict], store: list[dict], withheld: set[tuple[str, str]]) -> list[str]:
    """Differences between the truth and the store. A record whose change was
    withheld (a gap or an overflow) and that was deleted before the mirror could
    re-read it (Salesforce answers 404) cannot hold content the mirror never saw:
    for those (the simulator lists them) only the tombstone must match."""
    held = {(r["topic"], r["id"]): r for r in store}
    problems = []
    for want in truth:
        key = (want["topic"], want["id"])
        got = held.pop(key, None)
        if got is None:
            problems.append(f"missing {key}")
        elif not want["deleted"]:
            if got != want:
                problems.append(f"differs {key}: {got} != {want}")
        elif not got["deleted"]:
            problems.append(f"not deleted {key}: {got} != {want}")
        elif key not in withheld and any(
            want["fields"].get(k, object()) != v for k, v in got["fields"].items()
        ):
            # A deleted record's fields are those it had before its delete: the
            # store holds a subset (its CREATE may have been a gap).
            problems.append(f"deleted record differs {key}: {got} != {want}")
    problems.extend(f"unexpected {key}" for key in held)
    return problems


def test_gaps_overflows_and_an_expired_resume_point_heal(aws_env, redis_url, tmp_path: Path):
    ws_port, sf_port = free_port(), free_port()
    truth_path, stats_path = tmp_path / "truth.jsonl", tmp_path / "stats.json"
    base = _env(
        AWS_ENDPOINT_URL=aws_env,
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AMT_REDIS_URL=redis_url,
        AMT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/store.db",
    )
    queue_url = json.loads(_run(["bootstrap"], base))["queue_url"]
    env = {
        **base,
        "AMT_PASSPORT_WS_URL": f"ws://127.0.0.1:{ws_port}/stream",
        "AMT_PASSPORT_TOKEN": "gap-token",
        "AMT_SALESFORCE_BASE_URL": f"http://127.0.0.1:{sf_port}",
        "AMT_SQS_QUEUE_URLS": queue_url,
        "AMT_SQS_WAIT_SECONDS": "1",
        "AMT_ALLOWED_ORG_IDS": ORG,
        "AMT_HTTP_PORT": "0",
        "AMT_LOG_LEVEL": "warning",
        "AMT_WS_BACKOFF_MAX": "2",
    }
    client = redis.Redis.from_url(redis_url)

    def handed_off() -> int:
        return sum(
            int(v) for k, v in client.hgetall("amt:stats").items() if k.startswith(b"first:")
        )

    logs = tmp_path / "logs"
    logs.mkdir()
    sim_log = open(logs / "sim.log", "wb")  # noqa: SIM115
    simulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "amt_ingest",
            "simulate",
            "--port",
            str(ws_port),
            "--sf-port",
            str(sf_port),
            "--token",
            "gap-token",
            "--events",
            "1600",
            "--records",
            "150",
            "--rate",
            "40",
            "--seed",
            "21",
            "--gap-rate",
            "0.05",
            "--overflow-rate",
            "0.02",
            "--retention",
            "150",
            "--dup-rate",
            "0.05",
            "--ooo-rate",
            "0.05",
            "--max-batch",
            "20",
            "--sqs-queue-url",
            queue_url,
            "--truth",
            str(truth_path),
            "--stats",
            str(stats_path),
        ],
        env=base,
        stdout=sim_log,
        stderr=subprocess.STDOUT,
    )
    service = None
    try:
        with open(logs / "service-1.log", "wb") as log:
            service = subprocess.Popen(
                [sys.executable, "-m", "amt_ingest", "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while handed_off() < 300:
            assert time.monotonic() < deadline, "no intake"
            time.sleep(0.5)
        assert _stop(service) == 0
        time.sleep(12)  # ~480 events while down: the cursor falls out of the 150-event window
        with open(logs / "service-2.log", "wb") as log:
            service = subprocess.Popen(
                [sys.executable, "-m", "amt_ingest", "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 540
        while not truth_path.exists():
            assert simulator.poll() is None and service.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.5)
        truth = [json.loads(line) for line in truth_path.read_text().splitlines()]
        withheld = {
            (r["topic"], r["id"])
            for r in json.loads(stats_path.read_text())["withheld_then_deleted"]
        }
        problems: list[str] = ["not compared yet"]
        while time.monotonic() < deadline:
            problems = agree(truth, _export(env), withheld)
            if not problems:
                break
            time.sleep(2)
        assert not problems, f"{len(problems)} problems, e.g. {problems[:3]}"
    finally:
        if service is not None:
            _stop(service)
        _stop(simulator)
        sim_log.close()
    stats = json.loads(stats_path.read_text())["delivery"]
    resyncs = [r.decode() for r in client.zrange("amt:resyncs", 0, -1)]
    print(f"\ngaps e2e: delivery={stats} resyncs={resyncs}")
    expired = [r for r in resyncs if r.startswith("expired-")]
    assert len(expired) == 3, "the expired window was not resynced (one per type)"
    progress = [
        {k.decode(): v.decode() for k, v in client.hgetall(f"amt:resync:{r}").items()}
        for r in resyncs
    ]
    assert all(p["state"] == "done" for p in progress), progress
    assert sum(int(p.get("marked", 0)) for p in progress) > 0
    assert stats["gap_events"] > 0 and stats["overflows"] > 0
    assert len([r for r in resyncs if not r.startswith("expired-")]) >= 1  # overflow resyncs
