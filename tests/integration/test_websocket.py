"""The WebSocket listener against the project's Passport simulator, real Redis and a real store.

The simulator runs in-process on free ports (no SNS, so no AWS). Faults are
injected by its FaultPolicy at exact points (the Nth frame of connection 1,
connections 1..5, ...), never by timing; the tests wait for conditions by
polling with a deadline. Reconnect delays are injected, so the tests reason
about backoff with known numbers.

Results are read where the service leaves them: the ``amt:stats`` counters,
the ``ws`` cursor, the jobs in ``amt:queue`` (run into the store and compared
with the simulator's ground truth) and the dead-letter file.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from amt_ingest.config import Settings
from amt_ingest.coordination import QUEUE_NAME, Coordinator
from amt_ingest.errors import CoordinationError
from amt_ingest.operations.deadletters.sink import DeadLetters
from amt_ingest.routing.events import REASONS, TOPICS
from amt_ingest.routing.router import Router
from amt_ingest.simulator import Simulator, SimulatorOptions
from amt_ingest.simulator import server as sim_server
from amt_ingest.simulator.frames import WsEvent
from amt_ingest.simulator.server import CloseConnection, Fault, GoSilent, TokenSource
from amt_ingest.simulator.stream import decode_replay_id, encode_replay_id
from amt_ingest.sources.websocket import WebSocketListener
from tests.conftest import SAMPLES
from tests.integration.test_coordination import run_queued_jobs

pytestmark = pytest.mark.timeout(30)

TOKEN = "test-token"


def quick() -> Iterator[float]:
    """Reconnect delays for tests where backoff is not the point."""
    return itertools.repeat(0.02)


# --- The simulator side: a recording fault policy and an upgrade counter ------------------


FrameRule = Callable[[int, int], Fault | None]
ConnectionRule = Callable[[int], Fault | None]


class Faults:
    """A FaultPolicy that applies the given rules and records what the server did.

    ``upgrades`` holds the time of every accepted upgrade (connection n at index
    n - 1), ``frames`` the data frames sent per connection, ``fired`` the time
    and connection of every fault it injected.
    """

    def __init__(
        self,
        *,
        upgrade: Callable[[int], int | None] | None = None,
        subscribed: ConnectionRule | None = None,
        frame: FrameRule | None = None,
    ) -> None:
        self._upgrade = upgrade
        self._subscribed = subscribed
        self._frame = frame
        self.upgrades: list[float] = []
        self.frames: Counter[int] = Counter()
        self.fired: list[tuple[int, float, Fault]] = []

    def on_upgrade(self, connection: int) -> int | None:
        self.upgrades.append(time.monotonic())
        return self._upgrade(connection) if self._upgrade else None

    def on_subscribed(self, connection: int) -> Fault | None:
        fault = self._subscribed(connection) if self._subscribed else None
        if fault is not None:
            self.fired.append((connection, time.monotonic(), fault))
        return fault

    def before_frame(self, connection: int, frames_sent: int) -> Fault | None:
        fault = self._frame(connection, frames_sent) if self._frame else None
        if fault is not None:
            self.fired.append((connection, time.monotonic(), fault))
        if not isinstance(fault, CloseConnection):
            self.frames[connection] += 1
        return fault


class CountingTokenSource(TokenSource):
    """The simulator's token check, counting upgrade attempts (refused ones too)."""

    def __init__(self, token: str, token_file: Path | None = None) -> None:
        super().__init__(token, token_file)
        self.calls = 0

    def __call__(self) -> str | None:
        self.calls += 1
        return super().__call__()


# --- The rig: simulator + Redis + router + dead letters + listeners -----------------------


@dataclass
class Running:
    listener: WebSocketListener
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def halt(self, within: float = 5.0) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.shield(self.task), within)


