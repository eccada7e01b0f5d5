"""The org allow-list: ``AMT_ALLOWED_ORG_IDS`` together with the ``allowed_org`` table.

Operators add and remove orgs with ``python -m amt_ingest orgs add|remove`` while the
service runs; :class:`OrgFilter` re-reads the table when its copy is older than
``AMT_ORGS_CACHE_S``, so a change takes effect within that time in every process. If
a re-read fails, the last list read stays in force (and a warning is logged) until a
later re-read succeeds: a database outage neither opens the filter nor stops intake.
Whether one event's org is kept is :func:`amt_ingest.policy.org_allowed`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import structlog

from ..errors import StoreError
from ..policy import org_prefix

__all__ = ["OrgFilter", "OrgSource"]

log = structlog.get_logger("amt_ingest.orgs")


class OrgSource(Protocol):
    """Where the table's orgs come from (:class:`amt_ingest.store.AllowedOrgs`)."""

    async def prefixes(self) -> frozenset[str]:
        """The 15-character prefixes of the allowed orgs; raises :class:`StoreError`."""
        ...


class OrgFilter:
    """The effective allow-list: the environment's orgs and the table's, cached ``ttl_s``.

    Without a ``source`` it is the environment's list alone and never reads anything.
    With one, call :meth:`load` once before routing (it raises if the table cannot be
    read); after that :meth:`allowed` never raises.
    """

    def __init__(
        self,
        env_orgs: Iterable[str] = (),
        *,
        source: OrgSource | None = None,
        ttl_s: float = 30.0,
        read_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.env = frozenset(org_prefix(org) for org in env_orgs)
        self.source = source
        self.ttl_s = ttl_s
        self.read_timeout_s = read_timeout_s
        self._clock = clock
        self._table: frozenset[str] | None = None
        self._effective = self.env
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    async def allowed(self) -> frozenset[str]:
        """The 15-character prefixes of the allowed orgs; empty means every org is allowed.

        Re-reads the table when the last read is older than ``ttl_s``. A failed re-read
        keeps the last list for another ``ttl_s``; only when the table was never read
        does the failure propagate (:class:`StoreError`).
        """
        if self.source is None or not self._stale():
            return self._effective
        async with self._lock:
            if self._stale():  # else another caller refreshed it while this one waited
                try:
                    await self.load()
                except StoreError as exc:
                    if self._table is None:
                        raise
                    self._read_at = self._clock()
                    log.warning(
                        "org_list_read_failed",
                        error=str(exc),
                        kept_orgs=len(self._effective),
                        retry_in_s=self.ttl_s,
                    )
        return self._effective

    async def load(self) -> frozenset[str]:
        """Read the table now and return the effective list. Raises :class:`StoreError`
        (the list in force is then unchanged)."""
        if self.source is None:
            return self._effective
        try:
            async with asyncio.timeout(self.read_timeout_s):
                table = await self.source.prefixes()
        except TimeoutError as exc:
            raise StoreError(
                f"reading the allowed orgs took longer than {self.read_timeout_s:g} s"
            ) from exc
        effective = self.env | table
        if self._table is not None and effective != self._effective:
            log.info(
                "org_list_changed",
                added=sorted(effective - self._effective),
                removed=sorted(self._effective - effective),
            )
        self._table = table
        self._effective = effective
        self._read_at = self._clock()
        return effective

    def _stale(self) -> bool:
        return self._table is None or self._clock() - self._read_at >= self.ttl_s
