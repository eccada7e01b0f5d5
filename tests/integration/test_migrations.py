"""The schema migrations on real SQLite and PostgreSQL: they build exactly ``store.metadata``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from amt_ingest.errors import StoreError
from amt_ingest.routing.positions import position_key
from amt_ingest.store import TABLES, Store, metadata, migrations
from tests.conftest import POSTGRES_URL

ORG = "00D5g000004ZzABEA0"
RECORD_TABLES = {"opportunity", "external_attachment", "application_item"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A database without any table (SQLite: a new file; PostgreSQL: emptied)."""
    url = f"sqlite+aiosqlite:///{tmp_path}/m.db" if request.param == "sqlite" else POSTGRES_URL
    store = Store.open(url)
    async with store.engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    yield store
    await store.close()


def url_of(store: Store) -> str:
    return store.engine.url.render_as_string(hide_password=False)


async def schema_diffs(store: Store) -> list[Any]:
    def compare(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with store.engine.connect() as conn:
        return await conn.run_sync(compare)


async def table_names(store: Store) -> set[str]:
    async with store.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_migrations_build_exactly_the_store_metadata(empty_db):
    url = url_of(empty_db)
    assert await migrations.current(url) is None
    assert await migrations.upgrade(url) == migrations.head()
    assert await schema_diffs(empty_db) == []
    assert await table_names(empty_db) == RECORD_TABLES | {"allowed_org", "alembic_version"}
    assert await migrations.check(url) == migrations.head()


async def test_upgrade_is_idempotent_and_keeps_the_data(empty_db):
    url = url_of(empty_db)
    await empty_db.ensure_schema()
    await empty_db.apply("Opportunity", "006A", ORG, {"Name": (position_key(1, 1, 1), "kept")})
    await empty_db.orgs.add(ORG, note="n")
    assert await migrations.upgrade(url) == migrations.head()
    assert await empty_db.ensure_schema() == migrations.head()
    assert [r["fields"] async for r in empty_db.export()] == [{"Name": "kept"}]
    assert [o.org_id for o in await empty_db.orgs.list()] == [ORG]
    assert await schema_diffs(empty_db) == []


async def test_one_revision_at_a_time(empty_db):
    url = url_of(empty_db)
    assert await migrations.upgrade(url, "0001") == "0001"
    assert await table_names(empty_db) == RECORD_TABLES | {"alembic_version"}
    # The comparison sees what is missing (so an empty diff above means equal).
    diffs = await schema_diffs(empty_db)
    assert [(d[0], d[1].name) for d in diffs] == [
        ("add_table", "allowed_org"),
        ("add_index", "ix_allowed_org_org_prefix"),
    ]
    with pytest.raises(StoreError, match="python -m amt_ingest db upgrade"):
        await empty_db.ensure_schema(upgrade=False)
    assert await migrations.upgrade(url) == "0002"
    assert await schema_diffs(empty_db) == []


async def test_concurrent_upgrades_migrate_once(empty_db):
    url = url_of(empty_db)
    results = await asyncio.gather(*(migrations.upgrade(url) for _ in range(3)))
    assert results == [migrations.head()] * 3
    assert await schema_diffs(empty_db) == []


async def test_a_database_created_before_migrations_is_adopted(empty_db):
    record_tables = [spec.table for spec in TABLES.values()]
    async with empty_db.engine.begin() as conn:
        await conn.run_sync(lambda c: metadata.create_all(c, tables=record_tables))
    await empty_db.apply("Opportunity", "006A", ORG, {"Name": (position_key(1, 1, 1), "old")})
    assert await migrations.upgrade(url_of(empty_db)) == migrations.head()
    assert await schema_diffs(empty_db) == []
    assert [r["fields"] async for r in empty_db.export()] == [{"Name": "old"}]


async def test_revisions_downgrade_to_an_empty_database(empty_db):
    await empty_db.ensure_schema()

    def downgrade(conn: Connection) -> None:
        config = migrations.alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "base")

    async with empty_db.engine.begin() as conn:
        await conn.run_sync(downgrade)
    assert await table_names(empty_db) == {"alembic_version"}
    assert await migrations.current(url_of(empty_db)) is None


async def test_unknown_revision_and_unreachable_database_are_store_errors(empty_db):
    with pytest.raises(StoreError, match="nope"):
        await migrations.upgrade(url_of(empty_db), "nope")
    with pytest.raises(StoreError, match="upgrading the schema failed"):
        await migrations.upgrade("postgresql+asyncpg://postgres@127.0.0.1:1/test")