@dataclass
class Rig:
    sim: Simulator
    faults: Faults
    coord: Coordinator
    redis_url: str
    dead_path: Path
    running: list[Running] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        """Upgrade requests that reached the server, accepted or refused."""
        token = self.sim.token
        assert isinstance(token, CountingTokenSource)
        return token.calls

    @property
    def log(self) -> Any:
        return self.sim.stream.log

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "passport_ws_url": self.sim.ws_url,
            "passport_token": TOKEN,
            "passport_token_file": None,
            "passport_initial_replay": "earliest",
            "redis_url": self.redis_url,
            "ws_credits": 50,
            "ws_heartbeat_timeout": 1.0,
            "ws_backoff_initial": 0.01,
            "ws_backoff_max": 0.1,
            "dead_letter_file": self.dead_path,
        }
        return Settings(**(values | overrides))

    def start(
        self,
        settings: Settings | None = None,
        *,
        router: Router | None = None,
        delays: Callable[[], Iterator[float]] = quick,
        stable_after: float = 10.0,
        stop: asyncio.Event | None = None,
    ) -> Running:
        router = router or Router(self.coord.handoff, capacity_poll_s=0.02)
        router.dead_letters = router.dead_letters or DeadLetters(
            sqs=None, dlq_url=None, fallback_path=self.dead_path
        )
        listener = WebSocketListener(
            settings or self.settings(),
            router=router,
            coordinator=self.coord,
            delays=delays,
            stable_after=stable_after,
        )
        stop = stop or asyncio.Event()
        running = Running(listener, stop, asyncio.create_task(listener.run(stop)))
        self.running.append(running)
        return running

    async def cursor(self) -> str | None:
        return await self.coord.cursors.get("ws")

    async def delivered(self) -> bool:
        """The stream is complete and the cursor stands on its last replay id."""
        return self.sim.completed.is_set() and await self.cursor() == self.log.latest_replay_id

    async def counts(self) -> Counter[str]:
        """WebSocket outcomes summed over topics/reasons: first, duplicate, stale, rejected."""
        out: Counter[str] = Counter()
        for key, n in (await self.coord.observations.stats()).items():
            kind, path, _ = key.split(":", 2)
            if path == "ws":
                out[kind] += n
        return out

    async def firsts_by_topic(self) -> dict[str, int]:
        stats = await self.coord.observations.stats()
        return {t: stats.get(f"first:ws:{t}", 0) for t in TOPICS}

    def dead_letters(self) -> list[dict[str, Any]]:
        if not self.dead_path.exists():
            return []
        return [json.loads(line) for line in self.dead_path.read_text().splitlines()]

    async def close(self) -> None:
        for running in self.running:
            running.stop.set()
        for running in self.running:
            try:
                await asyncio.wait_for(running.task, 10)
            except TimeoutError:  # pragma: no cover - reported by the test itself
                running.task.cancel()
        await self.sim.stop()


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def rig(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RigFactory]:
    """Start a simulator (flat out, no SNS, fast heartbeats) wired to a fresh Redis."""
    monkeypatch.setattr(sim_server, "TokenSource", CountingTokenSource)
    client = aioredis.Redis.from_url(redis_url)
    coord = Coordinator(client, dedup_ttl=3600)
    rigs: list[Rig] = []

    async def make(*, faults: Faults | None = None, **options: Any) -> Rig:
        defaults: dict[str, Any] = {
            "port": 0,
            "sf_port": 0,
            "sns": False,
            "rate": 0,
            "token": TOKEN,
            "heartbeat_interval": 0.1,
            "max_batch": 25,
        }
        policy = faults or Faults()
        sim = Simulator(SimulatorOptions(**(defaults | options)), faults=policy)
        await sim.start()
        made = Rig(sim, policy, coord, redis_url, tmp_path / "dead.jsonl")
        rigs.append(made)
        return made

    yield make
    for made in rigs:
        await made.close()
    await client.aclose()


