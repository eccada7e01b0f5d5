"""The org allow-list on real SQLite and PostgreSQL: the environment plus the table,
cached, and the router that uses it."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from amt_ingest.coordination import Coordinator
from amt_ingest.errors import StoreError
from amt_ingest.routing.orgs import OrgFilter
from amt_ingest.routing.router import Router
from tests.integration.test_coordination import make_event

ORG = "00D5g000004ZzABEA0"
OTHER = "00D5g000009XyZQEA0"
TTL = 30.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def url_of(store) -> str:
    return store.engine.url.render_as_string(hide_password=False)


async def drop_allowed_org(store) -> None:
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE allowed_org")


async def amt(*args: str, database_url: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "amt_ingest",
        *args,
        env={**env, "AMT_DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_store_keeps_one_row_per_org_whatever_the_id_form(store):
    org, added = await store.orgs.add(ORG, note="admissions")
    assert added and org.org_id == ORG and org.note == "admissions"
    again, added = await store.orgs.add(ORG[:15])
    assert not added and again.org_id == ORG and again.note == "admissions"
    assert again.added_at == org.added_at
    assert await store.orgs.prefixes() == {ORG[:15]}
    assert await store.orgs.remove(OTHER) is None
    removed = await store.orgs.remove(ORG[:15])
    assert removed is not None and removed.org_id == ORG
    assert await store.orgs.list() == []


async def test_the_table_is_re_read_after_the_ttl(store):
    clock = Clock()
    orgs = OrgFilter(source=store.orgs, ttl_s=TTL, clock=clock)
    assert await orgs.allowed() == frozenset()
    await store.orgs.add(ORG)
    clock.now += TTL - 1
    assert await orgs.allowed() == frozenset(), "read again before the TTL"
    clock.now += 1
    with capture_logs() as logs:
        assert await orgs.allowed() == {ORG[:15]}
    assert [e["event"] for e in logs] == ["org_list_changed"]
    assert logs[0]["added"] == [ORG[:15]]
    await store.orgs.remove(ORG)
    clock.now += TTL
    assert await orgs.allowed() == frozenset()


async def test_environment_and_table_together(store):
    clock = Clock()
    orgs = OrgFilter([OTHER], source=store.orgs, ttl_s=TTL, clock=clock)
    assert await orgs.load() == {OTHER[:15]}
    await store.orgs.add(ORG[:15])
    clock.now += TTL
    assert await orgs.allowed() == {OTHER[:15], ORG[:15]}
    # Without a table the environment's list is all there is, and nothing is read.
    env_only = OrgFilter([ORG])
    assert await env_only.allowed() == {ORG[:15]}
    assert await OrgFilter().allowed() == frozenset()


async def test_a_failed_read_keeps_the_last_list(store):
    clock = Clock()
    orgs = OrgFilter(source=store.orgs, ttl_s=TTL, clock=clock)
    await store.orgs.add(ORG)
    assert await orgs.load() == {ORG[:15]}
    await drop_allowed_org(store)  # every read fails from now on
    clock.now += TTL
    with capture_logs() as logs:
        assert await orgs.allowed() == {ORG[:15]}
        # The failure is not retried on every call: only after another TTL.
        clock.now += TTL - 1
        assert await orgs.allowed() == {ORG[:15]}
        clock.now += 1
        assert await orgs.allowed() == {ORG[:15]}
    warnings = [e for e in logs if e["event"] == "org_list_read_failed"]
    assert len(warnings) == 2
    assert warnings[0]["log_level"] == "warning" and warnings[0]["kept_orgs"] == 1
    with pytest.raises(StoreError):
        await orgs.load()


async def test_a_starting_service_waits_out_a_short_read_failure(store):
    """A SQLite file that another process is creating is locked for a moment: the
    start retries the read instead of stopping."""
    from amt_ingest.service import load_orgs_at_start
    from amt_ingest.store import ALLOWED_ORG

    await drop_allowed_org(store)  # reads fail until the table is back
    orgs = OrgFilter(source=store.orgs, ttl_s=TTL, clock=Clock())

    async def back_soon() -> None:
        await asyncio.sleep(0.6)
        async with store.engine.begin() as conn:
            await conn.run_sync(ALLOWED_ORG.create)
        await store.orgs.add(ORG)

    restoring = asyncio.create_task(back_soon())
    with capture_logs() as logs:
        assert await load_orgs_at_start(orgs, patience_s=10) == {ORG[:15]}
    await restoring
    assert [e["event"] for e in logs if e["log_level"] == "warning"][:1] == ["org_list_read_failed"]


async def test_a_starting_service_stops_when_the_table_stays_unreadable(store):
    from amt_ingest.service import load_orgs_at_start

    await drop_allowed_org(store)
    orgs = OrgFilter(source=store.orgs, ttl_s=TTL, clock=Clock())
    with pytest.raises(StoreError, match=r"^AMT_DATABASE_URL: reading the allowed orgs"):
        await load_orgs_at_start(orgs, patience_s=1)


async def test_a_table_never_read_is_not_guessed(store):
    await drop_allowed_org(store)
    orgs = OrgFilter([ORG], source=store.orgs, ttl_s=TTL, clock=Clock())
    with pytest.raises(StoreError, match="allowed orgs"):
        await orgs.allowed()


async def test_an_org_added_by_the_command_reaches_the_router_after_the_ttl(store, redis_url):
    client = aioredis.Redis.from_url(redis_url)
    try:
        coord = Coordinator(client, dedup_ttl=3600)
        clock = Clock()
        orgs = OrgFilter([ORG], source=store.orgs, ttl_s=TTL, clock=clock)
        await orgs.load()
        router = Router(coord.handoff, orgs=orgs)

        def theirs():
            return make_event(
                100, {"StageName": "B"}, record_ids=("0065g00000ZzZzZAAA",), org=OTHER
            )

        assert (await router.route([theirs()], path="ws")).outcomes == {"filtered": 1}
        out = await amt("orgs", "add", OTHER, "--note", "partner", database_url=url_of(store))
        assert out.startswith(f"added {OTHER}")
        assert (await router.route([theirs()], path="ws")).outcomes == {"filtered": 1}
        clock.now += TTL
        report = await router.route([theirs(), make_event(100, {"Name": "ours"})], path="sqs")
        assert report.outcomes == {"first": 2}
        listed = await amt("orgs", "list", database_url=url_of(store))
        assert f'"org_id":"{OTHER}","source":"database"' in listed
        await amt("orgs", "remove", OTHER[:15], database_url=url_of(store))
        clock.now += TTL
        assert (await router.route([theirs()], path="ws")).outcomes == {"filtered": 1}
    finally:
        await client.aclose()


async def test_an_empty_allow_list_keeps_every_org(store, redis_url):
    client = aioredis.Redis.from_url(redis_url)
    try:
        orgs = OrgFilter(source=store.orgs, ttl_s=TTL, clock=Clock())
        router = Router(Coordinator(client, dedup_ttl=3600).handoff, orgs=orgs)
        event = make_event(100, {"Name": "x"}, org=OTHER)
        assert (await router.route([event], path="ws")).outcomes == {"first": 1}
    finally:
        await client.aclose()
