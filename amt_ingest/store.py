"""The database: one table per record type, guarded per-field upserts, and the export.

Each table has the PROTOCOL.md section 1 columns (snake_case), plus ``fields``
(every field the record received, as it came in), ``positions`` (each field's
position, the guard of the newest-wins rule), ``deleted`` and bookkeeping.
SQLite (aiosqlite) is the embedded default, PostgreSQL (asyncpg) production.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    MetaData,
    String,
    Table,
    Text,
    event,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .errors import FencedError, StoreError
from .events import TOPICS
from .merge import StoredRecord, merge

__all__ = ["TABLES", "ApplyResult", "Store", "TableSpec"]

metadata = MetaData()
_Json = JSON().with_variant(JSONB(), "postgresql")


@dataclass(frozen=True)
class TableSpec:
    """How one record type is stored: its table and the fields kept as columns."""

    topic: str
    table: Table
    columns: dict[str, str]  # Salesforce field name -> column name


def _table(name: str, columns: dict[str, tuple[str, Any]]) -> Table:
    return Table(
        name,
        metadata,
        Column("id", String(18), primary_key=True),
        Column("org_id", String(18), nullable=False),
        Column("deleted", Boolean, nullable=False, default=False),
        *(Column(col, typ, nullable=True) for col, typ in columns.values()),
        Column("fields", _Json, nullable=False),
        Column("positions", _Json, nullable=False),
        Column("last_position", String(45), nullable=False),
        # Fencing token of the last job run that wrote the row (see claim.lua).
        Column("fence", BigInteger, nullable=False, default=0),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )


def _spec(topic: str, table: str, columns: dict[str, tuple[str, Any]]) -> TableSpec:
    return TableSpec(
        topic=topic,
        table=_table(table, columns),
        columns={f: c[0] for f, c in columns.items()},
    )


TABLES: Final[dict[str, TableSpec]] = {
    "Opportunity": _spec(
        "Opportunity",
        "opportunity",
        {
            "Name": ("name", Text),
            "StageName": ("stage_name", Text),
            "CloseDate": ("close_date", Text),
            "AccountId": ("account_id", String(18)),
            "Amount": ("amount", Float),
            "LastModifiedDate": ("last_modified_date", Text),
        },
    ),
    "External_Attachment__c": _spec(
        "External_Attachment__c",
        "external_attachment",
        {
            "Name": ("name", Text),
            "Opportunity__c": ("opportunity_id", String(18)),
            "Document_Type__c": ("document_type", Text),
            "File_URL__c": ("file_url", Text),
            "Status__c": ("status", Text),
            "LastModifiedDate": ("last_modified_date", Text),
        },
    ),
    "Application_Item__c": _spec(
        "Application_Item__c",
        "application_item",
        {
            "Name": ("name", Text),
            "Opportunity__c": ("opportunity_id", String(18)),
            "Item_Type__c": ("item_type", Text),
            "Status__c": ("status", Text),
            "Due_Date__c": ("due_date", Text),
            "LastModifiedDate": ("last_modified_date", Text),
        },
    ),
}
assert set(TABLES) == set(TOPICS)


def _column_value(spec: TableSpec, field: str, value: Any) -> Any:
    """A field's value for its typed column; the exact value always stays in ``fields``."""
    col = spec.table.c[spec.columns[field]]
    if isinstance(col.type, Float):
        return (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _row_values(spec: TableSpec, record: StoredRecord) -> dict[str, Any]:
    values: dict[str, Any] = {
        "org_id": record.org_id,
        "deleted": record.deleted,
        "fields": record.fields,
        "positions": record.positions,
        "last_position": record.last_position,
        "updated_at": dt.datetime.now(dt.UTC),
    }
    for field_name, column in spec.columns.items():
        values[column] = _column_value(spec, field_name, record.fields.get(field_name))
    return values


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int
    stale: int
    created: bool


class Store:
    """The database behind one engine. Create with :meth:`open`, close with :meth:`close`."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Store:
        parsed = make_url(url)
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # One writer at a time in this process; other processes wait on the busy timeout.
            kwargs.update(pool_size=1, max_overflow=0, connect_args={"timeout": 30})
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
        engine = create_async_engine(url, **kwargs)
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def ensure_schema(self) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"creating the schema failed: {exc}") from exc

    async def ping(self) -> None:
        try:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"database unreachable: {exc}") from exc

    async def apply(
        self,
        topic: str,
        record_id: str,
        org_id: str,
        changes: dict[str, tuple[str, Any]],
        *,
        fence: int = 0,
    ) -> ApplyResult:
        """Merge changes into one record in one transaction (newest wins per field).

        Safe to repeat: a change already stored is a no-op. ``fence`` is the job
        run's fencing token: a write with a token below the row's is refused with
        :class:`FencedError` (a newer run owns the record). Raises :class:`StoreError`.
        """
        spec = TABLES[topic]
        for attempt in (1, 2):
            try:
                return await self._apply_once(spec, record_id, org_id, changes, fence)
            except FencedError:
                raise
            except IntegrityError as exc:
                # Another writer inserted the row first; the second pass updates it.
                if attempt == 2:
                    raise StoreError(f"{topic} {record_id}: {exc}") from exc
            except (SQLAlchemyError, OSError) as exc:
                raise StoreError(f"{topic} {record_id}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _apply_once(
        self,
        spec: TableSpec,
        record_id: str,
        org_id: str,
        changes: dict[str, tuple[str, Any]],
        fence: int,
    ) -> ApplyResult:
        t = spec.table
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(t.c.org_id, t.c.fields, t.c.positions, t.c.deleted, t.c.fence)
                    .where(t.c.id == record_id)
                    .with_for_update()
                )
            ).first()
            if row is not None and fence < row.fence:
                raise FencedError(
                    f"{spec.topic} {record_id}: fence {fence} is below the row's {row.fence}"
                )
            current = (
                StoredRecord(
                    org_id=row.org_id,
                    fields=dict(row.fields),
                    positions=dict(row.positions),
                    deleted=row.deleted,
                )
                if row is not None
                else None
            )
            result = merge(current, changes, org_id=org_id)
            if result.applied == 0:
                return ApplyResult(0, result.stale, created=False)
            values = _row_values(spec, result.record)
            values["fence"] = max(fence, row.fence if row is not None else 0)
            if row is None:
                await conn.execute(t.insert().values(id=record_id, **values))
            else:
                await conn.execute(t.update().where(t.c.id == record_id).values(**values))
        return ApplyResult(result.applied, result.stale, created=row is None)

    async def export(self) -> AsyncIterator[dict[str, Any]]:
        """Every record, sorted by topic then id, in the PROTOCOL.md section 5 shape."""
        for topic in sorted(TABLES):
            t = TABLES[topic].table
            async with self.engine.connect() as conn:
                result = await conn.stream(
                    select(t.c.id, t.c.org_id, t.c.deleted, t.c.fields).order_by(t.c.id)
                )
                async for row in result:
                    yield {
                        "topic": topic,
                        "id": row.id,
                        "org_id": row.org_id,
                        "deleted": bool(row.deleted),
                        "fields": dict(row.fields),
                    }


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
