"""A tombstone of the deleted-records resource against the changes around it.

Pure: the store's merge rule (:func:`amt_ingest.merge.merge`), the pending-change
merge (:func:`amt_ingest.merge.combine`), and where a delete and a snapshot sit.
Every ordering rule between a tombstone and a change, either way round.
"""

from __future__ import annotations

import itertools

from amt_ingest.routing.events import DELETED_FIELD, FULL_FIELD
from amt_ingest.routing.merge import combine, merge
from amt_ingest.routing.positions import lost_window_position, position_key
from amt_ingest.salesforce.client import (
    MIN_DELETED_SPAN_MS,
    deleted_windows,
    snapshot_position,
    tombstone_position,
)

ORG = "00D5g000004ZzABEA0"
T = 1_795_597_200_000  # the delete's deletedDate (ms)
DAY = 24 * 3600 * 1000


def at(ms: int, commit: int = 5, seq: int = 1) -> str:
    return position_key(ms, commit, seq)


def tombstone(ms: int = T) -> dict[str, tuple[str, object]]:
    return {DELETED_FIELD: (tombstone_position(ms), True)}


def apply(*change_sets: dict[str, tuple[str, object]]):
    record = None
    for changes in change_sets:
        record = merge(record, changes, org_id=ORG).record
    assert record is not None
    return record


def created(ms: int) -> dict[str, tuple[str, object]]:
    return {"Name": (at(ms), "A"), "StageName": (at(ms), "Started"), DELETED_FIELD: (at(ms), False)}


def test_a_record_known_only_by_its_tombstone_is_deleted_with_no_fields():
    record = apply(tombstone())
    assert record.deleted is True
    assert record.fields == {}
    assert record.org_id == ORG


def test_a_tombstone_after_the_last_change_deletes_and_keeps_the_fields():
    record = apply(created(T - 5000), {"StageName": (at(T - 1000), "Submitted")}, tombstone())
    assert record.deleted is True
    assert record.fields == {"Name": "A", "StageName": "Submitted"}


def test_a_tombstone_older_than_an_applied_undelete_does_not_win():
    undelete = {"Name": (at(T + 2000), "A"), DELETED_FIELD: (at(T + 2000), False)}
    record = apply(created(T - 5000), undelete, tombstone())
    assert record.deleted is False


def test_an_undelete_after_the_tombstone_wins():
    undelete = {DELETED_FIELD: (at(T + 1), False)}
    assert apply(created(T - 5000), tombstone(), undelete).deleted is False


def test_a_create_after_the_tombstone_wins_and_one_before_loses():
    # A record that comes back under its id (an undelete the consumer sees as a CREATE).
    assert apply(tombstone(), created(T + 10)).deleted is False
    assert apply(tombstone(), created(T - 10)).deleted is True
    # A create committed in the delete's own millisecond, before the delete (one
    # transaction): the record ended that instant deleted.
    assert apply(tombstone(), created(T)).deleted is True


def test_the_delete_event_and_its_tombstone_agree_in_either_order():
    delete_event = {DELETED_FIELD: (at(T, 7, 2), True)}
    first = apply(created(T - 10), delete_event, tombstone())
    second = apply(created(T - 10), tombstone(), delete_event)
    assert first.deleted is second.deleted is True
    assert first.fields == second.fields == {"Name": "A", "StageName": "Started"}


def test_a_change_before_the_delete_still_sets_the_fields_no_later_change_touched():
    late_update = {"StageName": (at(T - 200), "Admitted"), "Amount": (at(T - 200), 5000.0)}
    record = apply(tombstone(), late_update)
    assert record.deleted is True
    assert record.fields == {"StageName": "Admitted", "Amount": 5000.0}


def test_a_snapshot_read_after_an_undelete_wins_and_one_read_before_the_delete_loses():
    after = {
        "Name": (snapshot_position(T + 500), "B"),
        DELETED_FIELD: (snapshot_position(T + 500), False),
    }
    before = {
        "Name": (snapshot_position(T - 500), "C"),
        DELETED_FIELD: (snapshot_position(T - 500), False),
    }
    assert apply(tombstone(), after).deleted is False
    assert apply(after, tombstone()).deleted is False
    assert apply(tombstone(), before).deleted is True
    assert apply(before, tombstone()).deleted is True


def test_a_repeated_tombstone_is_a_no_op():
    record = apply(created(T - 10), tombstone())
    again = merge(record, tombstone(), org_id=ORG)
    assert again.applied == 0 and again.stale == 1


