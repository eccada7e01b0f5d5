"""The Salesforce re-read API (PROTOCOL.md section 4), for records whose change content
is unknown (gap events, lost windows).

:class:`SalesforceClient` reads one record (a snapshot, or ``None`` when Salesforce
answers 404: deleted), pages through the ids of records modified since an
instant, and lists the deletes of a window (the deleted-records resource, split
into calls Salesforce accepts). Transient failures (timeouts, connection errors,
429, 5xx) are retried here with backoff; a 401 re-reads the token once. What
still fails raises :class:`SalesforceError`, which a job treats like a database
failure: it retries on its own schedule.

Pure parts: :func:`snapshot_changes` turns a snapshot into positioned changes,
:func:`tombstone_position` places a delete, :func:`deleted_windows` plans the
calls of a window.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from ..config import Settings
from ..errors import SalesforceError
from ..policy import backoff
from ..routing.events import DELETED_FIELD, FULL_FIELD
from ..routing.positions import position_key

__all__ = [
    "API_VERSION",
    "MIN_DELETED_SPAN_MS",
    "DeletedRecords",
    "SalesforceClient",
    "SalesforceError",
    "Snapshot",
    "deleted_windows",
    "snapshot_changes",
    "snapshot_position",
    "tombstone_position",
]

API_VERSION: Final = "v61.0"
_NOT_FIELDS: Final = frozenset({"attributes", "Id", "SystemModstamp"})
# A snapshot wins over every change at or before its SystemModstamp: the largest
# position within that millisecond.
_MAX_COMMIT_NUMBER: Final = 10**20 - 1
_MAX_SEQUENCE: Final = 10**10 - 1


#: The deleted-records resource wants ``start`` more than a minute before ``end``.
MIN_DELETED_SPAN_MS: Final = 61_000
#: How far inside Salesforce's look-back limit a window is started (at most; a tenth
#: of a shorter look-back): a service clock behind Salesforce's by less than this
#: still asks for a start it accepts.
_LOOKBACK_MARGIN_MS: Final = 3600 * 1000


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A record as Salesforce returned it: every field, and when it last changed."""

    topic: str
    record_id: str
    modstamp_ms: int
    fields: dict[str, Any]


def parse_modstamp(value: str) -> int:
    """``SystemModstamp`` (ISO-8601, e.g. ``2026-11-25T09:49:18.000Z`` or ``+0000``) in ms."""
    text = value.replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":
        text = text[:-2] + ":" + text[-2:]
    stamp = dt.datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return int(stamp.timestamp() * 1000)


def snapshot_position(modstamp_ms: int) -> str:
    return position_key(modstamp_ms, _MAX_COMMIT_NUMBER, _MAX_SEQUENCE)


def tombstone_position(deleted_ms: int) -> str:
    """Where a delete of the deleted-records resource sits: like a snapshot, at the end
    of its ``deletedDate``, so it wins over every change at or before that instant
    (the record's last change was its delete) and loses to any later one (an
    undelete)."""
    return snapshot_position(deleted_ms)


@dataclass(frozen=True, slots=True)
class DeletedRecords:
    """The deletes of a window: ``records`` maps each id to its newest ``deletedDate``
    (ms). ``known_from_ms`` is None when Salesforce knows every delete of the window;
    otherwise deletes before that instant may be missing (its delete log was purged
    since, ``earliestDateAvailable``, or the window starts before its look-back)."""

    records: dict[str, int]
    known_from_ms: int | None


def deleted_windows(start_ms: int, end_ms: int, *, max_span_ms: int) -> list[tuple[int, int]]:
    """The calls that cover ``[start_ms, end_ms]``: consecutive, each at most
    ``max_span_ms`` long and more than a minute (a short one starts earlier: a
    delete listed twice is harmless)."""
    if max_span_ms < MIN_DELETED_SPAN_MS:
        raise ValueError("max_span_ms must be at least MIN_DELETED_SPAN_MS")
    start_ms = min(start_ms, end_ms - MIN_DELETED_SPAN_MS)
    windows: list[tuple[int, int]] = []
    while start_ms < end_ms:
        stop = min(start_ms + max_span_ms, end_ms)
        windows.append((min(start_ms, stop - MIN_DELETED_SPAN_MS), stop))
        start_ms = stop
    return windows


