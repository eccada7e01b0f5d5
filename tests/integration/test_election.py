"""One WebSocket subscriber among replicas: the lease, its fence, and handovers.

Real Redis and the project's Passport simulator (in-process, counting the
subscriptions open at once). Replicas are :class:`Election` instances in this
event loop, each with its own listener and Redis client; a replica's Redis is
cut or hung through a TCP proxy, never by timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from amt_ingest.config import Settings
from amt_ingest.coordination import Coordinator, Leadership
from amt_ingest.coordination.keys import LEADER_WS, dedup_key
from amt_ingest.errors import LeaseLostError
from amt_ingest.operations.deadletters.sink import DeadLetters
from amt_ingest.routing.events import parse_event
from amt_ingest.routing.router import Router
from amt_ingest.sources.election import LEADER, STANDBY, Election
from amt_ingest.sources.websocket import WebSocketListener
from amt_ingest.telemetry import Telemetry
from tests.chaos.tcpproxy import Proxy
from tests.integration.test_websocket import (
    Rig,
    RigFactory,
    assert_everything_once,
    quick,
    until,
)
from tests.unit.test_events import load

pytestmark = pytest.mark.timeout(60)


# --- The lease itself ---------------------------------------------------------------------


async def test_one_holder_at_a_time_and_every_new_holder_a_larger_token(redis_url: str):
    client = aioredis.Redis.from_url(redis_url)
    a = Leadership(client, replica="a.1", ttl_ms=5000)
    b = Leadership(client, replica="b.1", ttl_ms=5000)
    try:
        first = await a.acquire()
        assert first is not None and first.token == 1
        assert await b.acquire() is None
        assert await a.acquire() == first  # holding it: the same token, renewed
        assert await a.renew(first) and not await b.renew(first)
        assert await a.holder() == "a.1 1"
        assert await a.release(first)
        second = await b.acquire()
        assert second is not None and second.token == 2
        # The former holder's token is worth nothing now.
        assert not await a.renew(first) and not await a.release(first)
        assert await a.holder() == "b.1 2"
    finally:
        await client.aclose()


async def test_a_lease_that_is_not_renewed_lapses_after_its_ttl(redis_url: str):
    client = aioredis.Redis.from_url(redis_url)
    a = Leadership(client, replica="a.1", ttl_ms=300)
    b = Leadership(client, replica="b.1", ttl_ms=300)
    try:
        held = await a.acquire()
        assert held is not None and await b.acquire() is None
        assert 0 < await client.pttl(LEADER_WS) <= 300
        await asyncio.sleep(0.4)
        taken = await b.acquire()
        assert taken is not None and taken.token == held.token + 1
    finally:
        await client.aclose()


async def test_hand_offs_and_cursor_saves_under_a_lost_lease_are_refused(redis_url: str):
    client = aioredis.Redis.from_url(redis_url)
    coord = Coordinator(client, dedup_ttl=3600)
    a = Leadership(client, replica="a.1", ttl_ms=5000)
    b = Leadership(client, replica="b.1", ttl_ms=5000)
    event = parse_event(load("event-opportunity-update.json"))
    try:
        old = await a.acquire()
        assert old is not None
        await coord.cursors.set("ws", "00000005", lease=old.value)
        await client.delete(LEADER_WS)  # a lapsed during a stall, and b took over
        new = await b.acquire()
        assert new is not None
        with pytest.raises(LeaseLostError):
            await coord.handoff.ingest([event], path="ws", lease=old.value)
        with pytest.raises(LeaseLostError):
            await coord.cursors.set("ws", "00000009", lease=old.value)
        # Nothing of the refused hand-off is in Redis; the cursor is where a left it.
        assert not await client.exists(dedup_key(event.event_id))
        assert await coord.observations.stats() == {}
        assert await coord.cursors.get("ws") == "00000005"
        # The holder's go through.
        (result,) = await coord.handoff.ingest([event], path="ws", lease=new.value)
        assert result.outcome == "first"
        await coord.cursors.set("ws", "00000009", lease=new.value)
        assert await coord.cursors.get("ws") == "00000009"
    finally:
        await client.aclose()


# --- Replicas against the simulator -------------------------------------------------------


@dataclass
class Replica:
    name: str
    election: Election
    listener: WebSocketListener
    client: aioredis.Redis
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def role(self) -> str:
        return self.election.state.role

    @property
    def connected(self) -> bool:
        return self.listener.state.connected

    async def halt(self, within: float = 10.0) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.shield(self.task), within)


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[Callable[..., Replica]]:
    started: list[Replica] = []

    def start(r: Rig, name: str, *, ttl_s: float = 5.0, url: str | None = None) -> Replica:
        client = aioredis.Redis.from_url(url or redis_url, socket_timeout=2)
        coord = Coordinator(client, dedup_ttl=3600)
        router = Router(coord.handoff, capacity_poll_s=0.02)
        router.dead_letters = DeadLetters(sqs=None, dlq_url=None, fallback_path=r.dead_path)
        settings: Settings = r.settings(ws_lease_s=ttl_s)
        listener = WebSocketListener(settings, router=router, coordinator=coord, delays=quick)
        leadership = Leadership(client, replica=name, ttl_ms=int(ttl_s * 1000))
        election = Election(leadership, listener, telemetry=Telemetry.off())
        stop = asyncio.Event()
        replica = Replica(
            name, election, listener, client, stop, asyncio.create_task(election.run(stop))
        )
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.stop.set()
    for replica in started:
        try:
            await asyncio.wait_for(replica.task, 15)
        except TimeoutError:  # pragma: no cover - the test reports it
            replica.task.cancel()
        await replica.client.aclose()


async def test_of_three_replicas_one_subscribes_and_a_stopped_leader_hands_over_at_once(
    rig: RigFactory, replicas: Callable[..., Replica]
) -> None:
    r = await rig(events=900, rate=300, max_batch=20)
    group = [replicas(r, f"replica-{n}") for n in range(3)]
    await until(lambda: any(x.connected for x in group), what="a leader subscribed")
    await asyncio.sleep(1.5)  # several tries of the standbys, every second
    assert [x.role for x in group].count(LEADER) == 1
    assert r.sim.stream.subscribers == 1
    generating = asyncio.create_task(r.sim.run())
    await until(lambda: r.sim.world.stats.events > 200, what="events flowing")
    leader = next(x for x in group if x.role == LEADER)
    stopped = time.monotonic()
    await leader.halt()
    assert leader.role == STANDBY
    rest = [x for x in group if x is not leader]
    await until(lambda: any(x.connected for x in rest), what="a standby took over")
    taken_over_s = time.monotonic() - stopped
    await generating
    await until(r.delivered, what="the cursor reached the last replay id")
    # Released, not lapsed: the next try (within a fifth of the 5 s TTL) takes it.
    assert taken_over_s < 4.0, taken_over_s
    assert r.sim.stream.max_subscribers == 1
    assert r.sim.stream.subscriptions == 2
    await assert_everything_once(r)


async def test_a_leader_cut_off_from_redis_steps_down_before_another_takes_over(
    rig: RigFactory, replicas: Callable[..., Replica], redis_url: str
) -> None:
    r = await rig(events=0, rate=100, max_batch=10)
    proxy = Proxy(0, int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    db = redis_url.rsplit("/", 1)[1]
    ttl_s = 2.0
    cut = replicas(r, "cut-off", ttl_s=ttl_s, url=f"redis://127.0.0.1:{proxy.listen_port}/{db}")
    await until(lambda: cut.connected, what="the first replica leads")
    other = replicas(r, "other", ttl_s=ttl_s)
    generating = asyncio.create_task(r.sim.run())
    try:
        await until(lambda: r.sim.world.stats.events > 50, what="events flowing")
        proxy.hold()  # its Redis hangs: no renewal, no hand-off is confirmed
        held = time.monotonic()
        await until(lambda: not cut.connected, within=ttl_s * 2, what="the leader stepped down")
        stepped_down_s = time.monotonic() - held
        await until(lambda: other.connected, within=ttl_s * 3, what="the other took over")
        taken_over_s = time.monotonic() - held
    finally:
        generating.cancel()
        proxy.release()
        await proxy.stop()
    # It stepped down by itself (0.6 TTL after its last confirmed renewal was sent),
    # before Redis let the lease lapse (a full TTL after it took that renewal).
    assert stepped_down_s < taken_over_s
    assert r.sim.stream.max_subscribers == 1
    assert other.role == LEADER


async def test_a_leader_whose_lease_was_taken_is_fenced_and_stands_by(
    rig: RigFactory, replicas: Callable[..., Replica], redis_url: str
) -> None:
    # A leader that stalled past its lease (here: its lease is taken from it while
    # its renewals are far apart): its next hand-off is refused, nothing of it
    # reaches Redis, and it stops listening.
    r = await rig(events=0, rate=0, max_batch=10)
    leader = replicas(r, "stalled", ttl_s=60.0)
    await until(lambda: leader.connected, what="it leads")
    cursor = await r.cursor()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.delete(LEADER_WS)
        usurper = await Leadership(client, replica="usurper", ttl_ms=60_000).acquire()
        assert usurper is not None
        generating = asyncio.create_task(r.sim.run())
        await until(lambda: leader.role == STANDBY, what="the fenced leader stood by")
        generating.cancel()
        assert not leader.connected
        assert await r.cursor() == cursor  # it never moved the cursor after the takeover
        assert (await r.counts())["first"] == 0
        assert await client.get(LEADER_WS) == usurper.value.encode()
    finally:
        await client.aclose()


async def test_a_leader_that_is_alone_renews_its_lease_for_as_long_as_it_runs(
    rig: RigFactory, replicas: Callable[..., Replica], redis_url: str
) -> None:
    r = await rig(events=0, rate=50, max_batch=5)
    only = replicas(r, "only", ttl_s=1.0)
    await until(lambda: only.connected, what="it leads")
    generating = asyncio.create_task(r.sim.run())
    await asyncio.sleep(3.5)  # several TTLs
    generating.cancel()
    client = aioredis.Redis.from_url(redis_url)
    try:
        holder = await client.get(LEADER_WS)
    finally:
        await client.aclose()
    assert holder is not None and holder.decode().startswith("only ")
    assert only.connected and only.election.state.terms == 1
    assert r.sim.stream.subscriptions == 1 and only.listener.state.reconnects == 0
