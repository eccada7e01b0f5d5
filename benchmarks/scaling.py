"""The scaling phase: more processes of a role, as ratios to one process in the same run.

- Records applied per second on PostgreSQL by one ``run`` process (intake and
  embedded worker), then by an intake process (``run --no-worker``) with 1, 2
  and 4 ``worker`` processes (``Sizes.scale_workers``), on the same
  pre-generated backlog.
- SQS intake with 1 and 2 consumer processes (``run --no-worker --no-websocket``,
  two receivers each) on the same pre-filled queue.
- Failover: two WebSocket replicas under a steady offered load; the leader is
  SIGKILLed (then, with a third replica standing by, stopped with SIGTERM), timed
  until the next WebSocket hand-off.

CPU of every process of a measurement and of Redis are in ``bench.json``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from amt_ingest.simulator import Simulator, SimulatorOptions

from . import references
from .measure import rate_from_samples, rate_from_times
from .stack import TOKEN, Proc, cpu_seconds, postgres_cpu_seconds

if TYPE_CHECKING:
    from .phases import Bench

__all__ = ["SQS_CONSUMERS", "scaling"]

#: SQS consumer processes measured.
SQS_CONSUMERS = (1, 2)


async def scaling(bench: Bench) -> None:
    await _workers(bench)
    await _sqs_consumers(bench)
    await _failover(bench)


class _Cpu:
    """CPU cores used by some processes, by Redis and by PostgreSQL between two instants."""

    def __init__(self, bench: Bench, procs: Sequence[Proc]) -> None:
        self.bench, self.procs = bench, list(procs)
        self.start: tuple[float, list[float | None], float, float] | None = None
        self.cores: dict[str, float | None] = {}
        self._task: asyncio.Task[None] | None = None

    def start_soon(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self.begin())

    async def begin(self) -> None:
        self.start = (
            time.perf_counter(),
            [cpu_seconds(p.pid) for p in self.procs],
            await self.bench.stack.redis_cpu_seconds(),
            postgres_cpu_seconds(),
        )

    async def end(self) -> dict[str, float | None]:
        if self._task is not None:
            await self._task
        if self.start is None:
            return {}
        t0, before, redis0, postgres0 = self.start
        elapsed = time.perf_counter() - t0
        after = [cpu_seconds(p.pid) for p in self.procs]
        redis1 = await self.bench.stack.redis_cpu_seconds()
        for proc, b, a in zip(self.procs, before, after, strict=True):
            self.cores[proc.name] = None if a is None or b is None else round((a - b) / elapsed, 2)
        self.cores["redis"] = round((redis1 - redis0) / elapsed, 2)
        self.cores["postgres"] = round((postgres_cpu_seconds() - postgres0) / elapsed, 2)
        return self.cores


async def _workers(bench: Bench) -> None:
    """e2e records/s on PostgreSQL: one `run` process, then intake + N workers."""
    stack, n = bench.stack, bench.sizes.scale_events
    url = stack.postgres_url
    rates: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    for shape in ("run", *(f"workers_{w}" for w in bench.sizes.scale_workers)):
        await stack.reset_redis()
        await stack.reset_database(url)
        sim = await stack.simulator(
            f"scale-{shape}-sim",
            [
                *("--fresh-records", "--no-sns", "--events", str(n), "--records", str(n)),
                *("--rate", "0", "--seed", "71"),
            ],
            wait_complete=True,
        )
        env = bench.service_env(
            f"service-scale-{shape}", database_url=url, ws_url=sim.ws_url, sf_url=sim.sf_url
        )
        procs = [stack.service(f"service-scale-{shape}", env, worker=shape == "run")]
        if shape != "run":
            workers = int(shape.split("_")[1])
            procs += [stack.worker(f"worker-scale-{shape}-{i}", env) for i in range(workers)]
        cpu = _Cpu(bench, procs)
        try:
            samples = await bench.follow(
                lambda: stack.store_count(url),
                proc=procs[0],
                expected=n,
                window=bench.sizes.e2e_window_s,
                interval=0.25,
                on_first=cpu.start_soon,
            )
            cores = await cpu.end()
        finally:
            await bench.stop(*procs, sim.proc)
        rows = await stack.store_rows(url)
        rates[shape] = rate_from_times([row[0] for row in rows])
        details[shape] = {
            "processes": [p.name for p in procs],
            "applied": len(rows),
            "seconds": round(samples[-1][0] - samples[0][0], 2),
            "cpu_cores": cores,
        }
    base = rates["run"]
    bench.results["scale_e2e_rps"] = rates
    bench.results["scale_e2e_ratio"] = {
        shape: None if not base or rate is None else round(rate / base, 2)
        for shape, rate in rates.items()
    }
    bench.details["scale_e2e"] = {"backlog_events": n, "database": "postgres", **details}


async def _sqs_consumers(bench: Bench) -> None:
    """SQS intake (no workers) with 1 and 2 consumer processes on the same pre-filled queue."""
    stack, n = bench.stack, bench.sizes.scale_sqs_events
    moto = await stack.start_moto()
    idle = Simulator(SimulatorOptions(port=0, sf_port=0, sns=False, token=TOKEN))
    await idle.start()
    rates: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    try:
        for consumers in SQS_CONSUMERS:
            async with references.sqs_client(moto) as sqs:
                queue_url = await references.create_queue(sqs, f"bench-scale-{consumers}")
                await references.prefill_queue(
                    sqs, queue_url, events=n, records=n, seed=80 + consumers
                )
            await stack.reset_redis()
            database = stack.sqlite_url(f"scale-sqs-{consumers}")
            await stack.reset_database(database)
            env = bench.service_env(
                f"service-scale-sqs-{consumers}",
                database_url=database,
                ws_url=idle.ws_url,
                sf_url=idle.sf_url,
                queue_urls=[queue_url],
            )
            procs = [
                stack.service(
                    f"service-scale-sqs-{consumers}-{i}",
                    env,
                    worker=False,
                    extra=["--no-websocket"],
                )
                for i in range(consumers)
            ]
            cpu = _Cpu(bench, procs)
            try:
                samples = await bench.follow(
                    lambda: stack.routed("sqs"),
                    proc=procs[0],
                    expected=n,
                    window=120,
                    stall=8,
                    interval=0.05,
                    on_first=cpu.start_soon,
                )
                cores = await cpu.end()
            finally:
                await bench.stop(*procs)
            key = f"consumers_{consumers}"
            rates[key] = rate_from_samples(samples)
            details[key] = {"handed_off": int(samples[-1][1]), "cpu_cores": cores}
    finally:
        await idle.stop()
    base = rates["consumers_1"]
    bench.results["scale_sqs_eps"] = rates
    bench.results["scale_sqs_ratio"] = {
        key: None if not base or rate is None else round(rate / base, 2)
        for key, rate in rates.items()
    }
    bench.details["scale_sqs"] = {
        "prefilled_messages": n,
        "receivers_per_process": references.DEFAULTS["sqs_receivers_per_queue"],
        **details,
    }


async def _failover(bench: Bench) -> None:
    """Two WebSocket replicas (no SQS, no workers) under a steady load: the leader is
    killed, then (a third replica standing by) the new leader is stopped; each is
    timed until the next WebSocket hand-off."""
    stack = bench.stack
    await stack.reset_redis()
    database = stack.sqlite_url("failover")
    await stack.reset_database(database)
    rate = bench.sizes.failover_rate
    sim = await stack.simulator(
        "failover-sim",
        ["--no-sns", "--events", "0", "--rate", str(rate), "--records", "500", "--seed", "91"],
    )
    env = bench.service_env(
        "service-failover", database_url=database, ws_url=sim.ws_url, sf_url=sim.sf_url
    )
    replicas: dict[str, Proc] = {}

    def start(name: str) -> None:
        replicas[name] = stack.service(
            f"service-failover-{name}",
            {**env, "AMT_REPLICA_ID": name},
            worker=False,
            extra=["--no-sqs"],
        )

    timings: dict[str, float | None] = {}
    try:
        start("a")
        await _until(lambda: _leader(bench), 60, "a leader")
        start("b")
        await _until(_handing_off(bench), 30, "events handed off")
        await asyncio.sleep(2.0)  # the standby has tried the lease
        timings["kill"] = await _signal_leader(bench, replicas, kill=True)
        start("c")
        await asyncio.sleep(2.0)
        timings["sigterm"] = await _signal_leader(bench, replicas, kill=False)
    finally:
        await bench.stop(*replicas.values(), sim.proc)
    bench.results["failover_s"] = timings
    bench.details["failover"] = {
        "offered_eps": rate,
        "lease_s": references.DEFAULTS.get("ws_lease_s"),
        "measured": "from the signal to the next WebSocket hand-off (the cursor moving)",
    }


async def _leader(bench: Bench) -> str | None:
    held = await bench.stack.redis.get("amt:leader:ws")
    return held.decode().split(" ", 1)[0].rsplit(".", 1)[0] if held else None


def _handing_off(bench: Bench) -> Any:
    async def moving() -> bool:
        return await bench.stack.routed("ws") > 100

    return moving


async def _cursor(bench: Bench) -> bytes | None:
    value = await bench.stack.redis.get("amt:cursor:ws")
    return bytes(value) if value is not None else None


async def _signal_leader(bench: Bench, replicas: dict[str, Proc], *, kill: bool) -> float | None:
    """SIGKILL or SIGTERM the leader; seconds from the signal until another replica
    hands off (the cursor is read once the leader is gone: its own last hand-offs
    do not count)."""
    name = await _leader(bench)
    if name is None:
        raise RuntimeError("scaling: no WebSocket leader to stop")
    proc = replicas[name]
    signalled = time.perf_counter()
    if kill:
        proc.popen.kill()
    else:
        proc.popen.terminate()
    await asyncio.to_thread(proc.popen.wait, 30)
    return await _next_hand_off(bench, since=signalled)


async def _next_hand_off(bench: Bench, *, since: float) -> float | None:
    before = await _cursor(bench)
    while time.perf_counter() - since < 30:
        if await _cursor(bench) != before:
            return round(time.perf_counter() - since, 2)
        await asyncio.sleep(0.02)
    return None


async def _until(predicate: Any, within: float, what: str) -> None:
    deadline = time.perf_counter() + within
    while not await predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"scaling: no {what} within {within:.0f}s")
        await asyncio.sleep(0.05)
