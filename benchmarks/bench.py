"""``python -m benchmarks.bench``: run the benchmark, print the table, write ``bench.json``.

Phases (in this order; ``--only`` picks some): ``arq`` (references: plain
enqueue, no-op worker), ``ws`` (bare WebSocket client, then the service's
WebSocket intake), ``sqs`` (bare receive+delete, then the service's SQS intake),
``e2e_sqlite``, ``e2e_postgres`` (records applied per second), ``latency_ws``,
``latency_sqs`` (commit to store at a fixed offered load), ``coalesce`` (store
writes per event on hot records), ``rss`` (memory under overload), ``scaling``
(records applied with 1, 2 and 4 worker processes, SQS intake with 1 and 2
consumers, as ratios to one process; the time a killed or stopped WebSocket
leader takes to be replaced).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from amt_ingest.telemetry import configure_logging

from .measure import Target, format_table
from .otlp import OtlpReceiver
from .phases import FULL, QUICK, REPEATED, Bench
from .stack import DEFAULT_POSTGRES_URL, DEFAULT_REDIS_URL, Stack

__all__ = ["PHASES", "main", "targets"]

PHASES = (
    "arq",
    "ws",
    "sqs",
    "e2e_sqlite",
    "e2e_postgres",
    "latency_ws",
    "latency_sqs",
    "coalesce",
    "rss",
    "scaling",
)

P99_LIMIT_MS = 100.0
#: A killed WebSocket leader replaced within this (the lease TTL plus one reconnect).
FAILOVER_LIMIT_S = 10.0


def _phase(bench: Bench, name: str) -> Callable[[], Awaitable[None]]:
    if name == "e2e_sqlite":
        return lambda: bench.e2e("sqlite")
    if name == "e2e_postgres":
        return lambda: bench.e2e("postgres")
    method: Callable[[], Awaitable[None]] = getattr(bench, name)
    return method


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def ratios(r: dict[str, Any]) -> dict[str, float | None]:
    e2e = r.get("e2e_rps") or {}
    return {
        "ingest_eps/arq_enqueue_eps": _ratio(r.get("ingest_eps"), r.get("arq_enqueue_eps")),
        "ingest_eps/ws_raw_eps": _ratio(r.get("ingest_eps"), r.get("ws_raw_eps")),
        "ingest_eps/ws_parse_eps": _ratio(r.get("ingest_eps"), r.get("ws_parse_eps")),
        "ingest_eps/ingest_eps_untraced": _ratio(r.get("ingest_eps"), r.get("ingest_eps_untraced")),
        "ingest_eps_untraced/ws_parse_eps": _ratio(
            r.get("ingest_eps_untraced"), r.get("ws_parse_eps")
        ),
        "ingest_sqs_eps/sqs_raw_eps": _ratio(r.get("ingest_sqs_eps"), r.get("sqs_raw_eps")),
        "e2e_rps_postgres/arq_noop_jps": _ratio(e2e.get("postgres"), r.get("arq_noop_jps")),
        "e2e_rps_sqlite/arq_noop_jps": _ratio(e2e.get("sqlite"), r.get("arq_noop_jps")),
    }


def targets(r: dict[str, Any]) -> list[Target]:
    """The targets (issue 7, raised by issue 15), from one run's results."""
    q = ratios(r)
    latency = r.get("latency_ms") or {}
    ws_lat, sqs_lat = latency.get("ws") or {}, latency.get("sqs") or {}
    rss_flat = r.get("rss_flat")
    return [
        Target("ingest_eps >= 20,000", r.get("ingest_eps"), ">=", 20_000),
        Target(
            "ingest_eps >= 6 x arq_enqueue_eps", q["ingest_eps/arq_enqueue_eps"], ">=", 6.0, "ratio"
        ),
        Target(
            "ingest_eps untraced >= 0.7 x ws_parse_eps",
            q["ingest_eps_untraced/ws_parse_eps"],
            ">=",
            0.7,
            "ratio",
        ),
        Target(
            "ingest_sqs_eps >= 0.9 x sqs_raw_eps",
            q["ingest_sqs_eps/sqs_raw_eps"],
            ">=",
            0.9,
            "ratio",
        ),
        Target(
            "e2e_rps (PostgreSQL) >= 0.8 x arq_noop_jps",
            q["e2e_rps_postgres/arq_noop_jps"],
            ">=",
            0.8,
            "ratio",
        ),
        Target(
            f"p99 <= 100 ms, WebSocket at {_offered(ws_lat)}/s",
            _p99(ws_lat),
            "<=",
            P99_LIMIT_MS,
            "ms",
        ),
        Target(
            f"p99 <= 100 ms, SQS at {_offered(sqs_lat)}/s",
            _p99(sqs_lat),
            "<=",
            P99_LIMIT_MS,
            "ms",
        ),
        Target("coalesce_ratio <= 0.05", r.get("coalesce_ratio"), "<=", 0.05),
        Target("rss_mb <= 200 under overload", r.get("rss_mb"), "<=", 200.0, "MB"),
        Target(
            f"killed WebSocket leader replaced <= {FAILOVER_LIMIT_S:g} s",
            (r.get("failover_s") or {}).get("kill"),
            "<=",
            FAILOVER_LIMIT_S,
            "s",
        ),
        Target(
            "rss flat (last half max <= first half max + 10%)",
            None if rss_flat is None else float(rss_flat),
            ">=",
            1.0,
            "flat",
        ),
    ]


