"""The Salesforce re-read API of the simulator (PROTOCOL.md section 4)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sim_helpers import TOKEN, SimFactory

from amt_ingest.simulator import Simulator
from amt_ingest.simulator.truth import START_MS, iso_ms

API = "/services/data/v61.0"


@pytest.fixture
async def sim(make_sim: SimFactory) -> Simulator:
    sim = await make_sim(events=1500, records=120, page_size=7)
    await sim.run()
    return sim


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        sim.sf_url, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as session:
        yield session


async def get(http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with http.get(path) as response:
        return response.status, await response.json()


async def test_record_snapshot(sim: Simulator, http: aiohttp.ClientSession) -> None:
    live = [r for r in sim.world.truth() if not r["deleted"]]
    assert live
    for row in live[:: max(1, len(live) // 10)]:
        status, body = await get(http, f"{API}/sobjects/{row['topic']}/{row['id']}")
        assert status == 200
        state = sim.world.record(row["topic"], row["id"])
        assert state is not None
        assert body.pop("attributes")["type"] == row["topic"]
        assert body.pop("Id") == row["id"]
        assert body.pop("SystemModstamp") == iso_ms(state.modstamp_ms)
        assert body == row["fields"]


async def test_deleted_and_unknown_records_are_404(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    deleted = [r for r in sim.world.truth() if r["deleted"]]
    assert deleted
    for path in (
        f"{API}/sobjects/{deleted[0]['topic']}/{deleted[0]['id']}",
        f"{API}/sobjects/Opportunity/0065g00000NoSuchAAA",
        f"{API}/sobjects/Lead/00Q5g00000NoSuchAAA",
    ):
        status, body = await get(http, path)
        assert status == 404
        assert body[0]["errorCode"] == "NOT_FOUND"


async def test_record_is_404_right_after_its_delete(make_sim: SimFactory) -> None:
    sim = await make_sim(events=0, records=30)
    async with aiohttp.ClientSession(
        sim.sf_url, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as http:
        for _ in range(5000):
            event = sim.world.next_event()
            header = event["payload"]["ChangeEventHeader"]
            if header["changeType"] == "DELETE":
                break
        else:
            pytest.fail("no DELETE generated")
        status, _ = await get(http, f"{API}/sobjects/{event['topic']}/{header['recordIds'][0]}")
        assert status == 404


async def test_query_pages_through_changed_records(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    live = {r["id"] for r in sim.world.truth() if r["topic"] == "Opportunity" and not r["deleted"]}
    since = iso_ms(START_MS)
    status, body = await get(
        http, f"{API}/query?q=SELECT+Id+FROM+Opportunity+WHERE+SystemModstamp+>=+{since}"
    )
    assert status == 200
    assert body["totalSize"] == len(live) > 14
    ids: list[str] = []
    pages = 0
    while True:
        pages += 1
        assert len(body["records"]) <= 7
        for record in body["records"]:
            assert record["attributes"]["type"] == "Opportunity"
            ids.append(record["Id"])
        if body["done"]:
            assert "nextRecordsUrl" not in body
            break
        status, body = await get(http, body["nextRecordsUrl"])
        assert status == 200
    assert pages == -(-len(live) // 7)
    assert sorted(ids) == sorted(live)


async def test_query_filters_by_systemmodstamp(sim: Simulator, http: aiohttp.ClientSession) -> None:
    states = sim.world.modified_since("Application_Item__c", 0)
    cut = states[len(states) // 2].modstamp_ms
    expected = [s.id for s in states if s.modstamp_ms >= cut]
    # Offsets and a form-encoded '+' are understood too.
    params = {"q": f"SELECT Id FROM Application_Item__c WHERE SystemModstamp >= {iso_ms(cut)}"}
    async with http.get(f"{API}/query", params=params) as response:
        body = await response.json()
    assert body["totalSize"] == len(expected)
    zoned = iso_ms(cut).replace("Z", "+00:00")
    status, same = await get(
        http, f"{API}/query?q=SELECT+Id+FROM+Application_Item__c+WHERE+SystemModstamp>={zoned}"
    )
    assert status == 200
    assert same["totalSize"] == len(expected)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("SELECT+Name+FROM+Opportunity", "MALFORMED_QUERY"),
        ("SELECT+Id+FROM+Lead", "INVALID_TYPE"),
        ("SELECT+Id+FROM+Opportunity+WHERE+SystemModstamp+>=+yesterday", "MALFORMED_QUERY"),
    ],
)
async def test_bad_queries(http: aiohttp.ClientSession, query: str, code: str) -> None:
    status, body = await get(http, f"{API}/query?q={query}")
    assert status == 400
    assert body[0]["errorCode"] == code


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}"])
async def test_token_required(sim: Simulator, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    async with (
        aiohttp.ClientSession(sim.sf_url, headers=headers) as http,
        http.get(f"{API}/sobjects/Opportunity/0065g00000NoSuchAAA") as response,
    ):
        assert response.status == 401
        body = await response.json()
    assert body[0]["errorCode"] == "INVALID_SESSION_ID"
