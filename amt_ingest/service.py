"""The process: wires sources, router, worker, store and health together, and stops them in order.

What it runs are its roles (:class:`Roles`): WebSocket intake (under the
WebSocket lease: one replica listens, the others stand by), SQS intake, the
embedded worker. Shutdown (SIGTERM or Ctrl-C): intake stops first (the
WebSocket closes without advancing its cursor past anything not handed off and
its lease is released; SQS stops polling and hands back what it received but
did not hand off), then the embedded worker stops picking jobs and lets running
ones finish within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import signal
import socket
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Final

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from . import aws, early_signals
from .config import Settings
from .coordination import Coordinator, Leadership
from .errors import AwsError, ConfigError, IngestError, StoreError
from .jobs import build_worker, create_arq_pool
from .operations.deadletters.sink import DeadLetters
from .operations.health import Check, HealthServer, sources_readiness
from .operations.heartbeat import Heartbeat
from .operations.watch import Watcher
from .policy import backoff
from .routing.orgs import OrgFilter
from .routing.router import Router
from .salesforce.client import SalesforceClient
from .sources.election import STANDBY, Election
from .sources.sqs import SqsPoller
from .sources.websocket import WebSocketListener
from .store import Store
from .telemetry import Telemetry, setup_telemetry

__all__ = ["Roles", "replica_names", "run_service"]

log = structlog.get_logger("amt_ingest.service")

#: The garbage collector's thresholds once started (Python's are 700, 10, 10).
GC_THRESHOLDS: Final = (5_000, 20, 20)


def _tune_collector() -> None:
    """Once start-up is done: what it built (modules, clients, pools) lives as long
    as the process, so it leaves the collector's full passes, whose cost grows
    with the heap; and the youngest generation is collected every 5,000
    allocations instead of 700. At full intake (a span, a log line and a
    parsed event per event) the defaults cost several microseconds an event,
    mostly on objects that were still in use."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def _connect_redis(settings: Settings) -> aioredis.Redis:
    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=10, socket_connect_timeout=5
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise IngestError(
            f"AMT_REDIS_URL: Redis at {settings.redis_url} is not reachable: {exc}"
        ) from exc
    return client


#: How long a starting service retries reading the allowed orgs: a SQLite file
#: that another process is creating or switching to WAL is locked for a moment.
ORGS_START_PATIENCE_S: Final = 10.0


async def load_orgs_at_start(
    orgs: OrgFilter, *, patience_s: float = ORGS_START_PATIENCE_S
) -> frozenset[str]:
    """The allowed orgs, read before any input is taken; a failed read is retried
    with backoff for ``patience_s`` seconds, then stops the start (naming the
    setting)."""
    started = time.monotonic()
    delays = backoff(0.2, 2.0)
    while True:
        try:
            return await orgs.load()
        except StoreError as exc:
            delay = next(delays)
            if time.monotonic() - started + delay > patience_s:
                raise StoreError(f"AMT_DATABASE_URL: {exc}") from exc
            log.warning("org_list_read_failed", error=str(exc), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)


async def _prepare_database(settings: Settings, store: Store) -> None:
    """Bring the schema to the newest migration (``AMT_DB_AUTO_UPGRADE``, the default) or
    refuse to start when it is behind."""
    try:
        await store.ensure_schema(upgrade=settings.db_auto_upgrade)
    except StoreError as exc:
        hint = "" if settings.db_auto_upgrade else " (AMT_DB_AUTO_UPGRADE is off)"
        raise StoreError(f"AMT_DATABASE_URL: {exc}{hint}") from exc


