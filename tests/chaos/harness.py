"""Randomized fault run: the whole system under SIGKILL, SIGTERM, Redis restarts and database outages.

Everything is real and local: a moto server, a test-owned ``redis-server`` with
an append-only file (fsync always, so every acknowledged hand-off survives its
restart), the Passport simulator and the service's processes. In the ``single``
mode these are the service (embedded worker) and a second, separate worker
process; in the ``replicas`` mode, three intake replicas (``run --no-worker``:
one holds the WebSocket lease, all poll SQS) and two workers. While the
simulator streams events with duplicates, out-of-order and one-path
deliveries, foreign orgs and malformed input, a seeded schedule of faults hits
the processes (in the replicas mode: the WebSocket leader, a standby, a worker)
and Redis (and, with ``--database postgres``, the database: connections refused
for 5-30 s through a proxy). Afterwards the store must equal the simulator's
ground truth, and the simulator must never have had two WebSocket
subscriptions open at once.

``python -m tests.chaos.harness --duration 150 --seed 7 [--mode replicas]`` prints
the figures and exits non-zero if anything was lost or overwritten by an older
value, or if two replicas subscribed at once.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ORG = "00D5g000004ZzABEA0"
TOKEN = "chaos-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Report:
    seed: int
    duration_s: float
    emitted: int = 0
    applied_records: int = 0
    truth_records: int = 0
    first: int = 0
    duplicates: int = 0
    filtered: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    dead_records: int = 0
    lost: int = 0
    stale: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    converged_s: float | None = None
    final_exit: int | None = None
    examples: list[str] = field(default_factory=list)
    mode: str = "single"
    #: WebSocket subscriptions open at once, at most (the simulator counts them).
    max_subscribers: int | None = None
    subscriptions: int | None = None
    #: Seconds from each leader kill to the next WebSocket hand-off (None: none came).
    failovers: list[float | None] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.stale == 0
            and self.converged_s is not None
            and self.final_exit == 0
            and not self.faults.get("term_service_bad_exit")
            and not self.faults.get("term_leader_bad_exit")
            and (self.max_subscribers is None or self.max_subscribers <= 1)
        )

    def lines(self) -> list[str]:
        return [
            f"chaos mode={self.mode} seed={self.seed} duration={self.duration_s:.0f}s",
            f"  emitted            {self.emitted}",
            f"  applied (first)    {self.first} events -> {self.applied_records}/{self.truth_records} records",
            f"  duplicates         {self.duplicates}",
            f"  filtered (orgs)    {self.filtered}",
            f"  rejected           {dict(sorted(self.rejected.items()))}",
            f"  dead-lettered      {dict(sorted(self.dead_letters.items()))} (+{self.dead_records} records)",
            f"  faults             {dict(sorted(self.faults.items()))}",
            f"  converged after    {self.converged_s if self.converged_s is None else round(self.converged_s, 1)}s",
            f"  ws subscriptions   {self.subscriptions}, at most {self.max_subscribers} at once",
            f"  failovers          {[None if f is None else round(f, 1) for f in self.failovers]}s",
            f"  lost               {self.lost}",
            f"  stale overwrites   {self.stale}",
            f"  last SIGTERM exit  {self.final_exit}",
            *(f"    e.g. {e}" for e in self.examples[:5]),
            "  RESULT             " + ("ok" if self.ok else "FAILED"),
        ]


def compare(truth: list[dict[str, Any]], store: list[dict[str, Any]]) -> tuple[int, int, list[str]]:
    """(lost, stale, examples): a field or record of the truth missing from the store is
    lost; a field or tombstone holding another value than the truth is a stale overwrite."""
    held = {(r["topic"], r["id"]): r for r in store}
    lost = stale = 0
    examples: list[str] = []
    for record in truth:
        key = (record["topic"], record["id"])
        got = held.get(key)
        if got is None:
            lost += 1 + len(record["fields"])
            examples.append(f"missing record {key}")
            continue
        if got["deleted"] != record["deleted"]:
            stale += 1
            examples.append(f"{key} deleted={got['deleted']} want {record['deleted']}")
        for name, value in record["fields"].items():
            if name not in got["fields"]:
                lost += 1
                examples.append(f"{key} lacks {name}")
            elif got["fields"][name] != value:
                stale += 1
                examples.append(f"{key}.{name}={got['fields'][name]!r} want {value!r}")
    return lost, stale, examples


#: The processes of each mode: name -> role (``run``, ``intake``: run --no-worker, ``worker``).
MODES: dict[str, dict[str, str]] = {
    "single": {"service": "run", "worker": "worker"},
    "replicas": {
        "replica-1": "intake",
        "replica-2": "intake",
        "replica-3": "intake",
        "worker-1": "worker",
        "worker-2": "worker",
    },
}


class Chaos:
    def __init__(
        self,
        *,
        seed: int,
        duration: float,
        rate: float,
        workdir: Path,
        database: str,
        mode: str = "single",
    ):
        self.rng = random.Random(seed)
        self.mode = mode
        self.roles = MODES[mode]
        self.seed = seed
        self.duration = duration
        self.rate = rate
        self.dir = workdir
        self.database = database
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.faults: Counter[str] = Counter()
        self.python = sys.executable
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")}
        self.redis_port = free_port()
        self.db_proxy_port = free_port()
        self.ws_port, self.sf_port = free_port(), free_port()

    # -- processes ------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def _stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    def start_moto(self) -> None:
        port = free_port()
        self._spawn(
            "moto",
            [self.python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            self.base_env,
        )
        self.endpoint = f"http://127.0.0.1:{port}"
        _wait(lambda: urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2), 30, "moto")
        self.base_env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
        )

    def start_redis(self) -> None:
        data = self.dir / "redis"
        data.mkdir(exist_ok=True)
        self._spawn(
            "redis",
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            self.base_env,
        )

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        _wait(up, 30, "redis-server")

    def start_db_proxy(self) -> None:
        self._spawn(
            "dbproxy",
            [self.python, "-m", "tests.chaos.tcpproxy", str(self.db_proxy_port), "5432"],
            self.base_env,
        )
        _wait(
            lambda: socket.create_connection(("127.0.0.1", self.db_proxy_port), timeout=1),
            30,
            "db proxy",
        )

    def service_env(self) -> dict[str, str]:
        return {
            **self.base_env,
            "AMT_PASSPORT_WS_URL": f"ws://127.0.0.1:{self.ws_port}/stream",
            "AMT_PASSPORT_TOKEN": TOKEN,
            "AMT_SALESFORCE_BASE_URL": f"http://127.0.0.1:{self.sf_port}",
            "AMT_SQS_QUEUE_URLS": self.queue_url,
            "AMT_SQS_WAIT_SECONDS": "2",
            "AMT_SQS_VISIBILITY_TIMEOUT": "10",
            "AMT_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "AMT_DATABASE_URL": self.db_url,
            "AMT_ALLOWED_ORG_IDS": ORG,
            "AMT_HTTP_PORT": "0",
            "AMT_JOB_TIMEOUT": "10",
            "AMT_SHUTDOWN_GRACE": "5",
            "AMT_WS_BACKOFF_MAX": "2",
            "AMT_WS_HEARTBEAT_TIMEOUT": "10",
            "AMT_DEAD_LETTER_FILE": str(self.dir / "dead-letters.jsonl"),
            "AMT_LOG_FORMAT": "json",
            "AMT_LOG_LEVEL": "warning",
        }

    def start(self, name: str) -> None:
        """Start one of the mode's processes (again)."""
        role = self.roles[name]
        args = {"run": ["run"], "intake": ["run", "--no-worker"], "worker": ["worker"]}[role]
        env = {**self.service_env(), "AMT_REPLICA_ID": name}
        self._spawn(name, [self.python, "-m", "amt_ingest", *args], env)

    def leader(self) -> str | None:
        """The replica that holds the WebSocket lease now (None: none does)."""
        import redis

        try:
            held = redis.Redis(port=self.redis_port, socket_timeout=2).get("amt:leader:ws")
        except redis.RedisError:
            return None
        return held.decode().split(" ", 1)[0].rsplit(".", 1)[0] if held else None

    def _cursor(self) -> bytes | None:
        import redis

        try:
            value = redis.Redis(port=self.redis_port, socket_timeout=2).get("amt:cursor:ws")
        except redis.RedisError:
            return None
        return bytes(value) if value is not None else None

    def _failover(self, killed_at: float, before: bytes | None, until: Any) -> float | None:
        """Seconds from the kill until the cursor moves again (a WebSocket hand-off)."""
        while time.monotonic() - killed_at < 30 and not until():
            if self._cursor() not in (before, None):
                return time.monotonic() - killed_at
            time.sleep(0.05)
        return None

    def amt(self, *args: str) -> str:
        out = subprocess.run(
            [self.python, "-m", "amt_ingest", *args],
            env=self.service_env() if hasattr(self, "queue_url") else self.base_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"amt_ingest {' '.join(args)} failed: {out.stderr[-2000:]}")
        return out.stdout

    # -- the run ------------------------------------------------------------------

    def run(self) -> Report:
        report = Report(seed=self.seed, duration_s=self.duration)
        events = int(self.rate * self.duration)
        try:
            self.start_moto()
            self.start_redis()
            self.db_url = (
                f"sqlite+aiosqlite:///{self.dir}/store.db"
                if self.database == "sqlite"
                else os.environ.get(
                    "AMT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
                )
            )
            boot = json.loads(self.amt("bootstrap"))
            self.queue_url, self.dlq_url = boot["queue_url"], boot["dlq_url"]
            if self.database == "postgres":
                self._reset_postgres()
            for name in self.roles:
                self.start(name)
            truth_path, stats_path = self.dir / "truth.jsonl", self.dir / "stats.json"
            self._spawn(
                "simulator",
                [
                    self.python,
                    "-m",
                    "amt_ingest",
                    "simulate",
                    "--port",
                    str(self.ws_port),
                    "--sf-port",
                    str(self.sf_port),
                    "--token",
                    TOKEN,
                    "--events",
                    str(events),
                    "--rate",
                    str(self.rate),
                    "--records",
                    "200",
                    "--seed",
                    str(self.seed),
                    "--dup-rate",
                    "0.1",
                    "--ooo-rate",
                    "0.1",
                    "--ws-only-rate",
                    "0.05",
                    "--sqs-only-rate",
                    "0.05",
                    "--foreign-org-rate",
                    "0.02",
                    "--malformed-rate",
                    "0.01",
                    "--max-batch",
                    "20",
                    "--heartbeat-interval",
                    "2",
                    "--sqs-queue-url",
                    self.queue_url,
                    "--truth",
                    str(truth_path),
                    "--stats",
                    str(stats_path),
                ],
                self.base_env,
            )
            self._inject_faults(
                until=lambda: truth_path.exists(), limit=self.duration * 3 + 120, report=report
            )
            # Faults over: everything must converge with what is left running.
            for name in self.roles:
                if name not in self.procs:
                    self.start(name)
            truth = [json.loads(line) for line in truth_path.read_text().splitlines()]
            began = time.monotonic()
            store: list[dict[str, Any]] = []
            while time.monotonic() - began < 300:
                store = [json.loads(line) for line in self.amt("export").splitlines()]
                if store == truth:
                    report.converged_s = time.monotonic() - began
                    break
                time.sleep(2)
            report.lost, report.stale, report.examples = compare(truth, store)
            report.truth_records, report.applied_records = len(truth), len(store)
            stats = json.loads(stats_path.read_text())
            report.emitted = stats["generated"]["events"]
            self._counters(report)
            leader = self.leader() or next(iter(self.roles))
            report.final_exit = self._stop(leader)
            stream = self._simulator_stats()["stream"]
            report.max_subscribers = stream["max_concurrent_subscribers"]
            report.subscriptions = stream["subscriptions"]
        finally:
            report.faults = dict(self.faults)
            report.mode = self.mode
            for name in ("simulator", *self.roles, "redis", "moto", "dbproxy"):
                self._stop(name, timeout=15)
        return report

    def _simulator_stats(self) -> dict[str, Any]:
        """The simulator's live stats (its control API), read while it still runs."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.sf_port}/simulator/stats",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            stats: dict[str, Any] = json.loads(reply.read())
            return stats

    def _inject_faults(self, *, until: Any, limit: float, report: Report) -> None:
        start = time.monotonic()
        while not until() and time.monotonic() - start < limit:
            time.sleep(self.rng.uniform(2.0, 6.0))
            if until():
                return
            if self.mode == "replicas":
                self._replica_fault(until, report)
            else:
                self._single_fault()
        if not until():
            raise TimeoutError("the simulator did not finish")

    def _common_fault(self, fault: str) -> None:
        if fault == "restart_redis":
            self._stop("redis", signal.SIGKILL)
            time.sleep(self.rng.uniform(0.2, 2.0))
            self.start_redis()
        else:  # the database refuses connections for a while, then comes back
            self._stop("dbproxy", signal.SIGKILL)
            time.sleep(self.rng.uniform(5.0, 30.0))
            self.start_db_proxy()

    def _single_fault(self) -> None:
        kinds = ["kill_service", "term_service", "kill_worker", "restart_redis"]
        weights = [4, 2, 2, 2]
        if self.database == "postgres":
            kinds.append("db_outage")
            weights.append(1)
        fault = self.rng.choices(kinds, weights)[0]
        self.faults[fault] += 1
        if fault == "kill_service":
            self._stop("service", signal.SIGKILL)
            time.sleep(self.rng.uniform(0.1, 2.0))
            self.start("service")
        elif fault == "term_service":
            code = self._stop("service", signal.SIGTERM)
            if code != 0:
                self.faults["term_service_bad_exit"] += 1
            self.start("service")
        elif fault == "kill_worker":
            self._stop("worker", signal.SIGKILL)
            time.sleep(self.rng.uniform(0.1, 1.0))
            self.start("worker")
        else:
            self._common_fault(fault)

    def _replica_fault(self, until: Any, report: Report) -> None:
        kinds = ["kill_leader", "kill_standby", "term_leader", "kill_worker", "restart_redis"]
        weights = [4, 2, 1, 2, 1]
        if self.database == "postgres":
            kinds.append("db_outage")
            weights.append(1)
        fault = self.rng.choices(kinds, weights)[0]
        self.faults[fault] += 1
        replicas = [n for n, role in self.roles.items() if role == "intake"]
        leader = self.leader()
        if fault in ("kill_leader", "term_leader", "kill_standby"):
            if fault == "kill_standby":
                name = self.rng.choice([n for n in replicas if n != leader] or replicas)
            else:
                name = leader if leader in replicas else self.rng.choice(replicas)
            before = self._cursor()
            code = self._stop(name, signal.SIGTERM if fault == "term_leader" else signal.SIGKILL)
            stopped = time.monotonic()
            if fault == "term_leader" and code != 0:
                self.faults["term_leader_bad_exit"] += 1
            if fault != "kill_standby" and name == leader:
                report.failovers.append(self._failover(stopped, before, until))
            time.sleep(self.rng.uniform(0.1, 1.0))
            self.start(name)
        elif fault == "kill_worker":
            name = self.rng.choice([n for n, role in self.roles.items() if role == "worker"])
            self._stop(name, signal.SIGKILL)
            time.sleep(self.rng.uniform(0.1, 1.0))
            self.start(name)
        else:
            self._common_fault(fault)

    def _counters(self, report: Report) -> None:
        import boto3
        import redis

        client = redis.Redis(port=self.redis_port)
        stats = {k.decode(): int(v) for k, v in client.hgetall("amt:stats").items()}
        report.first = sum(v for k, v in stats.items() if k.startswith("first:"))
        report.duplicates = sum(v for k, v in stats.items() if k.startswith("duplicate:"))
        report.filtered = sum(v for k, v in stats.items() if k.startswith("filtered:"))
        report.rejected = {
            k.removeprefix("rejected:"): v for k, v in stats.items() if k.startswith("rejected:")
        }
        report.dead_records = client.hlen("amt:dead:records")
        sqs = boto3.client(
            "sqs",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        reasons: Counter[str] = Counter()
        seen: set[str] = set()
        while True:
            batch = sqs.receive_message(
                QueueUrl=self.dlq_url,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                VisibilityTimeout=300,
            ).get("Messages", [])
            if not batch:
                break
            for message in batch:
                if message["MessageId"] not in seen:
                    seen.add(message["MessageId"])
                    attrs = message.get("MessageAttributes", {})
                    # No reason attribute: SQS itself moved it after maxReceiveCount receives.
                    reason = attrs.get("reason", {}).get("StringValue", "redriven by SQS")
                    path = attrs.get("path", {}).get("StringValue", "?")
                    reasons[f"{path}:{reason}"] += 1
        report.dead_letters = dict(reasons)

    def _reset_postgres(self) -> None:
        import asyncio

        from amt_ingest.store import Store, metadata

        async def drop() -> None:
            store = Store.open(self.db_url.replace(f":{self.db_proxy_port}/", ":5432/"))
            async with store.engine.begin() as conn:
                await conn.run_sync(metadata.drop_all)
            await store.close()

        asyncio.run(drop())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=150, help="seconds of events (default 150)"
    )
    parser.add_argument("--rate", type=float, default=30, help="events/s offered (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--mode",
        choices=tuple(MODES),
        default="single",
        help="single: the service and a worker; replicas: 3 intake replicas and 2 workers",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="amt-chaos-"))
    try:
        report = Chaos(
            seed=args.seed,
            duration=args.duration,
            rate=args.rate,
            workdir=workdir,
            database=args.database,
            mode=args.mode,
        ).run()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(report.lines()))
    if args.keep:
        print(f"  logs in {workdir}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
