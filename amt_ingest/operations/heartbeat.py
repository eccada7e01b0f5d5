"""This replica's heartbeat: its roles, its WebSocket role and state, for ``status``.

Every ``HEARTBEAT_S`` the replica publishes its entry in ``amt:replicas``
(:class:`~amt_ingest.coordination.Replicas`); it removes it when it stops. What
the entry says is :func:`replica_entry` (pure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Sequence
from typing import Any, Final

import structlog

from .. import __version__
from ..coordination import Coordinator
from ..errors import CoordinationError
from ..sources.election import ElectionState
from ..sources.websocket import ListenerState

__all__ = ["HEARTBEAT_S", "Heartbeat", "replica_entry"]

log = structlog.get_logger("amt_ingest.operations")

HEARTBEAT_S: Final = 2.0


def replica_entry(
    *,
    name: str,
    roles: Sequence[str],
    started_ms: int,
    election: ElectionState | None,
    listener: ListenerState | None,
    leases_held: int,
    now: float,
) -> dict[str, Any]:
    """A replica's entry: who it is, what it runs, where its WebSocket stands.

    ``websocket`` is ``off`` (no WebSocket intake), ``standby``, ``leader`` or
    ``stopped`` (the listener gave up: see ``fatal``); ``connected`` and
    ``state_for_s`` describe the leader's connection.
    """
    entry: dict[str, Any] = {
        "name": name,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "version": __version__,
        "roles": list(roles),
        "started_ms": started_ms,
        "websocket": election.role if election is not None else "off",
        "job_leases": leases_held,
    }
    if election is not None:
        entry["ws_term"] = election.token
        entry["ws_role_for_s"] = round(now - election.since, 1)
        entry["ws_terms"] = election.terms
    if listener is not None and election is not None and election.leading:
        since = listener.connected_since if listener.connected else listener.disconnected_since
        entry["connected"] = listener.connected
        entry["state_for_s"] = round(now - since, 1) if since is not None else None
        entry["reconnects"] = listener.reconnects
    if listener is not None and listener.fatal:
        entry["fatal"] = listener.fatal
    return entry


class Heartbeat:
    def __init__(
        self,
        coordinator: Coordinator,
        *,
        instance: str,
        name: str,
        roles: Sequence[str],
        election: ElectionState | None,
        listener: ListenerState | None,
        interval: float = HEARTBEAT_S,
    ):
        self.coordinator = coordinator
        self.instance = instance
        self.name = name
        self.roles = list(roles)
        self.election = election
        self.listener = listener
        self.interval = interval
        self.started_ms = int(time.time() * 1000)

    def entry(self) -> dict[str, Any]:
        return replica_entry(
            name=self.name,
            roles=self.roles,
            started_ms=self.started_ms,
            election=self.election,
            listener=self.listener,
            leases_held=self.coordinator.leases.held,
            now=time.monotonic(),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Beat until ``stop``; cancelled at the end of the shutdown."""
        while not stop.is_set():
            try:
                await self.coordinator.replicas.beat(self.instance, self.entry())
            except CoordinationError as exc:
                log.warning("heartbeat_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    async def leave(self) -> None:
        """Remove this replica's entry (a clean stop)."""
        with contextlib.suppress(CoordinationError):
            await self.coordinator.replicas.leave(self.instance)
