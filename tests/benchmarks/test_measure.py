"""The benchmark's pure helpers: rates, percentiles, flatness, targets, profiles."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.bench import targets
from benchmarks.measure import (
    Target,
    flatness,
    format_table,
    percentile,
    rate_from_samples,
    rate_from_times,
)
from benchmarks.profile import summarise


def test_rate_from_samples_leaves_out_startup_and_tail() -> None:
    # 2 s of nothing (startup), then 100/s for 10 s, then a stall.
    samples = [(float(t), 0.0) for t in range(3)]
    samples += [(2.0 + t, 100.0 * t) for t in range(1, 11)]
    samples += [(13.0, 1000.0), (20.0, 1000.0)]
    assert rate_from_samples(samples) == pytest.approx(100.0)


def test_rate_from_samples_interpolates_between_coarse_samples() -> None:
    assert rate_from_samples([(0.0, 0.0), (1.0, 500.0), (2.0, 1000.0)]) == pytest.approx(500.0)


def test_rate_needs_enough_to_tell() -> None:
    assert rate_from_samples([(0.0, 5.0)]) is None
    assert rate_from_samples([(0.0, 0.0), (1.0, 5.0)]) is None
    assert rate_from_times([1.0] * 5) is None
    assert rate_from_times([1.0] * 50) is None  # all at once: no span


def test_rate_from_times_any_order() -> None:
    times = [i / 200 for i in range(1000)][::-1]
    assert rate_from_times(times) == pytest.approx(200.0, rel=0.01)


def test_percentile_counts_what_never_happened_as_largest() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([*values[:98], math.inf, math.inf], 99) == math.inf
    assert percentile([], 50) is None


def test_flatness_compares_halves() -> None:
    flat = flatness([(float(t), 100.0 + (t % 3)) for t in range(20)])
    assert flat is not None and flat.flat and flat.peak == 102
    growing = flatness([(float(t), 100.0 + 5 * t) for t in range(20)])
    assert growing is not None and not growing.flat
    assert flatness([(0.0, 1.0)]) is None


def test_targets_pass_fail_and_missing() -> None:
    assert Target("x", 5, ">=", 3).verdict == "PASS"
    assert Target("x", 5, "<=", 3).verdict == "FAIL"
    assert Target("x", None, "<=", 3).verdict == "n/a"
    found = {
        t.name: t
        for t in targets(
            {
                "ingest_eps": 21_000,
                "ingest_eps_untraced": 30_000,
                "ws_parse_eps": 50_000,
                "arq_enqueue_eps": 3_000,
                "latency_ms": {"ws": {"offered_eps": 1000, "p99": None}},
                "coalesce_ratio": 0.02,
            }
        )
    }
    assert found["ingest_eps >= 20,000"].passed is True
    assert found["ingest_eps >= 6 x arq_enqueue_eps"].passed is True
    assert found["ingest_eps untraced >= 0.7 x ws_parse_eps"].passed is False  # 0.6x
    # Events still unapplied at the end: the p99 never happened, which fails.
    assert found["p99 <= 100 ms, WebSocket at 1000/s"].passed is False
    assert found["coalesce_ratio <= 0.05"].passed is True
    assert found["rss_mb <= 200 under overload"].passed is None


def test_format_table_pads_columns() -> None:
    text = format_table(("a", "bb"), [("long cell", "1"), ("x", "22")])
    assert text.splitlines()[0] == "a          bb"
    assert text.splitlines()[2] == "long cell  1"


def test_profile_keeps_the_main_thread_and_splits_idle(tmp_path: Path) -> None:
    main = "_run_module_as_main (<frozen runpy>:198);run (asyncio/runners.py:190)"
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "\n".join(
            [
                f"{main};EpollSelector.select (selectors.py:468) 20",
                f"{main};route (/w/amt_ingest/router.py:98);ingest (/w/amt_ingest/coordination.py:9) 60",
                f"{main};route (/w/amt_ingest/router.py:99) 20",
                "Thread._bootstrap (threading.py:1002);_connection_worker_thread (aiosqlite/core.py:1) 500",
            ]
        )
        + "\n"
    )
    profile = summarise(raw)
    assert profile.samples == 100 and profile.idle == 20
    assert profile.top("self") == [
        ("ingest (amt_ingest/coordination.py)", 0.75),
        ("route (amt_ingest/router.py)", 0.25),
    ]
    assert profile.top("inclusive") == [("ingest (amt_ingest/coordination.py)", 0.75)]


def test_commit_time_is_read_from_both_sqs_body_shapes():
    import json

    from benchmarks.references import commit_ms_of

    event = {"payload": {"ChangeEventHeader": {"commitTimestamp": 1764064158123}}}
    raw = json.dumps(event)
    envelope = json.dumps({"Type": "Notification", "Message": raw})
    assert commit_ms_of(raw) == commit_ms_of(envelope) == 1764064158123
    assert commit_ms_of("not json") is None
    assert commit_ms_of(json.dumps({"Message": "{}"})) is None


def test_repeated_runs_settle_on_the_median_and_keep_every_value() -> None:
    from benchmarks.bench import leaves, settle_repeats

    results: dict = {"arq_enqueue_eps": 2000.0, "e2e_rps": {"sqlite": 1.0}}
    before = leaves(results)
    runs = []
    for eps, p99 in ((9000.0, 80.0), (11000.0, 60.0), (10000.0, 70.0)):
        results["ingest_eps"] = eps
        results.setdefault("latency_ms", {})["ws"] = {"p99": p99, "events": 6000}
        runs.append(leaves(results))
    spread = settle_repeats(results, before, runs)
    assert results["ingest_eps"] == 10000.0 and results["latency_ms"]["ws"]["p99"] == 70.0
    assert spread["ingest_eps"] == [9000.0, 11000.0, 10000.0]
    assert spread["latency_ms.ws.p99"] == [80.0, 60.0, 70.0]
    # What the phase did not write keeps its value and has no spread.
    assert results["arq_enqueue_eps"] == 2000.0 and "arq_enqueue_eps" not in spread
    assert "latency_ms.ws.events" in spread  # written (unchanged between runs, still a figure)


def test_the_machine_names_its_accelerators() -> None:
    from benchmarks.bench import machine

    found = machine()
    assert {"hiredis", "orjson", "uvloop"} <= set(found["accelerators"])
    assert found["accelerators"]["hiredis"] != "not loaded"  # redis[hiredis] is a dependency
