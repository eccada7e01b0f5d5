"""What the phases run against: subprocesses (moto server, simulator, service), Redis,
the databases, and process readings (RSS, CPU time).

Everything listens on 127.0.0.1. Redis and PostgreSQL are the machine's, on
the database named by ``BENCH_REDIS_URL`` (db 13 by default) and
``BENCH_POSTGRES_URL`` (``test_bench``); both are emptied by the bench.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from amt_ingest.store import TABLES, Store, metadata

__all__ = [
    "DEFAULT_POSTGRES_URL",
    "DEFAULT_REDIS_URL",
    "ORG",
    "TOKEN",
    "Proc",
    "Stack",
    "cpu_seconds",
    "free_port",
    "postgres_cpu_seconds",
    "rss_mb",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test_bench"
TOKEN = "bench-token"
ORG = "00D5g000004ZzABEA0"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Outcomes of a routed event in the ``amt:stats`` counters.
ROUTED = frozenset({"first", "duplicate", "stale", "filtered"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process in MiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def postgres_cpu_seconds() -> float:
    """User + system CPU time of every process named ``postgres`` (the server and
    its backends) on this machine; a backend that exits between two readings
    takes its time with it, so measure while the pools stay connected."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text(encoding="ascii").rsplit(")", 1)
        except (OSError, ValueError):
            continue
        if head.endswith("(postgres"):
            fields = tail.split()
            total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return total


