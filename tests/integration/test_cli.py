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
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_help_lists_every_command():
    out = run("--help")
    assert out.returncode == 0
    for command in (
        "run",
        "worker",
        "simulate",
        "bootstrap",
        "export",
        "throttle",
        "db",
        "orgs",
        "dlq",
    ):
        assert command in out.stdout
    assert "--no-worker" in run("run", "--help").stdout
    dlq = run("dlq", "--help").stdout
    assert "{list,show,replay,purge}" in dlq
    for option in ("--source {sqs,records,file,all}", "--older-than", "--newer-than", "--limit"):
        assert option in dlq
    for option in ("--json", "--dry-run", "--force", "--yes", "--visibility-timeout"):
        assert option in dlq


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


def test_db_upgrade_and_current(tmp_path):
    env = {"AMT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/new/x.db"}
    assert run("db", "current", env=env).stdout.startswith("none (empty database; run `")
    first = run("db", "upgrade", "0001", env=env)
    assert first.stdout.strip() == "database schema upgraded from none to 0001"
    assert run("db", "current", env=env).stdout.strip() == (
        "0001 (head is 0002; run `python -m amt_ingest db upgrade`)"
    )
    assert run("db", "upgrade", env=env).stdout.strip() == (
        "database schema upgraded from 0001 to 0002 (head)"
    )
    again = run("db", "upgrade", env=env)
    assert again.returncode == 0
    assert again.stdout.strip() == "database schema already at 0002 (head)"
    assert run("db", "current", env=env).stdout.strip() == "0002 (head)"
    unknown = run("db", "upgrade", "nope", env=env)
    assert unknown.returncode == 1 and "nope" in unknown.stderr


def test_a_worker_upgrades_the_schema_at_start(redis_url, tmp_path):
    import signal
    import time

    from tests.conftest import amt_process

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AMT_")},
        "AMT_REDIS_URL": redis_url,
        "AMT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db",
        "AMT_HTTP_PORT": "0",
    }
    with open(tmp_path / "worker.log", "wb") as log:
        worker = amt_process("worker", env=env, output=log)
        try:
            deadline = time.monotonic() + 60
            while b"service_started" not in (tmp_path / "worker.log").read_bytes():
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                assert time.monotonic() < deadline, "the worker did not start"
                time.sleep(0.2)
            assert run("db", "current", env=env).stdout.strip() == "0002 (head)"
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0


def test_without_auto_upgrade_an_old_schema_stops_the_process(redis_url, tmp_path):
    env = {
        "AMT_REDIS_URL": redis_url,
        "AMT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db",
        "AMT_DB_AUTO_UPGRADE": "false",
    }
    out = run("worker", env=env)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert "AMT_DATABASE_URL" in last and "AMT_DB_AUTO_UPGRADE" in last
    assert "`python -m amt_ingest db upgrade`" in last
    assert run("export", env=env).returncode == 1


def test_orgs_command(tmp_path):
    env = {"AMT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"}
    empty = run("orgs", "list", env=env)
    assert empty.returncode == 0 and empty.stdout == ""
    assert "every org" in empty.stderr
    assert run("orgs", "add", ORG, "--note", "main", env=env).stdout.startswith(f"added {ORG}")
    assert run("orgs", "add", ORG[:15], env=env).stdout.strip() == (
        f"{ORG[:15]} is already allowed (as {ORG})"
    )
    other = "00D5g000009XyZQ"
    listed = run("orgs", "list", env={**env, "AMT_ALLOWED_ORG_IDS": other}).stdout
    rows = [json.loads(line) for line in listed.splitlines()]
    assert [(r["org_id"], r["source"]) for r in rows] == [
        (other, "AMT_ALLOWED_ORG_IDS"),
        (ORG, "database"),
    ]
    assert rows[1]["note"] == "main" and rows[1]["added_at"].endswith("+00:00")
    removed = run("orgs", "remove", ORG, env={**env, "AMT_ALLOWED_ORG_IDS": ORG})
    assert removed.stdout.splitlines() == [
        f"removed {ORG}",
        f"{ORG} stays allowed through AMT_ALLOWED_ORG_IDS",
    ]
    assert "nothing removed" in run("orgs", "remove", ORG, env=env).stdout
    for bad in (("add",), ("add", "00X1"), ("list", ORG), ("remove", ORG, "--note", "n")):
        out = run("orgs", *bad, env=env)
        assert out.returncode == 2 and out.stderr.startswith("amt_ingest: "), bad


def test_dlq_commands_over_sqs_and_the_file(aws_env, redis_url, tmp_path):
    import asyncio

    import boto3

    from amt_ingest.operations.deadletters.sink import DeadLetters
    from amt_ingest.routing.events import parse_sqs_message
    from tests.conftest import SAMPLES

    boot = json.loads(
        run("bootstrap", "--queue-name", "cli-dlq", "--max-receive-count", "1").stdout
    )
    sqs = boto3.client("sqs", endpoint_url=aws_env)
    envelope = json.loads((SAMPLES / "sqs-message-sns-envelope.json").read_text())["Body"]
    sqs.send_message(QueueUrl=boot["queue_url"], MessageBody=envelope)
    for _ in range(2):  # the second receive moves it to the DLQ (maxReceiveCount 1)
        sqs.receive_message(QueueUrl=boot["queue_url"], VisibilityTimeout=0)
    dead_file = tmp_path / "dead.jsonl"
    fallback = DeadLetters(sqs=None, dlq_url=None, fallback_path=dead_file)
    asyncio.run(fallback.put(parse_sqs_message("{"), path="ws", source="ws://passport"))
    env = {
        "AMT_REDIS_URL": redis_url,
        "AMT_SQS_QUEUE_URLS": boot["queue_url"],
        "AMT_DEAD_LETTER_FILE": str(dead_file),
    }

    listed = run("dlq", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    header, redriven, rejected, summary = listed.stdout.splitlines()
    assert header.split() == ["ID", "PLACE", "TOPIC", "ORG", "REASON", "AGE", "EVENT/RECORD"]
    assert redriven.split()[1:5] == ["sqs", "Opportunity", ORG, "redriven"]
    assert rejected.split()[1:5] == ["file", "-", "-", "invalid_json"]
    assert summary == "2 dead letters (records 0, sqs 1, file 1)"
    as_json = [
        json.loads(line) for line in run("dlq", "list", "--json", env=env).stdout.splitlines()
    ]
    assert [letter["place"] for letter in as_json] == ["sqs", "file"]
    none = run("dlq", "list", "--older-than", "1d", env=env)
    assert none.stdout.splitlines() == ["0 dead letters (records 0, sqs 0, file 0)"]

    shown = run("dlq", "show", redriven.split()[0], env=env)
    assert shown.returncode == 0 and "SNS Message (decoded):" in shown.stdout
    assert run("dlq", "show", "sqs:cli-dlq-dlq:nope", env=env).returncode == 1
    assert run("dlq", "show", env=env).returncode == 2

    refused = run("dlq", "purge", env=env)  # no terminal to confirm on
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert len(run("dlq", "list", "--json", env=env).stdout.splitlines()) == 2
    purged = run("dlq", "purge", "--reason", "invalid_json", "--yes", env=env)
    assert purged.returncode == 0 and purged.stdout.splitlines()[-1] == "deleted 1, failed 0"
    left = [json.loads(line) for line in run("dlq", "list", "--json", env=env).stdout.splitlines()]
    assert [letter["reason"] for letter in left] == ["redriven"]

    bad = run("dlq", "list", "--older-than", "5x", env=env)
    assert bad.returncode == 2 and "not an age" in bad.stderr
