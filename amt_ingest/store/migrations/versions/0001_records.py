"""The record tables: opportunity, external_attachment, application_item.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# Typed columns of each table (besides the common ones), as they were at this revision.
_TABLES: dict[str, list[tuple[str, sa.types.TypeEngine[Any]]]] = {
    "opportunity": [
        ("name", sa.Text()),
        ("stage_name", sa.Text()),
        ("close_date", sa.Text()),
        ("account_id", sa.String(18)),
        ("amount", sa.Float()),
        ("last_modified_date", sa.Text()),
    ],
    "external_attachment": [
        ("name", sa.Text()),
        ("opportunity_id", sa.String(18)),
        ("document_type", sa.Text()),
        ("file_url", sa.Text()),
        ("status", sa.Text()),
        ("last_modified_date", sa.Text()),
    ],
    "application_item": [
        ("name", sa.Text()),
        ("opportunity_id", sa.String(18)),
        ("item_type", sa.Text()),
        ("status", sa.Text()),
        ("due_date", sa.Text()),
        ("last_modified_date", sa.Text()),
    ],
}


def upgrade() -> None:
    for name, columns in _TABLES.items():
        op.create_table(
            name,
            sa.Column("id", sa.String(18), primary_key=True),
            sa.Column("org_id", sa.String(18), nullable=False),
            sa.Column("deleted", sa.Boolean(), nullable=False),
            *(sa.Column(col, typ, nullable=True) for col, typ in columns),
            sa.Column("fields", _JSON, nullable=False),
            sa.Column("positions", _JSON, nullable=False),
            sa.Column("last_position", sa.String(45), nullable=False),
            sa.Column("fence", sa.BigInteger(), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        )


def downgrade() -> None:
    for name in reversed(list(_TABLES)):
        op.drop_table(name)
