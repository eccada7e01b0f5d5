"""Salesforce's own API: the REST client and the resyncs that use it.

:mod:`.client`: one record (a snapshot, or a 404), the ids of records modified
since an instant, the deletes of a window (the deleted-records resource), with
the pure parts beside (snapshot and tombstone positions, call windows).
:mod:`.resync`: a window of a type learnt again (re-read marks and tombstones),
and the full reconciliation.

May import: coordination, store, routing, telemetry, config, policy, errors.
"""

from .client import (
    API_VERSION,
    MIN_DELETED_SPAN_MS,
    DeletedRecords,
    SalesforceClient,
    SalesforceError,
    Snapshot,
    deleted_windows,
    parse_modstamp,
    snapshot_changes,
    snapshot_position,
    tombstone_position,
)

__all__ = [
    "API_VERSION",
    "MIN_DELETED_SPAN_MS",
    "DeletedRecords",
    "SalesforceClient",
    "SalesforceError",
    "Snapshot",
    "deleted_windows",
    "parse_modstamp",
    "snapshot_changes",
    "snapshot_position",
    "tombstone_position",
]
