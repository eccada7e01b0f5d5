"""The store on real SQLite and PostgreSQL: guarded upserts and the export."""

from __future__ import annotations

from amt_ingest.routing.events import DELETED_FIELD
from amt_ingest.routing.positions import position_key
from amt_ingest.store import TABLES

ORG = "00D5g000004ZzABEA0"


def pos(ts: int) -> str:
    return position_key(ts, ts, 1)


async def test_apply_creates_then_merges_per_field(store):
    r1 = await store.apply(
        "Opportunity",
        "0065g00000AbCdEAAA",
        ORG,
        {"Name": (pos(1), "A"), "Amount": (pos(1), 10.5), DELETED_FIELD: (pos(1), False)},
    )
    assert r1.created and r1.applied == 3
    r2 = await store.apply(
        "Opportunity",
        "0065g00000AbCdEAAA",
        ORG,
        {"Name": (pos(0), "older"), "StageName": (pos(0), "S")},
    )
    assert r2.applied == 1 and r2.stale == 1
    rows = [r async for r in store.export()]
    assert rows == [
        {
            "topic": "Opportunity",
            "id": "0065g00000AbCdEAAA",
            "org_id": ORG,
            "deleted": False,
            "fields": {"Name": "A", "Amount": 10.5, "StageName": "S"},
        }
    ]


async def test_replayed_write_is_a_no_op(store):
    changes = {"Status__c": (pos(3), "Received")}
    await store.apply("External_Attachment__c", "a0X5g000002TrAnEAK", ORG, changes)
    again = await store.apply("External_Attachment__c", "a0X5g000002TrAnEAK", ORG, changes)
    assert again.applied == 0


async def test_delete_keeps_fields_and_columns_follow(store):
    await store.apply(
        "Application_Item__c",
        "a0Y5g000003ItM1EAK",
        ORG,
        {"Name": (pos(1), "Essay"), "Due_Date__c": (pos(1), "2027-01-15")},
    )
    await store.apply(
        "Application_Item__c", "a0Y5g000003ItM1EAK", ORG, {DELETED_FIELD: (pos(2), True)}
    )
    (row,) = [r async for r in store.export()]
    assert row["deleted"] is True
    assert row["fields"] == {"Name": "Essay", "Due_Date__c": "2027-01-15"}
    table = TABLES["Application_Item__c"].table
    async with store.engine.connect() as conn:
        result = await conn.execute(table.select())
        db_row = result.mappings().one()
    assert db_row["name"] == "Essay" and db_row["due_date"] == "2027-01-15" and db_row["deleted"]


async def test_export_sorts_by_topic_then_id(store):
    for topic, rid in [
        ("Opportunity", "006B"),
        ("Application_Item__c", "a0YB"),
        ("Opportunity", "006A"),
        ("External_Attachment__c", "a0XA"),
    ]:
        await store.apply(topic, rid, ORG, {"Name": (pos(1), rid)})
    keys = [(r["topic"], r["id"]) async for r in store.export()]
    assert keys == sorted(keys)
    assert len(keys) == 4


async def test_values_keep_their_json_types(store):
    fields = {
        "Amount": 12500.0,
        "Count__c": 3,
        "Flag__c": True,
        "Nested__c": {"a": [1, "x"]},
        "Name": None,
    }
    await store.apply("Opportunity", "006X", ORG, {k: (pos(1), v) for k, v in fields.items()})
    (row,) = [r async for r in store.export()]
    assert row["fields"] == fields
    assert type(row["fields"]["Count__c"]) is int


async def test_apply_many_writes_a_batch_of_records_as_apply_would(store):
    """New and existing rows of two types in one transaction, newest wins per field,
    a stale change and a fenced record reported per item, the others written."""
    from amt_ingest.errors import FencedError
    from amt_ingest.store import ApplyItem

    await store.apply("Opportunity", "0065g00000BaTc0001", ORG, {"Name": (pos(5), "kept")})
    await store.apply("Opportunity", "0065g00000BaTc0002", ORG, {"Name": (pos(1), "x")}, fence=50)
    outcomes = await store.apply_many(
        [
            ApplyItem(
                "Opportunity",
                "0065g00000BaTc0001",
                ORG,
                {"Name": (pos(4), "older"), "StageName": (pos(4), "S")},
                fence=10,
            ),
            ApplyItem("Opportunity", "0065g00000BaTc0002", ORG, {"Name": (pos(2), "y")}, 10),
            ApplyItem("Application_Item__c", "a0Y5g000003BaTcEAK", ORG, {"Name": (pos(1), "i")}),
            ApplyItem("Opportunity", "0065g00000BaTc0003", ORG, {"Amount": (pos(1), 3)}, 10),
        ]
    )
    first, fenced, item, created = outcomes
    assert (first.applied, first.stale, first.created) == (1, 1, False)
    assert isinstance(fenced, FencedError)
    assert item.created and created.created and created.applied == 1
    rows = {(r["topic"], r["id"]): r["fields"] async for r in store.export()}
    assert rows == {
        ("Opportunity", "0065g00000BaTc0001"): {"Name": "kept", "StageName": "S"},
        ("Opportunity", "0065g00000BaTc0002"): {"Name": "x"},
        ("Opportunity", "0065g00000BaTc0003"): {"Amount": 3},
        ("Application_Item__c", "a0Y5g000003BaTcEAK"): {"Name": "i"},
    }
    again = await store.apply_many(
        [ApplyItem("Opportunity", "0065g00000BaTc0003", ORG, {"Amount": (pos(1), 3)}, 11)]
    )
    assert again[0].applied == 0  # a replayed batch is a no-op
