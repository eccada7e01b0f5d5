"""Schema migrations (Alembic), shipped inside the package and run without an ``alembic.ini``.

``versions/`` holds the schema's history, one revision per change; ``store.tables.metadata``
is its present, and a test keeps the two equal on SQLite and PostgreSQL. Operators run
``python -m amt_ingest db upgrade``; the service runs it at start unless
``AMT_DB_AUTO_UPGRADE=false``.

Each upgrade runs in one transaction that first takes the database's write lock (an
advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so processes that start
together migrate once and a failed upgrade leaves the schema as it was. A database whose
tables were created before migrations existed (by ``create_all``, exactly revision 0001)
is adopted: stamped 0001, then upgraded.

To change the schema: change ``store/tables.py``, then add a revision file under ``versions/``
whose ``down_revision`` is the current head (the next number, written by hand like the
others); the schema test fails until the two agree.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ...errors import StoreError

__all__ = ["UPGRADE_COMMAND", "alembic_config", "check", "current", "head", "upgrade"]

log = structlog.get_logger("amt_ingest.migrations")

#: What an operator runs to bring a database to the newest schema.
UPGRADE_COMMAND: Final = "python -m amt_ingest db upgrade"

# Key of the PostgreSQL advisory lock held while migrating (any constant shared by all
# processes of this service; these are the bytes of "amt_ing").
_PG_LOCK_KEY: Final = 0x616D745F696E67

# The first revision, and the tables that versions before migrations created with it.
_BASELINE: Final = "0001"
_BASELINE_TABLES: Final = ("opportunity", "external_attachment", "application_item")

_T = TypeVar("_T")


def alembic_config() -> Config:
    """The Alembic configuration of this package (no ``alembic.ini`` involved)."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    return config


def head() -> str:
    """The newest revision this version of the code knows."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if revision is None:  # pragma: no cover - the package always ships revisions
        raise StoreError("the package holds no schema revisions")
    return revision


async def current(url: str) -> str | None:
    """The database's revision, or ``None`` when no migration has run on it.

    Raises :class:`StoreError` when the database cannot be read.
    """
    return await _run(url, _current_revision, "reading the schema revision")


async def upgrade(url: str, revision: str = "head") -> str | None:
    """Upgrade the schema to ``revision`` (default the newest) and return the revision it
    is at afterwards. Safe to repeat and to run from several processes at once (the later
    ones wait, then find nothing to do). Raises :class:`StoreError` (unknown revision,
    database unreachable, a revision failed: then nothing of the upgrade is kept)."""

    def run(conn: Connection) -> tuple[str | None, str | None]:
        _lock(conn)
        before = _current_revision(conn)
        config = alembic_config()
        config.attributes["connection"] = conn
        if before is None and _has_unversioned_schema(conn):
            command.stamp(config, _BASELINE)
            log.info(
                "schema_adopted", revision=_BASELINE, reason="tables created before migrations"
            )
        command.upgrade(config, revision)
        return before, _current_revision(conn)

    before, after = await _run(url, run, "upgrading the schema")
    if before != after:
        log.info("schema_upgraded", from_revision=before, to_revision=after)
    return after


async def check(url: str) -> str:
    """Return the database's revision if it is the newest; otherwise raise
    :class:`StoreError` naming the command that upgrades it."""
    at = await current(url)
    newest = head()
    if at != newest:
        raise StoreError(
            f"the database schema is at revision {at or 'none (empty database)'}, "
            f"this version needs {newest}: run `{UPGRADE_COMMAND}`"
        )
    return at


def _current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _has_unversioned_schema(conn: Connection) -> bool:
    tables = set(inspect(conn).get_table_names())
    return all(name in tables for name in _BASELINE_TABLES)


def _lock(conn: Connection) -> None:
    # On SQLite the transaction began with BEGIN IMMEDIATE (see _engine): it holds the lock.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


async def _run(url: str, fn: Callable[[Connection], _T], what: str) -> _T:
    engine = _engine(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(fn)
    except (SQLAlchemyError, OSError, CommandError) as exc:
        raise StoreError(f"{what} failed: {exc}") from exc
    finally:
        await engine.dispose()


def _engine(url: str) -> AsyncEngine:
    """A one-connection engine for a migration run.

    On SQLite the driver's own transaction handling is turned off and every transaction
    starts with ``BEGIN IMMEDIATE``: the DDL then runs inside the transaction (the driver
    would otherwise run it outside any) and a second process waits for the first.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, poolclass=NullPool)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": 30})
    event.listen(engine.sync_engine, "connect", _sqlite_driver_autocommit)
    event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
    return engine


def _sqlite_driver_autocommit(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None


def _sqlite_begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")
