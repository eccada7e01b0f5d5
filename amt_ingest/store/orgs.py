"""The ``allowed_org`` table: the orgs an operator allowed with ``orgs add``."""

from __future__ import annotations

import builtins
import datetime as dt
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import StoreError
from ..policy import org_prefix
from .tables import ALLOWED_ORG, AllowedOrg

__all__ = ["AllowedOrgs"]


class AllowedOrgs:
    """Read and change ``allowed_org``. Raises :class:`StoreError` on database failures."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def prefixes(self) -> frozenset[str]:
        """The 15-character prefixes of every org in ``allowed_org``. Raises :class:`StoreError`."""
        try:
            async with self.engine.connect() as conn:
                rows = await conn.execute(select(ALLOWED_ORG.c.org_prefix))
                return frozenset(row.org_prefix for row in rows)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"reading the allowed orgs failed: {exc}") from exc

    async def list(self) -> builtins.list[AllowedOrg]:
        """Every row of ``allowed_org``, by org id. Raises :class:`StoreError`."""
        try:
            async with self.engine.connect() as conn:
                rows = await conn.execute(select(ALLOWED_ORG).order_by(ALLOWED_ORG.c.org_id))
                return [_allowed_org(row) for row in rows]
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"reading the allowed orgs failed: {exc}") from exc

    async def add(self, org_id: str, *, note: str | None = None) -> tuple[AllowedOrg, bool]:
        """Allow ``org_id`` (15 or 18 characters, checked by the caller). Returns the row and
        whether it was added; an org already there under either form is returned as it is.
        Raises :class:`StoreError`."""
        t = ALLOWED_ORG
        for attempt in (1, 2):
            try:
                async with self.engine.begin() as conn:
                    row = (
                        await conn.execute(select(t).where(t.c.org_prefix == org_prefix(org_id)))
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

    async def remove(self, org_id: str) -> AllowedOrg | None:
        """Remove the org (either form of its id matches); returns the removed row, if any.
        Raises :class:`StoreError`."""
        t = ALLOWED_ORG
        try:
            async with self.engine.begin() as conn:
                row = (
                    await conn.execute(select(t).where(t.c.org_prefix == org_prefix(org_id)))
                ).first()
                if row is None:
                    return None
                await conn.execute(delete(t).where(t.c.org_id == row.org_id))
                return _allowed_org(row)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"removing org {org_id}: {exc}") from exc


def _allowed_org(row: Any) -> AllowedOrg:
    added_at: dt.datetime = row.added_at
    if added_at.tzinfo is None:  # SQLite keeps no offset; the value was written in UTC
        added_at = added_at.replace(tzinfo=dt.UTC)
    return AllowedOrg(org_id=row.org_id, added_at=added_at, note=row.note)
