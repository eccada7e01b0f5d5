"""Helpers for the simulator tests: a WebSocket client speaking the stream protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from amt_ingest.simulator import Simulator

TOKEN = "test-token"
TOPICS = ("Opportunity", "External_Attachment__c", "Application_Item__c")

SimFactory = Callable[..., Awaitable[Simulator]]


def ws_connect(sim: Simulator, token: str = TOKEN) -> connect:
    return connect(
        sim.ws_url,
        additional_headers={"Authorization": f"Bearer {token}"},
        proxy=None,
        open_timeout=5,
    )


async def recv(ws: ClientConnection, within: float = 2.0) -> dict[str, Any]:
    frame = await asyncio.wait_for(ws.recv(), within)
    obj: dict[str, Any] = orjson.loads(frame)
    return obj


async def subscribe(
    ws: ClientConnection,
    *,
    topics: tuple[str, ...] = TOPICS,
    preset: str = "earliest",
    replay_id: str | None = None,
    credits: int = 1000,
) -> dict[str, Any]:
    replay: dict[str, Any] = {"preset": preset}
    if replay_id is not None:
        replay["replay_id"] = replay_id
    await ws.send(
        orjson.dumps(
            {"type": "subscribe", "topics": list(topics), "replay": replay, "credits": credits}
        ).decode()
    )
    return await recv(ws)


async def collect_events(
    ws: ClientConnection, count: int, within: float = 5.0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read frames until ``count`` events arrived; returns (events, events frames).

    Frames that are not JSON objects (malformed on purpose) are skipped.
    """
    events: list[dict[str, Any]] = []
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        while len(events) < count:
            try:
                frame = orjson.loads(await ws.recv())
            except orjson.JSONDecodeError:
                continue
            if isinstance(frame, dict) and frame.get("type") == "events":
                frames.append(frame)
                events.extend(frame["events"])
    return events, frames


async def quiet_for(ws: ClientConnection, seconds: float, *, parsed: bool = True) -> list[Any]:
    """Frames other than heartbeats received within ``seconds`` (raw text if not ``parsed``)."""
    got: list[Any] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                text = await ws.recv()
                if parsed:
                    frame = orjson.loads(text)
                    if frame["type"] != "heartbeat":
                        got.append(frame)
                elif '"type":"heartbeat"' not in text:
                    got.append(text)
    except TimeoutError:
        pass
    return got
