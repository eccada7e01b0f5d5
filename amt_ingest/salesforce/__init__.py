"""Salesforce's own API: the REST client (records, queries, deleted records) and resyncs."""

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
