"""One WebSocket subscriber among the replicas: the lease holder listens, the others stand by.

Every replica that runs WebSocket intake runs an :class:`Election`. It tries to
take the WebSocket lease (:class:`~amt_ingest.coordination.Leadership`) every
fifth of its TTL (``AMT_WS_LEASE_S``, 5 s by default). The holder runs the
listener, which resumes from the shared durable cursor, and renews the lease
every fifth of the TTL. Its hand-offs and cursor saves carry the lease, and
Redis refuses them once the lease is another's, so a leader that stalled past
its lease cannot hand off after its successor began.

A leader steps down by itself (closes its connection) when no renewal was
confirmed for 0.6 of the TTL, counted from when the last confirmed renewal was
sent: before Redis can let the lease lapse, so that two replicas never listen
at once. On SIGTERM it releases the lease and a standby takes over at its next
try. A killed leader's lease lapses within the TTL; a standby then takes it
within a fifth of the TTL more and subscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Final

import structlog

from ..coordination.leadership import Held, Leadership
from ..errors import CoordinationError, LeaseLostError
from ..policy import backoff
from ..telemetry import Telemetry
from .websocket import WebSocketListener

__all__ = ["Election", "ElectionState"]

log = structlog.get_logger("amt_ingest.sources.election")

#: Tries (standby) and renewals (leader) per lease TTL.
TRIES_PER_TTL: Final = 5
#: A leader whose last confirmed renewal was sent this share of the TTL ago steps down.
STEP_DOWN_AT: Final = 0.6

LEADER: Final = "leader"
STANDBY: Final = "standby"
STOPPED: Final = "stopped"


@dataclass
class ElectionState:
    """What health checks, the replica heartbeat and the metrics read."""

    role: str = STANDBY
    since: float = field(default_factory=time.monotonic)
    #: The lease token while leading (it grows with every new leader, cluster-wide).
    token: int | None = None
    #: Times this replica took the lease.
    terms: int = 0

    @property
    def leading(self) -> bool:
        return self.role == LEADER


class Election:
    def __init__(
        self,
        leadership: Leadership,
        listener: WebSocketListener,
        *,
        telemetry: Telemetry,
    ):
        self.leadership = leadership
        self.listener = listener
        self.telemetry = telemetry
        self.ttl_s = leadership.ttl_ms / 1000
        self.state = ElectionState()

    async def run(self, stop: asyncio.Event) -> None:
        """Stand by or lead until ``stop``; returns early only when the listener
        stopped for good (``listener.state.fatal``), after giving up the lease."""
        interval = self.ttl_s / TRIES_PER_TTL
        # While Redis fails, tries (and their log lines) back off up to one TTL.
        delays = backoff(interval, self.ttl_s)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                held = await self.leadership.acquire()
                wait = interval
                delays = backoff(interval, self.ttl_s)
            except CoordinationError as exc:
                wait = next(delays)
                log.warning("ws_lease_unavailable", error=str(exc), retry_in_s=round(wait, 2))
                held = None
            if held is not None:
                await self._lead(held, stop, confirmed=sent)
                if self.listener.state.fatal is not None:
                    self._become(STOPPED)
                    return
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)

    async def _lead(self, held: Held, stop: asyncio.Event, *, confirmed: float) -> None:
        """Listen while the lease is this replica's; give it up when done.
        ``confirmed``: when the request that took the lease was sent."""
        self._become(LEADER, held)
        log.info("ws_leader", replica=held.replica, term=held.token)
        session = asyncio.Event()
        keeper = asyncio.create_task(self._keep(held, session, confirmed), name="ws-lease")
        relay = asyncio.create_task(_relay(stop, session), name="ws-stop")
        self.listener.lease = held.value
        try:
            await self.listener.run(session)
        except LeaseLostError as exc:
            log.warning("ws_fenced", error=str(exc), term=held.token)
        finally:
            session.set()
            for task in (keeper, relay):
                task.cancel()
            await asyncio.gather(keeper, relay, return_exceptions=True)
            self.listener.lease = None
            released = False
            with contextlib.suppress(CoordinationError):
                # Only while it is still this holder's (the token is checked).
                released = await asyncio.shield(self.leadership.release(held))
            self._become(STANDBY)
            change = "released" if released else "lost"
            self.telemetry.metrics.ws_handovers.add(1, {"change": change})
            log.info("ws_standby", replica=held.replica, term=held.token, lease=change)

    async def _keep(self, held: Held, session: asyncio.Event, confirmed: float) -> None:
        """Renew the lease every fifth of its TTL; end the session when it is lost,
        or when no renewal sent in the last 0.6 TTL was confirmed (Redis lets it
        lapse a full TTL after the last one it took)."""
        interval = self.ttl_s / TRIES_PER_TTL
        step_down = self.ttl_s * STEP_DOWN_AT
        while True:
            await asyncio.sleep(max(0.0, min(interval, confirmed + step_down - time.monotonic())))
            sent = time.monotonic()
            try:
                async with asyncio.timeout(max(0.01, confirmed + step_down - sent)):
                    still = await self.leadership.renew(held)
            except (CoordinationError, TimeoutError) as exc:
                if time.monotonic() - confirmed >= step_down:
                    log.warning("ws_lease_unconfirmed", error=str(exc) or "timed out")
                    session.set()
                    return
                continue
            if not still:
                log.warning("ws_lease_lost", term=held.token)
                session.set()
                return
            confirmed = sent

    def _become(self, role: str, held: Held | None = None) -> None:
        self.state.role = role
        self.state.since = time.monotonic()
        self.state.token = held.token if held is not None else None
        if held is not None:
            self.state.terms += 1
            self.telemetry.metrics.ws_handovers.add(1, {"change": "acquired"})


async def _relay(stop: asyncio.Event, session: asyncio.Event) -> None:
    await stop.wait()
    session.set()
