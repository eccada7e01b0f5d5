"""Three replicas of the service, every part real and in its own process, under SIGKILLs.

Three ``run`` replicas (WebSocket intake, SQS intake and an embedded worker each)
share one Redis, one database and the SQS queue while the Passport simulator
streams events with duplicates, events on one path only and out-of-order
delivery. The WebSocket leader is killed, then a standby, then the new leader;
then the leader is stopped with SIGTERM. Afterwards the store must equal the
simulator's ground truth, and the simulator must never have seen two
subscriptions open at once. Each failover is timed from the kill to the next
WebSocket hand-off (the cursor moving again).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port
from tests.e2e.test_pipeline import _aws_env, _export, _run, _store_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EVENTS = 1600
RATE = 40
ORG = "00D5g000004ZzABEA0"


class Cluster:
    def __init__(self, env: dict[str, str], logs: Path, redis_url: str):
        self.env = env
        self.logs = logs
        self.redis = redis.Redis.from_url(redis_url)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: dict[str, int] = {}

    def start(self, name: str) -> None:
        self.starts[name] = self.starts.get(name, 0) + 1
        log = open(self.logs / f"{name}.{self.starts[name]}.log", "wb")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "amt_ingest", "run"],
            env={**self.env, "AMT_REPLICA_ID": name, "AMT_HTTP_PORT": str(free_port())},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def leader(self) -> str | None:
        held = self.redis.get("amt:leader:ws")
        return held.decode().split(".", 1)[0] if held else None

    def cursor(self) -> bytes | None:
        value = self.redis.get("amt:cursor:ws")
        return bytes(value) if value is not None else None

    def handed_off(self) -> int:
        return sum(
            int(v) for k, v in self.redis.hgetall("amt:stats").items() if k.startswith(b"first:ws:")
        )

    def wait(self, predicate, within: float, what: str):
        deadline = time.monotonic() + within
        while not (value := predicate()):
            for name, proc in self.procs.items():
                assert proc.poll() is None or proc.returncode in (0, -9), f"{name} exited"
            assert time.monotonic() < deadline, f"not within {within}s: {what}"
            time.sleep(0.05)
        return value

    def kill(self, name: str) -> float:
        """SIGKILL a replica; returns when it was killed (monotonic)."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(10)
        return killed

    def failover(self, since: float) -> float:
        """Seconds from ``since`` until the cursor moves (a WebSocket hand-off)."""
        before = self.cursor()
        moved = self.wait(lambda: self.cursor() != before, 30, "a hand-off after the kill")
        assert moved
        return time.monotonic() - since

    def stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in list(self.procs.items()):
            try:
                codes[name] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = None
        self.procs.clear()
        return codes


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_replicas_share_the_work_and_survive_a_killed_leader(
    database, aws_env, redis_url, tmp_path: Path
):
    db_url = _store_url(database, tmp_path)
    ws_port, sf_port = free_port(), free_port()
    truth_path, stats_path = tmp_path / "truth.jsonl", tmp_path / "stats.json"
    base = _aws_env(aws_env, redis_url, db_url)
    queue_url = json.loads(_run(["bootstrap"], base))["queue_url"]
    env = {
        **base,
        "AMT_PASSPORT_WS_URL": f"ws://127.0.0.1:{ws_port}/stream",
        "AMT_PASSPORT_TOKEN": "e2e-token",
        "AMT_SALESFORCE_BASE_URL": f"http://127.0.0.1:{sf_port}",
        "AMT_SQS_QUEUE_URLS": queue_url,
        "AMT_SQS_WAIT_SECONDS": "20",
        "AMT_SQS_VISIBILITY_TIMEOUT": "10",
        "AMT_ALLOWED_ORG_IDS": ORG,
        "AMT_DEAD_LETTER_FILE": str(tmp_path / "dead.jsonl"),
        "AMT_LOG_LEVEL": "info",
        "OTEL_SDK_DISABLED": "true",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(env, logs, redis_url)
    for name in ("r1", "r2", "r3"):
        cluster.start(name)
    sim_log = open(logs / "sim.log", "wb")  # noqa: SIM115
    simulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "amt_ingest",
            "simulate",
            *("--port", str(ws_port), "--sf-port", str(sf_port), "--token", "e2e-token"),
            *("--events", str(EVENTS), "--rate", str(RATE), "--records", "200", "--seed", "3"),
            *("--dup-rate", "0.05", "--ooo-rate", "0.05", "--max-batch", "20"),
            *("--ws-only-rate", "0.03", "--sqs-only-rate", "0.03"),
            *("--sqs-queue-url", queue_url, "--truth", str(truth_path), "--stats", str(stats_path)),
        ],
        env=base,
        stdout=sim_log,
        stderr=subprocess.STDOUT,
    )
    failovers: dict[str, float] = {}
    try:
        first = cluster.wait(cluster.leader, 60, "a leader")
        cluster.wait(lambda: cluster.handed_off() > 200, 120, "events flowing")
        # 1. The leader dies: a standby resumes from the cursor within the lease.
        failovers["leader killed"] = cluster.failover(cluster.kill(first))
        cluster.start(first)
        second = cluster.wait(cluster.leader, 30, "a new leader")
        assert second != first
        # 2. A standby dies: nothing changes for the WebSocket.
        standby = next(n for n in ("r1", "r2", "r3") if n not in (first, second))
        cluster.wait(lambda: cluster.handed_off() > 500, 120, "more events")
        cluster.kill(standby)
        cluster.start(standby)
        # 3. The new leader dies too.
        cluster.wait(lambda: cluster.handed_off() > 800, 120, "more events")
        failovers["second leader killed"] = cluster.failover(cluster.kill(second))
        cluster.start(second)
        # 4. SIGTERM of the leader: it releases the lease, a standby takes over at once.
        cluster.wait(lambda: cluster.handed_off() > 1100, 120, "more events")
        third = cluster.wait(cluster.leader, 30, "a leader")
        term = cluster.procs.pop(third)
        term.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = term.wait(15)
        exited_s = time.monotonic() - signalled
        failovers["leader stopped"] = cluster.failover(signalled)
        cluster.start(third)
        cluster.wait(truth_path.exists, 300, "the simulator's truth")
        ended = time.monotonic()
        truth = [json.loads(line) for line in truth_path.read_text().splitlines()]
        exported: list[dict] = []
        while time.monotonic() - ended < 120:
            exported = _export(env)
            if exported == truth:
                break
            time.sleep(0.5)
        converged_s = time.monotonic() - ended
        assert exported == truth, [(t, e) for t, e in zip(truth, exported, strict=False) if t != e][
            :2
        ]
    finally:
        codes = cluster.stop_all()
        simulator.terminate()
        simulator.wait(15)
        sim_log.close()
    stats = json.loads(stats_path.read_text())
    counters = {k.decode(): int(v) for k, v in cluster.redis.hgetall("amt:stats").items()}
    # A first arrival is "first", or "stale" when a newer change of its fields was pending.
    firsts = sum(v for k, v in counters.items() if k.startswith(("first:", "stale:")))
    duplicates = sum(v for k, v in counters.items() if k.startswith("duplicate:"))
    print(
        f"\nreplicas[{database}]: {EVENTS} events, converged {converged_s:.1f}s after the "
        f"stream ended; failovers { ({k: round(v, 1) for k, v in failovers.items()}) }; "
        f"SIGTERM exit {code} in {exited_s:.1f}s; first {firsts}, duplicates {duplicates}; "
        f"stream {stats['stream']}"
    )
    # Applied once: every event was a first arrival exactly once, over both paths and
    # every replica; the replays after each handover and the SQS copies were duplicates.
    assert firsts == stats["generated"]["events"], (firsts, stats["generated"])
    assert stats["stream"]["max_concurrent_subscribers"] == 1
    assert stats["stream"]["subscriptions"] >= 4
    # With AMT_WS_LEASE_S=5: the lease lapses within 5 s, a standby tries every second.
    assert failovers["leader killed"] < 10 and failovers["second leader killed"] < 10, failovers
    assert failovers["leader stopped"] < 5, failovers
    # A 20 s long poll in flight did not hold the stop up.
    assert code == 0 and exited_s < 5, exited_s
    assert set(codes.values()) == {0}, codes
