"""The measured phases. Each starts what it needs, measures, stops it, and records
figures in :attr:`Bench.results` and how they came about in :attr:`Bench.details`.

The service runs as production does (README, DESIGN.md section 1): one
``python -m amt_ingest run`` process with listener, pollers, router and the
embedded worker; ``--no-worker`` only where intake alone is measured.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from amt_ingest.simulator import Simulator, SimulatorOptions
from amt_ingest.simulator.world import World

from . import references
from .measure import flatness, percentile, rate_from_samples, rate_from_times
from .otlp import OtlpReceiver, delta
from .profile import summarise
from .scaling import scaling
from .stack import TOKEN, Proc, Stack, cpu_seconds, rss_mb

__all__ = ["FULL", "QUICK", "Bench", "Sizes"]


@dataclass(frozen=True)
class Sizes:
    """How much each phase does. :data:`FULL` keeps ``make bench`` near two minutes
    on two cores (under three on a loaded machine); :data:`QUICK` is the smoke
    tests'."""

    ws_events: int = 25_000
    ws_records: int = 5_000
    ws_window_s: float = 6.0
    arq_enqueue_s: float = 1.5
    arq_noop_jobs: int = 2_000
    sqs_events: int = 150
    e2e_events: int = 4_000
    e2e_window_s: float = 8.0
    latency_rate: float = 1_000.0
    latency_s: float = 6.0
    latency_drain_s: float = 6.0
    sqs_latency_s: float = 6.0
    coalesce_events: int = 1_000
    coalesce_records: int = 10
    rss_s: float = 16.0
    rss_records: int = 60_000
    overload_factor: float = 10.0
    scale_events: int = 12_000
    scale_workers: tuple[int, ...] = (1, 2, 4)
    scale_sqs_events: int = 300
    failover_rate: float = 200.0
    #: Runs of each phase of :data:`REPEATED` in one bench: figures are their
    #: medians, and the bench prints the spread.
    repeats: int = 3


#: Phases run ``Sizes.repeats`` times (the figures the targets rest on, and their references).
REPEATED: tuple[str, ...] = ("arq", "ws", "e2e_sqlite", "e2e_postgres", "latency_ws")

FULL = Sizes()
QUICK = Sizes(
    ws_events=1_500,
    ws_records=300,
    ws_window_s=3.0,
    arq_enqueue_s=0.3,
    arq_noop_jobs=300,
    sqs_events=40,
    e2e_events=150,
    e2e_window_s=5.0,
    latency_rate=200.0,
    latency_s=0.5,
    latency_drain_s=3.0,
    sqs_latency_s=1.0,
    coalesce_events=100,
    rss_s=2.0,
    rss_records=2_000,
    scale_events=300,
    repeats=1,
    scale_workers=(1, 2),
    scale_sqs_events=40,
    failover_rate=50.0,
)

#: Offered SQS rate for the latency phase when the SQS reference was not measured.
FALLBACK_SQS_RATE = 20.0
#: Offered overload when the PostgreSQL e2e figure was not measured.
FALLBACK_OVERLOAD_RATE = 5_000.0
LATENCY_SEED = 61
#: Seconds a stopped service gets to exit before it is killed (a service stops in
#: about a second: an SQS long poll in flight gets one second to return).
STOP_PATIENCE_S = 5.0


