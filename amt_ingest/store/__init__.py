"""The database: one table per record type, guarded per-field upserts, and the export.

Each table has the PROTOCOL.md section 1 columns (snake_case), plus ``fields``
(every field the record received, as it came in), ``positions`` (each field's
position, the guard of the newest-wins rule), ``deleted`` and bookkeeping.
``allowed_org`` holds the orgs an operator allowed with ``orgs add``.
SQLite (aiosqlite) is the embedded default, PostgreSQL (asyncpg) production.

The tables are created by the migrations (:mod:`amt_ingest.migrations`), never by
``create_all``: ``metadata`` here is what the newest migration must produce.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..errors import FencedError, StoreError
from ..routing.events import TOPICS
from ..routing.merge import StoredRecord, merge
from . import migrations

__all__ = [
    "ALLOWED_ORG",
    "TABLES",
    "AllowedOrg",
    "ApplyItem",
    "ApplyResult",
    "Store",
    "TableSpec",
]

metadata = MetaData()
_Json = JSON().with_variant(JSONB(), "postgresql")


@event.listens_for(metadata, "after_drop")
def _forget_migrations(_metadata: MetaData, connection: Connection, **_kw: Any) -> None:
    # Dropping the tables also drops the migration record, so that the next upgrade
    # creates them again (tests empty PostgreSQL with ``metadata.drop_all``).
    connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")


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

ALLOWED_ORG: Final = Table(
    "allowed_org",
    metadata,
    Column("org_id", String(18), primary_key=True),  # as the operator gave it
    Column("org_prefix", String(15), nullable=False),  # what matching compares
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("note", Text, nullable=True),
    Index("ix_allowed_org_org_prefix", "org_prefix", unique=True),
)


@dataclass(frozen=True, slots=True)
class AllowedOrg:
    """One row of ``allowed_org``."""

    org_id: str
    added_at: dt.datetime
    note: str | None

    @property
    def prefix(self) -> str:
        return self.org_id[:15]


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


@dataclass(frozen=True, slots=True)
class ApplyItem:
    """One record's changes for :meth:`Store.apply_many`."""

    topic: str
    record_id: str
    org_id: str
    changes: dict[str, tuple[str, Any]]
    fence: int = 0


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

    async def ensure_schema(self, *, upgrade: bool = True) -> str:
        """Run the migrations up to the newest revision, or with ``upgrade=False`` only
        check that the database is there; returns the revision. Raises
        :class:`StoreError` (when the schema is behind, it names ``db upgrade``)."""
        url = self.engine.url.render_as_string(hide_password=False)
        if not upgrade:
            return await migrations.check(url)
        revision = await migrations.upgrade(url)
        assert revision is not None
        return revision

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

    async def apply_many(
        self, items: Sequence[ApplyItem]
    ) -> list[ApplyResult | FencedError | StoreError]:
        """Merge the changes of several records (distinct ones) in one transaction.

        Returns one outcome per item, in order: its result, or the error that kept
        it from being written (:class:`FencedError` as in :meth:`apply`). When the
        shared transaction fails on the data, each record is written in a
        transaction of its own, so that one bad record does not hold back the
        others; when the database cannot be reached (or is locked), every record
        fails alike, without one more attempt each.
        """
        failure: Exception | None = None
        for _attempt in (1, 2):
            try:
                return await self._apply_batch(items)
            except IntegrityError as exc:
                # Another writer inserted one of the rows first; the second pass updates it.
                failure = exc
            except (OperationalError, InterfaceError, OSError) as exc:
                return [StoreError(f"{i.topic} {i.record_id}: {exc}") for i in items]
            except SQLAlchemyError as exc:
                failure = exc
                break
        if len(items) == 1:
            return [StoreError(f"{items[0].topic} {items[0].record_id}: {failure}")]
        outcomes: list[ApplyResult | FencedError | StoreError] = []
        for item in items:
            try:
                outcomes.append(
                    await self.apply(
                        item.topic, item.record_id, item.org_id, item.changes, fence=item.fence
                    )
                )
            except (FencedError, StoreError) as exc:
                outcomes.append(exc)
        return outcomes

    async def _apply_batch(
        self, items: Sequence[ApplyItem]
    ) -> list[ApplyResult | FencedError | StoreError]:
        outcomes: list[ApplyResult | FencedError | StoreError | None] = [None] * len(items)
        by_topic: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            by_topic.setdefault(item.topic, []).append(i)
        async with self.engine.begin() as conn:
            for topic in sorted(by_topic):
                spec = TABLES[topic]
                t = spec.table
                group = by_topic[topic]
                # Rows are locked in id order: concurrent runs never wait on each other in a cycle.
                rows = {
                    row.id: row
                    for row in await conn.execute(
                        select(
                            t.c.id, t.c.org_id, t.c.fields, t.c.positions, t.c.deleted, t.c.fence
                        )
                        .where(t.c.id.in_([items[i].record_id for i in group]))
                        .order_by(t.c.id)
                        .with_for_update()
                    )
                }
                inserts: list[dict[str, Any]] = []
                updates: list[dict[str, Any]] = []
                for i in group:
                    item = items[i]
                    row = rows.get(item.record_id)
                    if row is not None and item.fence < row.fence:
                        outcomes[i] = FencedError(
                            f"{topic} {item.record_id}: fence {item.fence} "
                            f"is below the row's {row.fence}"
                        )
                        continue
                    result = merge(_stored(row), item.changes, org_id=item.org_id)
                    outcomes[i] = ApplyResult(result.applied, result.stale, created=row is None)
                    if result.applied == 0:
                        continue
                    values = _row_values(spec, result.record)
                    values["fence"] = max(item.fence, row.fence if row is not None else 0)
                    if row is None:
                        inserts.append({"id": item.record_id, **values})
                    else:
                        updates.append({"row_id": item.record_id, **values})
                if inserts:
                    await conn.execute(t.insert(), inserts)
                if updates:
                    await conn.execute(t.update().where(t.c.id == bindparam("row_id")), updates)
        assert all(outcome is not None for outcome in outcomes)
        return [outcome for outcome in outcomes if outcome is not None]

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
            result = merge(_stored(row), changes, org_id=org_id)
            if result.applied == 0:
                return ApplyResult(0, result.stale, created=False)
            values = _row_values(spec, result.record)
            values["fence"] = max(fence, row.fence if row is not None else 0)
            if row is None:
                await conn.execute(t.insert().values(id=record_id, **values))
            else:
                await conn.execute(t.update().where(t.c.id == record_id).values(**values))
        return ApplyResult(result.applied, result.stale, created=row is None)

    async def org_prefixes(self) -> frozenset[str]:
        """The 15-character prefixes of every org in ``allowed_org``. Raises :class:`StoreError`."""
        try:
            async with self.engine.connect() as conn:
                rows = await conn.execute(select(ALLOWED_ORG.c.org_prefix))
                return frozenset(row.org_prefix for row in rows)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"reading the allowed orgs failed: {exc}") from exc

    async def allowed_orgs(self) -> list[AllowedOrg]:
        """Every row of ``allowed_org``, by org id. Raises :class:`StoreError`."""
        try:
            async with self.engine.connect() as conn:
                rows = await conn.execute(select(ALLOWED_ORG).order_by(ALLOWED_ORG.c.org_id))
                return [_allowed_org(row) for row in rows]
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"reading the allowed orgs failed: {exc}") from exc

    async def add_org(self, org_id: str, *, note: str | None = None) -> tuple[AllowedOrg, bool]:
        """Allow ``org_id`` (15 or 18 characters, checked by the caller). Returns the row and
        whether it was added; an org already there under either form is returned as it is.
        Raises :class:`StoreError`."""
        t = ALLOWED_ORG
        for attempt in (1, 2):
            try:
                async with self.engine.begin() as conn:
                    row = (
                        await conn.execute(select(t).where(t.c.org_prefix == org_id[:15]))
                    ).first()
                    if row is not None:
                        return _allowed_org(row), False
                    added = AllowedOrg(org_id, dt.datetime.now(dt.UTC), note)
                    await conn.execute(
                        t.insert().values(
                            org_id=org_id,
                            org_prefix=added.prefix,
                            added_at=added.added_at,
                            note=note,
                        )
                    )
                    return added, True
            except IntegrityError as exc:
                # Added by someone else meanwhile; the second pass finds it.
                if attempt == 2:
                    raise StoreError(f"adding org {org_id}: {exc}") from exc
            except (SQLAlchemyError, OSError) as exc:
                raise StoreError(f"adding org {org_id}: {exc}") from exc
        raise AssertionError("unreachable")

    async def remove_org(self, org_id: str) -> AllowedOrg | None:
        """Remove the org (either form of its id matches); returns the removed row, if any.
        Raises :class:`StoreError`."""
        t = ALLOWED_ORG
        try:
            async with self.engine.begin() as conn:
                row = (await conn.execute(select(t).where(t.c.org_prefix == org_id[:15]))).first()
                if row is None:
                    return None
                await conn.execute(delete(t).where(t.c.org_id == row.org_id))
                return _allowed_org(row)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"removing org {org_id}: {exc}") from exc

    async def live_records(self, topic: str, *, org: str | None = None) -> list[tuple[str, str]]:
        """``(id, org_id)`` of every record of ``topic`` not deleted (of ``org`` only, 15
        or 18 characters, when given), by id. Raises :class:`StoreError`."""
        t = TABLES[topic].table
        query = select(t.c.id, t.c.org_id).where(t.c.deleted.is_(False)).order_by(t.c.id)
        if org is not None:
            query = query.where(func.substr(t.c.org_id, 1, 15) == org[:15])
        try:
            async with self.engine.connect() as conn:
                return [(row.id, row.org_id) for row in await conn.execute(query)]
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"listing the live {topic} records failed: {exc}") from exc

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


def _stored(row: Any) -> StoredRecord | None:
    if row is None:
        return None
    return StoredRecord(
        org_id=row.org_id,
        fields=dict(row.fields),
        positions=dict(row.positions),
        deleted=row.deleted,
    )


def _allowed_org(row: Any) -> AllowedOrg:
    added_at: dt.datetime = row.added_at
    if added_at.tzinfo is None:  # SQLite keeps no offset; the value was written in UTC
        added_at = added_at.replace(tzinfo=dt.UTC)
    return AllowedOrg(org_id=row.org_id, added_at=added_at, note=row.note)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