async def until(
    condition: Callable[[], Awaitable[bool] | bool], *, within: float = 30.0, what: str = ""
) -> None:
    """Poll ``condition`` every 10 ms; fail the test if it is not true within ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {within}s: {what or condition}")
        await asyncio.sleep(0.01)


async def handed_off(running: Running, expected: int) -> None:
    """Wait for the listener's count of handed-off events (it is bumped just after the
    cursor is saved), then check it did not overshoot."""
    state = running.listener.state
    await until(lambda: state.events_handed_off >= expected, what=f"{expected} handed off")
    assert state.events_handed_off == expected


async def assert_store_matches_truth(rig: Rig, store: Any) -> None:
    await run_queued_jobs(rig.coord, store)
    exported = [row async for row in store.export()]
    truth = rig.sim.world.truth()
    assert len(exported) == len(truth)
    assert exported == truth


async def assert_everything_once(rig: Rig) -> None:
    """Every event generated on the WebSocket was handed off as a first arrival."""
    assert await rig.firsts_by_topic() == {t: rig.sim.world.stats.by_topic[t] for t in TOPICS}
    assert (await rig.counts())["first"] == rig.sim.plan.stats.ws_entries


# --- 1. happy path --------------------------------------------------------------------------


async def test_every_live_event_is_handed_off_once_and_applied(rig: RigFactory, store: Any) -> None:
    r = await rig(events=300, max_batch=40)
    running = r.start(r.settings(ws_credits=60))
    await until(lambda: running.listener.state.connected, what="the listener subscribed")
    # Generated while the listener is subscribed: the live stream, not a replay.
    await r.sim.run()
    await until(r.delivered, what="the cursor reached the last replay id")

    world = r.sim.world.stats
    assert all(world.by_topic[t] > 0 for t in TOPICS)
    await assert_everything_once(r)
    assert set(await r.counts()) == {"first"}  # no duplicate, stale or rejected
    assert await r.cursor() == encode_replay_id(300)
    await handed_off(running, 300)
    assert running.listener.state.reconnects == 0 and r.attempts == 1
    assert running.listener.state.connected
    # One pending record per record, whatever the number of its events (bursts
    # coalesce), in jobs shared by the records of each hand-off.
    assert await r.coord.handoff.pending_records() == len(r.sim.world.truth())
    assert 0 < await r.coord.redis.zcard(QUEUE_NAME) <= len(r.sim.world.truth())
    await running.halt()
    assert not running.listener.state.connected
    await assert_store_matches_truth(r, store)


class FirstFrameHeld(Router):
    """The real router, except that the first batch is held at a door until the
    test opens it: before its Redis ingest (``where="before"``) or after it
    (``"after"``, where it may then fail). The seam that shows two hand-offs
    under way at once."""

    def __init__(self, coord: Coordinator, *, where: str, fail: bool = False) -> None:
        super().__init__(coord.handoff, capacity_poll_s=0.02)
        self.where = where
        self.fail = fail
        self.door = asyncio.Event()
        self.second_called = asyncio.Event()
        self.second_done = asyncio.Event()
        self.calls = 0

    async def route(
        self, events: Any, *, path: str, turn: Any = None, counts: Any = None, lease: Any = None
    ) -> Any:
        self.calls += 1
        if self.calls == 1:
            if self.where == "before":
                await self.second_called.wait()
                await self.door.wait()
            report = await super().route(events, path=path, turn=turn, counts=counts, lease=lease)
            if self.where == "after":
                await self.second_done.wait()
                await self.door.wait()
                if self.fail:
                    raise CoordinationError("hand-off to Redis failed: injected")
            return report
        if self.calls == 2:
            self.second_called.set()
        report = await super().route(events, path=path, turn=turn, counts=counts, lease=lease)
        if self.calls == 2:
            self.second_done.set()
        return report


def second_frame_late(connection: int, frames_sent: int) -> Fault | None:
    """The second frame comes a moment after the first, so that the first is
    handed off alone (frames queued together are handed off together)."""
    return GoSilent(0.2) if connection == 1 and frames_sent == 1 else None


async def test_the_next_frame_is_handed_off_meanwhile_and_settled_after(rig: RigFactory) -> None:
    r = await rig(events=50, max_batch=25, faults=Faults(frame=second_frame_late))
    await r.sim.run()
    router = FirstFrameHeld(r.coord, where="after")
    running = r.start(r.settings(ws_credits=50), router=router)
    await router.second_done.wait()
    # Both frames are in Redis, and nothing settled while the first is held: no
    # cursor and no credit back.
    assert (await r.counts())["first"] == 50
    await asyncio.sleep(0.1)
    assert await r.cursor() is None
    assert running.listener.state.events_handed_off == 0
    assert r.faults.frames[1] == 2
    router.door.set()
    await until(r.delivered, what="both frames settled")
    await handed_off(running, 50)
    await assert_everything_once(r)
    await running.halt()


async def test_hand_offs_under_way_reach_redis_in_stream_order(rig: RigFactory) -> None:
    """The second hand-off is prepared while the first is held before Redis, but its
    ingest waits for the first's: an older change never lands after a newer one."""
    r = await rig(events=50, max_batch=25, faults=Faults(frame=second_frame_late))
    await r.sim.run()
    router = FirstFrameHeld(r.coord, where="before")
    running = r.start(r.settings(ws_credits=50), router=router)
    await router.second_called.wait()
    await asyncio.sleep(0.2)  # time enough for the second to overtake, were it let
    assert await r.counts() == {}
    router.door.set()
    await until(r.delivered, what="both frames settled")
    await handed_off(running, 50)
    await assert_everything_once(r)  # every event a first arrival: none came late
    await running.halt()