class WorkerRunner:
    """The embedded arq worker, restarted when Redis drops.

    arq's poll loop ends on a Redis connection error; the runner starts a fresh
    worker after a backoff, so a Redis restart does not end the process. Jobs
    the old worker started run to their end meanwhile.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pool: Any,
        coordinator: Coordinator,
        store: Store,
        salesforce: SalesforceClient,
        telemetry: Telemetry,
    ):
        self.settings = settings
        self.pool = pool
        self.coordinator = coordinator
        self.store = store
        self.salesforce = salesforce
        self.telemetry = telemetry
        self.workers: list[Any] = []

    async def run(self, stop: asyncio.Event) -> None:
        delays = backoff(0.5, 10.0)
        while not stop.is_set():
            worker = build_worker(
                self.settings,
                pool=self.pool,
                coordinator=self.coordinator,
                store=self.store,
                salesforce=self.salesforce,
                handle_signals=False,
                telemetry=self.telemetry,
            )
            self.workers = [w for w in self.workers if _running(w)] + [worker]
            try:
                await worker.main()
            except (RedisError, OSError) as exc:
                delay = next(delays)
                log.warning("worker_redis_error", error=str(exc), restart_in_s=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)

    async def drain(self, grace: float) -> None:
        """Stop picking jobs, let running ones finish within ``grace``, cancel the rest."""
        for worker in self.workers:
            worker.allow_pick_jobs = False
        running = [t for w in self.workers for t in w.tasks.values() if not t.done()]
        if running:
            await asyncio.wait(running, timeout=grace)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def _running(worker: Any) -> bool:
    return any(not t.done() for t in worker.tasks.values())


@dataclass(frozen=True)
class Roles:
    """What this process runs (``AMT_RUN_*``, or ``run --no-...``, or ``worker``)."""

    websocket: bool
    sqs: bool
    worker: bool

    @classmethod
    def of(cls, settings: Settings) -> Roles:
        return cls(
            websocket=settings.run_websocket,
            sqs=settings.run_sqs and bool(settings.sqs_queue_urls),
            worker=settings.run_worker,
        )

    @property
    def intake(self) -> bool:
        return self.websocket or self.sqs

    @property
    def names(self) -> list[str]:
        return [name for name in ("websocket", "sqs", "worker") if getattr(self, name)]


def replica_names(settings: Settings) -> tuple[str, str]:
    """This replica's name (``AMT_REPLICA_ID``, else ``<host>-<pid>``) and its
    instance id: the name and a suffix new at every start, so that a restarted
    replica never takes over its former self's WebSocket lease."""
    name = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
    return name, f"{name}.{secrets.token_hex(3)}"


@dataclass
class _Intake:
    """The sources this process runs (none in a worker-only process)."""

    listener: WebSocketListener | None = None
    election: Election | None = None
    pollers: list[SqsPoller] = field(default_factory=list)
    sqs: Any = None
    dlqs: dict[str, str] = field(default_factory=dict)


async def run_service(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    telemetry: Telemetry | None = None,
) -> int:
    """Run the roles the settings name until SIGTERM/SIGINT (or ``stop``); returns
    the exit code."""
    roles = Roles.of(settings)
    if not roles.intake and not roles.worker:
        raise ConfigError(
            "nothing to run: AMT_RUN_WEBSOCKET, AMT_RUN_SQS (or AMT_SQS_QUEUE_URLS) "
            "and AMT_RUN_WORKER are all off"
        )
    stop = stop or asyncio.Event()
    _install_signal_handlers(stop)
    if early_signals:
        log.info("service_stopped", exit_code=0, reason="SIGTERM before start")
        return 0
    if roles.websocket:
        settings.require_token()
    name, instance = replica_names(settings)
    async with AsyncExitStack() as stack:
        if telemetry is None:
            telemetry = setup_telemetry(settings)
            stack.callback(telemetry.shutdown)
        redis, store = await _open_backends(settings, stack, telemetry)
        coordinator = Coordinator(
            redis, dedup_ttl=settings.dedup_ttl_seconds, job_batch=settings.job_batch
        )
        orgs = OrgFilter(settings.allowed_org_ids, source=store.orgs, ttl_s=settings.orgs_cache_s)
        router = Router(
            coordinator.handoff,
            orgs=orgs,
            max_pending_records=settings.max_pending_records,
            telemetry=telemetry,
            track_one_path=roles.intake and bool(settings.sqs_queue_urls),
        )
        tasks: dict[str, asyncio.Task[Any]] = {}
        intake = _Intake()
        if roles.intake:
            intake = await _start_intake(
                settings, roles, instance, stack, router, coordinator, orgs, stop, tasks
            )
        runner = None
        if roles.worker:
            runner = await _start_worker(settings, stack, coordinator, store, telemetry)
            tasks["worker"] = asyncio.create_task(runner.run(stop), name="worker")
        heartbeat = Heartbeat(
            coordinator,
            instance=instance,
            name=name,
            roles=roles.names,
            election=intake.election.state if intake.election else None,
            listener=intake.listener.state if intake.listener else None,
        )
        background = {
            "gauges": _start_watcher(settings, coordinator, telemetry, intake, stop, roles),
            "heartbeat": asyncio.create_task(heartbeat.run(stop), name="heartbeat"),
        }
        health = HealthServer(
            host=settings.http_host,
            port=settings.http_port,
            checks=_readiness_checks(settings, redis, store, intake, roles),
            metrics=telemetry.prometheus_text,
        )
        await health.start()
        stack.push_async_callback(health.stop)
        _tune_collector()
        log.info(
            "service_started",
            replica=instance,
            roles=roles.names,
            queues=len(settings.sqs_queue_urls),
            http_port=health.bound_port,
            telemetry=telemetry.exports,
        )
        exit_code = await _run_until_stopped(tasks | background, stop)
        shutdown_s = await _shut_down(settings, tasks, runner, background, heartbeat)
        log.info("service_stopped", exit_code=exit_code, shutdown_s=shutdown_s)
        return exit_code


