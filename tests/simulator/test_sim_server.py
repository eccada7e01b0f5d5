"""The WebSocket stream of the simulator, against a real websockets client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from sim_helpers import (
    SimFactory,
    collect_events,
    quiet_for,
    recv,
    subscribe,
    ws_connect,
)
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from amt_ingest.routing.events import Event, EventsFrame, parse_event, parse_ws_frame
from amt_ingest.simulator.server import CloseConnection, Fault, GoSilent, NoFaults
from amt_ingest.simulator.stream import decode_replay_id, encode_replay_id


async def closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 2)
    return ws.close_code


@pytest.mark.parametrize("token", ["wrong", ""])
async def test_bad_or_missing_token_is_401(make_sim: SimFactory, token: str) -> None:
    sim = await make_sim(events=0)
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(sim, token=token):
            pass
    assert info.value.response.status_code == 401


async def test_token_file_is_read_on_every_upgrade(make_sim: SimFactory, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("first\n")
    sim = await make_sim(token_file=secret)
    async with ws_connect(sim, token="first"):
        pass
    secret.write_text("second")
    with pytest.raises(InvalidStatus):
        async with ws_connect(sim, token="first"):
            pass
    async with ws_connect(sim, token="second"):
        pass


async def test_subscribe_then_events_in_replay_order(make_sim: SimFactory) -> None:
    sim = await make_sim(events=120, max_batch=50)
    await sim.run()
    async with ws_connect(sim) as ws:
        subscribed = await subscribe(ws, credits=1000)
        assert subscribed == {
            "type": "subscribed",
            "topics": ["Opportunity", "External_Attachment__c", "Application_Item__c"],
            "latest_replay_id": encode_replay_id(120),
        }
        events, frames = await collect_events(ws, 120)
    assert [decode_replay_id(e["replay_id"]) for e in events] == list(range(1, 121))
    assert all(isinstance(parse_event(e), Event) for e in events)
    assert [len(f["events"]) for f in frames] == [50, 50, 20]
    assert [f["pending_credits"] for f in frames] == [950, 900, 880]
    assert frames[-1]["latest_replay_id"] == encode_replay_id(120)
    for frame in frames:
        parsed = parse_ws_frame(orjson.dumps(frame))
        assert isinstance(parsed, EventsFrame)


async def test_never_more_events_than_credits(make_sim: SimFactory) -> None:
    sim = await make_sim(events=100, max_batch=4)
    await sim.run()
    async with ws_connect(sim) as ws:
        await subscribe(ws, credits=10)
        events, frames = await collect_events(ws, 10)
        assert all(len(f["events"]) <= 4 for f in frames)
        assert frames[-1]["pending_credits"] == 0
        assert await quiet_for(ws, 0.3) == []  # stalled without credits
        await ws.send(orjson.dumps({"type": "credit", "n": 7}).decode())
        more, frames = await collect_events(ws, 7)
        assert frames[-1]["pending_credits"] == 0
        assert await quiet_for(ws, 0.2) == []
    ids = [decode_replay_id(e["replay_id"]) for e in events + more]
    assert ids == list(range(1, 18))


async def test_live_events_with_credits_granted_as_they_arrive(make_sim: SimFactory) -> None:
    sim = await make_sim(events=300, rate=3000, max_batch=25)
    async with ws_connect(sim) as ws:
        await subscribe(ws, preset="latest", credits=50)
        runner = asyncio.create_task(sim.run())
        received: list[int] = []
        granted = 50
        async with asyncio.timeout(10):
            while len(received) < 300:
                frame = await recv(ws)
                if frame["type"] != "events":
                    continue
                received += [decode_replay_id(e["replay_id"]) or 0 for e in frame["events"]]
                assert len(received) <= granted
                # Grants still in flight are not counted by the server yet.
                assert frame["pending_credits"] <= granted - len(received)
                await ws.send(orjson.dumps({"type": "credit", "n": len(frame["events"])}).decode())
                granted += len(frame["events"])
        await runner
    assert received == list(range(1, 301))


async def test_resume_after_a_replay_id(make_sim: SimFactory) -> None:
    sim = await make_sim(events=80, dup_rate=0.1, ooo_rate=0.2, malformed_rate=0.1)
    await sim.run()
    total = decode_replay_id(sim.stream.log.latest_replay_id)
    assert total is not None and total > 80
    async with ws_connect(sim) as ws:
        await subscribe(ws, credits=1000)
        everything, _ = await collect_events(ws, total)
    cut = everything[30]["replay_id"]
    async with ws_connect(sim) as ws:
        await subscribe(ws, preset="custom", replay_id=cut, credits=1000)
        after, _ = await collect_events(ws, total - 31)
    assert after == everything[31:]


async def test_only_subscribed_topics_are_sent(make_sim: SimFactory) -> None:
    sim = await make_sim(events=200)
    await sim.run()
    expected = sim.world.stats.by_topic["Application_Item__c"]
    async with ws_connect(sim) as ws:
        await subscribe(ws, topics=("Application_Item__c",), credits=1000)
        events, frames = await collect_events(ws, expected)
        assert await quiet_for(ws, 0.2) == []
    assert {e["topic"] for e in events} == {"Application_Item__c"}
    ids = [decode_replay_id(e["replay_id"]) or 0 for e in events]
    assert ids == sorted(ids) and len(set(ids)) == expected
    assert frames[-1]["latest_replay_id"] == encode_replay_id(200)


@pytest.mark.parametrize("replay_id", [encode_replay_id(10_000), "garbage!", "AAAA"])
async def test_unknown_replay_id_is_expired(make_sim: SimFactory, replay_id: str) -> None:
    sim = await make_sim(events=20)
    await sim.run()
    async with ws_connect(sim) as ws:
        error = await subscribe(ws, preset="custom", replay_id=replay_id)
        assert error["type"] == "error"
        assert error["code"] == "replay_id_expired"
        assert await closed_with(ws) == 4410


async def test_replay_id_older_than_retention_is_expired(make_sim: SimFactory) -> None:
    sim = await make_sim(events=50, retention=10)
    await sim.run()
    async with ws_connect(sim) as ws:
        error = await subscribe(ws, preset="custom", replay_id=encode_replay_id(5))
        assert error["code"] == "replay_id_expired"
        assert await closed_with(ws) == 4410
    async with ws_connect(sim) as ws:
        await subscribe(ws, preset="earliest")
        events, _ = await collect_events(ws, 10)
    assert decode_replay_id(events[0]["replay_id"]) == 41


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (
            {"type": "subscribe", "topics": ["Lead"], "replay": {"preset": "latest"}, "credits": 1},
            "unknown_topic",
        ),
        ({"type": "subscribe", "topics": ["Opportunity"], "credits": 1}, "invalid_request"),
        ({"type": "credit", "n": 5}, "invalid_request"),
    ],
)
async def test_invalid_subscribe_is_refused(
    make_sim: SimFactory, frame: dict[str, object], code: str
) -> None:
    sim = await make_sim(events=0)
    async with ws_connect(sim) as ws:
        await ws.send(orjson.dumps(frame).decode())
        error = await recv(ws)
        assert (error["type"], error["code"]) == ("error", code)
        assert await closed_with(ws) == 4400


async def test_second_subscribe_is_refused(make_sim: SimFactory) -> None:
    sim = await make_sim(events=0)
    async with ws_connect(sim) as ws:
        await subscribe(ws, preset="latest")
        await ws.send(
            orjson.dumps(
                {"type": "subscribe", "topics": ["Opportunity"], "replay": {"preset": "latest"},
                 "credits": 1}
            ).decode()
        )  # fmt: skip
        error = await recv(ws)
        assert error["code"] == "invalid_request"
        assert await closed_with(ws) == 4400


async def test_heartbeat_when_idle(make_sim: SimFactory) -> None:
    sim = await make_sim(events=5, heartbeat_interval=0.2)
    await sim.run()
    async with ws_connect(sim) as ws:
        await subscribe(ws, credits=2)
        await collect_events(ws, 2)
        beats = [await recv(ws, 1.0) for _ in range(2)]
    for beat in beats:
        assert beat["type"] == "heartbeat"
        # The subscription's position: not past events it has not received.
        assert beat["latest_replay_id"] == encode_replay_id(2)
        assert beat["server_time"].endswith("Z")


async def test_malformed_frames_are_interleaved(make_sim: SimFactory) -> None:
    sim = await make_sim(events=300, malformed_rate=0.1)
    await sim.run()
    total = decode_replay_id(sim.stream.log.latest_replay_id) or 0
    events = raw_frames = bad_events = 0
    async with ws_connect(sim) as ws:
        await subscribe(ws, credits=10_000)
        async with asyncio.timeout(5):
            while events < total:
                frame = parse_ws_frame(await ws.recv())
                if isinstance(frame, EventsFrame):
                    events += len(frame.items)
                    bad_events += sum(1 for i in frame.items if not isinstance(i, Event))
                else:
                    raw_frames += 1
        raw_frames += len(await quiet_for(ws, 0.2, parsed=False))
    assert raw_frames > 0 and bad_events > 0
    assert raw_frames + bad_events == sim.plan.stats.malformed_ws


async def test_fault_policy_can_close_with_any_code(make_sim: SimFactory) -> None:
    class RestartSecondFrame(NoFaults):
        def before_frame(self, connection: int, frames_sent: int) -> Fault | None:
            return CloseConnection(1012, "restart") if frames_sent == 1 else None

    sim = await make_sim(events=50, max_batch=10, faults=RestartSecondFrame())
    await sim.run()
    async with ws_connect(sim) as ws:
        await subscribe(ws, credits=100)
        events, _ = await collect_events(ws, 10)
        assert await closed_with(ws) == 1012
    assert len(events) == 10


async def test_fault_policy_can_go_silent(make_sim: SimFactory) -> None:
    class SilentFirstConnection(NoFaults):
        def on_subscribed(self, connection: int) -> Fault | None:
            return GoSilent(0.6) if connection == 1 else None

        def on_upgrade(self, connection: int) -> int | None:
            return 503 if connection == 2 else None

    sim = await make_sim(events=10, heartbeat_interval=0.1, faults=SilentFirstConnection())
    await sim.run()
    async with ws_connect(sim) as ws:
        await subscribe(ws, credits=100)
        began = asyncio.get_running_loop().time()
        await collect_events(ws, 10)
        assert asyncio.get_running_loop().time() - began > 0.5
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(sim):
            pass
    assert info.value.response.status_code == 503


async def test_stop_closes_connections_as_going_away(make_sim: SimFactory) -> None:
    sim = await make_sim(events=0)
    async with ws_connect(sim) as ws:
        await subscribe(ws, preset="latest")
        await sim.stop()
        assert await closed_with(ws) == 1001