async def test_a_failed_frame_keeps_the_frame_after_it_unsettled(rig: RigFactory) -> None:
    r = await rig(events=50, max_batch=25, faults=Faults(frame=second_frame_late))
    await r.sim.run()
    router = FirstFrameHeld(r.coord, where="after", fail=True)
    running = r.start(
        r.settings(ws_credits=50), router=router, delays=lambda: itertools.repeat(0.5)
    )
    await router.second_done.wait()
    router.door.set()  # the first hand-off fails after the second reached Redis
    await until(lambda: running.listener.state.reconnects == 1, what="the listener reconnected")
    assert await r.cursor() is None  # the second frame did not settle past the first
    assert running.listener.state.events_handed_off == 0
    # After the reconnect both frames come again: each is a duplicate of itself,
    # applied once.
    await until(r.delivered, what="everything delivered after the reconnect")
    counts = await r.counts()
    assert counts["first"] == 50 and counts["duplicate"] == 50
    await running.halt()


# --- 2. credits --------------------------------------------------------------------------


class CreditCheck(Faults):
    """Checks, before every data frame, that the server stays within the credits granted.

    Frames hold one event each (``max_batch=1``), so frames sent = events sent. The
    listener grants credits only after a hand-off, so the server may have sent at
    most ``credits`` more events than the listener has handed off.
    """

    def __init__(self, credits: int) -> None:
        super().__init__()
        self.credits = credits
        self.listener: WebSocketListener | None = None
        self.violations: list[tuple[int, int]] = []

    def before_frame(self, connection: int, frames_sent: int) -> Fault | None:
        assert self.listener is not None
        handed_off = self.listener.state.events_handed_off
        if frames_sent + 1 > self.credits + handed_off:
            self.violations.append((frames_sent + 1, handed_off))
        return super().before_frame(connection, frames_sent)


async def test_credits_withheld_while_the_router_cannot_hand_off(
    rig: RigFactory, store: Any
) -> None:
    credits, events = 5, 30
    policy = CreditCheck(credits)
    r = await rig(events=events, max_batch=1, faults=policy)
    await r.sim.run()
    # Intake is at its high-water mark after the first hand-off: it must stop there.
    router = Router(r.coord.handoff, max_pending_records=1, capacity_poll_s=0.02)
    running = r.start(r.settings(ws_credits=credits), router=router)
    policy.listener = running.listener

    # The first hand-off (the frames queued by then, at least one) is granted its
    # credits; the next waits for capacity; the server sends the initial credits
    # plus the ones granted, no more.
    await until(lambda: router.paused, what="intake paused")
    handed = running.listener.state.events_handed_off
    assert 1 <= handed <= credits
    await until(lambda: policy.frames[1] == credits + handed, what="credits used up")
    await asyncio.sleep(0.3)  # time enough for a leak to show
    assert policy.frames[1] == credits + handed
    assert running.listener.state.events_handed_off == handed
    assert sum((await r.counts()).values()) == handed
    assert await r.cursor() == encode_replay_id(handed)
    assert router.paused

    # Workers catch up: intake resumes, a hand-off at a time.
    caught_up = asyncio.Event()

    async def worker() -> None:
        while not caught_up.is_set():
            await run_queued_jobs(r.coord, store)
            await asyncio.sleep(0.005)

    draining = asyncio.create_task(worker())
    try:
        await until(r.delivered, within=15, what="intake resumed and finished")
    finally:
        caught_up.set()  # finish the job in hand, never cancel it midway
        await draining
    assert policy.violations == []
    assert policy.frames[1] == events and r.attempts == 1
    await assert_everything_once(r)
    await running.halt()
    await assert_store_matches_truth(r, store)


