"""Ordering rules between re-read snapshots and changes (PROTOCOL.md section 4)."""

from __future__ import annotations

from amt_ingest.routing.events import DELETED_FIELD, FULL_FIELD
from amt_ingest.routing.merge import combine, merge
from amt_ingest.routing.positions import position_key
from amt_ingest.salesforce.client import Snapshot, snapshot_changes, snapshot_position

ORG = "00D5g000004ZzABEA0"
MS = 1764064158000


def snap(fields: dict, ms: int = MS) -> dict:
    return snapshot_changes(Snapshot("Opportunity", "006x", ms, fields))


def test_snapshot_wins_over_a_change_committed_in_the_same_millisecond():
    change = {"StageName": (position_key(MS, 99999, 7), "change")}
    assert combine(change, snap({"StageName": "snapshot"}))["StageName"][1] == "snapshot"


def test_snapshot_wins_over_earlier_changes_and_loses_to_later_ones():
    changes = {
        "StageName": (position_key(MS - 1, 1, 1), "earlier"),
        "Amount": (position_key(MS + 1, 1, 1), 5.0),
    }
    out = combine(changes, snap({"StageName": "snap", "Amount": 1.0, "Name": "n"}))
    assert {k: v for k, (_, v) in out.items()} == {
        "StageName": "snap",
        "Amount": 5.0,
        "Name": "n",
        DELETED_FIELD: False,
        FULL_FIELD: True,
    }


def test_snapshot_nulls_a_stored_field_it_does_not_have():
    stored = merge(
        None,
        {"Amount": (position_key(MS - 5, 1, 1), 9.0), "Name": (position_key(MS - 5, 1, 1), "n")},
        org_id=ORG,
    ).record
    assert merge(stored, snap({"Name": "n"}), org_id=ORG).record.fields == {
        "Amount": None,
        "Name": "n",
    }


def test_snapshot_against_the_store_keeps_newer_stored_fields():
    stored = merge(None, {"StageName": (position_key(MS + 5, 1, 1), "newer")}, org_id=ORG).record
    result = merge(stored, snap({"StageName": "old snapshot", "Name": "n"}), org_id=ORG)
    assert result.record.fields == {"StageName": "newer", "Name": "n"}


def test_snapshot_undeletes_a_record_deleted_before_it_but_not_after():
    deleted_before = merge(None, {DELETED_FIELD: (position_key(MS - 10, 1, 1), True)}, org_id=ORG)
    assert not merge(deleted_before.record, snap({"Name": "n"}), org_id=ORG).record.deleted
    deleted_after = merge(None, {DELETED_FIELD: (position_key(MS + 10, 1, 1), True)}, org_id=ORG)
    assert merge(deleted_after.record, snap({"Name": "n"}), org_id=ORG).record.deleted


def test_snapshot_position_is_the_last_position_of_its_millisecond():
    assert position_key(MS, 10**20 - 1, 10**10 - 1) == snapshot_position(MS)
    assert snapshot_position(MS) < position_key(MS + 1, 0, 0)