@dataclass
class Proc:
    """A subprocess with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exited(self, what: str = "") -> RuntimeError:
        """The error to raise when the process ended before it should have."""
        during = f" while waiting for {what}" if what else ""
        return RuntimeError(
            f"{self.name} exited with {self.popen.returncode}{during}:\n{self.tail()}"
        )

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def stop(self, patience: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``patience`` seconds; returns the exit code
        (None when it had to be killed)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.popen.wait, patience)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            await asyncio.to_thread(self.popen.wait)
            return None


@dataclass
class Simulator:
    proc: Proc
    ws_port: int
    sf_port: int
    stats: Path
    truth: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/stream"

    @property
    def sf_url(self) -> str:
        return f"http://127.0.0.1:{self.sf_port}"


@dataclass
class Stack:
    """The shared resources of one bench run; :meth:`close` stops what it started."""

    workdir: Path
    redis_url: str
    postgres_url: str
    otlp_endpoint: str
    python: str = sys.executable
    moto_url: str | None = None
    procs: list[Proc] = field(default_factory=list)
    _redis: aioredis.Redis | None = None
    _stores: dict[str, Store] = field(default_factory=dict)

    # -- environment ------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AMT_", "OTEL_", "AWS_"))}
        if self.moto_url is not None:
            env.update(
                AWS_ENDPOINT_URL=self.moto_url,
                AWS_REGION="us-east-1",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
            )
        return env

    def service_env(
        self,
        *,
        database_url: str,
        ws_url: str,
        sf_url: str,
        queue_urls: Sequence[str] = (),
        name: str,
    ) -> dict[str, str]:
        """The service as shipped (defaults for everything that is not an address),
        tracing on: every event sampled, exported in batches to the local receiver."""
        env = self.base_env()
        env.update(
            AMT_PASSPORT_WS_URL=ws_url,
            AMT_PASSPORT_TOKEN=TOKEN,
            AMT_SALESFORCE_BASE_URL=sf_url,
            AMT_SQS_QUEUE_URLS=",".join(queue_urls),
            AMT_REDIS_URL=self.redis_url,
            AMT_DATABASE_URL=database_url,
            AMT_ALLOWED_ORG_IDS=ORG,
            AMT_HTTP_PORT="0",
            AMT_DEAD_LETTER_FILE=str(self.workdir / f"{name}-dead-letters.jsonl"),
            AMT_LOG_FORMAT="json",
            AMT_LOG_LEVEL="info",
            OTEL_SERVICE_NAME="amt-ingest-bench",
            OTEL_EXPORTER_OTLP_ENDPOINT=self.otlp_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="otlp",
            OTEL_LOGS_EXPORTER="none",
            OTEL_TRACES_SAMPLER="always_on",
        )
        return env

    # -- processes ----------------------------------------------------------------

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str]) -> Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                list(args), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    async def start_moto(self) -> str:
        if self.moto_url is not None:
            return self.moto_url
        port = free_port()
        self.spawn(
            "moto",
            [self.python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            self.base_env(),
        )
        url = f"http://127.0.0.1:{port}"
        await _wait(lambda: _http_ok(url + "/moto-api/"), 30, "the moto server")
        self.moto_url = url
        return url

    async def amt(self, *args: str, env: dict[str, str] | None = None) -> str:
        """``python -m amt_ingest ARGS``, to completion; returns its standard output."""
        proc = await asyncio.create_subprocess_exec(
            self.python,
            "-m",
            "amt_ingest",
            *args,
            env=env or self.base_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"amt_ingest {' '.join(args)} failed: {err.decode()[-2000:]}")
        return out.decode()

    async def simulator(
        self, name: str, args: Sequence[str], *, wait_complete: bool = False, within: float = 120
    ) -> Simulator:
        """A simulator subprocess on free ports; with ``wait_complete``, returns once it
        has generated everything (``--events``) and written its stats."""
        ws_port, sf_port = free_port(), free_port()
        stats, truth = self.workdir / f"{name}-stats.json", self.workdir / f"{name}-truth.jsonl"
        # A phase run again must not read the stats of its run before (they mark completion).
        stats.unlink(missing_ok=True)
        truth.unlink(missing_ok=True)
        proc = self.spawn(
            name,
            [
                self.python,
                "-m",
                "amt_ingest",
                "simulate",
                "--port",
                str(ws_port),
                "--sf-port",
                str(sf_port),
                "--token",
                TOKEN,
                "--stats",
                str(stats),
                "--truth",
                str(truth),
                *args,
            ],
            self.base_env(),
        )
        sim = Simulator(proc, ws_port, sf_port, stats, truth)
        await _wait(lambda: _port_open(ws_port), 60, f"{name} to listen", proc)
        if wait_complete:
            await _wait(stats.exists, within, f"{name} to generate its events", proc)
        return sim

    def service(
        self, name: str, env: dict[str, str], *, worker: bool, extra: Sequence[str] = ()
    ) -> Proc:
        args = [self.python, "-m", "amt_ingest", "run", *extra]
        if not worker:
            args.append("--no-worker")
        return self.spawn(name, args, env)

    def worker(self, name: str, env: dict[str, str]) -> Proc:
        """A ``python -m amt_ingest worker`` process."""
        return self.spawn(name, [self.python, "-m", "amt_ingest", "worker"], env)

    async def stop_all(self) -> None:
        for proc in reversed(self.procs):
            await proc.stop(patience=15)
        self.procs.clear()

    async def close(self) -> None:
        await self.stop_all()
        for url in list(self._stores):
            await self._forget_store(url)
        if self._redis is not None:
            await self._redis.aclose()

    # -- Redis ------------------------------------------------------------------------

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(self.redis_url)
        return self._redis

    async def reset_redis(self) -> None:
        await self.redis.flushdb()

    async def stats(self, prefix: str) -> int:
        """Sum of the ``amt:stats`` counters whose name starts with ``prefix``."""
        raw = await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall("amt:stats"))
        return sum(int(v) for k, v in raw.items() if k.decode().startswith(prefix))

    async def routed(self, path: str) -> int:
        """Events the router has handed off from ``path``, whatever the outcome (first,
        duplicate: SQS delivers at least once, stale, filtered)."""
        raw = await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall("amt:stats"))
        total = 0
        for key, value in raw.items():
            kind, _, rest = key.decode().partition(":")
            if kind in ROUTED and rest.startswith(f"{path}:"):
                total += int(value)
        return total

    async def redis_cpu_seconds(self) -> float:
        info = await self.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    # -- databases --------------------------------------------------------------------

    def sqlite_url(self, name: str) -> str:
        return f"sqlite+aiosqlite:///{self.workdir / name}.db"

    async def ensure_postgres_database(self) -> None:
        """Create the bench's PostgreSQL database if it does not exist yet."""
        import asyncpg  # type: ignore[import-untyped]

        url = make_url(self.postgres_url)
        conn = await asyncpg.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 5432,
            user=url.username or "postgres",
            password=url.password,
            database="postgres",
        )
        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", url.database
            )
            if not exists:
                await conn.execute(f'CREATE DATABASE "{url.database}"')
        finally:
            await conn.close()

    def _store(self, url: str) -> Store:
        """One engine per database for the bench's own reads."""
        if url not in self._stores:
            self._stores[url] = Store.open(url)
        return self._stores[url]

    async def _forget_store(self, url: str) -> None:
        store = self._stores.pop(url, None)
        if store is not None:
            await store.close()

    async def reset_database(self, url: str, *, count_writes: bool = False) -> None:
        """An empty store with the project's schema; ``count_writes`` adds triggers that
        log every row insert and update into ``bench_writes`` (a store write counter
        owned by the bench: the project's tables stay as they are)."""
        await self._forget_store(url)
        if url.startswith("sqlite"):
            await asyncio.to_thread(_remove_sqlite, Path(make_url(url).database or ""))
        store = self._store(url)
        async with store.engine.begin() as conn:
            if url.startswith("postgresql"):
                await conn.execute(text("DROP TABLE IF EXISTS bench_writes"))
                await conn.execute(text("DROP FUNCTION IF EXISTS bench_count_write() CASCADE"))
            await conn.run_sync(metadata.drop_all)
        await store.ensure_schema()
        if count_writes:
            async with store.engine.begin() as conn:
                for statement in _write_counter_sql(url):
                    await conn.execute(text(statement))

    async def store_count(self, url: str) -> int:
        total = 0
        async with self._store(url).engine.connect() as conn:
            for spec in TABLES.values():
                count = (await conn.execute(select(func.count()).select_from(spec.table))).scalar()
                total += int(count or 0)
        return total

    async def store_rows(self, url: str) -> list[tuple[float, int, str]]:
        """``(applied_at, commit_ms, record_id)`` per stored record: ``updated_at`` (set
        by the job just before its write commits) in epoch seconds, and the
        commitTimestamp of the record's newest change (the head of ``last_position``)."""
        rows: list[tuple[float, int, str]] = []
        async with self._store(url).engine.connect() as conn:
            for spec in TABLES.values():
                t = spec.table
                result = await conn.execute(select(t.c.updated_at, t.c.last_position, t.c.id))
                for updated_at, position, record_id in result:
                    rows.append((_epoch_seconds(updated_at), int(position[:15]), record_id))
        return rows

    async def store_writes(self, url: str) -> int:
        async with self._store(url).engine.connect() as conn:
            count = (await conn.execute(text("SELECT count(*) FROM bench_writes"))).scalar()
        return int(count or 0)

    async def export(self, url: str) -> list[dict[str, Any]]:
        return [record async for record in self._store(url).export()]

    async def versions(self) -> dict[str, str]:
        info = await self.redis.info("server")
        out = {"redis": str(info.get("redis_version"))}
        async with self._store(self.postgres_url).engine.connect() as conn:
            out["postgresql"] = str((await conn.execute(text("SHOW server_version"))).scalar())
        return out


