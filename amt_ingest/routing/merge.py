"""Newest wins, per field: the store's merge rule as a pure function.

Every field of a stored record keeps the position of the change that set it
(``positions``). A change is applied to a field only if its position is newer
than the field's; the tombstone flag is a pseudo-field with the same rule.
Replaying a change, or applying an older one late, is therefore a no-op for
every field a newer change touched, and still sets the fields no newer change
touched (DESIGN.md section 2, promise 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .events import DELETED_FIELD, FULL_FIELD

__all__ = ["MergeResult", "StoredRecord", "combine", "merge"]


@dataclass(slots=True)
class StoredRecord:
    """A record as the store holds it."""

    org_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    positions: dict[str, str] = field(default_factory=dict)
    deleted: bool = False

    @property
    def last_position(self) -> str:
        return max(self.positions.values(), default="")


@dataclass(frozen=True, slots=True)
class MergeResult:
    record: StoredRecord
    applied: int  # fields (and the tombstone) that took the change
    stale: int  # fields where a newer value was already stored


def merge(
    current: StoredRecord | None,
    changes: dict[str, tuple[str, Any]],
    *,
    org_id: str,
) -> MergeResult:
    """Merge ``changes`` (field -> (position, value)) into ``current``; never mutates it.

    ``DELETED_FIELD`` carries the tombstone flag as a bool. ``FULL_FIELD`` marks
    a full image (an undelete, a snapshot) at its position: every field whose
    value is older than that position and that the image did not set is null
    there. Other pseudo-fields (names starting and ending with ``__``) are not
    fields and are ignored here.
    """
    base = current or StoredRecord(org_id=org_id)
    record = StoredRecord(
        org_id=base.org_id or org_id,
        fields=dict(base.fields),
        positions=dict(base.positions),
        deleted=base.deleted,
    )
    applied = stale = 0
    for name, (position, value) in changes.items():
        if name != DELETED_FIELD and name.startswith("__") and name.endswith("__"):
            continue
        held = record.positions.get(name)
        if held is not None and held >= position:
            stale += 1
            continue
        record.positions[name] = position
        if name == DELETED_FIELD:
            record.deleted = bool(value)
        else:
            record.fields[name] = value
        applied += 1
    full = changes.get(FULL_FIELD)
    if full is not None:
        applied += _null_older_fields(record, full[0])
    return MergeResult(record=record, applied=applied, stale=stale)


def _null_older_fields(record: StoredRecord, position: str) -> int:
    """A full image at ``position``: each field held from before it is null there."""
    nulled = 0
    for name, value in record.fields.items():
        if record.positions.get(name, "") < position:
            record.fields[name] = None
            record.positions[name] = position
            nulled += value is not None
    return nulled


def combine(
    changes: dict[str, tuple[str, Any]], other: dict[str, tuple[str, Any]]
) -> dict[str, tuple[str, Any]]:
    """Two sets of positioned changes as one: per field, the newer position wins."""
    out = dict(changes)
    for name, (position, value) in other.items():
        held = out.get(name)
        if held is None or held[0] < position:
            out[name] = (position, value)
    return out
