"""Fixtures for the simulator tests: simulators on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sim_helpers import TOKEN, SimFactory

from amt_ingest.simulator import Simulator, SimulatorOptions
from amt_ingest.simulator.server import FaultPolicy


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    """Start simulators on free ports (no SNS, flat out, the seeded clock unless told);
    stop them afterwards."""
    started: list[Simulator] = []

    async def factory(*, faults: FaultPolicy | None = None, **options: Any) -> Simulator:
        defaults: dict[str, Any] = {
            "port": 0,
            "sf_port": 0,
            "sns": False,
            "rate": 0,
            "token": TOKEN,
            "wall_clock": False,
        }
        sim = Simulator(SimulatorOptions(**(defaults | options)), faults=faults)
        await sim.start()
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        await sim.stop()
