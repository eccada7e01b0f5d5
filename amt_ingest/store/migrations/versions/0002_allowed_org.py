"""The allowed_org table: orgs whose events are kept, besides AMT_ALLOWED_ORG_IDS.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "allowed_org",
        sa.Column("org_id", sa.String(18), primary_key=True),
        sa.Column("org_prefix", sa.String(15), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
    )
    op.create_index("ix_allowed_org_org_prefix", "allowed_org", ["org_prefix"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_allowed_org_org_prefix", table_name="allowed_org")
    op.drop_table("allowed_org")
