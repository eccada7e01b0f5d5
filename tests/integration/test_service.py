"""The service process: health endpoints, readiness and a clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import amt_process, free_port

TOKEN = "svc-token"


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_health_readiness_and_clean_sigterm(aws_env, redis_url, tmp_path: Path):
    ws_port, sf_port, http_port = free_port(), free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")}
    boot = subprocess.run(
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
        "AMT_PASSPORT_TOKEN": TOKEN,
        "AMT_REDIS_URL": redis_url,
        "AMT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
        "AMT_SQS_QUEUE_URLS": queue_url,
        "AMT_SQS_WAIT_SECONDS": "20",
        "AMT_HTTP_PORT": str(http_port),
        "AMT_LOG_FORMAT": "json",
        "AMT_SHUTDOWN_GRACE": "10",
    }
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log:
        service = amt_process("run", env=env, output=log)
        simulator = None
        try:
            url = f"http://127.0.0.1:{http_port}"

            def alive():
                try:
                    return get(url + "/healthz")
                except OSError:
                    return None

            status, body = wait_for(alive, what="/healthz")
            assert status == 200 and body["alive"] is True
            # No Passport yet and no SQS poll done: not ready, with the reason.
            status, body = get(url + "/readyz")
            if status == 503:
                assert body["checks"]["sources"]["ok"] is False
            assert body["checks"]["redis"]["ok"] is True
            assert body["checks"]["database"]["ok"] is True
            simulator = amt_process(
                "simulate",
                "--port",
                str(ws_port),
                "--sf-port",
                str(sf_port),
                "--token",
                TOKEN,
                "--no-sns",
                "--events",
                "50",
                "--rate",
                "0",
                env=base,
            )
            status, body = wait_for(
                lambda: (r := get(url + "/readyz"))[0] == 200 and r, what="ready"
            )
            assert "websocket=up" in body["checks"]["sources"]["detail"]
            # SIGTERM while a 20 s long poll is in flight: a clean exit within the grace period.
            started = time.monotonic()
            service.send_signal(signal.SIGTERM)
            code = service.wait(30)
            elapsed = time.monotonic() - started
        finally:
            if service.poll() is None:
                service.kill()
            if simulator is not None:
                simulator.terminate()
                simulator.wait(10)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert code == 0, log_path.read_text()[-2000:]
    # The 20 s long poll in flight had a second to return, then it was cut off.
    assert elapsed < 5, elapsed
    assert any(line["event"] == "service_stopped" and line["exit_code"] == 0 for line in lines)


def routed(client) -> int:
    """Events the SQS path handed off, whatever their outcome."""
    return sum(
        int(v)
        for k, v in client.hgetall("amt:stats").items()
        if k.split(b":")[0] in (b"first", b"stale", b"duplicate") and b":sqs:" in k
    )


def test_sigterm_under_load_leaves_no_message_in_flight(aws_env, redis_url, tmp_path: Path):
    """Messages received but not handed off at SIGTERM are made visible again at once."""
    import boto3
    import redis as sync_redis

    base = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")}
    boot = subprocess.run(
        [sys.executable, "-m", "amt_ingest", "bootstrap"],
        env=base,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    queue_url = json.loads(boot.stdout)["queue_url"]
    sqs = boto3.client(
        "sqs",
        endpoint_url=aws_env,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    sample = json.loads(
        (Path(__file__).parents[1] / "samples" / "event-opportunity-update.json").read_text()
    )
    bodies = []
    for i in range(150):
        event = dict(sample, event_id=f"7d7c3c1e-2b2f-4d69-9a0e-{i:012d}")
        bodies.append(json.dumps(event))
    for start in range(0, len(bodies), 10):
        sqs.send_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(j), "MessageBody": b} for j, b in enumerate(bodies[start : start + 10])
            ],
        )
    env = {
        **base,
        "AMT_PASSPORT_WS_URL": f"ws://127.0.0.1:{free_port()}/stream",  # nobody there
        "AMT_PASSPORT_TOKEN": TOKEN,
        "AMT_REDIS_URL": redis_url,
        "AMT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
        "AMT_SQS_QUEUE_URLS": queue_url,
        "AMT_SQS_WAIT_SECONDS": "1",
        "AMT_SQS_VISIBILITY_TIMEOUT": "120",
        "AMT_SQS_RECEIVERS_PER_QUEUE": "4",
        "AMT_HTTP_PORT": "0",
        "AMT_LOG_FORMAT": "json",
        "AMT_SHUTDOWN_GRACE": "10",
    }
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log:
        service = amt_process("run", env=env, output=log)
    client = sync_redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: routed(client) >= 20, what="intake under way")
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0, log_path.read_text()[-2000:]
    finally:
        if service.poll() is None:
            service.kill()
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    # With a 120 s visibility timeout, anything received and not handed off would
    # still be in flight now; released messages are visible, handed-off ones deleted.
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0"
    assert routed(client) + int(attrs["ApproximateNumberOfMessages"]) >= 150


def test_sigterm_while_starting_is_a_clean_exit(redis_url, tmp_path: Path):
    """An orchestrator may stop a replica that is still importing: exit 0, not death by
    signal (the process remembers the signal until the service can honour it)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AMT_")},
        "AMT_REDIS_URL": redis_url,
        "AMT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
        "AMT_HTTP_PORT": "0",
    }
    with open(tmp_path / "worker.log", "wb") as log:
        worker = amt_process("worker", env=env, output=log)
        time.sleep(1.0)  # inside the imports (they take seconds), before its own handlers
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(60)
    assert code == 0, (tmp_path / "worker.log").read_text()[-2000:]