def test_pending_changes_keep_the_newer_of_a_tombstone_and_an_undelete():
    undelete = {DELETED_FIELD: (at(T + 3), False)}
    assert combine(undelete, tombstone())[DELETED_FIELD][1] is False
    assert combine(tombstone(), undelete)[DELETED_FIELD][1] is False
    older = {DELETED_FIELD: (at(T - 3), False)}
    assert combine(older, tombstone())[DELETED_FIELD][1] is True


def test_a_tombstone_sits_where_a_snapshot_of_that_instant_sits():
    assert tombstone_position(T) == snapshot_position(T)
    assert at(T, 10**19, 10**9) < tombstone_position(T) < at(T + 1, 0, 0)


def test_deleted_windows_cover_the_window_in_calls_salesforce_accepts():
    windows = deleted_windows(T, T + 70 * DAY, max_span_ms=30 * DAY)
    assert windows[0][0] == T and windows[-1][1] == T + 70 * DAY
    assert all(b - a <= 30 * DAY for a, b in windows)
    assert all(b - a >= MIN_DELETED_SPAN_MS for a, b in windows)
    assert all(later[0] <= earlier[1] for earlier, later in itertools.pairwise(windows))
    assert len(windows) == 3


def test_a_short_window_or_last_piece_starts_earlier_rather_than_being_refused():
    assert deleted_windows(T, T + 5000, max_span_ms=30 * DAY) == [
        (T + 5000 - MIN_DELETED_SPAN_MS, T + 5000)
    ]
    pieces = deleted_windows(T, T + 10 * 60_000 + 1000, max_span_ms=5 * 60_000)
    assert pieces[-1] == (T + 10 * 60_000 + 1000 - MIN_DELETED_SPAN_MS, T + 10 * 60_000 + 1000)
    assert all(b - a >= MIN_DELETED_SPAN_MS for a, b in pieces)


def test_the_lost_window_starts_the_overlap_before_the_newest_event_handed_off():
    newest = at(T, 99, 3)
    assert lost_window_position(newest, 300) == position_key(T - 300_000, 0, 0)
    assert lost_window_position(newest, 0) == position_key(T, 0, 0) < newest


# --- a full image (an undelete, a snapshot) nulls what it does not carry ------------


def full_image(ms: int, fields: dict[str, object]) -> dict[str, tuple[str, object]]:
    position = at(ms)
    return {
        **{name: (position, value) for name, value in fields.items()},
        DELETED_FIELD: (position, False),
        FULL_FIELD: (position, True),
    }


def test_an_undelete_nulls_a_field_whose_nulling_was_lost_while_the_record_was_deleted():
    # Seen: the create. Lost everywhere: an update that nulled Amount. Then the delete
    # (a tombstone from the resync) and the undelete, which carries the non-null fields.
    record = apply(
        {"Name": (at(T - 9000), "A"), "Amount": (at(T - 9000), 5000.0)},
        tombstone(),
        full_image(T + 5000, {"Name": "A"}),
    )
    assert record.deleted is False
    assert record.fields == {"Name": "A", "Amount": None}


def test_a_full_image_leaves_what_a_later_change_set():
    later = {"Amount": (at(T + 9000), 7000.0)}
    for order in ((full_image(T, {"Name": "A"}), later), (later, full_image(T, {"Name": "A"}))):
        record = apply({"Amount": (at(T - 10), 1.0), "Name": (at(T - 10), "x")}, *order)
        assert record.fields == {"Name": "A", "Amount": 7000.0}


def test_an_older_full_image_nulls_nothing_newer():
    record = apply({"Amount": (at(T + 10), 3.0)}, full_image(T, {"Name": "A"}))
    assert record.fields == {"Amount": 3.0, "Name": "A"}
    again = merge(record, full_image(T, {"Name": "A"}), org_id=ORG)
    assert again.applied == 0  # a repeated image changes nothing


def test_a_create_is_not_a_full_image():
    import orjson

    from amt_ingest.routing.events import Event, event_effect, parse_event
    from tests.conftest import SAMPLES

    create = parse_event(orjson.loads((SAMPLES / "event-opportunity-create.json").read_bytes()))
    assert isinstance(create, Event)
    assert event_effect(create).full is False
    undelete = orjson.loads((SAMPLES / "event-opportunity-create.json").read_bytes())
    undelete["payload"]["ChangeEventHeader"]["changeType"] = "UNDELETE"
    parsed = parse_event(undelete)
    assert isinstance(parsed, Event) and event_effect(parsed).full is True
