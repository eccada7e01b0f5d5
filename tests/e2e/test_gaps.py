"""A lost window heals completely, deletes too, with no SQS copy to fall back on.

The simulator withholds the content of some changes (``GAP_*``), replaces some
transactions by ``GAP_OVERFLOW`` events, and keeps only a short replay window.
The service is stopped long enough for its WebSocket cursor to fall out of that
window, and SNS is down for part of that time: the events of that part were on
the WebSocket log alone, and expired unread there. Inside it the scenario puts
deletes, an undelete after a delete, records created and deleted, and, just
before the stop, a change to a record of an overflowed bulk transaction that
reaches the stream late (after later events were handed off). The events of
the rest of the downtime come by SQS.

After the restart the service must resubscribe from ``earliest``, resync every
type (the query for what is live, the deleted-records resource for what is
gone), re-read what it cannot know, and converge to the truth: a record with a
change lost everywhere that ended deleted compares by its tombstone (and org)
only; every other record field for field.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import free_port
from tests.e2e.test_pipeline import ORG, _aws_env, _export, _run, _stop, _store_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TOKEN = "gap-token"


def agree(
    truth: list[dict],
    store: list[dict],
    withheld: set[tuple[str, str]],
    unseen: set[tuple[str, str]],
) -> list[str]:
    """Differences between the truth and the store.

    A record that ended deleted and had a change no path ever brought
    (``unseen``), or whose withheld content was deleted before the mirror could
    re-read it (``withheld``, Salesforce answers 404), cannot hold content the
    mirror never saw: for those only the tombstone and the org must match. A
    deleted record's fields are otherwise a subset of the truth's (its CREATE
    may have been a gap)."""
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
        elif not got["deleted"] or got["org_id"] != want["org_id"]:
            problems.append(f"not deleted {key}: {got} != {want}")
        elif key not in withheld | unseen and any(
            want["fields"].get(k, object()) != v for k, v in got["fields"].items()
        ):
            problems.append(f"deleted record differs {key}: {got} != {want}")
    problems.extend(f"unexpected {key}" for key in held)
    return problems


def _ms(iso: str) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


class Control:
    """The simulator's control API (amt_ingest/simulator/control.py)."""

    def __init__(self, sf_port: int) -> None:
        self.base = f"http://127.0.0.1:{sf_port}/simulator"

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def sns(self, *, enabled: bool) -> None:
        self._post("/sns", {"enabled": enabled})

    def script(self, *steps: dict[str, Any]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._post("/script", {"steps": list(steps)})["steps"]
        return result


def test_a_lost_window_heals_with_no_sqs_copy(aws_env, redis_url, tmp_path: Path):
    ws_port, sf_port = free_port(), free_port()
    truth_path, stats_path = tmp_path / "truth.jsonl", tmp_path / "stats.json"
    event_log = tmp_path / "events.jsonl"
    base = _aws_env(aws_env, redis_url, _store_url("sqlite", tmp_path))
    queue_url = json.loads(_run(["bootstrap"], base))["queue_url"]
    env = {
        **base,
        "AMT_PASSPORT_WS_URL": f"ws://127.0.0.1:{ws_port}/stream",
        "AMT_PASSPORT_TOKEN": TOKEN,
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
            *(sys.executable, "-m", "amt_ingest", "simulate"),
            *("--port", str(ws_port), "--sf-port", str(sf_port), "--token", TOKEN),
            *("--events", "2000", "--records", "150", "--rate", "40", "--seed", "21"),
            *("--gap-rate", "0.05", "--overflow-rate", "0.02", "--retention", "150"),
            *("--dup-rate", "0.05", "--ooo-rate", "0.05", "--max-batch", "20"),
            *("--sqs-queue-url", queue_url, "--truth", str(truth_path)),
            *("--stats", str(stats_path), "--event-log", str(event_log)),
        ],
        env=base,
        stdout=sim_log,
        stderr=subprocess.STDOUT,
    )
    control = Control(sf_port)
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
        # A bulk transaction behind a GAP_OVERFLOW, then changes to its records.
        # Description is a field no random change touches: the store must end with
        # the last value the script gave it.
        (bulk,) = control.script(
            {
                "kind": "bulk",
                "topic": "Opportunity",
                "size": 3,
                "overflow": True,
                "fields": {"Description": "bulk", "Amount": 12_500.0},
            }
        )
        bulk_ids = bulk["records"]
        control.script({"kind": "update", "records": bulk_ids})
        time.sleep(2)
        # SNS goes down. A change to a bulk record reaches the stream only after the
        # next 120 events (3 s): the service hands off later ones, then stops.
        control.sns(enabled=False)
        (late,) = control.script(
            {
                "kind": "update",
                "records": bulk_ids[:1],
                "ws_delay": 120,
                "fields": {"Description": "late"},
            }
        )
        time.sleep(1)
        assert _stop(service) == 0
        # Inside the lost window: deletes, undeletes after deletes, records created
        # and deleted, another change to a bulk record.
        time.sleep(1)
        lost_steps = control.script(
            {"kind": "create", "topic": "Application_Item__c"},
            {"kind": "delete", "records": "$0"},
            {"kind": "create", "topic": "External_Attachment__c"},
            {"kind": "delete", "records": "$2"},
            {"kind": "delete", "pick": 2, "topic": "Opportunity"},
            {"kind": "undelete", "records": "$4"},
            {"kind": "delete", "pick": 2, "topic": "Application_Item__c"},
            {"kind": "delete", "pick": 1, "topic": "External_Attachment__c"},
            {"kind": "update", "records": bulk_ids[1:2], "fields": {"Description": "lost"}},
        )
        time.sleep(3)
        control.sns(enabled=True)  # the rest of the downtime comes by SQS
        time.sleep(8)  # ~480 events while down: the cursor falls out of the 150-event window
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
        lines = [json.loads(line) for line in event_log.read_text().splitlines()]
        lost = [line for line in lines if not client.exists(f"amt:evt:{line['sent_as']}")]
        unseen = {(line["topic"], rid) for line in lost for rid in line["records"]}
        problems: list[str] = ["not compared yet"]
        started = time.monotonic()
        while time.monotonic() < deadline:
            problems = agree(truth, _export(env), withheld, unseen)
            if not problems:
                break
            time.sleep(2)
        converged_s = time.monotonic() - started
        assert not problems, f"{len(problems)} problems, e.g. {problems[:3]}"
    finally:
        if service is not None:
            _stop(service)
        _stop(simulator)
        sim_log.close()

    # The scenario happened as planned: these changes were lost everywhere.
    lost_ids = {line["event_id"] for line in lost}
    assert set(late["event_ids"]) <= lost_ids, "the late change to a bulk record was not lost"
    for step in lost_steps:
        assert set(step["event_ids"]) <= lost_ids, step
    changes = {line["change"] for line in lost}
    assert {"CREATE", "DELETE", "UNDELETE", "UPDATE"} <= changes
    # Records created and deleted inside the window are stored by their tombstone alone
    # (unless a later change, an undelete, brought them back).
    stored = {(r["topic"], r["id"]): r for r in _export(env)}
    gone = {(r["topic"], r["id"]) for r in truth if r["deleted"]}
    fresh = [("Application_Item__c", lost_steps[0]), ("External_Attachment__c", lost_steps[2])]
    for topic, step in fresh:
        key = (topic, step["records"][0])
        seen = [line for line in lines if key[1] in line["records"] and line not in lost]
        if key in gone:
            assert stored[key]["deleted"] and stored[key]["org_id"] == ORG
        if key in gone and not seen:
            assert stored[key]["fields"] == {}

    # The bulk records hold the last value the script gave them, lost changes included.
    for rid, want in zip(bulk_ids, ("late", "lost", "bulk"), strict=True):
        if ("Opportunity", rid) not in gone:
            assert stored[("Opportunity", rid)]["fields"]["Description"] == want

    stats = json.loads(stats_path.read_text())["delivery"]
    resyncs = [r.decode() for r in client.zrange("amt:resyncs", 0, -1)]
    progress = {
        r: {k.decode(): v.decode() for k, v in client.hgetall(f"amt:resync:{r}").items()}
        for r in resyncs
    }
    expired = [r for r in resyncs if r.startswith("expired-")]
    print(
        f"\nlost window e2e: {len(lines)} changes, {len(lost)} lost everywhere "
        f"({sorted(changes)}), {len(unseen)} records with a lost change, "
        f"converged {converged_s:.1f}s after the stream ended; "
        f"tombstones from resyncs={sum(int(p.get('deleted', 0)) for p in progress.values())}, "
        f"re-read marks={sum(int(p.get('marked', 0)) for p in progress.values())}, "
        f"delivery={stats}"
    )
    assert len(expired) == 3, "the expired window was not resynced (one per type)"
    # The window starts early enough for the late change: it committed before the
    # newest event handed off, and reached the stream after the resume point.
    (late_line,) = [line for line in lines if line["event_id"] in late["event_ids"]]
    for r in expired:
        since = progress[r]["since"]
        assert _ms(since) <= late_line["commit_ms"], (r, since, late_line)
    assert all(p["state"] == "done" for p in progress.values()), progress
    assert not any("deletes_known_from" in p for p in progress.values())
    assert all(int(progress[r]["deleted"]) > 0 for r in expired if "Opportunity" in r)
    assert stats["gap_events"] > 0 and stats["overflows"] > 0 and stats["sns_outage"] > 0
    assert len([r for r in resyncs if not r.startswith("expired-")]) >= 1  # overflow resyncs
