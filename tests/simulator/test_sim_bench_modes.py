"""Simulator modes for benchmarks: on-demand pacing, waiting for a subscriber,
wall-clock commit times and fresh records."""

from __future__ import annotations

import argparse
import asyncio

import orjson
import pytest
from sim_helpers import SimFactory, collect_events, quiet_for, subscribe, ws_connect

from amt_ingest.simulator import SimulatorOptions, add_arguments, options_from_args
from amt_ingest.simulator.world import World

pytestmark = pytest.mark.timeout(60)


async def test_on_demand_generates_only_what_credits_allow(make_sim: SimFactory) -> None:
    sim = await make_sim(events=0, rate=0, on_demand=True, max_batch=10)
    runner = asyncio.create_task(sim.run())
    try:
        await asyncio.sleep(0.2)
        assert sim.generated == 0  # nobody asked yet
        async with ws_connect(sim) as ws:
            await subscribe(ws, credits=25)
            events, frames = await collect_events(ws, 25)
            assert len(events) == 25 and all(len(f["events"]) <= 10 for f in frames)
            assert await quiet_for(ws, 0.3) == []
            # No credits left: generation stopped (a transaction has up to 3 events).
            assert sim.generated <= 25 + 2
            assert sim.stream.log.latest_counter <= 25 + 2
            await ws.send(orjson.dumps({"type": "credit", "n": 300}).decode())
            more, _ = await collect_events(ws, 300)
            assert len(more) == 300
            assert sim.generated <= 325 + 2
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_on_demand_keeps_a_rate_as_a_ceiling(make_sim: SimFactory) -> None:
    sim = await make_sim(events=0, rate=200, on_demand=True)
    runner = asyncio.create_task(sim.run())
    try:
        async with ws_connect(sim) as ws:
            await subscribe(ws, credits=100_000)
            frames = await quiet_for(ws, 0.5)  # keep reading, as a client must
            assert 50 <= sim.generated <= 200
            assert sum(len(f["events"]) for f in frames) <= sim.generated
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_generation_waits_for_the_first_subscriber(make_sim: SimFactory) -> None:
    sim = await make_sim(events=40, rate=0, wait_for_subscriber=True)
    runner = asyncio.create_task(sim.run())
    try:
        await asyncio.sleep(0.3)
        assert sim.generated == 0
        async with ws_connect(sim) as ws:
            await subscribe(ws, credits=1000)
            events, _ = await collect_events(ws, 40)
        await asyncio.wait_for(runner, 5)
        assert len(events) == 40 and sim.generated == 40
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def test_wall_clock_stamps_commit_time_never_backwards() -> None:
    now = [1_900_000_000_000]
    world = World(3, 20, clock=lambda: now[0])
    first = world.next_event()["payload"]["ChangeEventHeader"]
    assert first["commitTimestamp"] == now[0]
    while world.transaction_open:
        world.next_event()
    now[0] += 1234
    second = world.next_event()["payload"]["ChangeEventHeader"]
    assert second["commitTimestamp"] == now[0]
    while world.transaction_open:
        world.next_event()
    now[0] -= 5000  # the clock was set back
    third = world.next_event()["payload"]["ChangeEventHeader"]
    assert third["commitTimestamp"] == second["commitTimestamp"]
    assert third["commitNumber"] > second["commitNumber"]


def test_fresh_records_create_each_record_once_then_go_on_as_usual() -> None:
    world = World(5, 60, fresh_records=True)
    events = [world.next_event() for _ in range(60)]
    headers = [e["payload"]["ChangeEventHeader"] for e in events]
    assert all(h["changeType"] == "CREATE" and len(h["recordIds"]) == 1 for h in headers)
    ids = [h["recordIds"][0] for h in headers]
    assert len(set(ids)) == 60
    assert len({h["transactionKey"] for h in headers}) == 60
    assert {e["topic"] for e in events[:20]} == {
        "Opportunity",
        "External_Attachment__c",
        "Application_Item__c",
    }
    later = [world.next_event() for _ in range(30)]
    assert all(
        rid in set(ids) for e in later for rid in e["payload"]["ChangeEventHeader"]["recordIds"]
    )
    assert len(world.truth()) == 60


def test_bench_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = options_from_args(
        parser.parse_args(
            ["--on-demand", "--wait-for-subscriber", "--wall-clock", "--fresh-records"]
        )
    )
    assert options == SimulatorOptions(
        on_demand=True, wait_for_subscriber=True, wall_clock=True, fresh_records=True
    )
