"""The command line as operators use it: subprocesses with a real environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ORG = "00D5g000004ZzABEA0"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")}
    return subprocess.run(
        [sys.executable, "-m", "amt_ingest", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for command in ("run", "worker", "simulate", "bootstrap", "export", "throttle"):
        assert command in out.stdout
    assert "--no-worker" in run("run", "--help").stdout


def test_invalid_setting_stops_with_one_line_naming_it():
    out = run("run", env={"AMT_HTTP_PORT": "eighty"})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "AMT_HTTP_PORT" in lines[0]


def test_missing_token_stops_the_service(redis_url):
    out = run("run", env={"AMT_REDIS_URL": redis_url})
    assert out.returncode == 2
    assert "AMT_PASSPORT_TOKEN" in out.stderr.strip().splitlines()[-1]


def test_unreachable_redis_is_named():
    out = run("run", env={"AMT_REDIS_URL": "redis://127.0.0.1:1/0", "AMT_PASSPORT_TOKEN": "t"})
    assert out.returncode == 1
    assert "AMT_REDIS_URL" in out.stderr.strip().splitlines()[-1]


def test_bootstrap_is_idempotent(aws_env):
    first = json.loads(run("bootstrap").stdout)
    second = json.loads(run("bootstrap").stdout)
    assert first == second
    assert set(first["topics"]) == {"Opportunity", "External_Attachment__c", "Application_Item__c"}
    assert first["queue_url"].endswith("/amt-ingest-monitor")
    env_line = run("bootstrap", "--format", "env").stdout.strip()
    assert env_line == f"AMT_SQS_QUEUE_URLS={first['queue_url']}"


def test_export_of_an_empty_store(tmp_path):
    out = run("export", env={"AMT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"})
    assert out.returncode == 0 and out.stdout == ""


def test_throttle_command(redis_url):
    import redis as sync_redis

    env = {"AMT_REDIS_URL": redis_url}
    assert run("throttle", "pause", env=env).stdout.strip() == "retries: paused"
    client = sync_redis.Redis.from_url(redis_url)
    assert client.hget("amt:throttle", "mode") == b"pause"
    assert run("throttle", "slow", "4", env=env).stdout.strip() == "retries: slowed x4"
    bad = run("throttle", "slow", env=env)
    assert bad.returncode == 2 and "FACTOR" in bad.stderr
    assert run("throttle", "resume", env=env).stdout.strip() == "retries: normal"
    assert not client.exists("amt:throttle")
