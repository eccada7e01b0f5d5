"""The Passport WebSocket listener (Passport Stream Protocol v1, PROTOCOL.md section 2).

One connection at a time. The reader task only reads frames, parses them and
queues ``events`` frames; the hand-off task takes every frame queued so far,
routes their events, dead-letters their bad ones, then saves the cursor (the
last replay id of the last frame) and grants as many credits as the frames
used. Up to ``HAND_OFF_DEPTH`` such hand-offs may be under way at once (one in
Redis while the next is prepared), but one settles (cursor, credits) only
after the one before it did, and not at all if that one failed. So the cursor
never passes an event that is not in Redis, and Passport
never has more events in flight than the credits granted: when Redis or the
router slow down, credits stop and so does the stream.

Reconnects use capped exponential backoff with jitter; the backoff resets only
after a connection stayed up for ``stable_after`` seconds, so a server that
accepts and closes at once cannot cause a hot loop. A frame over
``ws_max_frame_bytes`` (close 1009) halves the credits asked for on the next
subscribe, so Passport sends smaller frames; one event over the limit stops the
listener with ``state.fatal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import structlog
from opentelemetry.trace import SpanKind
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import CloseCode

from ..config import Settings
from ..coordination import Coordinator
from ..errors import ConfigError, CoordinationError, LeaseLostError
from ..policy import backoff
from ..routing.events import (
    TOPICS,
    ErrorFrame,
    Event,
    EventsFrame,
    HeartbeatFrame,
    Rejected,
    SubscribedFrame,
    parse_ws_frame,
)
from ..routing.handoff import Turn
from ..routing.positions import lost_window_position
from ..routing.router import Router
from .passport import (
    FROM_EARLIEST,
    REFRESH_TOKEN,
    REPORT,
    RESUME,
    Ended,
    Next,
    after,
    close_action,
    error_action,
)

__all__ = ["ListenerState", "WebSocketListener"]

log = structlog.get_logger("amt_ingest.sources.websocket")

CURSOR: Final = "ws"
#: Hand-offs that may be under way at once (each on its own Redis connection).
#: Redis runs one's ingest while the event loop prepares the next and finishes
#: the one before; the ingest scripts still run in stream order, and cursors and
#: credits follow it, each hand-off's only once it and every one before it are
#: in Redis.
HAND_OFF_DEPTH: Final = 3


@dataclass
class ListenerState:
    """What health checks and status views read about the listener."""

    connected: bool = False
    connected_since: float | None = None
    disconnected_since: float | None = field(default_factory=time.monotonic)
    reconnects: int = 0
    last_frame_at: float | None = None
    fatal: str | None = None
    events_handed_off: int = 0
    #: Subscribed at least once since start (readiness grace applies only then).
    subscribed_once: bool = False


def _records(items: list[Event | Rejected]) -> int:
    """How many records the events name: at most that many records newly pending."""
    return sum(len(item.record_ids) or 1 for item in items if isinstance(item, Event))


class _Reconnect(Exception):
    def __init__(self, action: str, reason: str):
        super().__init__(reason)
        self.action = action


class WebSocketListener:
    def __init__(
        self,
        settings: Settings,
        *,
        router: Router,
        coordinator: Coordinator,
        delays: Callable[[], Iterator[float]] | None = None,
        stable_after: float = 10.0,
    ):
        self.settings = settings
        self.router = router
        self.coordinator = coordinator
        self.delays = delays or (
            lambda: backoff(settings.ws_backoff_initial, settings.ws_backoff_max)
        )
        self.stable_after = stable_after
        self.state = ListenerState()
        self._from_earliest = False
        # Credits asked for on subscribe; halved when a frame exceeded the size limit.
        self._credits = settings.ws_credits
        #: The WebSocket lease this replica listens under (``"<replica> <token>"``),
        #: set by :class:`~amt_ingest.sources.election.Election`: hand-offs and
        #: cursor saves carry it, and Redis refuses them once it is another's.
        self.lease: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop`` is set. Returns early only on an unrecoverable auth error
        or an event bigger than the frame limit (``state.fatal`` says which); raises
        :class:`~amt_ingest.errors.LeaseLostError` when Redis refused a hand-off
        because the lease is another replica's (the connection is closed)."""
        delays = self.delays()
        tried: str | None = None  # a refused token, tried once more after a re-read
        while not stop.is_set():
            token = await self._token(stop)
            if token is None:
                if self.state.fatal is not None:
                    return
                continue
            started = time.monotonic()
            ended = await self._attempt(token, stop)
            if stop.is_set():
                return
            step = after(
                ended,
                token=token,
                tried_token=tried,
                token_file=self.settings.passport_token_file is not None,
                credits=self._credits,
                frame_limit=self.settings.ws_max_frame_bytes,
            )
            if step.step == "stop":
                self._fatal(step.fatal or ended.reason)
                return
            if step.step == "wait_for_token":
                log.error(
                    "ws_auth_failed",
                    status=ended.http_status,
                    hint="waiting for a new token in AMT_PASSPORT_TOKEN_FILE",
                )
                await self._wait_for_new_token(token, stop)
                tried = None
                continue
            tried, self._credits = step.tried_token, step.credits
            if time.monotonic() - started >= self.stable_after:
                delays = self.delays()
            await self._before_reconnect(step, token, delays, stop)

    async def _token(self, stop: asyncio.Event) -> str | None:
        """The token to connect with; None when there is none (``state.fatal`` is set
        for a fixed token; a token file is waited for: a rotating secret may be
        missing or empty for a moment)."""
        try:
            return self.settings.read_token()
        except ConfigError as exc:
            if self.settings.passport_token_file is None:
                self._fatal(str(exc))
                return None
            log.error(
                "ws_token_unreadable",
                error=str(exc),
                hint="waiting for AMT_PASSPORT_TOKEN_FILE to hold a token",
            )
            await self._wait_for_new_token("", stop)
            return None

    async def _attempt(self, token: str, stop: asyncio.Event) -> Ended:
        """One connection, subscribed and read until it ends; how it ended."""
        try:
            await self._connect_and_listen(token, stop)
            return Ended("connection ended")
        except InvalidStatus as exc:
            status = exc.response.status_code
            return Ended(f"HTTP {status}", http_status=status)
        except _Reconnect as exc:
            return Ended(str(exc), action=exc.action)
        except LeaseLostError:
            raise  # another replica leads: no reconnect
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            return Ended(
                f"closed {code}: {exc.rcvd.reason if exc.rcvd else ''}",
                action=close_action(code),
                # Passport would send the same frame again after the same cursor.
                frame_too_big=exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG,
            )
        except (OSError, TimeoutError, InvalidHandshake, CoordinationError) as exc:
            return Ended(f"{type(exc).__name__}: {exc}")
        finally:
            self._disconnected()

    async def _before_reconnect(
        self, step: Next, token: str, delays: Iterator[float], stop: asyncio.Event
    ) -> None:
        """Resync a lost window, log, and wait out the backoff (none for a fresh token)."""
        action, reason = step.action, step.reason
        if action == FROM_EARLIEST:
            self._from_earliest = True
            log.warning(
                "ws_resume_point_expired",
                reason=reason,
                hint="resubscribing from earliest and resyncing every type",
            )
            await self._resync_expired_window()
        if action == REFRESH_TOKEN:
            log.info("ws_token_refresh", reason=reason)
        if action == REFRESH_TOKEN and self._token_changed(token):
            delay = 0.0
        else:
            # Also when the token did not change: the same token at once, again
            # and again, is the retry storm PROTOCOL.md section 2 forbids.
            delay = next(delays)
            if action == REPORT:
                log.error("ws_protocol_error", reason=reason)
                delay = self.settings.ws_backoff_max
        self.state.reconnects += 1
        self.router.telemetry.metrics.ws_reconnects.add(1, {"action": action})
        log.warning("ws_reconnecting", reason=reason, action=action, delay_s=round(delay, 2))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _resync_expired_window(self) -> None:
        """Events between the last hand-off and what Passport still holds may never
        come: resync every type from a little before the newest event handed off
        (``AMT_RESYNC_OVERLAP_S``: an event of the lost window may have committed
        before it and reached the stream after it)."""
        try:
            newest = await self.coordinator.cursors.newest(CURSOR)
            if newest is None:
                return  # nothing handed off yet: `earliest` covers everything retained
            position = lost_window_position(newest[0], self.settings.resync_overlap_s)
            org = newest[1]
            window = uuid.uuid4().hex[:12]
            for topic in TOPICS:
                await self.coordinator.resyncs.enqueue(
                    topic, position=position, org=org, resync_id=f"expired-{window}-{topic}"
                )
            log.warning("ws_resync_queued", since_position=position, topics=list(TOPICS))
        except CoordinationError as exc:
            log.error("ws_resync_not_queued", error=str(exc))

    def _token_changed(self, old: str) -> bool:
        try:
            return self.settings.read_token() != old
        except ConfigError:
            return False

    def _fatal(self, message: str) -> None:
        self.state.fatal = message
        log.error("ws_listener_stopped", error=message)

    async def _wait_for_new_token(self, old: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if self.settings.read_token() != old:
                    return
            except ConfigError:
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.ws_backoff_max)

    def _disconnected(self) -> None:
        if self.state.connected:
            self.state.disconnected_since = time.monotonic()
        self.state.connected = False
        self.state.connected_since = None

    async def _subscribe_message(self) -> dict[str, Any]:
        cursor = None if self._from_earliest else await self.coordinator.cursors.get(CURSOR)
        if cursor:
            replay: dict[str, Any] = {"preset": "custom", "replay_id": cursor}
        elif self._from_earliest:
            replay = {"preset": "earliest"}
        else:
            replay = {"preset": self.settings.passport_initial_replay}
        return {
            "type": "subscribe",
            "topics": list(TOPICS),
            "replay": replay,
            "credits": self._credits,
        }

    async def _connect_and_listen(self, token: str, stop: asyncio.Event) -> None:
        async with connect(
            self.settings.passport_ws_url,
            additional_headers={"Authorization": f"Bearer {token}"},
            max_size=self.settings.ws_max_frame_bytes,
            open_timeout=10,
            close_timeout=5,
            ping_interval=20,
            ping_timeout=20,
            proxy=None,
        ) as ws:
            subscribe = await self._subscribe_message()
            await ws.send(orjson.dumps(subscribe).decode())
            log.info("ws_connected", url=self.settings.passport_ws_url, replay=subscribe["replay"])
            frames: asyncio.Queue[tuple[EventsFrame, int]] = asyncio.Queue()
            closing = asyncio.Event()
            reader: asyncio.Task[Any] = asyncio.create_task(self._read(ws, frames))
            handoff: asyncio.Task[Any] = asyncio.create_task(self._hand_off(ws, frames, closing))
            stopper: asyncio.Task[Any] = asyncio.create_task(stop.wait())
            try:
                done, _ = await asyncio.wait(
                    {reader, handoff, stopper}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                # Set before cancelling: a cancellation that a Redis call swallows
                # (it returned normally instead) still ends the hand-off loop.
                closing.set()
                for task in (reader, handoff, stopper):
                    task.cancel()
                await asyncio.gather(reader, handoff, stopper, return_exceptions=True)
            if stopper in done:
                await ws.close(1000, "client shutting down")
                return
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc

    async def _read(
        self, ws: ClientConnection, frames: asyncio.Queue[tuple[EventsFrame, int]]
    ) -> None:
        timeout = self.settings.ws_heartbeat_timeout
        while True:
            try:
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that
                # races with a frame arriving, and this loop then never ends
                # (shutdown hangs; after a hand-off failure intake stalls).
                async with asyncio.timeout(timeout):
                    message = await ws.recv()
            except TimeoutError:
                # Drop it at once: a dead peer would never answer a closing
                # handshake, and close() would wait close_timeout for it.
                ws.transport.abort()
                raise _Reconnect(
                    RESUME, f"no frame for {timeout}s (half-open connection)"
                ) from None
            self.state.last_frame_at = time.monotonic()
            received_ns = time.time_ns()
            frame = parse_ws_frame(message, max_bytes=self.settings.ws_max_frame_bytes)
            if isinstance(frame, Rejected):
                counts = await self.router.reject(
                    [frame], path="ws", source=self.settings.passport_ws_url, what="frame"
                )
                await self.router.route([], path="ws", counts=counts)
            elif isinstance(frame, EventsFrame):
                frames.put_nowait((frame, received_ns))
            elif isinstance(frame, SubscribedFrame):
                self.state.connected = True
                self.state.subscribed_once = True
                self.state.connected_since = time.monotonic()
                self.state.disconnected_since = None
                log.info(
                    "ws_subscribed", topics=frame.topics, latest_replay_id=frame.latest_replay_id
                )
                self._from_earliest = False
            elif isinstance(frame, HeartbeatFrame):
                pass
            elif isinstance(frame, ErrorFrame):
                action = error_action(frame.code)
                log.warning("ws_error_frame", code=frame.code, message=frame.message)
                raise _Reconnect(action, f"server error {frame.code}: {frame.message}")

    async def _hand_off(
        self,
        ws: ClientConnection,
        frames: asyncio.Queue[tuple[EventsFrame, int]],
        closing: asyncio.Event,
    ) -> None:
        # Up to HAND_OFF_DEPTH hand-offs are under way at once, each in a task that
        # settles (cursor, credits) only after the one before it settled. Each
        # takes the frames queued by then: one Redis round trip, one cursor write
        # and one credit message for all of them (bounded by the credits).
        under_way: deque[tuple[asyncio.Task[None], int]] = deque()
        # Their ingest scripts run in stream order all the same: each waits for
        # the one before (its events are prepared meanwhile), so an older change
        # never reaches Redis after a newer one of the same connection.
        previous: asyncio.Future[None] | None = None
        try:
            while not closing.is_set():
                while under_way and (under_way[0][0].done() or len(under_way) >= HAND_OFF_DEPTH):
                    await under_way.popleft()[0]  # a failed hand-off ends the loop here
                if under_way:
                    # A frame, or the end of the oldest hand-off (which may have
                    # failed: then no credit comes back, and maybe no frame).
                    getter = asyncio.ensure_future(frames.get())
                    try:
                        await asyncio.wait(
                            {getter, under_way[0][0]}, return_when=asyncio.FIRST_COMPLETED
                        )
                    except BaseException:
                        getter.cancel()
                        raise
                    if not getter.done():
                        getter.cancel()  # Queue.get takes nothing when cancelled
                        continue
                    frame, received_ns = getter.result()
                else:
                    frame, received_ns = await frames.get()
                items = list(frame.items)
                while not frames.empty():
                    items.extend(frames.get_nowait()[0].items)
                # Near the high-water mark, the hand-offs under way finish first:
                # the capacity check then counts the records they gave to jobs.
                records = sum(n for _, n in under_way)
                if records and (
                    self.router.handoff.last_pending + records >= self.router.max_pending_records
                ):
                    while under_way:
                        await under_way.popleft()[0]
                # Credits for these frames are granted only after their hand-off:
                # waiting here is what stops Passport when the workers fall behind.
                await self.router.wait_for_capacity()
                before = under_way[-1][0] if under_way else None
                turn = Turn(previous, asyncio.get_running_loop().create_future())
                previous = turn.done
                task = asyncio.ensure_future(
                    self._hand_off_one(ws, items, received_ns, before, turn)
                )
                under_way.append((task, _records(items)))
        finally:
            for task, _ in under_way:
                task.cancel()
            await asyncio.gather(*(task for task, _ in under_way), return_exceptions=True)

    async def _hand_off_one(
        self,
        ws: ClientConnection,
        items: list[Event | Rejected],
        received_ns: int,
        before: asyncio.Task[None] | None,
        turn: Turn | None = None,
    ) -> None:
        with self.router.telemetry.tracer.start_as_current_span(
            "receive passport",
            kind=SpanKind.CLIENT,
            start_time=received_ns,
            attributes={
                "messaging.system": "passport",
                "messaging.operation.type": "receive",
                "messaging.operation.name": "receive",
                "messaging.destination.name": "passport",
                "messaging.batch.message_count": len(items),
            },
        ):
            try:
                await self._hand_off_items(ws, items, before, turn)
            finally:
                if turn is not None:
                    turn.finish()

    async def _hand_off_items(
        self,
        ws: ClientConnection,
        items: list[Event | Rejected],
        before: asyncio.Task[None] | None = None,
        turn: Turn | None = None,
    ) -> None:
        """Route the frames' events (in Redis after the hand-off before, ``turn``),
        dead-letter their bad ones; then, once the hand-off ``before`` it has
        settled (its failure is this one's too), save the cursor and grant the
        frames' credits."""
        events = [item for item in items if isinstance(item, Event)]
        rejected = [item for item in items if isinstance(item, Rejected)]
        counts = (
            await self.router.reject(
                rejected, path="ws", source=self.settings.passport_ws_url, what="event"
            )
            if rejected
            else None
        )
        if events or counts:
            await self.router.route(events, path="ws", turn=turn, counts=counts, lease=self.lease)
        if before is not None:
            await before
        last = next((i.replay_id for i in reversed(items) if i.replay_id), None)
        with self.router.telemetry.tracer.start_as_current_span(
            "settle passport",
            kind=SpanKind.CLIENT,
            attributes={
                "messaging.system": "passport",
                "messaging.operation.type": "settle",
                "messaging.operation.name": "credit",
                "messaging.destination.name": "passport",
                "messaging.batch.message_count": len(items),
            },
        ):
            if last is not None:
                newest = max(events, key=lambda e: e.position, default=None)
                await self.coordinator.cursors.set(
                    CURSOR,
                    last,
                    position=newest.position if newest else None,
                    org=newest.org_id if newest else None,
                    lease=self.lease,
                )
            self.state.events_handed_off += len(events)
            if items:
                await ws.send(orjson.dumps({"type": "credit", "n": len(items)}).decode())
