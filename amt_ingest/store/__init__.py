"""The database: one table per record type, guarded per-field upserts, and the export.

Each table has the PROTOCOL.md section 1 columns (snake_case), plus ``fields``
(every field the record received, as it came in), ``positions`` (each field's
position, the guard of the newest-wins rule), ``deleted`` and bookkeeping.
``allowed_org`` holds the orgs an operator allowed with ``orgs add``.
SQLite (aiosqlite) is the embedded default, PostgreSQL (asyncpg) production.

The tables are created by the migrations (:mod:`.migrations`), never by
``create_all``: ``metadata`` here is what the newest migration must produce.

May import: :mod:`amt_ingest.routing` (the merge rule, the topics), errors and
policy. :mod:`.migrations` holds the schema's history.
"""

from .orgs import AllowedOrgs
from .records import ApplyItem, ApplyResult, Store
from .tables import ALLOWED_ORG, TABLES, AllowedOrg, TableSpec, metadata

__all__ = [
    "ALLOWED_ORG",
    "TABLES",
    "AllowedOrg",
    "AllowedOrgs",
    "ApplyItem",
    "ApplyResult",
    "Store",
    "TableSpec",
    "metadata",
]
