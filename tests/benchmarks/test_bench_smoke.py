"""``make bench`` in a tiny mode, so that the harness keeps working.

Real Redis (``BENCH_REDIS_URL``, db 13 by default), PostgreSQL
(``BENCH_POSTGRES_URL``, database ``test_bench``, created if missing), moto,
the simulator and the service, as in the full run; only the sizes are small,
so the figures mean nothing here: the test checks that every phase produced one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bench, pytest.mark.postgres, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


def _bench(tmp_path: Path, phases: str) -> dict:
    out = tmp_path / "bench.json"
    args = ["--quick", "--only", phases, "--output", str(out), "--workdir", str(tmp_path / "w")]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "target" in proc.stdout and "wall time" in proc.stdout
    return json.loads(out.read_text())


def test_quick_bench_websocket_and_store(tmp_path: Path) -> None:
    doc = _bench(tmp_path, "arq,ws,e2e_postgres,latency_ws,coalesce,rss")
    r = doc["results"]
    assert not doc["errors"]
    for key in ("arq_enqueue_eps", "arq_noop_jps", "ws_raw_eps", "ws_parse_eps", "ingest_eps"):
        assert r[key] > 0, key
    assert r["e2e_rps"]["postgres"] > 0
    assert r["latency_ms"]["ws"]["events"] > 0
    assert 0 < r["coalesce_ratio"] <= 1
    assert r["rss_mb"] > 0 and r["rss_flat"] in (True, False)
    assert {t["verdict"] for t in doc["targets"]} <= {"PASS", "FAIL", "n/a"}
    assert doc["machine"]["nproc"] and doc["machine"]["postgresql"]


def test_quick_bench_sqs(tmp_path: Path) -> None:
    doc = _bench(tmp_path, "sqs,latency_sqs")
    r = doc["results"]
    assert not doc["errors"]
    assert r["sqs_raw_eps"] > 0 and r["ingest_sqs_eps"] > 0
    assert r["latency_ms"]["sqs"]["events"] > 0


def test_quick_bench_scaling(tmp_path: Path) -> None:
    doc = _bench(tmp_path, "scaling")
    r = doc["results"]
    assert not doc["errors"]
    assert set(r["scale_e2e_rps"]) == {"run", "workers_1", "workers_2"}  # --quick: 1 and 2
    assert all(v and v > 0 for v in r["scale_e2e_rps"].values()), r["scale_e2e_rps"]
    assert r["scale_e2e_ratio"]["run"] == 1.0
    assert set(r["scale_sqs_eps"]) == {"consumers_1", "consumers_2"}
    assert all(v and v > 0 for v in r["scale_sqs_eps"].values()), r["scale_sqs_eps"]
    assert r["failover_s"]["kill"] is not None and r["failover_s"]["sigterm"] is not None
