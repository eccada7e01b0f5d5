"""``python -m amt_ingest status``: a live view of the running system.

Reads what every service process shares in Redis (the ``amt:stats`` counters,
the last path lags, queue depths published in ``amt:gauges``, every replica's
heartbeat with its roles and WebSocket state, the WebSocket lease, retrying and
dead-lettered records) and, when reachable, one process's ``/readyz``. Rates
are the difference of two readings over the time between them.
:func:`build_view` is the pure part; the rest draws it.
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..config import Settings
from ..coordination import Coordinator
from ..errors import CoordinationError, IngestError

__all__ = ["build_view", "percentile", "render", "replica_rows", "run_status"]

RECEIVED = ("first", "duplicate", "stale", "filtered")


def percentile(values: Sequence[int], q: float) -> int | None:
    """The ``q`` quantile (0..1) of ``values`` by the nearest-rank method."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def build_view(
    current: dict[str, Any],
    previous: dict[str, Any] | None,
    elapsed_s: float,
    ready: dict[str, Any] | None,
) -> dict[str, Any]:
    """The numbers ``status`` shows, from two overview readings ``elapsed_s`` apart."""
    stats: dict[str, int] = current["stats"]
    before: dict[str, int] = previous["stats"] if previous else {}
    per: dict[tuple[str, str], dict[str, float]] = defaultdict(
        lambda: {"total": 0, "per_s": 0.0, "duplicates": 0, "one_path": 0}
    )
    rejected: dict[str, int] = defaultdict(int)
    deletes_unknown: dict[str, int] = defaultdict(int)
    for key, value in stats.items():
        kind, _, rest = key.partition(":")
        path, _, topic = rest.partition(":")
        if kind in RECEIVED:
            row = per[(path, topic)]
            row["total"] += value
            if previous and elapsed_s > 0:
                row["per_s"] += (value - before.get(key, 0)) / elapsed_s
            if kind == "duplicate":
                row["duplicates"] += value
        elif kind == "onepath":
            per[(path, topic)]["one_path"] += value
        elif kind == "rejected":
            rejected[f"{path}:{topic}"] += value
        elif kind == "deletes_unknown":
            deletes_unknown[topic] += value
    gauges: dict[str, str] = current["gauges"]
    depths = {k.removeprefix("depth:"): int(v) for k, v in gauges.items() if k.startswith("depth:")}
    depths["arq"] = current["queued_jobs"]
    depths["pending_records"] = current["pending_records"]
    lags = current["lags_ms"]
    replicas = replica_rows(
        current.get("replicas", {}), current.get("ws_lease"), now_ms=int(time.time() * 1000)
    )
    websocket = _websocket(replicas, current.get("ws_terms", 0))
    updated = int(gauges.get("updated_ms", "0"))
    return {
        "events": [
            {"path": p, "topic": t, **{k: round(v, 2) for k, v in row.items()}}
            for (p, t), row in sorted(per.items())
        ],
        "rejected": dict(sorted(rejected.items())),
        "resyncs": [_resync_row(r) for r in current.get("resyncs", [])],
        "deletes_unknown": dict(sorted(deletes_unknown.items())),
        "path_lag_ms": {
            "p50": percentile(lags, 0.5),
            "p99": percentile(lags, 0.99),
            "samples": len(lags),
        },
        "one_path_pending": current["one_path_pending"],
        "queues": dict(sorted(depths.items())),
        "retrying_records": current["retrying_records"],
        "dead_records": current["dead_records"],
        "throttle": current["throttle"].get("mode") or "off",
        "websocket": websocket,
        "replicas": replicas,
        "gauges_age_s": round(time.time() - updated / 1000, 1) if updated else None,
        "ready": ready,
    }


#: A replica whose heartbeat is older than this is shown as silent.
SILENT_AFTER_S = 10.0


