"""The store: guarded per-field upserts of records, the export, and the engine.

SQLite (aiosqlite) is the embedded default, PostgreSQL (asyncpg) production. A
write merges positioned changes into each record newest-wins per field
(:func:`amt_ingest.routing.merge.merge`) under a row lock, and refuses a run
whose fencing token is below the row's (:class:`~amt_ingest.errors.FencedError`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import bindparam, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..errors import FencedError, StoreError
from ..policy import org_prefix
from ..routing.merge import merge
from . import migrations
from .orgs import AllowedOrgs
from .tables import TABLES, row_values, stored

__all__ = ["ApplyItem", "ApplyResult", "Store"]


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


def _json_text(value: Any) -> str:
    """JSON columns' text: orjson (several times faster than the json module), and
    the json module for what orjson refuses (integers past 64 bits, non-string keys)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def _json_value(text: str | bytes) -> Any:
    """The value of a JSON column's text (the json module for what orjson refuses)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


class Store:
    """The database behind one engine. Create with :meth:`open`, close with :meth:`close`."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        #: The orgs an operator allowed (``orgs add``).
        self.orgs = AllowedOrgs(engine)

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
        engine = create_async_engine(
            url, json_serializer=_json_text, json_deserializer=_json_value, **kwargs
        )
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
        (outcome,) = await self.apply_many([ApplyItem(topic, record_id, org_id, changes, fence)])
        if isinstance(outcome, FencedError | StoreError):
            raise outcome
        return outcome

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
                    result = merge(stored(row), item.changes, org_id=item.org_id)
                    outcomes[i] = ApplyResult(result.applied, result.stale, created=row is None)
                    if result.applied == 0:
                        continue
                    values = row_values(spec, result.record)
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

    async def live_records(self, topic: str, *, org: str | None = None) -> list[tuple[str, str]]:
        """``(id, org_id)`` of every record of ``topic`` not deleted (of ``org`` only, 15
        or 18 characters, when given), by id. Raises :class:`StoreError`."""
        t = TABLES[topic].table
        query = select(t.c.id, t.c.org_id).where(t.c.deleted.is_(False)).order_by(t.c.id)
        if org is not None:
            query = query.where(func.substr(t.c.org_id, 1, 15) == org_prefix(org))
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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