# --- 3. resume after a restart ------------------------------------------------------------


async def test_a_new_listener_resumes_after_the_saved_cursor(rig: RigFactory) -> None:
    batch = 10
    stop_first = asyncio.Event()

    def stop_midway(connection: int, frames_sent: int) -> Fault | None:
        if connection == 1 and frames_sent == 8:
            stop_first.set()  # SIGTERM arrives while frames are in flight
        return None

    r = await rig(events=300, max_batch=batch, faults=Faults(frame=stop_midway))
    await r.sim.run()
    settings = r.settings(ws_credits=2 * batch)
    first = r.start(settings, stop=stop_first)
    await asyncio.wait_for(asyncio.shield(first.task), 5)

    saved = await r.cursor()
    assert saved is not None
    saved_at = decode_replay_id(saved)
    in_redis = (await r.counts())["first"]
    assert saved_at is not None and 0 < saved_at < 300
    # The cursor never passes an event that is not in Redis; at most the frame in
    # hand-off when the stop came is in Redis beyond the cursor.
    assert saved_at <= in_redis <= saved_at + batch

    second = r.start(settings)
    await until(r.delivered, what="the second listener caught up")
    await assert_everything_once(r)
    # It asked for everything after the cursor: not from earliest, not from latest.
    await handed_off(second, 300 - saved_at)
    assert (await r.counts())["duplicate"] == in_redis - saved_at
    assert r.attempts == 2


# --- 4. server restart (1012) ------------------------------------------------------------


async def test_close_1012_mid_stream_reconnects_with_backoff_and_resumes(rig: RigFactory) -> None:
    delay = 0.3

    def restart(connection: int, frames_sent: int) -> Fault | None:
        if connection == 1 and frames_sent == 3:
            return CloseConnection(1012, "service restart")
        return None

    faults = Faults(frame=restart)
    r = await rig(events=200, max_batch=20, faults=faults)
    await r.sim.run()
    running = r.start(r.settings(ws_credits=40), delays=lambda: itertools.repeat(delay))
    await until(r.delivered, what="resumed to the end after the restart")

    ((connection, closed_at, _),) = faults.fired
    assert connection == 1 and len(faults.upgrades) == 2
    assert faults.upgrades[1] - closed_at >= delay - 0.01  # the backoff delay was honoured
    assert running.listener.state.reconnects == 1
    await assert_everything_once(r)
    # Frames received but not handed off before the close are sent again; only a
    # frame caught between Redis and the cursor can come back as duplicates.
    assert (await r.counts())["duplicate"] <= 20


# --- 5. token expired (4001) with a token file ---------------------------------------------


async def test_token_expired_rereads_the_token_file_without_backoff(
    rig: RigFactory, tmp_path: Path
) -> None:
    client_file, server_file = tmp_path / "client-token", tmp_path / "server-token"
    client_file.write_text("token-1\n")
    server_file.write_text("token-1")

    def expire(connection: int, frames_sent: int) -> Fault | None:
        if connection == 1 and frames_sent == 2:
            # The secret store rotates the token; Passport ends the old session.
            client_file.write_text("token-2\n")
            server_file.write_text("token-2")
            return CloseConnection(4001, "token expired")
        return None

    faults = Faults(frame=expire)
    r = await rig(events=150, token_file=server_file, faults=faults)
    await r.sim.run()
    settings = r.settings(passport_token=None, passport_token_file=client_file)
    # A backoff delay would make this test miss its deadline by far.
    running = r.start(settings, delays=lambda: itertools.repeat(3.0))
    await until(r.delivered, within=2.5, what="resumed with the new token")

    ((_, closed_at, _),) = faults.fired
    assert faults.upgrades[1] - closed_at < 0.5
    assert r.attempts == 2  # the new token on the first try: no refused upgrade
    assert running.listener.state.reconnects == 1
    await assert_everything_once(r)


