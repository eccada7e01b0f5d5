"""The simulator's I/O side: the WebSocket stream, the REST API, SNS, and pacing.

:class:`Simulator` wires the pure parts together: a :class:`~.world.World`
generates events at ``rate``; a :class:`~.world.DeliveryPlan` routes each one;
WebSocket deliveries are appended to a :class:`~.stream.StreamLog` that every
connection reads at its own pace (credits, replay), SNS deliveries go to an
:class:`~.aws.SnsPublisher`, malformed SQS bodies to an :class:`~.aws.SqsSender`.
The Salesforce REST API (:mod:`.rest`) answers from the World's truth.

Healing tests: ``gap_rate``/``overflow_rate`` make the plan withhold content
(``GAP_*`` and ``GAP_OVERFLOW`` events) while the truth, and so the REST API,
keeps every real change; :meth:`Simulator.expire_replay_ids` makes the
consumer's resume point expire while it is down (``replay_id_expired``, 4410).

Fault injection seam: every WebSocket connection consults a
:class:`FaultPolicy` on upgrade, after ``subscribed`` and before each data
frame; a policy can refuse the upgrade with an HTTP status, close with any
code (1012 restart, 4001 token expired, flapping), or go silent (half-open).
The default :class:`NoFaults` does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import random
import signal
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
import structlog
from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from amt_ingest.simulator import control
from amt_ingest.simulator.aws import BackoffFactory, SnsPublisher, SqsSender, backoff
from amt_ingest.simulator.delivery import DeliveryPlan, DeliveryRates
from amt_ingest.simulator.frames import Deliveries, WsBadEvent, WsEvent, WsItem
from amt_ingest.simulator.options import SimulatorOptions
from amt_ingest.simulator.rest import SalesforceApi
from amt_ingest.simulator.stream import (
    CLOSE_INVALID_REQUEST,
    CLOSE_REPLAY_ID_EXPIRED,
    Credit,
    Expired,
    ProtocolError,
    StreamLog,
    Subscribe,
    decode_replay_id,
    encode_replay_id,
    error_frame,
    events_frame,
    heartbeat_frame,
    parse_client_frame,
    subscribed_frame,
)
from amt_ingest.simulator.truth import iso_ms, truth_jsonl
from amt_ingest.simulator.world import World

__all__ = [
    "CloseConnection",
    "Fault",
    "FaultPolicy",
    "GoSilent",
    "NoFaults",
    "Simulator",
    "StreamServer",
    "TokenSource",
    "run_simulator",
]

STREAM_PATH = "/stream"
SUBSCRIBE_TIMEOUT = 30.0

log = structlog.get_logger("amt_ingest.simulator")


# --- Tokens ------------------------------------------------------------------------------


class TokenSource:
    """The bearer token to accept: ``token_file`` re-read on every call, else ``token``.

    Returns None when the file cannot be read or is empty.
    """

    def __init__(self, token: str, token_file: Path | None = None) -> None:
        self._token = token
        self._file = token_file

    def __call__(self) -> str | None:
        if self._file is None:
            return self._token or None
        try:
            return self._file.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            log.error("simulator.token_file_unreadable", path=str(self._file), error=str(exc))
            return None


def _bearer_ok(header: str | None, token: str) -> bool:
    return header is not None and hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


# --- Fault injection seam ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close the connection with this code (1012 restart, 4001 token expired, ...)."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class GoSilent:
    """Send nothing and read nothing for ``seconds``, keeping TCP open (half-open)."""

    seconds: float


Fault = CloseConnection | GoSilent


class FaultPolicy(Protocol):
    """Decides faults per connection (numbered from 1 in upgrade order)."""

    def on_upgrade(self, connection: int) -> int | None:
        """An HTTP status to refuse the upgrade with, or None to accept."""
        ...

    def on_subscribed(self, connection: int) -> Fault | None: ...

    def before_frame(self, connection: int, frames_sent: int) -> Fault | None: ...


class NoFaults:
    def on_upgrade(self, connection: int) -> int | None:
        return None

    def on_subscribed(self, connection: int) -> Fault | None:
        return None

    def before_frame(self, connection: int, frames_sent: int) -> Fault | None:
        return None


# --- The WebSocket stream ----------------------------------------------------------------


class LiveStream:
    """A :class:`StreamLog` that wakes the connections reading it, and hears what they
    want: a connection that has read everything and still holds credits says so
    (:meth:`want`) until the stream grows; on-demand generation waits for that
    (:meth:`demand`)."""

    def __init__(self, log_: StreamLog) -> None:
        self.log = log_
        self._waiters: set[asyncio.Event] = set()
        self._wants: dict[object, int] = {}
        self._hungry = asyncio.Event()
        #: Set once a connection has subscribed.
        self.subscribed = asyncio.Event()
        #: Subscriptions open now, the most ever open at once, and all there were.
        self.subscribers = 0
        self.max_subscribers = 0
        self.subscriptions = 0

    def joined(self) -> None:
        """A connection subscribed (it counts until it closes: :meth:`left`)."""
        self.subscribers += 1
        self.subscriptions += 1
        self.max_subscribers = max(self.max_subscribers, self.subscribers)
        self.subscribed.set()

    def left(self) -> None:
        self.subscribers -= 1

    def extend(self, items: list[WsItem]) -> None:
        if not items:
            return
        for item in items:
            if isinstance(item, WsEvent):
                self.log.append_event(item.event, topic=item.event["topic"])
            elif isinstance(item, WsBadEvent):
                self.log.append_event(item.obj, topic=None)
            else:
                self.log.append_raw(item.text)
        # Every reader looks again (and says again what it still wants).
        self._wants.clear()
        for waiter in self._waiters:
            waiter.set()

    def expire(self, through: int | None = None) -> None:
        """:meth:`StreamLog.expire`, then wake the readers (those behind now get 4410)."""
        self.log.expire(through)
        for waiter in self._waiters:
            waiter.set()

    def want(self, reader: object, credits: int) -> None:
        """``reader`` has sent everything it may see and could take ``credits`` more
        (0: it has events to send again, or it is gone). Holds until the stream grows."""
        if credits > 0:
            self._wants[reader] = credits
            self._hungry.set()
        else:
            self._wants.pop(reader, None)

    async def demand(self) -> int:
        """Wait until a connection wants events; returns how many (the largest wish).

        A wish holds until the stream grows: events that stay undelivered (a
        transaction still open, held back for reordering) do not end it, so
        generation goes on; after growth each reader says again what it wants.
        """
        while not self._wants:
            self._hungry.clear()
            await self._hungry.wait()
        return max(self._wants.values())

    def watch(self, waiter: asyncio.Event) -> None:
        self._waiters.add(waiter)

    def unwatch(self, waiter: asyncio.Event) -> None:
        self._waiters.discard(waiter)


class _Session:
    """One subscription on one connection."""

    def __init__(self, server: StreamServer, ws: ServerConnection, number: int) -> None:
        self._server = server
        self._ws = ws
        self.number = number
        self._wake = asyncio.Event()
        self._credits = 0
        self._failure: ProtocolError | None = None
        self._log = log.bind(connection=number, peer=str(ws.remote_address))

    async def run(self) -> None:
        try:
            await self._run()
        except ConnectionClosed:
            pass
        finally:
            self._log.info(
                "simulator.ws_closed",
                code=self._ws.close_code,
                reason=self._ws.close_reason,
            )

    async def _run(self) -> None:
        ws, stream = self._ws, self._server.stream
        try:
            first = await asyncio.wait_for(ws.recv(), SUBSCRIBE_TIMEOUT)
        except TimeoutError:
            await self._fail(
                ProtocolError(
                    "invalid_request", "no subscribe frame received", CLOSE_INVALID_REQUEST
                )
            )
            return
        request = parse_client_frame(first)
        if isinstance(request, Credit):
            request = ProtocolError("invalid_request", "subscribe first", CLOSE_INVALID_REQUEST)
        if isinstance(request, ProtocolError):
            await self._fail(request)
            return
        start = stream.log.resolve(request)
        if isinstance(start, ProtocolError):
            await self._fail(start)
            return
        cursor, position = start
        self._credits = request.credits
        await ws.send(subscribed_frame(request.topics, stream.log.latest_replay_id), text=True)
        stream.joined()
        try:
            self._log.info(
                "simulator.ws_subscribed",
                topics=list(request.topics),
                preset=request.preset,
                replay_id=request.replay_id,
                credits=request.credits,
                subscribers=stream.subscribers,
            )
            if await self._fault(self._server.faults.on_subscribed(self.number)):
                return
            await self._serve(request, cursor, position)
        finally:
            stream.left()

    async def _serve(self, request: Subscribe, cursor: int, position: int) -> None:
        stream = self._server.stream
        reader = asyncio.create_task(self._read())
        stream.watch(self._wake)
        try:
            await self._pump(request, cursor, position, reader)
        finally:
            stream.unwatch(self._wake)
            stream.want(self, 0)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                frame = parse_client_frame(message)
                if isinstance(frame, Credit):
                    self._credits += frame.n
                elif isinstance(frame, Subscribe):
                    self._failure = ProtocolError(
                        "invalid_request",
                        "already subscribed on this connection",
                        CLOSE_INVALID_REQUEST,
                    )
                    return
                else:
                    self._failure = frame
                    return
                self._wake.set()
        finally:
            self._wake.set()

    async def _pump(
        self, request: Subscribe, cursor: int, position: int, reader: asyncio.Task[None]
    ) -> None:
        ws, server = self._ws, self._server
        stream_log, opts = server.stream.log, server.options
        loop = asyncio.get_running_loop()
        topics = frozenset(request.topics)
        last_sent = loop.time()
        frames = 0
        while True:
            self._wake.clear()
            if self._failure is not None:
                await self._fail(self._failure)
                return
            if reader.done():
                return
            take = stream_log.take(cursor, position, topics, min(opts.max_batch, self._credits))
            if isinstance(take, Expired):
                await self._fail(
                    ProtocolError("replay_id_expired", take.message, CLOSE_REPLAY_ID_EXPIRED)
                )
                return
            if take.raw is not None or take.events:
                server.stream.want(self, 0)
                if await self._fault(server.faults.before_frame(self.number, frames)):
                    return
                frames += 1
            cursor, position = take.cursor, take.position
            if take.raw is not None:
                await ws.send(take.raw, text=True)
                last_sent = loop.time()
            elif take.events:
                self._credits -= len(take.events)
                frame = events_frame(take.events, encode_replay_id(position), self._credits)
                await ws.send(frame, text=True)
                last_sent = loop.time()
            else:
                server.stream.want(self, self._credits)
                idle = last_sent + opts.heartbeat_interval - loop.time()
                if idle <= 0:
                    now = iso_ms(int(time.time() * 1000))
                    await ws.send(heartbeat_frame(encode_replay_id(position), now), text=True)
                    last_sent = loop.time()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), idle)

    async def _fault(self, fault: Fault | None) -> bool:
        """Carry out ``fault``; True if the connection is finished."""
        if fault is None:
            return False
        self._log.info("simulator.ws_fault", fault=repr(fault))
        if isinstance(fault, CloseConnection):
            await self._ws.close(fault.code, fault.reason)
            return True
        transport = self._ws.transport
        transport.pause_reading()
        try:
            await asyncio.sleep(fault.seconds)
        finally:
            if not transport.is_closing():
                transport.resume_reading()
        return False

    async def _fail(self, error: ProtocolError) -> None:
        self._log.info("simulator.ws_error", code=error.code, message=error.message)
        await self._ws.send(error_frame(error.code, error.message), text=True)
        # A close reason is limited to 123 bytes of UTF-8.
        reason = error.message.encode()[:120].decode(errors="ignore")
        await self._ws.close(error.close_code, reason)


class StreamServer:
    """The WebSocket endpoint: ``ws://host:port/stream``."""

    def __init__(
        self,
        stream: LiveStream,
        options: SimulatorOptions,
        *,
        token: TokenSource,
        faults: FaultPolicy | None = None,
    ) -> None:
        self.stream = stream
        self.options = options
        self.faults: FaultPolicy = faults or NoFaults()
        self._token = token
        self._connections = 0
        self._numbers: weakref.WeakKeyDictionary[ServerConnection, int] = (
            weakref.WeakKeyDictionary()
        )
        self._server: Server | None = None

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.options.host,
            self.options.port,
            process_request=self._process_request,
            # Frames are small JSON; compression would cost the benchmarks CPU.
            compression=None,
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != STREAM_PATH:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        token = self._token()
        if token is None:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "No token\n")
        if not _bearer_ok(request.headers.get("Authorization"), token):
            response = connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="passport"'
            return response
        self._connections += 1
        status = self.faults.on_upgrade(self._connections)
        if status is not None:
            return connection.respond(http.HTTPStatus(status), "Refused\n")
        self._numbers[connection] = self._connections
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        await _Session(self, ws, self._numbers.pop(ws, 0)).run()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