def _offered(latency: dict[str, Any]) -> str:
    rate = latency.get("offered_eps")
    return "?" if rate is None else f"{rate:g}"


def _p99(latency: dict[str, Any]) -> float | None:
    if not latency:
        return None
    # A p99 that never happened (events still unapplied) fails the target.
    return latency["p99"] if latency.get("p99") is not None else float("inf")


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "never"
    if unit == "ratio":
        return f"{value:.2f}x"
    if unit == "flat":
        return "yes" if value >= 1 else "no"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 1:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".rstrip() if unit in ("ms", "MB", "s") else text


def report(doc: dict[str, Any]) -> str:
    r = doc["results"]
    e2e = r.get("e2e_rps") or {}
    lat = r.get("latency_ms") or {}
    q = doc["ratios"]
    measured = [
        ("ingest_eps (WebSocket, no workers)", _num(r.get("ingest_eps")), "events/s"),
        (
            "ingest_eps, tracing off",
            _num(r.get("ingest_eps_untraced")),
            "events/s (OTEL_SDK_DISABLED=true)",
        ),
        ("ingest_sqs_eps (SQS, no workers)", _num(r.get("ingest_sqs_eps")), "events/s"),
        ("e2e_rps PostgreSQL", _num(e2e.get("postgres")), "records applied/s"),
        ("e2e_rps SQLite", _num(e2e.get("sqlite")), "records applied/s"),
    ]
    for path, label in (("ws", "WebSocket"), ("sqs", "SQS")):
        if path in lat:
            x = lat[path]
            value = f"p50 {_num(x['p50'])} / p99 {_num(x['p99'])} / max {_num(x['max'])}"
            if x.get("unapplied"):
                value += f" ({x['unapplied']} of {x['events']} not applied in time)"
            measured.append(
                (
                    f"latency {label} at {x['offered_eps']:g}/s",
                    value,
                    "ms, commit to store (PostgreSQL)",
                )
            )
            if x.get("to_handoff_p50") is not None:
                measured.append(
                    (
                        "  of which (applied events)",
                        f"to hand-off p50 {_num(x['to_handoff_p50'])} / p99"
                        f" {_num(x['to_handoff_p99'])}; hand-off to store p50"
                        f" {_num(x['handoff_to_store_p50'])} / p99"
                        f" {_num(x['handoff_to_store_p99'])}",
                        "ms (commit to Redis; Redis to store)",
                    )
                )
    floor = lat.get("sqs_endpoint")
    if floor:
        measured.append(
            (
                f"  SQS, bare consumer at {floor['offered_eps']:g}/s",
                f"p50 {_num(floor['p50'])} / p99 {_num(floor['p99'])} / max {_num(floor['max'])}",
                "ms, commit to receive (1 s long polls; same queue, same run)",
            )
        )
    measured += [
        ("coalesce_ratio", _num(r.get("coalesce_ratio")), "store writes per event"),
        (
            "rss_mb under overload",
            _num(r.get("rss_mb")),
            "MB peak, " + {True: "flat", False: "growing", None: "-"}[r.get("rss_flat")],
        ),
        ("arq_enqueue_eps (reference)", _num(r.get("arq_enqueue_eps")), "jobs/s"),
        ("arq_noop_jps (reference)", _num(r.get("arq_noop_jps")), "jobs/s"),
        ("ws_raw_eps (reference)", _num(r.get("ws_raw_eps")), "events/s"),
        ("ws_parse_eps (reference)", _num(r.get("ws_parse_eps")), "events/s, + event parser"),
        ("sqs_raw_eps (reference)", _num(r.get("sqs_raw_eps")), "messages/s"),
    ]
    measured += _scaling_rows(r)
    ratio_rows = [(name, _num(value, "ratio")) for name, value in q.items()]
    for family, label in (("scale_e2e_ratio", "e2e_rps PostgreSQL"), ("scale_sqs_ratio", "SQS")):
        for shape, value in (r.get(family) or {}).items():
            ratio_rows.append(
                (f"{label} {shape.replace('_', ' ')}/one process", _num(value, "ratio"))
            )
    target_rows = [(t["name"], _num(t["value"], t["unit"]), t["verdict"]) for t in doc["targets"]]
    m = doc.get("machine") or {}
    machine_rows = [
        ("cpu", f"{m.get('cpu_model', '?')} x {m.get('nproc', '?')}"),
        ("python", str(m.get("python", "?"))),
        *((name, value) for name, value in (m.get("accelerators") or {}).items()),
        ("redis / postgresql", f"{m.get('redis', '?')} / {m.get('postgresql', '?')}"),
        ("load before / after", f"{m.get('loadavg_before', '?')} / {m.get('loadavg_after', '?')}"),
    ]
    spread_rows = _spread_rows(doc.get("spread") or {})
    return "\n\n".join(
        [
            format_table(("machine", ""), machine_rows),
            format_table(("measured", "value", "unit"), measured),
            *(
                [
                    format_table(
                        ("spread over the runs", "min", "median", "max", "runs"), spread_rows
                    )
                ]
                if spread_rows
                else []
            ),
            format_table(("ratio", "value"), ratio_rows),
            format_table(("target", "value", "result"), target_rows),
        ]
    )


