"""Shared fixtures: real Redis, real PostgreSQL and SQLite, a moto server subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

SAMPLES = Path(__file__).parent / "samples"

REDIS_URL = os.environ.get("AMT_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
POSTGRES_URL = os.environ.get(
    "AMT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on a free local port, for the whole session."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/moto-api/")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS variables pointing at a freshly reset moto server."""
    req = urllib.request.Request(moto_endpoint + "/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=10).close()
    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    return moto_endpoint


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """The machine's Redis, on a test database emptied before each test."""
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.flushdb()
    except OSError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"Redis at {REDIS_URL} is not reachable: {exc}")
    yield REDIS_URL
    await client.aclose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    """A real, empty store on SQLite (a temp file) and on PostgreSQL, its schema built by
    the migrations (``drop_all`` also drops ``alembic_version``, see store.py)."""
    from amt_ingest.store import Store, metadata

    url = f"sqlite+aiosqlite:///{tmp_path}/store.db" if request.param == "sqlite" else POSTGRES_URL
    s = Store.open(url)
    if request.param == "postgres":
        async with s.engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
    await s.ensure_schema()
    yield s
    await s.close()


def amt_process(
    *args: str, env: dict[str, str], output: object = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """``python -m amt_ingest ARGS`` as a subprocess (output to a file, or discarded)."""
    return subprocess.Popen(
        [sys.executable, "-m", "amt_ingest", *args],
        env=env,
        stdout=output,  # type: ignore[arg-type]
        stderr=subprocess.STDOUT,
    )
