"""The whole pipeline, end to end, with every part real and in its own process.

The Passport simulator (WebSocket + SNS publishing), a moto server as the AWS
endpoint, real Redis, and the service as a subprocess; thousands of events over
hundreds of records of all three types, with cross-path duplicates, events on
one path only, out-of-order delivery, deletes, undeletes, multi-record events,
a foreign org and malformed input on both paths. ``export`` must equal the
simulator's ground truth exactly, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import POSTGRES_URL, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

EVENTS = 3000
# The moto server scans a whole queue on every call: offer what it can drain,
# so that the queue stays shallow (DESIGN.md section 3).
RATE = 40
RECORDS = 300
ORG = "00D5g000004ZzABEA0"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")}
    env.update(extra)
    env["AMT_LOG_FORMAT"] = "json"
    return env


def _store_url(database: str, tmp_path: Path) -> str:
    """The store of an e2e run: a fresh SQLite file, or the test PostgreSQL database emptied."""
    if database == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/store.db"
    import asyncio

    from amt_ingest.store import Store, metadata

    async def reset() -> None:
        store = Store.open(POSTGRES_URL)
        async with store.engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
        await store.close()

    asyncio.run(reset())
    return POSTGRES_URL


def _aws_env(aws_env: str, redis_url: str, db_url: str) -> dict[str, str]:
    """The environment every e2e process starts from: the moto endpoint, Redis, the store."""
    return _env(
        AWS_ENDPOINT_URL=aws_env,
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AMT_REDIS_URL=redis_url,
        AMT_DATABASE_URL=db_url,
    )


def _run(args: list[str], env: dict[str, str], timeout: float = 60) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "amt_ingest", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _export(env: dict[str, str]) -> list[dict]:
    return [json.loads(line) for line in _run(["export"], env).splitlines()]


def _stop(proc: subprocess.Popen, timeout: float = 30) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def _backlog(env: dict[str, str], queue_url: str, redis_url: str) -> str:
    import boto3

    sqs = boto3.client(
        "sqs",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    client = redis.Redis.from_url(redis_url)
    queued, pending = client.zcard("amt:queue"), client.scard("amt:pending")
    return (
        f"sqs visible={attrs['ApproximateNumberOfMessages']} "
        f"in flight={attrs['ApproximateNumberOfMessagesNotVisible']}, "
        f"arq queued={queued}, records pending={pending}"
    )


def _dlq_messages(env: dict[str, str], dlq_url: str) -> list[dict]:
    import boto3

    sqs = boto3.client(
        "sqs",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    seen: dict[str, dict] = {}
    for _ in range(10):
        reply = sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            VisibilityTimeout=60,
        )
        batch = reply.get("Messages", [])
        if not batch:
            break
        seen.update({m["MessageId"]: m for m in batch})
    return list(seen.values())


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_both_paths_converge_to_ground_truth(database, aws_env, redis_url, tmp_path: Path):
    db_url = _store_url(database, tmp_path)
    ws_port, sf_port, http_port = free_port(), free_port(), free_port()
    truth_path, stats_path = tmp_path / "truth.jsonl", tmp_path / "stats.json"
    base = _aws_env(aws_env, redis_url, db_url)
    boot = json.loads(_run(["bootstrap"], base))
    queue_url, dlq_url = boot["queue_url"], boot["dlq_url"]
    service_env = {
        **base,
        "AMT_PASSPORT_WS_URL": f"ws://127.0.0.1:{ws_port}/stream",
        "AMT_PASSPORT_TOKEN": "e2e-token",
        "AMT_SALESFORCE_BASE_URL": f"http://127.0.0.1:{sf_port}",
        "AMT_SQS_QUEUE_URLS": queue_url,
        "AMT_SQS_WAIT_SECONDS": "1",
        "AMT_ALLOWED_ORG_IDS": ORG,
        "AMT_HTTP_PORT": str(http_port),
        "AMT_DEAD_LETTER_FILE": str(tmp_path / "dead.jsonl"),
        "AMT_LOG_LEVEL": os.environ.get("AMT_E2E_LOG_LEVEL", "warning"),
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.monotonic()
    with open(logs / "service.log", "wb") as service_log, open(logs / "sim.log", "wb") as sim_log:
        service = subprocess.Popen(
            [sys.executable, "-m", "amt_ingest", "run"],
            env=service_env,
            stdout=service_log,
            stderr=subprocess.STDOUT,
        )
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
                "e2e-token",
                "--events",
                str(EVENTS),
                "--records",
                str(RECORDS),
                "--rate",
                str(RATE),
                "--seed",
                "11",
                "--dup-rate",
                "0.1",
                "--ooo-rate",
                "0.1",
                "--ws-only-rate",
                "0.05",
                "--sqs-only-rate",
                "0.05",
                "--foreign-org-rate",
                "0.02",
                "--malformed-rate",
                "0.01",
                "--max-batch",
                "50",
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
        try:
            # Generous: on a loaded machine the moto server is slow, not wrong. The
            # figure that matters is printed below (converged in ...).
            deadline = time.monotonic() + 540
            while not truth_path.exists():
                assert simulator.poll() is None, (logs / "sim.log").read_text()[-3000:]
                assert service.poll() is None, (logs / "service.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the simulator did not finish"
                time.sleep(0.5)
            truth = [json.loads(line) for line in truth_path.read_text().splitlines()]
            exported: list[dict] = []
            while time.monotonic() < deadline:
                exported = _export(service_env)
                if exported == truth:
                    break
                assert service.poll() is None, (logs / "service.log").read_text()[-3000:]
                time.sleep(1)
            converged_s = time.monotonic() - started
            missing = {(r["topic"], r["id"]) for r in truth} - {
                (r["topic"], r["id"]) for r in exported
            }
            assert not missing, f"{len(missing)} records missing, e.g. {sorted(missing)[:3]}"
            diff = [(t, e) for t, e in zip(truth, exported, strict=False) if t != e]
            backlog = _backlog(service_env, queue_url, redis_url)
            assert exported == truth, f"{len(diff)} records differ ({backlog}), first: {diff[:1]}"
        finally:
            code = _stop(service)
            _stop(simulator)
    assert code == 0, (logs / "service.log").read_text()[-3000:]

    stats = json.loads(stats_path.read_text())
    counters = {
        k.decode(): int(v) for k, v in redis.Redis.from_url(redis_url).hgetall("amt:stats").items()
    }
    first = sum(v for k, v in counters.items() if k.startswith("first:"))
    dups = sum(v for k, v in counters.items() if k.startswith("duplicate:"))
    filtered = sum(v for k, v in counters.items() if k.startswith("filtered:"))
    print(
        f"\ne2e[{database}]: {EVENTS} events over {RECORDS} records -> {len(truth)} records, "
        f"converged in {converged_s:.1f}s; first={first} duplicates={dups} filtered={filtered} "
        f"counters={counters} simulator={stats}"
    )
    # Events of the foreign org were filtered out and counted, not dead-lettered.
    assert filtered > 0
    assert dups > 0
    assert any(k.startswith("duplicate:sqs") for k in counters) and any(
        k.startswith("first:sqs") for k in counters
    )
    # Malformed input from both paths is in the dead-letter queue with its reason.
    dead = _dlq_messages(service_env, dlq_url)
    paths = {m["MessageAttributes"]["path"]["StringValue"] for m in dead}
    reasons = {m["MessageAttributes"]["reason"]["StringValue"] for m in dead}
    assert paths == {"ws", "sqs"}, reasons
    assert all(m["MessageAttributes"]["detail"]["StringValue"] for m in dead)
    assert not any(
        m["MessageAttributes"].get("event_id", {}).get("StringValue") == ORG for m in dead
    )
