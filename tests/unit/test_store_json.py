"""JSON columns: orjson, with the json module for what orjson refuses."""

from __future__ import annotations


def test_json_columns_take_what_orjson_refuses() -> None:
    from amt_ingest.store.records import _json_text, _json_value

    for value in ({"Amount": 12.5, "Name": "é"}, {"Big": 2**70}, [1, None, "x"]):
        assert _json_value(_json_text(value)) == value
    assert _json_text({"Name": "a"}) == '{"Name":"a"}'
