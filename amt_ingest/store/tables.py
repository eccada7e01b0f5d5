"""The tables: one per record type, and ``allowed_org``.

Each record table has the PROTOCOL.md section 1 columns (snake_case), plus
``fields`` (every field the record received, as it came in), ``positions``
(each field's position, the guard of the newest-wins rule), ``deleted`` and
bookkeeping. The tables are created by the migrations (:mod:`.migrations`),
never by ``create_all``: :data:`metadata` is what the newest migration must
produce. Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
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
    event,
)
from sqlalchemy.dialects.postgresql import JSONB

from ..policy import org_prefix
from ..routing.events import TOPICS
from ..routing.merge import StoredRecord

__all__ = ["ALLOWED_ORG", "TABLES", "AllowedOrg", "TableSpec", "metadata", "row_values", "stored"]

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
        return org_prefix(self.org_id)


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


def row_values(spec: TableSpec, record: StoredRecord) -> dict[str, Any]:
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


def stored(row: Any) -> StoredRecord | None:
    if row is None:
        return None
    return StoredRecord(
        org_id=row.org_id,
        fields=dict(row.fields),
        positions=dict(row.positions),
        deleted=row.deleted,
    )