async def _open_backends(
    settings: Settings, stack: AsyncExitStack, telemetry: Telemetry
) -> tuple[aioredis.Redis, Store]:
    """Redis and the database, reachable and with their schema, instrumented."""
    redis = await _connect_redis(settings)
    stack.push_async_callback(redis.aclose)
    telemetry.instrument_redis(redis)
    store = Store.open(settings.database_url)
    stack.push_async_callback(store.close)
    await _prepare_database(settings, store)
    telemetry.instrument_engine(store.engine)
    return redis, store


async def _start_intake(
    settings: Settings,
    roles: Roles,
    instance: str,
    stack: AsyncExitStack,
    router: Router,
    coordinator: Coordinator,
    orgs: OrgFilter,
    stop: asyncio.Event,
    tasks: dict[str, asyncio.Task[Any]],
) -> _Intake:
    """The WebSocket election (its listener runs while this replica leads) and the
    SQS pollers, started as tasks; rejected input goes to the queues' dead-letter
    queues (or the fallback file)."""
    allowed = await load_orgs_at_start(orgs)
    if not allowed:
        log.warning(
            "org_filter_off",
            hint="set AMT_ALLOWED_ORG_IDS or run `python -m amt_ingest orgs add ORG_ID` "
            "to keep only your orgs",
        )
    intake = _Intake()
    if settings.sqs_queue_urls:
        intake.sqs = await stack.enter_async_context(aws.client(settings, "sqs"))
        intake.dlqs = await _dead_letter_queues(settings, intake.sqs)
    else:
        log.warning("sqs_disabled", hint="set AMT_SQS_QUEUE_URLS to run the SQS safety net")
    router.dead_letters = DeadLetters(
        sqs=intake.sqs,
        dlq_url=next(iter(intake.dlqs.values()), None),
        dlq_by_source=intake.dlqs,
        fallback_path=settings.dead_letter_file,
    )
    if roles.websocket:
        intake.listener = WebSocketListener(settings, router=router, coordinator=coordinator)
        leadership = Leadership(
            coordinator.redis, replica=instance, ttl_ms=int(settings.ws_lease_s * 1000)
        )
        intake.election = Election(leadership, intake.listener, telemetry=router.telemetry)
        tasks["websocket"] = asyncio.create_task(intake.election.run(stop), name="websocket")
    if roles.sqs:
        for url in settings.sqs_queue_urls:
            for n in range(settings.sqs_receivers_per_queue):
                poller = SqsPoller(settings, sqs=intake.sqs, queue_url=url, router=router)
                intake.pollers.append(poller)
                name = f"sqs:{url}#{n}"
                tasks[name] = asyncio.create_task(poller.run(stop), name=name)
    return intake


async def _dead_letter_queues(settings: Settings, sqs: Any) -> dict[str, str]:
    """Each consumed queue's dead-letter queue (from its redrive policy), where one is."""
    dlqs: dict[str, str] = {}
    for url in settings.sqs_queue_urls:
        try:
            dlq = await aws.dead_letter_queue_url(sqs, url)
        except AwsError as exc:
            log.warning("dead_letter_queue_unknown", queue_url=url, error=str(exc))
            continue
        if dlq is None:
            log.warning(
                "dead_letter_queue_missing", queue_url=url, fallback=str(settings.dead_letter_file)
            )
        else:
            dlqs[url] = dlq
    return dlqs


async def _start_worker(
    settings: Settings,
    stack: AsyncExitStack,
    coordinator: Coordinator,
    store: Store,
    telemetry: Telemetry,
) -> WorkerRunner:
    pool = await create_arq_pool(settings)
    stack.push_async_callback(pool.aclose)
    salesforce = SalesforceClient.from_settings(settings)
    stack.push_async_callback(salesforce.aclose)
    return WorkerRunner(
        settings,
        pool=pool,
        coordinator=coordinator,
        store=store,
        salesforce=salesforce,
        telemetry=telemetry,
    )