async def test_token_expired_without_a_new_token_backs_off(rig: RigFactory) -> None:
    delay = 0.1

    def expire(connection: int) -> Fault | None:
        return CloseConnection(4001, "token expired") if connection <= 3 else None

    faults = Faults(subscribed=expire)
    r = await rig(events=50, faults=faults)
    await r.sim.run()
    # A fixed token cannot be refreshed: reconnecting at once with the same token
    # would hammer Passport as long as it keeps answering 4001.
    r.start(delays=lambda: itertools.repeat(delay))
    await until(r.delivered, what="delivered once Passport took the token again")

    assert len(faults.upgrades) == 4
    gaps = [b - a for a, b in itertools.pairwise(faults.upgrades)]
    assert all(gap >= delay - 0.005 for gap in gaps), gaps
    await assert_everything_once(r)


# --- 6. replay id expired -------------------------------------------------------------------


def expire_first(connection: int) -> Fault | None:
    return CloseConnection(4410, "replay id expired") if connection == 1 else None


@pytest.mark.parametrize(
    ("cursor", "bare_close"),
    [
        # Passport's own answer: an error frame replay_id_expired, then close 4410.
        pytest.param("garbage!", False, id="error-frame"),
        # A bare close 4410 on a cursor that would otherwise resume after event 50.
        pytest.param(encode_replay_id(50), True, id="close-4410"),
    ],
)
async def test_expired_cursor_resubscribes_from_earliest(
    rig: RigFactory, cursor: str, bare_close: bool
) -> None:
    r = await rig(events=150, faults=Faults(subscribed=expire_first if bare_close else None))
    await r.sim.run()
    await r.coord.cursors.set("ws", cursor)  # older than the retention, or not Passport's
    running = r.start()
    await until(r.delivered, what="everything from earliest")

    assert len(r.faults.upgrades) == 2  # refused resume, then earliest
    assert running.listener.state.reconnects == 1
    # From earliest, not from the saved cursor: all 150 came on the new connection.
    await handed_off(running, 150)
    await assert_everything_once(r)
    assert (await r.counts())["duplicate"] == 0
    assert r.dead_letters() == []


async def test_expired_resume_point_queues_a_resync_of_every_type(rig: RigFactory) -> None:
    """Events in the expired window may never come: each type is resynced from
    ``AMT_RESYNC_OVERLAP_S`` before the newest event handed off before the expiry
    (an event after the resume point may have committed before that one)."""
    from amt_ingest.routing.events import TOPICS
    from amt_ingest.routing.positions import position_key

    r = await rig(events=20, faults=Faults(subscribed=expire_first))
    await r.sim.run()
    newest = position_key(1764064158000, 74487681550, 1)
    await r.coord.cursors.set("ws", encode_replay_id(5), position=newest, org="00D5g000004ZzABEA0")
    running = r.start()
    await until(r.delivered, what="everything from earliest")
    resyncs = [
        orjson.loads(await r.coord.redis.get(b"arq:job:" + job_id))["a"]
        for job_id in await r.coord.redis.zrange("amt:queue", 0, -1)
        if job_id.startswith(b"resync:")
    ]
    assert sorted(a[0] for a in resyncs) == sorted(TOPICS)
    overlap_ms = int(running.listener.settings.resync_overlap_s * 1000)
    start = position_key(1764064158000 - overlap_ms, 0, 0)
    assert overlap_ms == 300_000
    assert all(a[1] == start and a[2] == "00D5g000004ZzABEA0" for a in resyncs)
    assert running.listener.state.reconnects == 1


