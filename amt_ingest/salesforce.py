"""The Salesforce re-read API (PROTOCOL.md section 4), for records whose change content
is unknown (gap events).

:class:`SalesforceClient` reads one record (a snapshot, or ``None`` when Salesforce
answers 404: deleted) and pages through the ids of records modified since an
instant. Transient failures (timeouts, connection errors, 429, 5xx) are retried
here with backoff; a 401 re-reads the token once. What still fails raises
:class:`SalesforceError`, which a job treats like a database failure: it retries
on its own schedule.

:func:`snapshot_changes` (pure) turns a snapshot into positioned changes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import httpx

from .errors import IngestError
from .events import DELETED_FIELD, position_key
from .policy import backoff

__all__ = [
    "API_VERSION",
    "SalesforceClient",
    "SalesforceError",
    "Snapshot",
    "snapshot_changes",
    "snapshot_position",
]

API_VERSION: Final = "v61.0"
_NOT_FIELDS: Final = frozenset({"attributes", "Id", "SystemModstamp"})
# A snapshot wins over every change at or before its SystemModstamp: the largest
# position within that millisecond.
_MAX_COMMIT_NUMBER: Final = 10**20 - 1
_MAX_SEQUENCE: Final = 10**10 - 1


class SalesforceError(IngestError):
    """A re-read failed after its retries."""


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


def snapshot_changes(snapshot: Snapshot) -> dict[str, tuple[str, Any]]:
    """The snapshot as positioned changes: every field, and the record not deleted."""
    position = snapshot_position(snapshot.modstamp_ms)
    changes: dict[str, tuple[str, Any]] = {
        name: (position, value) for name, value in snapshot.fields.items()
    }
    changes[DELETED_FIELD] = (position, False)
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
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.attempts = attempts
        self.delays = delays or (lambda: backoff(0.5, 8.0))
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get_record(self, topic: str, record_id: str) -> Snapshot | None:
        """The record's snapshot, or ``None`` if Salesforce says it does not exist (404)."""
        url = f"{self.base_url}/services/data/{API_VERSION}/sobjects/{topic}/{quote(record_id)}"
        reply = await self._get(url, allow_404=True)
        if reply is None:
            return None
        body = reply.json()
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
            reply = await self._get(url, allow_404=False)
            assert reply is not None
            body = reply.json()
            for record in body.get("records", []):
                yield str(record["Id"])
            next_url = body.get("nextRecordsUrl")
            url = None if body.get("done", True) or not next_url else self.base_url + next_url

    async def _get(self, url: str, *, allow_404: bool) -> httpx.Response | None:
        delays = self.delays()
        refreshed = False
        last = ""
        for attempt in range(1, self.attempts + 1):
            try:
                reply = await self._client.get(
                    url, headers={"Authorization": f"Bearer {self._token()}"}
                )
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if reply.status_code == 200:
                    return reply
                if reply.status_code == 404 and allow_404:
                    return None
                if reply.status_code == 401 and not refreshed:
                    refreshed = True  # the token provider re-reads a rotating secret
                    continue
                last = f"HTTP {reply.status_code}: {reply.text[:200]}"
                if reply.status_code != 429 and reply.status_code < 500:
                    raise SalesforceError(f"GET {url}: {last}")
            if attempt < self.attempts:
                await asyncio.sleep(next(delays))
        raise SalesforceError(f"GET {url}: {last} (after {self.attempts} attempts)")
