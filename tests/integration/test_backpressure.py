"""Backpressure end to end: with no worker, intake stops at the high-water mark, memory
stays flat, and everything drains once a worker runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from tests.conftest import amt_process, free_port
from tests.integration.test_service import wait_for

TOKEN = "bp-token"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_intake_pauses_memory_stays_flat_and_everything_drains(redis_url, tmp_path: Path):
    ws_port, sf_port = free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AMT_", "AWS_"))}
    truth = tmp_path / "truth.jsonl"
    env = {
        **base,
        "AMT_PASSPORT_WS_URL": f"ws://127.0.0.1:{ws_port}/stream",
        "AMT_PASSPORT_TOKEN": TOKEN,
        "AMT_REDIS_URL": redis_url,
        "AMT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
        "AMT_HTTP_PORT": "0",
        "AMT_MAX_PENDING_RECORDS": "200",
        "AMT_WS_CREDITS": "100",
        "AMT_LOG_FORMAT": "json",
        "AMT_LOG_LEVEL": "warning",
    }
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
        "4000",
        "--records",
        "2000",
        "--rate",
        "0",
        "--truth",
        str(truth),
        env=base,
    )
    service = amt_process("run", "--no-worker", env=env)
    worker = None
    client = redis.Redis.from_url(redis_url)

    def handed_off() -> int:
        return sum(
            int(v)
            for k, v in client.hgetall("amt:stats").items()
            if k.split(b":")[0] in (b"first", b"stale", b"duplicate", b"filtered")
        )

    try:
        wait_for(truth.exists, 60, "the simulator's events")
        wait_for(lambda: client.scard("amt:pending") >= 200, 60, "the high-water mark")
        time.sleep(1.0)
        paused_at, rss_paused = handed_off(), rss_kb(service.pid)
        time.sleep(4.0)
        # Nothing more taken in (credits withheld: Passport holds the rest), memory flat.
        assert handed_off() <= paused_at + 100, "intake went on past the high-water mark"
        assert rss_kb(service.pid) - rss_paused < 5_000
        assert handed_off() < 4000
        worker = amt_process("worker", env=env)
        wait_for(lambda: handed_off() >= 4000 and client.zcard("amt:queue") == 0, 180, "drain")
        out = subprocess.run(
            [sys.executable, "-m", "amt_ingest", "export"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        wait_for(lambda: not client.keys("amt:rec:*"), 60, "jobs to finish")
        out = subprocess.run(
            [sys.executable, "-m", "amt_ingest", "export"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert [json.loads(line) for line in out.stdout.splitlines()] == [
            json.loads(line) for line in truth.read_text().splitlines()
        ]
    finally:
        for proc in (service, worker, simulator):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
