"""Options, flags and the run-until-signal entry point."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sim_helpers import SimFactory

from amt_ingest.simulator import SimulatorOptions, add_arguments, options_from_args
from amt_ingest.simulator.aws import _retry, backoff
from amt_ingest.simulator.world import World

pytestmark = pytest.mark.timeout(60)


def parse(*argv: str) -> SimulatorOptions:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return options_from_args(parser.parse_args(argv))


def test_defaults_match_the_dataclass() -> None:
    assert parse() == SimulatorOptions()
    assert SimulatorOptions().port == 8765 and SimulatorOptions().sf_port == 8766


def test_flags() -> None:
    options = parse(
        "--port", "0", "--sf-port", "0", "--token-file", "/run/token", "--rate", "0",
        "--events", "50", "--records", "20", "--seed", "9", "--dup-rate", "0.1",
        "--ooo-rate", "0.2", "--ws-only-rate", "0.3", "--sqs-only-rate", "0.4",
        "--foreign-org-rate", "0.05", "--malformed-rate", "0.01", "--gap-rate", "0.02",
        "--overflow-rate", "0.03", "--max-batch", "7",
        "--heartbeat-interval", "0.5", "--retention", "1000", "--page-size", "3",
        "--truth", "t.jsonl", "--stats", "s.json", "--sqs-queue-url", "http://q/1",
        "--sqs-queue-url", "http://q/2", "--no-sns",
    )  # fmt: skip
    assert options == SimulatorOptions(
        port=0,
        sf_port=0,
        token_file=Path("/run/token"),
        rate=0,
        events=50,
        records=20,
        seed=9,
        dup_rate=0.1,
        ooo_rate=0.2,
        ws_only_rate=0.3,
        sqs_only_rate=0.4,
        foreign_org_rate=0.05,
        malformed_rate=0.01,
        gap_rate=0.02,
        overflow_rate=0.03,
        max_batch=7,
        heartbeat_interval=0.5,
        retention=1000,
        page_size=3,
        truth=Path("t.jsonl"),
        stats=Path("s.json"),
        sqs_queue_urls=("http://q/1", "http://q/2"),
        sns=False,
    )


def test_bad_values_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse("--dup-rate", "1.5")
    with pytest.raises(SystemExit):
        parse("--gap-rate", "-0.1")
    with pytest.raises(ValueError, match="overflow_rate"):
        SimulatorOptions(overflow_rate=2)
    with pytest.raises(ValueError, match="must not exceed 1"):
        SimulatorOptions(ws_only_rate=0.7, sqs_only_rate=0.7)
    with pytest.raises(ValueError, match="max_batch"):
        SimulatorOptions(max_batch=0)


def test_help_describes_the_healing_flags() -> None:
    parser = argparse.ArgumentParser(prog="simulate")
    add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "--gap-rate" in text and "GAP_CREATE/UPDATE/DELETE/UNDELETE" in text
    assert "--overflow-rate" in text and "GAP_OVERFLOW" in text
    assert "replay_id_expired" in text and "expire_replay_ids" in text


async def test_outputs_are_written_after_the_last_event(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    truth, stats = tmp_path / "truth.jsonl", tmp_path / "stats.json"
    sim = await make_sim(events=400, foreign_org_rate=0.1, truth=truth, stats=stats, seed=3)
    await sim.run()
    assert sim.completed.is_set()
    lines = [orjson.loads(line) for line in truth.read_bytes().splitlines()]
    assert lines == sim.world.truth()
    counts = orjson.loads(stats.read_bytes())
    assert counts["generated"]["events"] == 400
    assert counts["generated"]["foreign_org_events"] > 0
    assert counts["truth"]["records"] == len(lines)
    names = await asyncio.to_thread(os.listdir, tmp_path)
    assert set(names) == {"truth.jsonl", "stats.json"}  # no temporary file left


async def test_paced_generation_follows_the_rate(make_sim: SimFactory) -> None:
    sim = await make_sim(events=60, rate=200)
    began = time.monotonic()
    await sim.run()
    assert 0.25 < time.monotonic() - began < 2.0


async def test_aws_calls_are_retried_with_backoff() -> None:
    attempts: list[int] = []

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("connection refused")
        return "ok"

    retries: list[int] = []
    delays = backoff(initial=0.001, cap=0.002)
    assert await _retry(flaky, "test", delays, lambda: retries.append(1)) == "ok"
    assert len(attempts) == 3 and len(retries) == 2
    assert list(zip(range(4), backoff(0.1, 2, 0.5), strict=False)) == [
        (0, 0.1),
        (1, 0.2),
        (2, 0.4),
        (3, 0.5),
    ]


@pytest.fixture
def simulator_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    truth = tmp_path / "truth.jsonl"
    script = (
        "import argparse, asyncio, sys\n"
        "from amt_ingest.simulator import add_arguments, options_from_args, run_simulator\n"
        "p = argparse.ArgumentParser(); add_arguments(p)\n"
        "asyncio.run(run_simulator(options_from_args(p.parse_args(sys.argv[1:]))))\n"
    )
    argv = [sys.executable, "-c", script, "--port", "0", "--sf-port", "0", "--no-sns"]
    argv += ["--rate", "0", "--events", "300", "--seed", "11", "--records", "40", "--seeded-clock"]
    argv += ["--foreign-org-rate", "0.2", "--truth", str(truth)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield proc, truth
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def test_run_simulator_serves_until_sigterm(
    simulator_process: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, truth = simulator_process
    async with asyncio.timeout(30):
        while not truth.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert proc.poll() is None  # keeps serving after the last event
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.to_thread(proc.communicate, timeout=15)
    assert proc.returncode == 0, out
    assert b"simulator.complete" in out
    world = World(11, 40, foreign_org_rate=0.2)
    for _ in range(300):
        world.next_event()
    assert [orjson.loads(line) for line in truth.read_bytes().splitlines()] == world.truth()