def _scaling_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for shape, value in (r.get("scale_e2e_rps") or {}).items():
        what = "one run process" if shape == "run" else f"intake + {shape.split('_')[1]} worker(s)"
        rows.append((f"scaling e2e_rps PostgreSQL, {what}", _num(value), "records applied/s"))
    for shape, value in (r.get("scale_sqs_eps") or {}).items():
        rows.append(
            (f"scaling SQS intake, {shape.split('_')[1]} consumer(s)", _num(value), "events/s")
        )
    failover = r.get("failover_s") or {}
    for how, label in (("kill", "SIGKILL"), ("sigterm", "SIGTERM")):
        if how in failover:
            rows.append(
                (f"failover, leader {label}", _num(failover[how], "s"), "s to the next hand-off")
            )
    return rows


Leaf = tuple[str, ...]


def leaves(tree: dict[str, Any], prefix: Leaf = ()) -> dict[Leaf, float]:
    """Every number in a results tree, by its path of keys."""
    out: dict[Leaf, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, (*prefix, key)))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[(*prefix, key)] = value
    return out


def settle_repeats(
    results: dict[str, Any], before: dict[Leaf, float], runs: list[dict[Leaf, float]]
) -> dict[str, list[float]]:
    """Set each figure the repeated runs of a phase wrote to its median over the
    runs; return every run's value of each, by dotted name."""
    spread: dict[str, list[float]] = {}
    written = {path for run in runs for path, value in run.items() if before.get(path) != value}
    for path in sorted(written):
        values = [run[path] for run in runs if path in run]
        if len(values) < 2:
            continue
        node = results
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = statistics.median(values)
        spread[".".join(path)] = values
    return spread


#: The figures whose spread is printed (dotted names; latency: its p50, p99 and max).
SPREAD_SHOWN = (
    "ingest_eps",
    "ingest_eps_untraced",
    "e2e_rps.postgres",
    "e2e_rps.sqlite",
    "latency_ms.ws.p50",
    "latency_ms.ws.p99",
    "latency_ms.ws.max",
    "arq_enqueue_eps",
    "arq_noop_jps",
    "ws_raw_eps",
    "ws_parse_eps",
)


#: The profiles ``--profile`` takes (py-spy on the service process), and what each covers.
PROFILES = (
    ("profile_ws_ingest", "WebSocket intake"),
    ("profile_e2e_postgres", "Records applied (PostgreSQL, embedded worker)"),
    ("profile_e2e_sqlite", "Records applied (SQLite, embedded worker)"),
    ("profile_latency_ws", "WebSocket at the latency load (PostgreSQL, embedded worker)"),
)

SPREAD_HEADER = ("spread over the runs", "min", "median", "max", "runs")