def replica_rows(
    entries: dict[str, dict[str, Any]], ws_lease: str | None, *, now_ms: int
) -> list[dict[str, Any]]:
    """One row per replica (by name), with whether it holds the WebSocket lease now."""
    holder = ws_lease.split(" ", 1)[0] if ws_lease else None
    rows = []
    for instance, entry in entries.items():
        age = (now_ms - int(entry.get("heartbeat_ms", 0))) / 1000
        rows.append(
            {
                "instance": instance,
                "name": entry.get("name", instance),
                "host": entry.get("host"),
                "pid": entry.get("pid"),
                "roles": entry.get("roles", []),
                "websocket": entry.get("websocket", "off"),
                "leads": instance == holder,
                "heartbeat_age_s": round(age, 1),
                "silent": age > SILENT_AFTER_S,
                "up_s": round((now_ms - int(entry.get("started_ms", now_ms))) / 1000),
                "connected": entry.get("connected"),
                "state_for_s": entry.get("state_for_s"),
                "reconnects": entry.get("reconnects"),
                "fatal": entry.get("fatal"),
                "job_leases": entry.get("job_leases", 0),
                "version": entry.get("version"),
            }
        )
    return sorted(rows, key=lambda r: (not r["leads"], r["name"], r["instance"]))


def _websocket(replicas: list[dict[str, Any]], terms: int) -> dict[str, Any]:
    """The WebSocket as the lease holder reports it ({} when no replica runs it)."""
    if not any(r["websocket"] != "off" for r in replicas):
        return {}
    leader = next((r for r in replicas if r["leads"]), None)
    if leader is None:
        fatal = next((r["fatal"] for r in replicas if r["fatal"]), None)
        return {"leader": None, "connected": False, "fatal": fatal, "leader_changes": terms}
    return {
        "leader": leader["name"],
        "connected": bool(leader["connected"]),
        "for_s": leader["state_for_s"] if leader["state_for_s"] is not None else -1,
        "reconnects": leader["reconnects"] or 0,
        "fatal": leader["fatal"],
        "leader_changes": terms,
    }


def _replica_table(view: dict[str, Any]) -> Table | None:
    rows = view["replicas"]
    if not rows:
        return None
    table = Table(title="Replicas", expand=False)
    for column in ("replica", "roles", "websocket", "heartbeat", "up", "job leases"):
        table.add_column(column, justify="right" if column in ("up", "job leases") else "left")
    for row in rows:
        ws = row["websocket"]
        if row["leads"]:
            ws_text = Text("LEADER" if row["connected"] else "LEADER, disconnected", style="green")
        elif ws == "stopped":
            ws_text = Text(f"stopped: {row['fatal']}", style="bold red")
        else:
            ws_text = Text(ws)
        beat = Text(
            f"{row['heartbeat_age_s']:.0f}s ago" + (" SILENT" if row["silent"] else ""),
            style="bold red" if row["silent"] else "",
        )
        table.add_row(
            f"{row['name']} ({row['host']}:{row['pid']})",
            ",".join(row["roles"]),
            ws_text,
            beat,
            f"{row['up_s']:,}s",
            f"{row['job_leases']:,}",
        )
    return table


def _resync_row(progress: dict[str, str]) -> dict[str, Any]:
    return {
        "id": progress["id"],
        "topic": progress.get("topic", ""),
        "since": progress.get("since", ""),
        "state": progress.get("state", ""),
        "marked": int(progress.get("marked", "0")),
        "total": int(progress.get("total", "0")),
        "deleted": int(progress.get("deleted", "0")),
        "deletes_known_from": progress.get("deletes_known_from"),
    }


def _resync_table(view: dict[str, Any]) -> Table | None:
    rows = view["resyncs"]
    if not rows:
        return None
    table = Table(title="Resyncs (newest first)", expand=False)
    for column in ("id", "topic", "since", "state", "marked", "deletes"):
        table.add_column(column, justify="right" if column == "marked" else "left")
    for row in rows:
        known = row["deletes_known_from"]
        deletes = Text(
            f"UNKNOWN before {known}: run resync {row['topic']} --full"
            if known
            else f"{row['deleted']:,} found",
            style="bold red" if known else "",
        )
        table.add_row(
            row["id"],
            row["topic"],
            row["since"],
            row["state"],
            f"{row['marked']:,}/{row['total']:,}",
            deletes,
        )
    return table


