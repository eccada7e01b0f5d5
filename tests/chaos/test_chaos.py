"""Short chaos runs in CI, one per mode; `make chaos` runs a long one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.harness import Chaos

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_short_chaos_run_loses_nothing(tmp_path: Path):
    duration = float(os.environ.get("AMT_CHAOS_SECONDS", "30"))
    report = Chaos(seed=5, duration=duration, rate=30, workdir=tmp_path, database="sqlite").run()
    print("\n" + "\n".join(report.lines()))
    assert sum(report.faults.values()) >= 3, report.faults
    assert report.lost == 0 and report.stale == 0, report.examples
    assert report.ok, report.lines()


def test_short_replicas_chaos_run_keeps_one_subscriber_and_loses_nothing(tmp_path: Path):
    duration = float(os.environ.get("AMT_CHAOS_SECONDS", "30"))
    report = Chaos(
        seed=8, duration=duration, rate=30, workdir=tmp_path, database="sqlite", mode="replicas"
    ).run()
    print("\n" + "\n".join(report.lines()))
    assert sum(report.faults.values()) >= 3, report.faults
    assert report.lost == 0 and report.stale == 0, report.examples
    assert report.max_subscribers == 1, report.lines()
    assert report.ok, report.lines()