class Bench:
    def __init__(
        self, stack: Stack, sizes: Sizes, *, otlp: OtlpReceiver, profile: bool = False
    ) -> None:
        self.stack = stack
        self.sizes = sizes
        self.otlp = otlp
        self.profile = profile
        self.results: dict[str, Any] = {}
        self.details: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self._queue_url: str | None = None

    # -- helpers ------------------------------------------------------------------------

    async def follow(
        self,
        read: Callable[[], Awaitable[int]],
        *,
        proc: Proc,
        expected: int,
        window: float,
        stall: float = 5.0,
        startup: float = 60.0,
        interval: float = 0.1,
        on_first: Callable[[], None] | None = None,
    ) -> list[tuple[float, float]]:
        """Sample a growing count until it reaches ``expected``, ``window`` seconds
        passed since it first moved, or it stalled for ``stall`` seconds."""
        samples: list[tuple[float, float]] = []
        began = time.perf_counter()
        first_at: float | None = None
        changed_at = began
        last = -1
        while True:
            count = await read()
            now = time.perf_counter()
            samples.append((now, count))
            if count != last:
                changed_at, last = now, count
            if count > 0 and first_at is None:
                first_at = now
                if on_first is not None:
                    on_first()
            if count >= expected:
                break
            if first_at is None:
                if now - began > startup:
                    raise TimeoutError(f"{proc.name}: nothing arrived in {startup:.0f}s")
            elif now - first_at > window or now - changed_at > stall:
                break
            if not proc.alive():
                raise proc.exited()
            await asyncio.sleep(interval)
        return samples

    async def stop(self, *procs: Proc) -> None:
        """SIGTERM; a service that takes longer than :data:`STOP_PATIENCE_S` is killed
        (how it shuts down is not measured here, but it is noted)."""
        for proc in procs:
            started = time.perf_counter()
            code = await proc.stop(patience=STOP_PATIENCE_S)
            if proc.name.startswith("service"):
                took = round(time.perf_counter() - started, 1)
                self.details.setdefault("service_stops", {})[proc.name] = {
                    "seconds": took,
                    "exit_code": code,
                }

    def service_env(self, name: str, **kwargs: Any) -> dict[str, str]:
        return self.stack.service_env(name=name, **kwargs)

    async def scaling(self) -> None:
        """More processes of a role, as ratios to one (:mod:`benchmarks.scaling`)."""
        await scaling(self)

    # -- references: arq ------------------------------------------------------------------

    async def arq(self) -> None:
        await self.stack.reset_redis()
        self.results["arq_enqueue_eps"] = await references.arq_enqueue_eps(
            self.stack.redis_url, seconds=self.sizes.arq_enqueue_s
        )
        self.results["arq_noop_jps"] = await references.arq_noop_jps(
            self.stack.redis_url, jobs=self.sizes.arq_noop_jobs
        )
        self.details["arq"] = {
            "enqueue_seconds": self.sizes.arq_enqueue_s,
            "noop_jobs": self.sizes.arq_noop_jobs,
            "max_jobs": references.DEFAULTS["worker_max_jobs"],
            "poll_delay": references.DEFAULTS["worker_poll_delay"],
        }

    # -- WebSocket: bare client, then the service's intake ----------------------------------

    async def ws(self) -> None:
        n = self.sizes.ws_events
        await self.stack.reset_redis()
        sim = await self.stack.simulator(
            "ws-sim",
            _sim("--no-sns", events=n, records=self.sizes.ws_records, rate=0, seed=21),
            wait_complete=True,
        )
        try:
            self.results["ws_raw_eps"] = await references.ws_raw_eps(
                sim.ws_url, TOKEN, expected=n, parse=False
            )
            self.results["ws_parse_eps"] = await references.ws_raw_eps(
                sim.ws_url, TOKEN, expected=n, parse=True
            )
            database = self.stack.sqlite_url("ingest-ws")
            await self.stack.reset_database(database)
            env = self.service_env(
                "service-ingest-ws", database_url=database, ws_url=sim.ws_url, sf_url=sim.sf_url
            )
            otlp_before = self.otlp.snapshot()
            service = self.stack.service("service-ingest-ws", env, worker=False)
            spy = _Spy(self.stack.workdir / "ingest-ws.pyspy.txt", service.pid, self.profile)
            usage = _Usage(self.stack, service.pid)

            def first_events() -> None:
                spy.start()
                usage.start_soon()

            try:
                samples = await self.follow(
                    lambda: self.stack.routed("ws"),
                    proc=service,
                    expected=n,
                    window=self.sizes.ws_window_s,
                    on_first=first_events,
                )
                await usage.stop()
                spy.stop()
            finally:
                spy.stop()
                await self.stop(service)
            self.results["ingest_eps"] = rate_from_samples(samples)
            self.details["ingest_ws"] = {
                "backlog_events": n,
                "records": self.sizes.ws_records,
                "handed_off": int(samples[-1][1]),
                "seconds": round(samples[-1][0] - samples[0][0], 2),
                **usage.as_dict(),
                "otlp": delta(otlp_before, self.otlp.snapshot()),
            }
            # The same intake with tracing off: what tracing costs, from this run.
            await self.stack.reset_redis()
            await self.stack.reset_database(database)
            untraced = self.stack.service(
                "service-ingest-ws-untraced", env | {"OTEL_SDK_DISABLED": "true"}, worker=False
            )
            try:
                untraced_samples = await self.follow(
                    lambda: self.stack.routed("ws"),
                    proc=untraced,
                    expected=n,
                    window=self.sizes.ws_window_s,
                )
            finally:
                await self.stop(untraced)
            self.results["ingest_eps_untraced"] = rate_from_samples(untraced_samples)
            if spy.output is not None and spy.output.exists():
                self.details["profile_ws_ingest"] = {
                    "file": str(spy.output),
                    "command": spy.command,
                    **summarise(spy.output).as_dict(),
                }
        finally:
            await self.stop(sim.proc)

    # -- SQS: bare calls, then the service's intake ---------------------------------------

    async def _queue(self) -> str:
        """The monitoring queue as ``bootstrap`` makes it (SNS topics subscribed, DLQ)."""
        if self._queue_url is None:
            await self.stack.start_moto()
            boot = orjson.loads(await self.stack.amt("bootstrap", "--queue-name", "bench"))
            self._queue_url = str(boot["queue_url"])
        return self._queue_url

    async def sqs(self) -> None:
        n = self.sizes.sqs_events
        moto = await self.stack.start_moto()
        async with references.sqs_client(moto) as sqs:
            # Queues of their own, filled directly (no SNS subscription): a receive the
            # reference abandons, or that a stopped service leaves to moto, cannot
            # take messages of a later phase.
            raw_url = await references.create_queue(sqs, "bench-raw")
            queue_url = await references.create_queue(sqs, "bench-intake")
            started = time.perf_counter()
            await references.prefill_queue(sqs, raw_url, events=n, records=n, seed=41)
            prefill_s = time.perf_counter() - started
            self.results["sqs_raw_eps"] = await references.sqs_raw_eps(sqs, [raw_url], expected=n)
            await self.stack.reset_redis()
            await references.prefill_queue(sqs, queue_url, events=n, records=n, seed=42)
        # Passport's WebSocket is there but sends nothing (a simulator that never
        # generates, in this process): this measures the SQS path alone.
        idle = Simulator(SimulatorOptions(port=0, sf_port=0, sns=False, token=TOKEN))
        await idle.start()
        database = self.stack.sqlite_url("ingest-sqs")
        await self.stack.reset_database(database)
        env = self.service_env(
            "service-ingest-sqs",
            database_url=database,
            ws_url=idle.ws_url,
            sf_url=idle.sf_url,
            queue_urls=[queue_url],
        )
        otlp_before = self.otlp.snapshot()
        service = self.stack.service("service-ingest-sqs", env, worker=False)
        usage = _Usage(self.stack, service.pid)
        try:
            samples = await self.follow(
                lambda: self.stack.routed("sqs"),
                proc=service,
                expected=n,
                window=120,
                stall=8,
                interval=0.05,
                on_first=usage.start_soon,
            )
            await usage.stop()
        finally:
            await self.stop(service)
            await idle.stop()
        self.results["ingest_sqs_eps"] = rate_from_samples(samples)
        self.details["ingest_sqs"] = {
            "prefilled_messages": n,
            "prefill_seconds": round(prefill_s, 2),
            "receivers": references.DEFAULTS["sqs_receivers_per_queue"],
            "handed_off": int(samples[-1][1]),
            **usage.as_dict(),
            "otlp": delta(otlp_before, self.otlp.snapshot()),
        }

    # -- applied to the store ----------------------------------------------------------------

    async def e2e(self, database: str) -> None:
        n = self.sizes.e2e_events
        url = self.stack.postgres_url if database == "postgres" else self.stack.sqlite_url("e2e")
        await self.stack.reset_redis()
        await self.stack.reset_database(url)
        sim = await self.stack.simulator(
            f"e2e-{database}-sim",
            _sim("--fresh-records", "--no-sns", events=n, records=n, rate=0, seed=51),
            wait_complete=True,
        )
        name = f"service-e2e-{database}"
        env = self.service_env(name, database_url=url, ws_url=sim.ws_url, sf_url=sim.sf_url)
        otlp_before = self.otlp.snapshot()
        service = self.stack.service(name, env, worker=True)
        usage = _Usage(self.stack, service.pid)
        spy = _Spy(self.stack.workdir / f"e2e-{database}.pyspy.txt", service.pid, self.profile)

        def first_rows() -> None:
            spy.start()
            usage.start_soon()

        try:
            samples = await self.follow(
                lambda: self.stack.store_count(url),
                proc=service,
                expected=n,
                window=self.sizes.e2e_window_s,
                interval=0.5,
                on_first=first_rows,
            )
            await usage.stop()
        finally:
            spy.stop()
            await self.stop(service, sim.proc)
        if spy.output is not None and spy.output.exists():
            self.details[f"profile_e2e_{database}"] = {
                "file": str(spy.output),
                "command": spy.command,
                **summarise(spy.output).as_dict(),
            }
        rows = await self.stack.store_rows(url)
        self.results.setdefault("e2e_rps", {})[database] = rate_from_times([row[0] for row in rows])
        self.details[f"e2e_{database}"] = {
            "backlog_events": n,
            "distinct_records": True,
            "applied": len(rows),
            "seconds": round(samples[-1][0] - samples[0][0], 2),
            **usage.as_dict(),
            "otlp": delta(otlp_before, self.otlp.snapshot()),
        }

    # -- latency at a fixed offered load ---------------------------------------------------------

    async def _latency(self, path: str, *, rate: float, seconds: float) -> None:
        n = max(10, int(rate * seconds))
        url = self.stack.postgres_url
        await self.stack.reset_redis()
        await self.stack.reset_database(url)
        extra = ["--no-sns"]
        queue_urls: list[str] = []
        if path == "sqs":
            queue_urls = [await self._queue()]
            extra = ["--sqs-only-rate", "1"]
        sim = await self.stack.simulator(
            f"latency-{path}-sim",
            _sim(
                "--fresh-records",
                "--wall-clock",
                "--wait-for-subscriber",
                *extra,
                events=n,
                records=n,
                rate=f"{rate:.3f}",
                seed=LATENCY_SEED,
            ),
        )
        name = f"service-latency-{path}"
        env = self.service_env(
            name, database_url=url, ws_url=sim.ws_url, sf_url=sim.sf_url, queue_urls=queue_urls
        )
        otlp_before = self.otlp.snapshot()
        service = self.stack.service(name, env, worker=True)
        usage = _Usage(self.stack, service.pid)
        spy = _Spy(self.stack.workdir / f"latency-{path}.pyspy.txt", service.pid, self.profile)
        try:
            deadline = time.monotonic() + 60 + seconds * 3
            while not sim.stats.exists():
                for proc in (service, sim.proc):
                    if not proc.alive():
                        raise proc.exited()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name}: the simulator did not finish generating")
                if not usage.started and await self.stack.stats("first:"):
                    usage.start_soon()
                    spy.start()
                await asyncio.sleep(0.25)
            drain_until = time.monotonic() + self.sizes.latency_drain_s
            while time.monotonic() < drain_until:
                if await self.stack.store_count(url) >= n:
                    break
                await asyncio.sleep(0.25)
            await usage.stop()
        finally:
            spy.stop()
            await self.stop(service, sim.proc)
        if spy.output is not None and spy.output.exists():
            self.details[f"profile_latency_{path}"] = {
                "file": str(spy.output),
                "command": spy.command,
                **summarise(spy.output).as_dict(),
            }
        generated = orjson.loads(sim.stats.read_bytes())["generated"]["events"]
        rows = await self.stack.store_rows(url)
        handoff = await self._handoff_split(rows, events=n, records=n, seed=LATENCY_SEED)
        latencies = [applied * 1000 - commit_ms for applied, commit_ms, _ in rows]
        unapplied = max(0, generated - len(rows))
        latencies += [math.inf] * unapplied
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        self.results.setdefault("latency_ms", {})[path] = {
            "offered_eps": round(rate, 1),
            "p50": _finite(p50),
            "p99": _finite(p99),
            "max": _finite(max(latencies) if latencies else None),
            "events": generated,
            "unapplied": unapplied,
            **handoff,
        }
        self.details[f"latency_{path}"] = {
            "applied": len(rows),
            "applied_p50_p99_max_ms": [
                _finite(percentile(latencies[: len(rows)], q)) for q in (50, 99, 100)
            ],
            "drain_wait_s": self.sizes.latency_drain_s,
            "database": "postgresql",
            "clock": "commitTimestamp (simulator wall clock, ms) to the row's updated_at",
            **usage.as_dict(),
            "otlp": delta(otlp_before, self.otlp.snapshot()),
        }

    async def _handoff_split(
        self, rows: list[tuple[float, int, str]], *, events: int, records: int, seed: int
    ) -> dict[str, float | None]:
        """Where the latency of applied records went: commit to the hand-off in Redis
        (the dedup record's first-arrival time) and hand-off to the store.

        The simulator's event and record ids do not depend on its clock, so the
        same seeded World, replayed here, says which event created which record.
        """
        world = World(seed, records, fresh_records=True)
        event_of: dict[str, str] = {}
        for _ in range(events):
            event = world.next_event()
            event_of[event["payload"]["ChangeEventHeader"]["recordIds"][0]] = event["event_id"]
        pipe = self.stack.redis.pipeline(transaction=False)
        for _, _, record_id in rows:
            pipe.hget(f"amt:evt:{event_of.get(record_id, '?')}", "t")
        handed = await pipe.execute()
        intake: list[float] = []
        apply: list[float] = []
        for (applied, commit_ms, _), first_ms in zip(rows, handed, strict=True):
            if first_ms is None:
                continue
            intake.append(int(first_ms) - commit_ms)
            apply.append(applied * 1000 - int(first_ms))
        return {
            "to_handoff_p50": _finite(percentile(intake, 50)),
            "to_handoff_p99": _finite(percentile(intake, 99)),
            "handoff_to_store_p50": _finite(percentile(apply, 50)),
            "handoff_to_store_p99": _finite(percentile(apply, 99)),
        }

    async def latency_ws(self) -> None:
        await self._latency("ws", rate=self.sizes.latency_rate, seconds=self.sizes.latency_s)

    async def latency_sqs(self) -> None:
        raw = self.results.get("sqs_raw_eps")
        rate = raw / 2 if raw else FALLBACK_SQS_RATE
        await self._sqs_endpoint_floor(rate=rate, seconds=self.sizes.sqs_latency_s)
        await self._latency("sqs", rate=rate, seconds=self.sizes.sqs_latency_s)

    async def _sqs_endpoint_floor(self, *, rate: float, seconds: float) -> None:
        """The same offered load through SNS to the same queue, taken by a bare consumer
        instead of the service: commit to receive, what the endpoint alone costs."""
        n = max(10, int(rate * seconds))
        queue_url = await self._queue()
        moto = await self.stack.start_moto()
        async with references.sqs_client(moto) as sqs:
            sim = await self.stack.simulator(
                "sqs-floor-sim",
                _sim(
                    "--fresh-records",
                    "--wall-clock",
                    "--sqs-only-rate",
                    "1",
                    events=n,
                    records=n,
                    rate=f"{rate:.3f}",
                    seed=LATENCY_SEED + 1,
                ),
            )
            try:
                latencies = await references.sqs_latency_floor(
                    sqs,
                    queue_url,
                    expected=n,
                    until=sim.stats.exists,
                    give_up_after=60 + seconds * 3,
                )
            finally:
                await self.stop(sim.proc)
            # Nothing of this run may reach the service's: polls abandoned at the
            # end (1 s long) are over, then the queue is emptied.
            await asyncio.sleep(1.2)
            await sqs.purge_queue(QueueUrl=queue_url)
        self.results.setdefault("latency_ms", {})["sqs_endpoint"] = {
            "offered_eps": round(rate, 1),
            "p50": _finite(percentile(latencies, 50)),
            "p99": _finite(percentile(latencies, 99)),
            "max": _finite(max(latencies) if latencies else None),
            "events": n,
            "received": len(latencies),
        }

    # -- coalescing -----------------------------------------------------------------------------

    async def coalesce(self) -> None:
        n, records = self.sizes.coalesce_events, self.sizes.coalesce_records
        url = self.stack.postgres_url
        await self.stack.reset_redis()
        await self.stack.reset_database(url, count_writes=True)
        sim = await self.stack.simulator(
            "coalesce-sim",
            _sim("--no-sns", events=n, records=records, rate=0, seed=71),
            wait_complete=True,
        )
        truth = [orjson.loads(line) for line in sim.truth.read_bytes().splitlines()]
        env = self.service_env(
            "service-coalesce", database_url=url, ws_url=sim.ws_url, sf_url=sim.sf_url
        )
        service = self.stack.service("service-coalesce", env, worker=True)
        started = time.monotonic()
        converged: float | None = None
        try:
            while time.monotonic() - started < 60:
                if await self.stack.export(url) == truth:
                    converged = time.monotonic() - started
                    break
                if not service.alive():
                    raise service.exited()
                await asyncio.sleep(0.5)
        finally:
            await self.stop(service, sim.proc)
        writes = await self.stack.store_writes(url)
        self.results["coalesce_ratio"] = writes / n if converged is not None else None
        self.details["coalesce"] = {
            "events": n,
            "records": records,
            "store_writes": writes,
            "converged_after_s": None if converged is None else round(converged, 2),
            "counted_by": "AFTER INSERT OR UPDATE row triggers into bench_writes",
        }

    # -- memory under overload ---------------------------------------------------------------------

    async def rss(self) -> None:
        e2e = (self.results.get("e2e_rps") or {}).get("postgres")
        rate = e2e * self.sizes.overload_factor if e2e else FALLBACK_OVERLOAD_RATE
        url = self.stack.postgres_url
        await self.stack.reset_redis()
        await self.stack.reset_database(url)
        sim = await self.stack.simulator(
            "rss-sim",
            _sim(
                "--on-demand",
                "--fresh-records",
                "--no-sns",
                events=0,
                records=self.sizes.rss_records,
                rate=f"{rate:.1f}",
            ),
        )
        env = self.service_env(
            "service-rss", database_url=url, ws_url=sim.ws_url, sf_url=sim.sf_url
        )
        service = self.stack.service("service-rss", env, worker=True)
        samples: list[tuple[float, float]] = []
        depth: list[int] = []
        try:
            await self.follow(
                lambda: self.stack.routed("ws"),
                proc=service,
                expected=1,
                window=0,
            )
            began = time.perf_counter()
            first_accepted = await self.stack.routed("ws")
            while (now := time.perf_counter()) - began < self.sizes.rss_s:
                value = rss_mb(service.pid)
                if value is None:
                    raise service.exited()
                samples.append((now, value))
                depth.append(int(await self.stack.redis.scard("amt:pending")))
                await asyncio.sleep(0.5)
            accepted = await self.stack.routed("ws") - first_accepted
            elapsed = time.perf_counter() - began
        finally:
            await self.stop(service, sim.proc)
        applied = await self.stack.store_count(url)
        shape = flatness(samples)
        self.results["rss_mb"] = shape.peak if shape else None
        self.results["rss_flat"] = shape.flat if shape else None
        self.details["rss"] = {
            "offered_eps_cap": round(rate, 1),
            "accepted_eps": round(accepted / elapsed, 1),
            "applied_records": applied,
            "seconds": round(elapsed, 1),
            "pending_records_max": max(depth, default=0),
            "high_water_mark": references.DEFAULTS["max_pending_records"],
            **({k: round(v, 1) for k, v in asdict(shape).items() if k != "flat"} if shape else {}),
            "samples_mb": [round(v, 1) for _, v in samples],
        }


