"""The Salesforce re-read API the simulator serves (PROTOCOL.md section 4), from the truth.

- ``GET /services/data/v61.0/sobjects/{topic}/{id}``: the record as a full
  snapshot with its ``SystemModstamp``; 404 ``NOT_FOUND`` if deleted or unknown.
- ``GET /services/data/v61.0/query?q=SELECT Id FROM {topic} WHERE SystemModstamp >= {iso}``:
  the ids of live records changed since then, oldest change first, in pages;
  ``GET /services/data/v61.0/query/{locator}-{offset}`` reads the next page.
- ``GET /services/data/v61.0/sobjects/{topic}/deleted/?start={iso}&end={iso}``:
  the deletes of the window from the truth's delete log (Salesforce's "Get
  Deleted Records"): ``deletedRecords`` (``id``, ``deletedDate``),
  ``earliestDateAvailable`` (the newest delete purged from the log, or the
  start of the look-back if none was) and ``latestDateCovered`` (``end``, or
  now if earlier). A
  date that does not parse, a ``start`` not more than a minute before ``end``,
  a span over ``deleted_max_span_ms`` (30 days) or a ``start`` more than
  ``deleted_lookback_ms`` (15 days) before now is 400 ``INVALID_REPLICATION_DATE``.
  Dates are answered as Salesforce writes them (``...T09:49:18.000+0000``).

The truth holds every real change, those the stream withheld included
(``GAP_*``, ``GAP_OVERFLOW``): a record's ``SystemModstamp`` is the commit time
of its last change, so a query from an overflow's ``commitTimestamp`` lists
every record its transaction changed that is still live.

Every request needs ``Authorization: Bearer <token>`` (401 ``INVALID_SESSION_ID``).
Error bodies are lists of ``{"errorCode", "message"}`` as Salesforce sends them.
"""

from __future__ import annotations

import hmac
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from aiohttp import web

from amt_ingest.routing.events import TOPICS
from amt_ingest.simulator.world import RecordState, iso_ms, parse_iso_ms

__all__ = ["API_PREFIX", "TruthView", "make_app", "sf_datetime"]

API_PREFIX: Final = "/services/data/v61.0"
_QUERY: Final = re.compile(
    r"^\s*SELECT\s+Id\s+FROM\s+(?P<topic>\w+)"
    r"(?:\s+WHERE\s+SystemModstamp\s*(?P<op>>=|>)\s*(?P<since>\S+(?:\s\d\d:?\d\d)?))?\s*$",
    re.IGNORECASE,
)
_MAX_CURSORS: Final = 256


class TruthView(Protocol):
    """What the REST API reads (the :class:`~amt_ingest.simulator.world.World`)."""

    def record(self, topic: str, record_id: str) -> RecordState | None: ...

    def modified_since(self, topic: str, since_ms: int) -> list[RecordState]: ...

    def deleted_between(self, topic: str, start_ms: int, end_ms: int) -> list[tuple[str, int]]: ...

    def earliest_delete_available_ms(self, topic: str) -> int | None: ...

    @property
    def now_ms(self) -> int: ...


def _errors(status: int, code: str, message: str) -> web.Response:
    return web.json_response([{"errorCode": code, "message": message}], status=status)


def _url(topic: str, record_id: str) -> str:
    return f"{API_PREFIX}/sobjects/{topic}/{record_id}"


def sf_datetime(ms: int) -> str:
    """Epoch ms as Salesforce writes a dateTime: ``2026-11-25T09:49:18.123+0000``."""
    return iso_ms(ms)[:-1] + "+0000"


DAY_MS: Final = 24 * 3600 * 1000


