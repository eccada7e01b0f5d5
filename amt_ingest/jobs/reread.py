"""Re-reading a record from Salesforce where a pending marker asks for it.

A ``__reread__`` marker (a gap event, a resync) or a ``__reconcile__`` marker (a
full reconciliation) among a record's pending changes means: read the record and
apply it as a snapshot, positioned at its SystemModstamp, so it wins over every
change at or before it and loses to later ones. A 404 is a tombstone at the
newer marker's position.
"""

from __future__ import annotations

from typing import Any

from ..routing.events import DELETED_FIELD, RECONCILE_FIELD, REREAD_FIELD
from ..routing.merge import combine
from ..salesforce import SalesforceClient, SalesforceError, snapshot_changes, snapshot_position

__all__ = ["needs_reread", "reread_changes"]


def needs_reread(pending: dict[str, tuple[str, Any]]) -> bool:
    """Whether a re-read or reconcile marker is among the pending changes."""
    return REREAD_FIELD in pending or RECONCILE_FIELD in pending


async def reread_changes(
    client: SalesforceClient,
    topic: str,
    record_id: str,
    pending: dict[str, tuple[str, Any]],
    bound: Any,
) -> dict[str, tuple[str, Any]]:
    """The changes to write for a record: ``pending`` as it is, or, with a marker
    among them, combined with the record as Salesforce has it now (the markers
    removed). Raises :class:`SalesforceError` (the record's job retries)."""
    changes = dict(pending)
    reread = changes.pop(REREAD_FIELD, None)
    reconcile = changes.pop(RECONCILE_FIELD, None)
    if reread is None and reconcile is None:
        return changes
    snapshot = await client.get_record(topic, record_id)
    if snapshot is None:
        bound.info("record_reread", outcome="not_found")
        tombstone = max(marker[0] for marker in (reread, reconcile) if marker is not None)
        return combine(changes, {DELETED_FIELD: (tombstone, True)})
    position = snapshot_position(snapshot.modstamp_ms)
    if reread is not None and position < reread[0]:
        # A snapshot older than the gap is not the gap's content yet (a reconciliation
        # marker takes any snapshot).
        raise SalesforceError(
            f"{topic} {record_id}: SystemModstamp {snapshot.modstamp_ms} predates the gap"
        )
    bound.info("record_reread", outcome="snapshot", fields=len(snapshot.fields))
    return combine(changes, snapshot_changes(snapshot))