# --- The simulator -----------------------------------------------------------------------


class Simulator:
    """The whole Passport stand-in.

    ``await start()`` binds every endpoint (read :attr:`ws_port` and
    :attr:`sf_port` after it), ``await run()`` generates the events (returns
    after the last one is delivered and the truth/stats files are written;
    never with ``events=0``), ``await stop()`` closes everything. Endpoints
    keep serving between ``run()`` and ``stop()``.
    """

    def __init__(
        self,
        options: SimulatorOptions,
        *,
        faults: FaultPolicy | None = None,
        backoff_factory: BackoffFactory = backoff,
    ) -> None:
        self.options = options
        self.world = World(
            options.seed,
            options.records,
            options.org_id,
            foreign_org_rate=options.foreign_org_rate,
            foreign_org_id=options.foreign_org_id,
            clock=_epoch_ms if options.wall_clock else None,
            fresh_records=options.fresh_records,
        )
        self.plan = DeliveryPlan(
            options.seed,
            DeliveryRates(
                dup_rate=options.dup_rate,
                ooo_rate=options.ooo_rate,
                ooo_window=options.ooo_window,
                ws_only_rate=options.ws_only_rate,
                sqs_only_rate=options.sqs_only_rate,
                malformed_rate=options.malformed_rate,
                gap_rate=options.gap_rate,
                overflow_rate=options.overflow_rate,
                sns=options.sns,
                malformed_sqs=bool(options.sqs_queue_urls),
            ),
            org_id=options.org_id,
            keep_log=options.event_log is not None,
        )
        self._script_rng = random.Random(f"amt-sim:{options.seed}:script")
        self._event_log: Any = None
        self._purged_at = 0.0
        self.scripted = 0
        self.stream = LiveStream(StreamLog(options.retention))
        self.token = TokenSource(options.token, options.token_file)
        self.salesforce = SalesforceApi(
            self.world,
            token=self.token,
            page_size=options.page_size,
            deleted_lookback_ms=int(options.deleted_lookback_s * 1000),
            deleted_max_span_ms=int(options.deleted_max_span_s * 1000),
        )
        self._ws = StreamServer(self.stream, options, token=self.token, faults=faults)
        self._backoff = backoff_factory
        self._sns: SnsPublisher | None = None
        self._sqs: SqsSender | None = None
        self._rest: web.AppRunner | None = None
        self.generated = 0
        self.completed = asyncio.Event()
        # Events of a transaction not yet complete: the plan routes whole transactions.
        self._transaction: list[dict[str, Any]] = []

    @property
    def ws_port(self) -> int:
        return self._ws.port

    @property
    def sf_port(self) -> int:
        assert self._rest is not None, "start() first"
        return int(self._rest.addresses[0][1])

    @property
    def ws_url(self) -> str:
        return f"ws://{self.options.host}:{self.ws_port}{STREAM_PATH}"

    @property
    def sf_url(self) -> str:
        return f"http://{self.options.host}:{self.sf_port}"

    async def start(self) -> None:
        opts = self.options
        try:
            if opts.sns:
                self._sns = SnsPublisher(region=opts.aws_region, backoff_factory=self._backoff)
                await self._sns.start()
            if opts.sqs_queue_urls:
                self._sqs = SqsSender(
                    opts.sqs_queue_urls, region=opts.aws_region, backoff_factory=self._backoff
                )
                await self._sqs.start()
            await self._ws.start()
            if opts.event_log is not None:
                self._event_log = opts.event_log.open("ab")  # closed in stop()
            app = self.salesforce.app()
            control.add_routes(app, self)
            self._rest = web.AppRunner(app, access_log=None)
            await self._rest.setup()
            await web.TCPSite(self._rest, opts.host, opts.sf_port).start()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "simulator.listening",
            ws_url=self.ws_url,
            sf_url=self.sf_url,
            sns=opts.sns,
            rate=opts.rate,
            events=opts.events,
            seed=opts.seed,
        )

    async def run(self) -> None:
        opts = self.options
        loop = asyncio.get_running_loop()
        if opts.wait_for_subscriber:
            await self.stream.subscribed.wait()
        began = loop.time()
        target = opts.events
        while target == 0 or self.generated < target:
            remaining = target - self.generated if target else 1 << 30
            if opts.rate > 0:
                due = int((loop.time() - began) * opts.rate) + 1 - self.generated
                if due <= 0:
                    await asyncio.sleep(began + self.generated / opts.rate - loop.time())
                    continue
                count = min(due, remaining, 1000)
            else:
                count = min(remaining, 200)
            if opts.on_demand:
                count = min(count, await self.stream.demand())
            out = Deliveries()
            for _ in range(count):
                self._transaction.append(self.world.next_event())
                if not self.world.transaction_open:
                    out.extend(self.plan.route_transaction(self._transaction))
                    self._transaction = []
            self.generated += count
            self._purge_deletes(loop.time())
            await self._deliver(out)
            await asyncio.sleep(0)
        if self._transaction:  # cut short by ``events``
            await self._deliver(self.plan.route_transaction(self._transaction))
            self._transaction = []
        await self._deliver(self.plan.flush())
        if self._sns is not None:
            await self._sns.drain()
        await self._write_outputs()
        self.completed.set()
        log.info(
            "simulator.complete",
            events=self.generated,
            truth=str(opts.truth) if opts.truth else None,
            stats=str(opts.stats) if opts.stats else None,
            latest_replay_id=self.stream.log.latest_replay_id,
        )

    def _purge_deletes(self, now: float) -> None:
        retention = self.options.deleted_retention_s
        if retention and now - self._purged_at >= 1.0:
            self._purged_at = now
            self.world.deletes.purge(self.world.now_ms - int(retention * 1000))

    async def _deliver(self, out: Deliveries) -> None:
        self.stream.extend(out.ws)
        if self._event_log is not None and out.log:
            self._event_log.write(b"".join(orjson.dumps(line) + b"\n" for line in out.log))
            self._event_log.flush()
        if self._sns is not None:
            for event in out.sns:
                await self._sns.publish(event)
        if self._sqs is not None:
            for body in out.sqs_raw:
                await self._sqs.send(body)

    def expire_replay_ids(self, through: str | None = None) -> None:
        """Expire the stream's resume points, as if the consumer had been down too long.

        Every replay id up to and including ``through`` (default: the newest one
        so far) is then refused on a custom subscribe with ``replay_id_expired``
        and close 4410; ``earliest`` starts after it; a connection still reading
        behind it is closed the same way. Call it while the consumer is down
        (after its last cursor was stored), then start the consumer again.
        Raises ValueError if ``through`` is not a replay id of this stream.
        """
        counter = None
        if through is not None:
            counter = decode_replay_id(through)
            if counter is None:
                raise ValueError(f"{through!r} is not a replay id of this stream")
        self.stream.expire(counter)
        log.info(
            "simulator.replay_ids_expired",
            through=through or self.stream.log.latest_replay_id,
        )

    def set_sns(self, *, enabled: bool) -> None:
        """Start (``enabled=False``) or end an SNS outage (see :mod:`.control`)."""
        self.plan.sns_down = not enabled
        log.info("simulator.sns", enabled=enabled)

    async def script(self, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Generate the main-org transactions ``steps`` describe (:mod:`.control`), now.

        The transaction under way is finished first, so that scripted ones
        never split it. Raises ValueError for a step the records do not allow
        (the steps before it are delivered).
        """
        out = Deliveries()
        while self._transaction and self.world.transaction_open:
            self._transaction.append(self.world.next_event())
        if self._transaction:
            out.extend(self.plan.route_transaction(self._transaction))
            self._transaction = []
        results: list[dict[str, Any]] = []
        try:
            for raw in steps:
                step = control.parse_step(raw, results)
                records = step["records"]
                if step["pick"]:
                    live = self.world.live_ids(step["topic"])
                    if len(live) < step["pick"]:
                        raise ValueError(f"fewer than {step['pick']} live {step['topic']} records")
                    records = self._script_rng.sample(live, step["pick"])
                events = self.world.script(
                    step["kind"],
                    topic=step["topic"],
                    record_ids=records,
                    size=step["size"],
                    fields=step["fields"] or None,
                )
                self.scripted += len(events)
                out.extend(
                    self.plan.route_transaction(
                        events, overflow=step["overflow"], ws_delay=step["ws_delay"] or None
                    )
                )
                changed = [
                    r for e in events for r in e["payload"]["ChangeEventHeader"]["recordIds"]
                ]
                results.append({"records": changed, "event_ids": [e["event_id"] for e in events]})
        finally:
            await self._deliver(out)
        log.info("simulator.scripted", steps=len(results))
        return results

    def stats(self) -> dict[str, Any]:
        truth = self.world.truth()
        aws: dict[str, int] = {}
        if self._sns is not None:
            aws.update(self._sns.stats.as_dict())
        if self._sqs is not None:
            aws.update({k: v for k, v in self._sqs.stats.as_dict().items() if "sqs" in k})
        return {
            "generated": self.world.stats.as_dict(),
            "delivery": self.plan.stats.as_dict(),
            "aws": aws,
            "stream": {
                "latest_replay_id": self.stream.log.latest_replay_id,
                "entries": self.stream.log.end,
                "subscribers": self.stream.subscribers,
                "max_concurrent_subscribers": self.stream.max_subscribers,
                "subscriptions": self.stream.subscriptions,
            },
            "truth": {
                "records": len(truth),
                "deleted": sum(1 for r in truth if r["deleted"]),
            },
            "rest_requests": dict(sorted(self.salesforce.requests.items())),
            "sns_down": self.plan.sns_down,
            "scripted_events": self.scripted,
            # See DeliveryPlan.withheld_then_deleted: truth fields a re-read may not recover.
            "withheld_then_deleted": [
                {"topic": topic, "id": record_id}
                for topic, record_id in sorted(self.plan.withheld_then_deleted)
            ],
        }

    async def _write_outputs(self) -> None:
        opts = self.options
        if opts.truth is not None:
            await asyncio.to_thread(_write_atomic, opts.truth, truth_jsonl(self.world.truth()))
        if opts.stats is not None:
            body = orjson.dumps(self.stats(), option=orjson.OPT_INDENT_2) + b"\n"
            await asyncio.to_thread(_write_atomic, opts.stats, body)

    async def stop(self) -> None:
        """Close every endpoint (WebSocket clients see 1001). Safe to call twice."""
        await self._ws.close()
        rest, sns, sqs = self._rest, self._sns, self._sqs
        self._rest = self._sns = self._sqs = None
        if self._event_log is not None:
            self._event_log.close()
            self._event_log = None
        if rest is not None:
            await rest.cleanup()
        if sns is not None:
            await sns.close()
        if sqs is not None:
            await sqs.close()


def _epoch_ms() -> int:
    return time.time_ns() // 1_000_000


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


async def run_simulator(options: SimulatorOptions) -> None:
    """Run the simulator until SIGTERM/SIGINT (then return normally).

    Raises whatever stopped generation early (e.g. a publisher failure),
    after closing every endpoint.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    sim = Simulator(options)
    try:
        await sim.start()
        runner = asyncio.create_task(sim.run(), name="simulator-run")
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done() and runner.exception() is not None:
            stopper.cancel()
            await runner  # re-raises why generation stopped
        await stopper
        log.info("simulator.stopping", events=sim.generated)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    finally:
        await sim.stop()
        for sig in signals:
            loop.remove_signal_handler(sig)
