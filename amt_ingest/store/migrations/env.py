"""Alembic's environment: runs the revisions on the connection that
:mod:`amt_ingest.migrations` hands over, inside its transaction."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import structlog
from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import Script
from sqlalchemy import Connection

from amt_ingest.store.tables import metadata

log = structlog.get_logger("amt_ingest.migrations")


def _applied(
    ctx: MigrationContext,
    step: MigrationInfo,
    heads: Collection[Any],
    run_args: Mapping[str, Any],
) -> None:
    # One structured line per revision (alembic's own step-by-step INFO lines are muted).
    log.info(
        "schema_revision_applied",
        from_revision=",".join(step.source_revision_ids) or None,
        to_revision=",".join(step.destination_revision_ids) or None,
        description=step.up_revision.doc if isinstance(step.up_revision, Script) else None,
    )


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "amt_ingest migrations run through `python -m amt_ingest db upgrade`, "
            "not the alembic command"
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # The caller's transaction wraps every revision, on SQLite too (BEGIN IMMEDIATE).
        transactional_ddl=True,
        compare_type=True,
        on_version_apply=_applied,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