def make_app(
    truth: TruthView,
    *,
    token: Callable[[], str | None],
    page_size: int = 200,
    deleted_lookback_ms: int = 15 * DAY_MS,
    deleted_max_span_ms: int = 30 * DAY_MS,
) -> web.Application:
    """The aiohttp application. ``token()`` gives the token to accept, per request."""

    @web.middleware
    async def authorize(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        expected = token()
        given = request.headers.get("Authorization", "")
        if not expected or not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            return _errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
        return await handler(request)

    cursors: OrderedDict[str, list[str]] = OrderedDict()
    counter = 0

    def page(topic: str, ids: list[str], locator: str | None, offset: int) -> web.Response:
        nonlocal counter
        chunk = ids[offset : offset + page_size]
        body: dict[str, Any] = {
            "totalSize": len(ids),
            "done": offset + page_size >= len(ids),
            "records": [
                {"attributes": {"type": topic, "url": _url(topic, rid)}, "Id": rid} for rid in chunk
            ],
        }
        if not body["done"]:
            if locator is None:
                counter += 1
                locator = f"01g5g{counter:013d}"
                cursors[locator] = [topic, *ids]
                while len(cursors) > _MAX_CURSORS:
                    cursors.popitem(last=False)
            body["nextRecordsUrl"] = f"{API_PREFIX}/query/{locator}-{offset + page_size}"
        return web.json_response(body)

    async def sobject(request: web.Request) -> web.Response:
        topic, record_id = request.match_info["topic"], request.match_info["id"]
        if topic not in TOPICS:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        state = truth.record(topic, record_id)
        if state is None or state.deleted:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        body = {
            "attributes": {"type": topic, "url": _url(topic, record_id)},
            "Id": record_id,
            "SystemModstamp": iso_ms(state.modstamp_ms),
            **state.fields,
        }
        return web.json_response(body)

    async def query(request: web.Request) -> web.Response:
        q = request.query.get("q", "")
        match = _QUERY.match(q)
        if match is None:
            return _errors(
                400,
                "MALFORMED_QUERY",
                "only SELECT Id FROM <type> [WHERE SystemModstamp >= <datetime>] is supported",
            )
        topic = match["topic"]
        if topic not in TOPICS:
            return _errors(400, "INVALID_TYPE", f"sObject type '{topic}' is not supported.")
        since_ms = 0
        if match["since"] is not None:
            # A '+' of a UTC offset arrives as a space when the query was form-encoded.
            parsed = parse_iso_ms(match["since"].strip("'\"").replace(" ", "+"))
            if parsed is None:
                return _errors(400, "MALFORMED_QUERY", f"invalid datetime {match['since']!r}")
            since_ms = parsed + 1 if match["op"] == ">" else parsed
        ids = [state.id for state in truth.modified_since(topic, since_ms)]
        return page(topic, ids, None, 0)

    def replication_error(message: str) -> web.Response:
        return _errors(400, "INVALID_REPLICATION_DATE", message)

    async def deleted(request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        if topic not in TOPICS:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        # A '+' of a UTC offset arrives as a space when the query was not encoded.
        start_text = request.query.get("start", "").replace(" ", "+")
        end_text = request.query.get("end", "").replace(" ", "+")
        start, end = parse_iso_ms(start_text), parse_iso_ms(end_text)
        if start is None or end is None:
            return replication_error("start and end must be ISO-8601 dateTimes")
        if end - start <= 60_000:
            return replication_error("start must precede end by more than one minute")
        if end - start > deleted_max_span_ms:
            return replication_error(
                f"the span may not exceed {deleted_max_span_ms // DAY_MS} days"
                if deleted_max_span_ms >= DAY_MS
                else f"the span may not exceed {deleted_max_span_ms} ms"
            )
        now = truth.now_ms
        if start < now - deleted_lookback_ms:
            return replication_error(
                f"start may not be more than {deleted_lookback_ms // 1000} s before now"
            )
        covered = min(end, now)
        found = truth.deleted_between(topic, start, covered)
        purged = truth.earliest_delete_available_ms(topic)
        return web.json_response(
            {
                "deletedRecords": [
                    {"id": record_id, "deletedDate": sf_datetime(ms)} for record_id, ms in found
                ],
                "earliestDateAvailable": sf_datetime(
                    purged if purged is not None else now - deleted_lookback_ms
                ),
                "latestDateCovered": sf_datetime(covered),
            }
        )

    async def query_more(request: web.Request) -> web.Response:
        locator, _, offset_text = request.match_info["cursor"].rpartition("-")
        stored = cursors.get(locator)
        if stored is None or not offset_text.isdigit():
            return _errors(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        topic, *ids = stored
        return page(topic, ids, locator, int(offset_text))

    app = web.Application(middlewares=[authorize])
    app.router.add_get(API_PREFIX + "/sobjects/{topic}/deleted/", deleted)
    app.router.add_get(API_PREFIX + "/sobjects/{topic}/deleted", deleted)
    app.router.add_get(API_PREFIX + "/sobjects/{topic}/{id}", sobject)
    app.router.add_get(API_PREFIX + "/query", query)
    app.router.add_get(API_PREFIX + "/query/{cursor}", query_more)
    return app