def _sim(*flags: str, **options: object) -> list[str]:
    """Simulator arguments: ``events=10`` gives ``--events 10``; ``flags`` as they are."""
    out: list[str] = []
    for name, value in options.items():
        out += [f"--{name.replace('_', '-')}", str(value)]
    return [*out, *flags]


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else round(value, 1)


class _Usage:
    """CPU used by the service process and by Redis between two instants (cores)."""

    def __init__(self, stack: Stack, pid: int) -> None:
        self.stack, self.pid = stack, pid
        self._start: tuple[float, float | None, float] | None = None
        self._task: asyncio.Task[None] | None = None
        self.service_cores: float | None = None
        self.redis_cores: float | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def start_soon(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._begin())

    async def _begin(self) -> None:
        self._start = (
            time.perf_counter(),
            cpu_seconds(self.pid),
            await self.stack.redis_cpu_seconds(),
        )

    async def stop(self) -> None:
        if self._task is not None:
            await self._task
        if self._start is None:
            return
        t0, service0, redis0 = self._start
        elapsed = time.perf_counter() - t0
        service1, redis1 = cpu_seconds(self.pid), await self.stack.redis_cpu_seconds()
        if elapsed > 0:
            if service0 is not None and service1 is not None:
                self.service_cores = (service1 - service0) / elapsed
            self.redis_cores = (redis1 - redis0) / elapsed

    def as_dict(self) -> dict[str, Any]:
        return {
            "service_cpu_cores": None
            if self.service_cores is None
            else round(self.service_cores, 2),
            "redis_cpu_cores": None if self.redis_cores is None else round(self.redis_cores, 2),
        }


class _Spy:
    """py-spy sampling one process while it works (``--profile``); stopped with SIGINT,
    which makes py-spy write what it has."""

    def __init__(self, output: Path, pid: int, enabled: bool) -> None:
        self.output: Path | None = output if enabled else None
        self.pid = pid
        self.command: list[str] = [
            "py-spy", "record", "--pid", str(pid), "--rate", "200", "--idle",
            "--format", "raw", "--output", str(output),
        ]  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.output is None or self._proc is not None:
            return
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        with open(self.output.with_suffix(".log"), "wb") as log:
            self._proc = subprocess.Popen(
                [exe, *self.command[1:]], stdout=log, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