def render(view: dict[str, Any]) -> Group:
    events = Table(title="Events", expand=False)
    for column in ("path", "topic", "total", "per s", "duplicates", "one path only"):
        events.add_column(column, justify="left" if column in ("path", "topic") else "right")
    for row in view["events"]:
        events.add_row(
            row["path"],
            row["topic"],
            f"{row['total']:,.0f}",
            f"{row['per_s']:,.1f}",
            f"{row['duplicates']:,.0f}",
            Text(f"{row['one_path']:,.0f}", style="bold red" if row["one_path"] else ""),
        )
    lag = view["path_lag_ms"]
    system = Table(title="System", show_header=False, expand=False)
    system.add_column("what")
    system.add_column("value", justify="right")
    lag_text = (
        f"p50 {lag['p50']} ms, p99 {lag['p99']} ms ({lag['samples']} events)"
        if lag["samples"]
        else "no event seen on both paths yet"
    )
    system.add_row("path lag", lag_text)
    system.add_row("awaiting their second path", f"{view['one_path_pending']:,}")
    for name, depth in view["queues"].items():
        system.add_row(f"queue {name}", f"{depth:,}")
    system.add_row("retrying records", f"{view['retrying_records']:,}")
    system.add_row("dead-lettered records", f"{view['dead_records']:,}")
    system.add_row("retry throttle", view["throttle"])
    for key, n in view["rejected"].items():
        system.add_row(f"rejected {key}", f"{n:,}")
    for topic, n in view["deletes_unknown"].items():
        system.add_row(
            f"resyncs missing deletes {topic}",
            Text(f"{n:,}: run resync {topic} --full", style="bold red"),
        )
    ws = view["websocket"]
    if ws:
        if ws["fatal"]:
            state, style = f"STOPPED: {ws['fatal']}", "bold red"
        elif ws["leader"] is None:
            state, style = "NO LEADER (every replica standing by or gone)", "bold red"
        elif ws["connected"]:
            state, style = f"connected for {ws['for_s']:.0f}s via {ws['leader']}", "green"
        else:
            state, style = f"DISCONNECTED for {ws['for_s']:.0f}s ({ws['leader']})", "bold red"
        system.add_row("websocket", Text(state, style=style))
        if ws["leader"] is not None:
            system.add_row("websocket reconnects", str(ws["reconnects"]))
        system.add_row("websocket leader changes", f"{ws['leader_changes']:,}")
    if view["gauges_age_s"] is not None:
        system.add_row("gauges updated", f"{view['gauges_age_s']:.0f}s ago")
    ready = view["ready"]
    if ready is None:
        system.add_row("readiness", Text("HTTP endpoint unreachable", style="yellow"))
    else:
        for name, check in ready.get("checks", {}).items():
            style = "green" if check["ok"] else "bold red"
            system.add_row(f"ready: {name}", Text(check["detail"], style=style))
    tables = [events, system, _replica_table(view), _resync_table(view)]
    return Group(*(table for table in tables if table is not None))


def _readiness(url: str | None) -> dict[str, Any] | None:
    if not url:
        return None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/readyz", timeout=2) as reply:
            body: dict[str, Any] = orjson.loads(reply.read())
            return body
    except urllib.error.HTTPError as exc:
        failed: dict[str, Any] = orjson.loads(exc.read())
        return failed
    except (OSError, ValueError):
        return None


async def run_status(
    settings: Settings,
    *,
    url: str | None,
    interval: float,
    once: bool,
    as_json: bool,
    console: Console | None = None,
) -> int:
    """Show the view until Ctrl-C (or once). Returns the exit code."""
    console = console or Console()
    client: aioredis.Redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5)
    coordinator = Coordinator(client, dedup_ttl=settings.dedup_ttl_seconds)
    try:
        try:
            previous = await coordinator.observations.overview()
        except CoordinationError as exc:
            raise IngestError(f"AMT_REDIS_URL: cannot read {settings.redis_url}: {exc}") from exc
        taken = time.monotonic()
        if once:
            await asyncio.sleep(min(interval, 1.0))
            current = await coordinator.observations.overview()
            ready = await asyncio.to_thread(_readiness, url)
            view = build_view(current, previous, time.monotonic() - taken, ready)
            if as_json:
                console.print_json(orjson.dumps(view).decode())
            else:
                console.print(render(view))
            return 0
        with Live(console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(interval)
                current = await coordinator.observations.overview()
                now = time.monotonic()
                ready = await asyncio.to_thread(_readiness, url)
                live.update(render(build_view(current, previous, now - taken, ready)))
                live.refresh()
                previous, taken = current, now
    finally:
        await client.aclose()
