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
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from aiohttp import web

from amt_ingest.routing.events import TOPICS
from amt_ingest.simulator.truth import RecordState, iso_ms, parse_iso_ms

__all__ = ["API_PREFIX", "SalesforceApi", "TruthView", "sf_datetime"]

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


class SalesforceApi:
    """The handlers, over a truth. ``token()`` gives the token to accept, per request;
    :attr:`requests` counts the requests each handler answered (401s included)."""

    def __init__(
        self,
        truth: TruthView,
        *,
        token: Callable[[], str | None],
        page_size: int = 200,
        deleted_lookback_ms: int = 15 * DAY_MS,
        deleted_max_span_ms: int = 30 * DAY_MS,
    ) -> None:
        self.truth = truth
        self.token = token
        self.page_size = page_size
        self.deleted_lookback_ms = deleted_lookback_ms
        self.deleted_max_span_ms = deleted_max_span_ms
        self.requests: Counter[str] = Counter()
        self._cursors: OrderedDict[str, list[str]] = OrderedDict()
        self._locators = 0

    @web.middleware
    async def authorize(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests[getattr(handler, "__name__", "other")] += 1
        expected = self.token()
        given = request.headers.get("Authorization", "")
        if not expected or not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            return _errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
        return await handler(request)

    def _page(self, topic: str, ids: list[str], locator: str | None, offset: int) -> web.Response:
        size = self.page_size
        body: dict[str, Any] = {
            "totalSize": len(ids),
            "done": offset + size >= len(ids),
            "records": [
                {"attributes": {"type": topic, "url": _url(topic, rid)}, "Id": rid}
                for rid in ids[offset : offset + size]
            ],
        }
        if not body["done"]:
            if locator is None:
                self._locators += 1
                locator = f"01g5g{self._locators:013d}"
                self._cursors[locator] = [topic, *ids]
                while len(self._cursors) > _MAX_CURSORS:
                    self._cursors.popitem(last=False)
            body["nextRecordsUrl"] = f"{API_PREFIX}/query/{locator}-{offset + size}"
        return web.json_response(body)

    async def record(self, request: web.Request) -> web.Response:
        topic, record_id = request.match_info["topic"], request.match_info["id"]
        if topic not in TOPICS:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        state = self.truth.record(topic, record_id)
        if state is None or state.deleted:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        body = {
            "attributes": {"type": topic, "url": _url(topic, record_id)},
            "Id": record_id,
            "SystemModstamp": iso_ms(state.modstamp_ms),
            **state.fields,
        }
        return web.json_response(body)

    async def query(self, request: web.Request) -> web.Response:
        match = _QUERY.match(request.query.get("q", ""))
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
        ids = [state.id for state in self.truth.modified_since(topic, since_ms)]
        return self._page(topic, ids, None, 0)

    async def query_more(self, request: web.Request) -> web.Response:
        locator, _, offset_text = request.match_info["cursor"].rpartition("-")
        stored = self._cursors.get(locator)
        if stored is None or not offset_text.isdigit():
            return _errors(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        topic, *ids = stored
        return self._page(topic, ids, locator, int(offset_text))

    async def deleted(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        if topic not in TOPICS:
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        now = self.truth.now_ms
        window = self._window(request.query.get("start", ""), request.query.get("end", ""), now)
        if isinstance(window, str):
            return _errors(400, "INVALID_REPLICATION_DATE", window)
        start, end = window
        covered = min(end, now)
        found = self.truth.deleted_between(topic, start, covered)
        purged = self.truth.earliest_delete_available_ms(topic)
        earliest = purged if purged is not None else now - self.deleted_lookback_ms
        return web.json_response(
            {
                "deletedRecords": [
                    {"id": record_id, "deletedDate": sf_datetime(ms)} for record_id, ms in found
                ],
                "earliestDateAvailable": sf_datetime(earliest),
                "latestDateCovered": sf_datetime(covered),
            }
        )

    def _window(self, start_text: str, end_text: str, now: int) -> tuple[int, int] | str:
        """The window ``(start, end)`` in ms, or why Salesforce would refuse it
        (``INVALID_REPLICATION_DATE``)."""
        # A '+' of a UTC offset arrives as a space when the query was not encoded.
        start = parse_iso_ms(start_text.replace(" ", "+"))
        end = parse_iso_ms(end_text.replace(" ", "+"))
        if start is None or end is None:
            return "start and end must be ISO-8601 dateTimes"
        if end - start <= 60_000:
            return "start must precede end by more than one minute"
        span = self.deleted_max_span_ms
        if end - start > span:
            days = f"{span // DAY_MS} days" if span >= DAY_MS else f"{span} ms"
            return f"the span may not exceed {days}"
        if start < now - self.deleted_lookback_ms:
            return f"start may not be more than {self.deleted_lookback_ms // 1000} s before now"
        return start, end

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.authorize])
        app.router.add_get(API_PREFIX + "/sobjects/{topic}/deleted/", self.deleted)
        app.router.add_get(API_PREFIX + "/sobjects/{topic}/deleted", self.deleted)
        app.router.add_get(API_PREFIX + "/sobjects/{topic}/{id}", self.record)
        app.router.add_get(API_PREFIX + "/query", self.query)
        app.router.add_get(API_PREFIX + "/query/{cursor}", self.query_more)
        return app