def _write_counter_sql(url: str) -> list[str]:
    tables = [spec.table.name for spec in TABLES.values()]
    if url.startswith("postgresql"):
        statements = [
            "CREATE TABLE bench_writes (tbl text NOT NULL, id text NOT NULL,"
            " at timestamptz NOT NULL DEFAULT clock_timestamp())",
            "CREATE FUNCTION bench_count_write() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN INSERT INTO bench_writes (tbl, id) VALUES (TG_TABLE_NAME, NEW.id);"
            " RETURN NULL; END $$",
        ]
        statements += [
            f"CREATE TRIGGER bench_count_write AFTER INSERT OR UPDATE ON {name}"
            " FOR EACH ROW EXECUTE FUNCTION bench_count_write()"
            for name in tables
        ]
        return statements
    statements = ["CREATE TABLE bench_writes (tbl TEXT NOT NULL, id TEXT NOT NULL)"]
    for name in tables:
        for kind in ("INSERT", "UPDATE"):
            statements.append(
                f"CREATE TRIGGER bench_{kind.lower()}_{name} AFTER {kind} ON {name}"
                f" BEGIN INSERT INTO bench_writes (tbl, id) VALUES ('{name}', NEW.id); END"
            )
    return statements


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


def _epoch_seconds(value: Any) -> float:
    import datetime as dt

    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:  # SQLite keeps the UTC wall time without its offset
        value = value.replace(tzinfo=dt.UTC)
    return float(value.timestamp())


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2):
        return True


def _port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


async def _wait(predicate: Any, within: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if await asyncio.to_thread(predicate):
                return
        except OSError:
            pass
        if proc is not None and not proc.alive():
            raise proc.exited(what)
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