def test_two_replicas_one_leads_the_other_stands_by_ready(aws_env, redis_url, tmp_path: Path):
    """Two `run` replicas on one Redis: one subscribes, the other's /readyz is ready
    and says it stands by; `status` lists both with their roles; the standby takes
    over when the leader stops."""
    ws_port, sf_port = free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")}
    env = {
        **base,
        "AMT_PASSPORT_WS_URL": f"ws://127.0.0.1:{ws_port}/stream",
        "AMT_PASSPORT_TOKEN": TOKEN,
        "AMT_REDIS_URL": redis_url,
        "AMT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
        "AMT_LOG_FORMAT": "json",
        "OTEL_SDK_DISABLED": "true",
    }
    ports = {"a": free_port(), "b": free_port()}
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ports}  # noqa: SIM115
    simulator = amt_process(
        "simulate",
        *("--port", str(ws_port), "--sf-port", str(sf_port), "--token", TOKEN),
        *("--no-sns", "--events", "0", "--rate", "20"),
        env=base,
    )
    procs = {
        name: amt_process(
            "run",
            env=env | {"AMT_REPLICA_ID": name, "AMT_HTTP_PORT": str(port)},
            output=logs[name],
        )
        for name, port in ports.items()
    }

    def readiness() -> dict[str, str] | None:
        details = {}
        for name, port in ports.items():
            try:
                status, body = get(f"http://127.0.0.1:{port}/readyz")
            except OSError:
                return None
            if status != 200:
                return None
            details[name] = body["checks"]["sources"]["detail"]
        return details if len({d.split()[0] for d in details.values()}) == 2 else None

    try:
        details = wait_for(readiness, what="a leader and a ready standby")
        leader = next(n for n, d in details.items() if d.startswith("websocket=up"))
        standby = next(n for n in ports if n != leader)
        assert details[standby].startswith("websocket=standby")
        status = subprocess.run(
            [sys.executable, "-m", "amt_ingest", "status", "--once", "--json"],
            env=env | {"AMT_HTTP_PORT": str(ports[leader])},
            capture_output=True,
            text=True,
            timeout=60,
        )
        view = json.loads(status.stdout)
        rows = {r["name"]: r for r in view["replicas"]}
        assert set(rows) == {"a", "b"}
        assert rows[leader]["leads"] and rows[leader]["websocket"] == "leader"
        assert rows[standby]["websocket"] == "standby" and not rows[standby]["leads"]
        assert rows[standby]["roles"] == ["websocket", "worker"]  # no queue URLs: no SQS
        assert view["websocket"]["leader"] == leader
        # The leader stops: it releases the lease, the standby takes over at its next try.
        procs[leader].send_signal(signal.SIGTERM)
        assert procs[leader].wait(15) == 0
        wait_for(
            lambda: (
                "websocket=up"
                in get(f"http://127.0.0.1:{ports[standby]}/readyz")[1]["checks"]["sources"][
                    "detail"
                ]
            ),
            timeout=10,
            what="the standby leads",
        )
    finally:
        for proc in [*procs.values(), simulator]:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)
        for log in logs.values():
            log.close()
    lines = [
        json.loads(line)
        for line in (tmp_path / f"{standby}.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert any(line["event"] == "ws_leader" for line in lines)


def test_a_process_with_nothing_to_run_says_so(redis_url, tmp_path: Path):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AMT_")},
        "AMT_REDIS_URL": redis_url,
        "AMT_RUN_WORKER": "false",
    }
    done = subprocess.run(
        [sys.executable, "-m", "amt_ingest", "run", "--no-websocket", "--no-sqs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "nothing to run" in done.stderr and "AMT_RUN_WORKER" in done.stderr