# --- 7. half-open connection ---------------------------------------------------------------


async def test_silent_connection_is_dropped_after_the_heartbeat_timeout(rig: RigFactory) -> None:
    timeout, silence = 0.4, 1.5

    def half_open(connection: int, frames_sent: int) -> Fault | None:
        if connection == 1 and frames_sent == 2:
            return GoSilent(silence)  # TCP stays up; nothing is sent or read
        return None

    faults = Faults(frame=half_open)
    # Heartbeats every 0.05 s keep a healthy idle connection well inside the timeout.
    r = await rig(events=200, max_batch=20, heartbeat_interval=0.05, faults=faults)
    await r.sim.run()
    running = r.start(r.settings(ws_heartbeat_timeout=timeout, ws_credits=40))
    await until(r.delivered, within=silence, what="resumed on a new connection")

    ((_, silent_at, _),) = faults.fired
    assert len(faults.upgrades) == 2
    # Dropped after the timeout, without waiting for the dead peer to answer.
    assert timeout - 0.05 <= faults.upgrades[1] - silent_at < timeout + 0.6
    await assert_everything_once(r)
    # An idle connection with heartbeats is not mistaken for a dead one.
    await asyncio.sleep(3 * timeout)
    assert len(faults.upgrades) == 2 and running.listener.state.connected


# --- 8. flapping server --------------------------------------------------------------------


async def test_flapping_server_backs_off_and_then_delivers(rig: RigFactory) -> None:
    delays = [0.02 * 2**i for i in range(8)]  # 0.02, 0.04, ... never reset by a flap

    def flap(connection: int) -> Fault | None:
        return CloseConnection(1013, "try again later") if connection <= 5 else None

    faults = Faults(subscribed=flap)
    r = await rig(events=100, faults=faults)
    await r.sim.run()
    # Closed right after "subscribed": never stable, so the delays keep growing.
    running = r.start(delays=lambda: iter(delays), stable_after=1.0)
    await until(r.delivered, what="delivered once the server settled")

    assert len(faults.upgrades) == 6 and r.attempts == 6
    gaps = [b - a for a, b in itertools.pairwise(faults.upgrades)]
    for gap, delay in zip(gaps, delays, strict=False):
        assert gap >= delay - 0.005, (gaps, delays)
    assert faults.upgrades[-1] - faults.upgrades[0] >= sum(delays[:5]) - 0.01
    assert running.listener.state.reconnects == 5
    await assert_everything_once(r)


# --- 9. oversized frames ------------------------------------------------------------------


async def test_frame_over_the_size_limit_shrinks_credits_and_resumes(rig: RigFactory) -> None:
    # About 740 bytes an event: 20 or 10 or 5 events overflow 3000 bytes, 2 do not.
    r = await rig(events=60, max_batch=20)
    await r.sim.run()
    running = r.start(r.settings(ws_credits=20, ws_max_frame_bytes=3000))
    await until(r.delivered, what="delivered in smaller frames")

    # websockets closed with 1009 on each frame that was too big; every reconnect
    # asked for fewer credits, so Passport sent smaller frames.
    assert 2 <= len(r.faults.upgrades) <= 5
    assert running.listener.state.fatal is None
    await assert_everything_once(r)
    assert (await r.counts())["duplicate"] == 0
    assert r.dead_letters() == []


def huge_event(size: int) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((SAMPLES / "event-opportunity-update.json").read_text())
    event.pop("replay_id")
    event["event_id"] = str(uuid.uuid4())
    event["payload"]["Description"] = "x" * size
    return event


