"""Newest wins, per field (DESIGN.md promise 3), as a pure function."""

from __future__ import annotations

from amt_ingest.routing.events import DELETED_FIELD
from amt_ingest.routing.merge import StoredRecord, merge
from amt_ingest.routing.positions import position_key

ORG = "00D5g000004ZzABEA0"


def pos(ts: int, cn: int = 0, seq: int = 1) -> str:
    return position_key(ts, cn, seq)


def test_first_change_creates_the_record():
    result = merge(None, {"Name": (pos(1), "A"), "Amount": (pos(1), None)}, org_id=ORG)
    assert result.record.fields == {"Name": "A", "Amount": None}
    assert result.applied == 2 and result.stale == 0
    assert result.record.org_id == ORG


def test_older_change_loses_only_where_newer_touched():
    current = merge(None, {"Name": (pos(5), "new"), "Stage": (pos(5), "S")}, org_id=ORG).record
    late = merge(current, {"Name": (pos(3), "old"), "Amount": (pos(3), 10.0)}, org_id=ORG)
    assert late.record.fields == {"Name": "new", "Stage": "S", "Amount": 10.0}
    assert late.applied == 1 and late.stale == 1


def test_replaying_the_same_change_is_a_no_op():
    first = merge(None, {"Name": (pos(5), "A")}, org_id=ORG).record
    again = merge(first, {"Name": (pos(5), "B")}, org_id=ORG)
    assert again.applied == 0
    assert again.record.fields == {"Name": "A"}


def test_position_compares_the_whole_triple():
    current = merge(None, {"Name": (pos(5, 10, 1), "A")}, org_id=ORG).record
    assert merge(current, {"Name": (pos(5, 9, 99), "B")}, org_id=ORG).applied == 0
    assert merge(current, {"Name": (pos(5, 10, 2), "C")}, org_id=ORG).record.fields["Name"] == "C"


def test_tombstone_is_positioned_like_a_field():
    current = merge(None, {"Name": (pos(1), "A")}, org_id=ORG).record
    deleted = merge(current, {DELETED_FIELD: (pos(5), True)}, org_id=ORG).record
    assert deleted.deleted and deleted.fields == {"Name": "A"}
    late_create = merge(
        deleted, {DELETED_FIELD: (pos(1), False), "Name": (pos(1), "A")}, org_id=ORG
    )
    assert late_create.record.deleted
    undelete = merge(deleted, {DELETED_FIELD: (pos(7), False), "Name": (pos(7), "B")}, org_id=ORG)
    assert not undelete.record.deleted and undelete.record.fields["Name"] == "B"


def test_pseudo_fields_are_not_stored():
    result = merge(None, {"__reread__": (pos(1), True), "Name": (pos(1), "A")}, org_id=ORG)
    assert result.record.fields == {"Name": "A"}


def test_merge_does_not_mutate_its_input():
    current = StoredRecord(ORG, {"Name": "A"}, {"Name": pos(1)})
    merge(current, {"Name": (pos(2), "B")}, org_id=ORG)
    assert current.fields == {"Name": "A"} and current.positions == {"Name": pos(1)}


def test_any_order_of_changes_gives_the_same_record():
    import itertools

    changes = [
        {"Name": (pos(1), "a"), "Stage": (pos(1), "s1"), DELETED_FIELD: (pos(1), False)},
        {"Stage": (pos(2), "s2"), "Amount": (pos(2), None)},
        {DELETED_FIELD: (pos(3), True)},
        {"Name": (pos(4), "b"), DELETED_FIELD: (pos(4), False)},
    ]
    outcomes = set()
    for order in itertools.permutations(changes):
        record = None
        for change in order:
            record = merge(record, change, org_id=ORG).record
        assert record is not None
        outcomes.add((tuple(sorted(record.fields.items())), record.deleted))
    assert outcomes == {((("Amount", None), ("Name", "b"), ("Stage", "s2")), False)}