def _start_watcher(
    settings: Settings,
    coordinator: Coordinator,
    telemetry: Telemetry,
    intake: _Intake,
    stop: asyncio.Event,
    roles: Roles,
) -> asyncio.Task[Any]:
    listener, election = intake.listener, intake.election
    if listener is not None and election is not None:
        ws_state, role = listener.state, election.state
        telemetry.metrics.gauges.websocket = lambda: int(ws_state.connected)
        telemetry.metrics.gauges.ws_leader = lambda: int(role.leading)
    watcher = Watcher(
        settings,
        coordinator=coordinator,
        telemetry=telemetry,
        sqs=intake.sqs,
        queues={url: intake.dlqs.get(url) for url in settings.sqs_queue_urls}
        if roles.intake
        else {},
        sweep_one_path=roles.intake and bool(settings.sqs_queue_urls),
    )
    return asyncio.create_task(watcher.run(stop), name="gauges")


def _readiness_checks(
    settings: Settings, redis: aioredis.Redis, store: Store, intake: _Intake, roles: Roles
) -> dict[str, Check]:
    """``/readyz``'s checks: Redis and the database reachable, the sources running."""

    async def redis_ok() -> tuple[bool, str]:
        await redis.ping()
        return True, "ok"

    async def database_ok() -> tuple[bool, str]:
        await store.ping()
        return True, "ok"

    async def sources_ok() -> tuple[bool, str]:
        if not roles.intake:
            return True, "no sources in this process"
        state = intake.listener.state if intake.listener is not None else None
        election = intake.election.state if intake.election is not None else None
        # The grace covers reconnects, not a start that never got through.
        down_since = state.disconnected_since if state and state.subscribed_once else None
        return sources_readiness(
            ws_enabled=state is not None,
            ws_standby=election is not None and election.role == STANDBY,
            ws_connected=bool(state and state.connected),
            ws_down_for=None if down_since is None else time.monotonic() - down_since,
            ws_fatal=state.fatal if state is not None else None,
            sqs_enabled=bool(intake.pollers),
            sqs_ok=any(
                p.state.consecutive_errors == 0 and p.state.last_poll_ok_at for p in intake.pollers
            ),
            grace_s=settings.ready_ws_grace_s,
        )

    return {"redis": redis_ok, "database": database_ok, "sources": sources_ok}


async def _run_until_stopped(tasks: dict[str, asyncio.Task[Any]], stop: asyncio.Event) -> int:
    """Wait for ``stop``; a part that fails stops the process with exit code 1."""
    stopper = asyncio.create_task(stop.wait())
    waiting: set[asyncio.Task[Any]] = {stopper, *tasks.values()}
    exit_code = 0
    while not stop.is_set():
        done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is stopper or task.cancelled():
                continue
            failure = task.exception()
            if failure is None:
                log.warning("component_ended", component=task.get_name())
            else:
                log.error("component_failed", component=task.get_name(), error=repr(failure))
                exit_code = 1
                stop.set()
    stopper.cancel()
    return exit_code


async def _shut_down(
    settings: Settings,
    tasks: dict[str, asyncio.Task[Any]],
    runner: WorkerRunner | None,
    background: dict[str, asyncio.Task[Any]],
    heartbeat: Heartbeat,
) -> float:
    """Intake first (the WebSocket lease released, the SQS receives handed back),
    then the worker's running jobs within what is left of the grace period, then
    the gauges and the heartbeat; returns how long it took."""
    started = time.monotonic()
    intake = [t for name, t in tasks.items() if name != "worker"]
    if intake:
        _, pending = await asyncio.wait(intake, timeout=settings.shutdown_grace)
        if pending:
            log.warning(
                "shutdown_cut_off",
                components=sorted(t.get_name() for t in pending),
                grace_s=settings.shutdown_grace,
            )
        for task in pending:
            task.cancel()
        await asyncio.gather(*intake, return_exceptions=True)
    if runner is not None:
        remaining = max(0.0, settings.shutdown_grace - (time.monotonic() - started))
        await runner.drain(remaining)
        tasks["worker"].cancel()
        await asyncio.gather(tasks["worker"], return_exceptions=True)
    for task in background.values():
        task.cancel()
    await asyncio.gather(*background.values(), return_exceptions=True)
    await heartbeat.leave()
    return round(time.monotonic() - started, 2)