async def test_single_event_over_the_size_limit_stops_the_listener_loudly(
    rig: RigFactory,
) -> None:
    r = await rig(events=40, max_batch=20)
    await r.sim.run()
    # Passport then sends one event that no frame of 3000 bytes can hold.
    r.sim.stream.extend([WsEvent(huge_event(5000))])
    running = r.start(r.settings(ws_credits=20, ws_max_frame_bytes=3000))
    await asyncio.wait_for(asyncio.shield(running.task), 5)  # returns on its own

    fatal = running.listener.state.fatal
    assert fatal is not None and "AMT_WS_MAX_FRAME_BYTES" in fatal
    # Everything before it is handed off; it stays unacknowledged in Passport (the
    # cursor stops right before it), for the SQS path or a restart with a higher limit.
    assert await r.cursor() == encode_replay_id(40)
    await assert_everything_once(r)
    # No endless loop: a bounded number of attempts, credits halved each time.
    assert r.attempts <= 6


# --- 10. unauthorized upgrade --------------------------------------------------------------


async def test_refused_fixed_token_stops_after_one_attempt(rig: RigFactory) -> None:
    r = await rig(events=10)
    await r.sim.run()
    running = r.start(r.settings(passport_token="wrong-token"))
    await asyncio.wait_for(asyncio.shield(running.task), 5)  # run() returned by itself

    fatal = running.listener.state.fatal
    assert fatal is not None and "401" in fatal
    assert r.attempts == 1 and r.faults.upgrades == []
    assert running.listener.state.reconnects == 0
    assert "wrong-token" not in fatal


async def test_refused_token_file_waits_for_a_new_token(rig: RigFactory, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token\n")
    r = await rig(events=50)
    await r.sim.run()
    settings = r.settings(passport_token=None, passport_token_file=token_file, ws_backoff_max=0.05)
    running = r.start(settings)

    # One re-read of the file after the 401, then it waits for the file to change.
    await until(lambda: r.attempts == 2, what="the token was refused")
    await asyncio.sleep(0.5)  # ten polls of the file
    assert r.attempts == 2 and not running.task.done()
    assert running.listener.state.fatal is None

    token_file.write_text(TOKEN)
    await until(r.delivered, what="connected with the new token")
    assert r.attempts == 3 and len(r.faults.upgrades) == 1
    await assert_everything_once(r)


async def test_a_missing_token_file_is_waited_for(rig: RigFactory, tmp_path: Path) -> None:
    """A token file being replaced (gone, or empty for a moment) stops nothing."""
    token_file = tmp_path / "token"
    r = await rig(events=20)
    await r.sim.run()
    settings = r.settings(passport_token=None, passport_token_file=token_file, ws_backoff_max=0.05)
    running = r.start(settings)
    await asyncio.sleep(0.5)  # ten polls of a missing file
    assert r.attempts == 0 and not running.task.done()
    assert running.listener.state.fatal is None
    token_file.write_text("")
    await asyncio.sleep(0.2)  # an empty file is no token either
    assert r.attempts == 0 and not running.task.done()

    token_file.write_text(TOKEN)
    await until(r.delivered, what="connected once the file held a token")
    assert r.attempts == 1
    await assert_everything_once(r)


# --- 11. malformed frames and events ------------------------------------------------------


async def test_malformed_input_is_dead_lettered_and_the_stream_goes_on(
    rig: RigFactory, store: Any
) -> None:
    r = await rig(events=300, malformed_rate=0.1, max_batch=50)
    await r.sim.run()
    malformed = r.sim.plan.stats.malformed_ws
    assert malformed > 10
    running = r.start(r.settings(ws_credits=100))
    await until(r.delivered, what="all events handed off")
    await until(lambda: len(r.dead_letters()) >= malformed, what="all bad input dead-lettered")

    dead = r.dead_letters()
    assert len(dead) == malformed
    reasons = Counter(d["reason"] for d in dead)
    stats = await r.coord.observations.stats()
    assert {k.removeprefix("rejected:ws:"): v for k, v in stats.items() if "rejected:" in k} == (
        reasons
    )
    assert set(reasons) <= REASONS and len(reasons) >= 3
    assert all(d["path"] == "ws" and d["detail"] and d["source"] == r.sim.ws_url for d in dead)
    # The connection survived all of it, and every valid event arrived once.
    assert r.attempts == 1 and running.listener.state.reconnects == 0
    await assert_everything_once(r)
    await running.halt()
    await assert_store_matches_truth(r, store)
