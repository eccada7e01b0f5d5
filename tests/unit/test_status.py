"""The status view from two overview readings (no Redis, no event loop)."""

from __future__ import annotations

import time

from rich.console import Console

from amt_ingest.operations.status import build_view, percentile, render, replica_rows


def overview(stats: dict[str, int], **extra) -> dict:
    return {
        "stats": stats,
        "lags_ms": extra.get("lags", []),
        "queued_jobs": extra.get("queued", 0),
        "pending_records": extra.get("records", 0),
        "retrying_records": extra.get("retrying", 0),
        "dead_records": extra.get("dead", 0),
        "one_path_pending": extra.get("pending", 0),
        "gauges": extra.get("gauges", {}),
        "throttle": extra.get("throttle", {}),
        "replicas": extra.get("replicas", {}),
        "ws_lease": extra.get("ws_lease"),
        "ws_terms": extra.get("ws_terms", 0),
    }


def replica(name: str, websocket: str, *, beat_ago_s: float = 1.0, **more) -> dict:
    now = int(time.time() * 1000)
    return {
        "name": name,
        "host": "host-" + name,
        "pid": 7,
        "roles": ["websocket", "sqs", "worker"],
        "websocket": websocket,
        "started_ms": now - 60_000,
        "heartbeat_ms": now - int(beat_ago_s * 1000),
        "job_leases": 2,
        **more,
    }


def test_percentile_nearest_rank():
    assert percentile([], 0.5) is None
    assert percentile([5], 0.99) == 5
    values = list(range(1, 101))
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(list(reversed(values)), 1.0) == 100


def test_rates_totals_and_one_path_by_path_and_topic():
    before = overview({"first:ws:Opportunity": 100, "duplicate:sqs:Opportunity": 90})
    after = overview(
        {
            "first:ws:Opportunity": 300,
            "duplicate:sqs:Opportunity": 250,
            "stale:ws:Opportunity": 10,
            "onepath:ws:Opportunity": 3,
            "rejected:sqs:malformed_json": 2,
            "cross:ws:Opportunity": 250,
        },
        lags=[100, 200, 300, 5000],
        queued=7,
        records=90,
        retrying=2,
        dead=1,
        pending=12,
        gauges={
            "depth:sqs:amt-ingest-monitor": "4",
            "depth:dlq:amt-ingest-monitor-dlq": "1",
        },
        throttle={"mode": "pause"},
        replicas={
            "a.1": replica("a", "leader", connected=True, state_for_s=42.0, reconnects=3),
            "b.1": replica("b", "standby"),
            "c.1": replica("c", "standby", beat_ago_s=30),
        },
        ws_lease="a.1 7",
        ws_terms=7,
    )
    view = build_view(after, before, 2.0, None)
    rows = {(r["path"], r["topic"]): r for r in view["events"]}
    ws, sqs = rows[("ws", "Opportunity")], rows[("sqs", "Opportunity")]
    assert (ws["total"], ws["per_s"], ws["one_path"]) == (310, 105.0, 3)
    assert (sqs["total"], sqs["per_s"], sqs["duplicates"]) == (250, 80.0, 250)
    assert view["rejected"] == {"sqs:malformed_json": 2}
    assert view["path_lag_ms"] == {"p50": 200, "p99": 5000, "samples": 4}
    assert view["queues"] == {
        "arq": 7,
        "pending_records": 90,
        "dlq:amt-ingest-monitor-dlq": 1,
        "sqs:amt-ingest-monitor": 4,
    }
    assert (view["retrying_records"], view["dead_records"], view["one_path_pending"]) == (2, 1, 12)
    assert view["websocket"] == {
        "leader": "a",
        "connected": True,
        "for_s": 42.0,
        "reconnects": 3,
        "fatal": None,
        "leader_changes": 7,
    }
    assert [(r["name"], r["leads"], r["silent"]) for r in view["replicas"]] == [
        ("a", True, False),
        ("b", False, False),
        ("c", False, True),
    ]
    assert view["throttle"] == "pause"
    console = Console(width=160, record=True)
    console.print(render(view))
    text = console.export_text()
    assert "p50 200 ms, p99 5000 ms" in text and "connected for 42s via a" in text
    assert "LEADER" in text and "30s ago SILENT" in text


def test_no_leader_is_shown_when_every_websocket_replica_stands_by():
    view = build_view(overview({}, replicas={"b.1": replica("b", "standby")}), None, 0.0, None)
    assert view["websocket"]["leader"] is None
    console = Console(width=160, record=True)
    console.print(render(view))
    assert "NO LEADER" in console.export_text()


def test_a_lease_held_by_a_replica_without_an_entry_leads_nobody_listed():
    # A leader killed a moment ago: its lease lives on for a few seconds, its entry too.
    rows = replica_rows(
        {"b.1": replica("b", "standby")}, "gone.9 4", now_ms=int(time.time() * 1000)
    )
    assert [r["leads"] for r in rows] == [False]


def test_first_reading_has_totals_but_no_rates():
    view = build_view(overview({"first:sqs:Application_Item__c": 5}), None, 0.0, None)
    (row,) = view["events"]
    assert (row["total"], row["per_s"]) == (5, 0.0)
    assert view["websocket"] == {}