def _sf_datetime(ms: int, *, ceil: bool = False) -> str:
    """Epoch ms as a query parameter, to the second (rounded up with ``ceil``)."""
    seconds = -(-ms // 1000) if ceil else ms // 1000
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def snapshot_changes(snapshot: Snapshot) -> dict[str, tuple[str, Any]]:
    """The snapshot as positioned changes: every field, the record not deleted, and a
    full image (a field the store holds from before it and the snapshot lacks is null)."""
    position = snapshot_position(snapshot.modstamp_ms)
    changes: dict[str, tuple[str, Any]] = {
        name: (position, value) for name, value in snapshot.fields.items()
    }
    changes[DELETED_FIELD] = (position, False)
    changes[FULL_FIELD] = (position, True)
    return changes


class SalesforceClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: Callable[[], str],
        timeout: float = 10.0,
        attempts: int = 4,
        delays: Callable[[], Iterator[float]] | None = None,
        deleted_lookback_s: float = 15 * 24 * 3600.0,
        deleted_max_span_s: float = 30 * 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.attempts = attempts
        self.delays = delays or (lambda: backoff(0.5, 8.0))
        self.deleted_lookback_ms = int(deleted_lookback_s * 1000)
        self.deleted_max_span_ms = int(deleted_max_span_s * 1000)
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SalesforceClient:
        """The client the settings describe (``AMT_SALESFORCE_*``, the Passport token)."""
        return cls(
            settings.salesforce_base_url,
            token=settings.read_token,
            deleted_lookback_s=settings.salesforce_deleted_lookback_s,
            deleted_max_span_s=settings.salesforce_deleted_max_span_s,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get_record(self, topic: str, record_id: str) -> Snapshot | None:
        """The record's snapshot, or ``None`` if Salesforce says it does not exist (404)."""
        url = f"{self.base_url}/services/data/{API_VERSION}/sobjects/{topic}/{quote(record_id)}"
        body = await self._get(url, allow_404=True)
        if body is None:
            return None
        try:
            modstamp = parse_modstamp(body["SystemModstamp"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SalesforceError(f"{topic} {record_id}: no usable SystemModstamp") from exc
        fields = {k: v for k, v in body.items() if k not in _NOT_FIELDS}
        return Snapshot(topic=topic, record_id=record_id, modstamp_ms=modstamp, fields=fields)

    async def modified_since(self, topic: str, since: dt.datetime) -> AsyncIterator[str]:
        """Ids of the records of ``topic`` whose SystemModstamp is at or after ``since``."""
        iso = since.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
            f"{since.microsecond // 1000:03d}Z"
        )
        query = f"SELECT Id FROM {topic} WHERE SystemModstamp >= {iso}"
        url: str | None = f"{self.base_url}/services/data/{API_VERSION}/query?q={quote(query)}"
        while url is not None:
            body = await self._get(url, allow_404=False)
            for record in body.get("records", []):
                yield str(record["Id"])
            next_url = body.get("nextRecordsUrl")
            url = None if body.get("done", True) or not next_url else self.base_url + next_url

    async def deleted_records(self, topic: str, start_ms: int, end_ms: int) -> DeletedRecords:
        """The deletes of ``topic`` from ``start_ms`` to ``end_ms``, in as many calls as
        Salesforce's limits take (look-back, span, ``latestDateCovered``).

        A window that starts before the look-back (with a margin for clock skew),
        an ``earliestDateAvailable`` after ``start_ms``, or a window Salesforce
        refuses as ``INVALID_REPLICATION_DATE`` is reported in ``known_from_ms``,
        never retried. Raises :class:`SalesforceError` for other failures.
        """
        margin = min(_LOOKBACK_MARGIN_MS, self.deleted_lookback_ms // 10)
        oldest = int(self._clock() * 1000) - self.deleted_lookback_ms + margin
        known_from: int | None = None
        start = start_ms
        if start < oldest:
            known_from, start = oldest, oldest
        found: dict[str, int] = {}
        if end_ms <= start:
            return DeletedRecords(found, end_ms)
        # Each call's dates go out to the second, its start rounded down and its end up.
        span = self.deleted_max_span_ms - 2000
        for first, stop in deleted_windows(start, end_ms, max_span_ms=span):
            begin = first
            while True:
                try:
                    body = await self._deleted_page(topic, begin, stop)
                except SalesforceError as exc:
                    if exc.code != "INVALID_REPLICATION_DATE":
                        raise
                    return DeletedRecords(found, end_ms)
                earliest, covered = _read_deleted(body, found, stop)
                if earliest is not None and earliest > start_ms:
                    known_from = max(known_from or 0, earliest)
                following = min(covered, stop - MIN_DELETED_SPAN_MS)
                if covered >= stop or following <= begin:
                    break
                begin = following
        return DeletedRecords(found, known_from)

    async def _deleted_page(self, topic: str, start_ms: int, end_ms: int) -> dict[str, Any]:
        url = (
            f"{self.base_url}/services/data/{API_VERSION}/sobjects/{topic}/deleted/"
            f"?start={quote(_sf_datetime(start_ms))}&end={quote(_sf_datetime(end_ms, ceil=True))}"
        )
        body = await self._get(url, allow_404=False)
        if not isinstance(body, dict):
            raise SalesforceError(f"GET {url}: the answer is not an object")
        return body

    async def _get(self, url: str, *, allow_404: bool) -> Any:
        """The JSON body of a GET, or None for a 404 when ``allow_404``. Transient
        failures are retried with backoff, a 401 once with the token read again;
        raises :class:`SalesforceError`."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        delays = self.delays()
        refreshed = False
        last = ""
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._session.get(
                    URL(url, encoded=True), headers={"Authorization": f"Bearer {self._token()}"}
                ) as reply:
                    status, text = reply.status, await reply.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if status == 200:
                    return _json(url, text)
                if status == 404 and allow_404:
                    return None
                if status == 401 and not refreshed:
                    refreshed = True  # the token provider re-reads a rotating secret
                    continue
                last = f"HTTP {status}: {text[:200]}"
                if status != 429 and status < 500:
                    raise SalesforceError(
                        f"GET {url}: {last}", status=status, code=_error_code(text)
                    )
            if attempt < self.attempts:
                await asyncio.sleep(next(delays))
        raise SalesforceError(f"GET {url}: {last} (after {self.attempts} attempts)")


def _json(url: str, text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SalesforceError(f"GET {url}: the answer is not JSON") from exc


def _error_code(text: str) -> str | None:
    """The first ``errorCode`` of a Salesforce error body (a list of errors), if any."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, list) and body and isinstance(body[0], dict):
        code = body[0].get("errorCode")
        return str(code) if code is not None else None
    return None


def _read_deleted(body: dict[str, Any], found: dict[str, int], stop: int) -> tuple[int | None, int]:
    """Add a deleted-records answer's ids to ``found`` (newest delete per id);
    returns its ``earliestDateAvailable`` and ``latestDateCovered`` (``stop`` if absent)."""
    try:
        for entry in body.get("deletedRecords") or []:
            record_id, deleted_ms = str(entry["id"]), parse_modstamp(entry["deletedDate"])
            found[record_id] = max(deleted_ms, found.get(record_id, 0))
        earliest = body.get("earliestDateAvailable")
        covered = body.get("latestDateCovered")
        return (
            parse_modstamp(earliest) if earliest else None,
            parse_modstamp(covered) if covered else stop,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SalesforceError(f"a deleted-records answer has an unreadable entry: {exc}") from exc
