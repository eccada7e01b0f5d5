"""The simulator's own control API, beside the Salesforce REST API on the same port.

Tests and operators running a scenario from outside the simulator's process use it;
it needs the same bearer token as the REST API.

- ``GET /simulator/stats``: what :meth:`Simulator.stats` says (generation,
  delivery, truth), as JSON.
- ``POST /simulator/sns`` ``{"enabled": false}``: an SNS outage. While SNS is
  down nothing is published: every event goes to the WebSocket alone, so an
  event of the stream that expires unread is lost everywhere.
  ``{"enabled": true}`` ends it.
- ``POST /simulator/script`` ``{"steps": [...]}``: main-org transactions chosen
  by the caller, generated now (after the transaction under way), in order.
  Each step is ``{"kind": K, ...}`` with ``kind`` one of ``create`` (a new
  record of ``topic``), ``delete``, ``undelete``, ``update`` (each of
  ``records``, or of ``pick`` live records of ``topic`` chosen at random),
  ``bulk`` (one update of ``size`` live records of ``topic``); ``records`` may
  be ``"$N"``, the records of step N; an update or a bulk sets ``fields``
  (``{"name": value}``) when given, else fields chosen at random.
  ``"overflow": true`` sends the step's transaction as ``GAP_OVERFLOW``
  events; ``"ws_delay": N`` holds its events back on the WebSocket until N
  later events were pushed. The answer lists,
  per step, the ``records`` it changed and the ``event_ids`` of its events.
  A step the records do not allow is 400 ``{"error": ...}`` (the steps before
  it stay done).
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import orjson
from aiohttp import web

__all__ = ["CONTROL_PREFIX", "Controllable", "add_routes", "parse_step"]

CONTROL_PREFIX: Final = "/simulator"
KINDS: Final = frozenset({"create", "delete", "undelete", "update", "bulk"})


class Controllable(Protocol):
    """What the control API drives (the :class:`~amt_ingest.simulator.server.Simulator`)."""

    def stats(self) -> dict[str, Any]: ...

    def set_sns(self, *, enabled: bool) -> None: ...

    async def script(self, steps: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


def parse_step(step: Any, done: list[dict[str, Any]]) -> dict[str, Any]:
    """One script step, checked and with ``$N`` references resolved; raises ValueError."""
    if not isinstance(step, dict):
        raise ValueError("a step is an object with a kind")
    kind = step.get("kind")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
    records = step.get("records", [])
    if isinstance(records, str) and records.startswith("$") and records[1:].isdigit():
        index = int(records[1:])
        if index >= len(done):
            raise ValueError(f"{records} names a step not run yet")
        records = list(done[index]["records"])
    if not isinstance(records, list) or not all(isinstance(r, str) for r in records):
        raise ValueError("records must be a list of record ids or '$N'")
    numbers = {}
    for name, default in (("pick", 0), ("size", 3), ("ws_delay", 0)):
        value = step.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer")
        numbers[name] = value
    fields = step.get("fields", {})
    if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields):
        raise ValueError("fields must be an object of field names and values")
    return {
        "kind": kind,
        "topic": str(step.get("topic", "Opportunity")),
        "records": records,
        "fields": fields,
        "overflow": bool(step.get("overflow", False)),
        **numbers,
    }


def add_routes(app: web.Application, sim: Controllable) -> None:
    """Serve the control API on ``app`` (which already checks the bearer token)."""

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(sim.stats(), dumps=lambda o: orjson.dumps(o).decode())

    async def sns(request: web.Request) -> web.Response:
        body = await _json(request)
        enabled = body.get("enabled") if isinstance(body, dict) else None
        if not isinstance(enabled, bool):
            return web.json_response({"error": 'send {"enabled": true|false}'}, status=400)
        sim.set_sns(enabled=enabled)
        return web.json_response({"enabled": enabled})

    async def script(request: web.Request) -> web.Response:
        body = await _json(request)
        steps = body.get("steps") if isinstance(body, dict) else None
        if not isinstance(steps, list):
            return web.json_response({"error": 'send {"steps": [...]}'}, status=400)
        try:
            return web.json_response({"steps": await sim.script(steps)})
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    app.router.add_get(CONTROL_PREFIX + "/stats", stats)
    app.router.add_post(CONTROL_PREFIX + "/sns", sns)
    app.router.add_post(CONTROL_PREFIX + "/script", script)


async def _json(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