def _spread_rows(spread: dict[str, list[float]]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for name in SPREAD_SHOWN:
        values = spread.get(name)
        if values:
            rows.append(
                (
                    name,
                    _num(min(values)),
                    _num(statistics.median(values)),
                    _num(max(values)),
                    str(len(values)),
                )
            )
    return rows


def accelerators() -> dict[str, str]:
    """The C accelerators this process would load: hiredis (redis-py's parser),
    orjson, uvloop (the service runs asyncio's own loop; uvloop is reported only
    if installed)."""
    out: dict[str, str] = {}
    try:
        from redis.utils import HIREDIS_AVAILABLE

        out["hiredis"] = _version_of("hiredis") if HIREDIS_AVAILABLE else "not loaded"
    except ImportError:
        out["hiredis"] = "not loaded"
    out["orjson"] = _version_of("orjson")
    if importlib.util.find_spec("uvloop") is not None:
        out["uvloop"] = _version_of("uvloop") + " (installed, not used)"
    else:
        out["uvloop"] = "not installed (asyncio's loop)"
    return out


def _version_of(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": f"{platform.python_version()} ({platform.python_implementation()},"
        f" {platform.python_compiler()})",
        "platform": platform.platform(),
        "accelerators": accelerators(),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    phases = [p for p in PHASES if not args.only or p in args.only]
    workdir: Path = args.workdir
    otlp = OtlpReceiver()
    stack = Stack(
        workdir=workdir,
        redis_url=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        postgres_url=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        otlp_endpoint=otlp.start(),
    )
    bench = Bench(stack, sizes, otlp=otlp, profile=args.profile)
    started = time.perf_counter()
    load_before = os.getloadavg()
    timings: dict[str, float] = {}
    spread: dict[str, list[float]] = {}
    try:
        await stack.ensure_postgres_database()
        versions = await stack.versions()
        for name in phases:
            t0 = time.perf_counter()
            repeats = sizes.repeats if name in REPEATED else 1
            before = leaves(bench.results)
            runs = []
            for n in range(repeats):
                note = f" ({n + 1} of {repeats})" if repeats > 1 else ""
                print(f"[bench] {name}{note} ...", file=sys.stderr, flush=True)
                try:
                    await _phase(bench, name)()
                except Exception as exc:  # a failed phase is reported; the others still run
                    bench.errors[name] = f"{type(exc).__name__}: {exc}"
                    print(f"[bench] {name} failed: {bench.errors[name]}", file=sys.stderr)
                    await stack.stop_all()
                runs.append(leaves(bench.results))
            spread.update(settle_repeats(bench.results, before, runs))
            timings[name] = round(time.perf_counter() - t0, 1)
    finally:
        await stack.close()
        otlp.stop()
    results = bench.results
    doc: dict[str, Any] = {
        "results": results,
        "ratios": ratios(results),
        "targets": [
            {**asdict(t), "unit": t.note, "passed": t.passed, "verdict": t.verdict}
            for t in targets(results)
        ],
        "spread": spread,
        "details": bench.details,
        "errors": bench.errors,
        "phase_seconds": timings,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": {
            **machine(),
            **versions,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "sizes": asdict(sizes),
        "quick": args.quick,
        "redis_url": stack.redis_url,
        "postgres_url": stack.postgres_url,
        "workdir": str(workdir) if args.keep else None,
    }
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument(
        "--only",
        type=lambda s: [p.strip() for p in s.split(",") if p.strip()],
        help=f"comma-separated phases out of {','.join(PHASES)}",
    )
    parser.add_argument("--output", type=Path, default=Path("bench.json"))
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the service with py-spy during the ws, e2e and latency_ws phases",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--workdir", type=Path, help="where logs and databases go")
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    configure_logging("warning", "console")
    keep_workdir = args.keep or args.workdir is not None
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="amt-bench-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        doc = asyncio.run(run(args))
    finally:
        if not keep_workdir:
            shutil.rmtree(args.workdir, ignore_errors=True)
    args.output.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(report(doc))
    for key, what in PROFILES:
        profile = doc["details"].get(key)
        if not profile:
            continue
        print(f"\n{what} profile (py-spy, main thread; shares of busy samples)")
        print(f"  event loop waiting (idle): {profile['idle_share']:.1%} of all samples")
        for kind in ("self", "inclusive"):
            print(f"  top {kind}:")
            for name, share in profile[f"top_{kind}"][:15]:
                print(f"    {share:6.1%}  {name}")
    print(
        f"\nwall time {doc['wall_seconds']}s; {len(doc['errors'])} phase(s) failed;"
        f" written to {args.output}"
    )
    for name, error in doc["errors"].items():
        print(f"  {name}: {error}")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
