"""The simulator's options and their command-line flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from amt_ingest.simulator.truth import FOREIGN_ORG_ID, MAIN_ORG_ID

__all__ = ["SimulatorOptions", "add_arguments", "options_from_args"]


@dataclass(frozen=True, kw_only=True)
class SimulatorOptions:
    """Everything ``python -m amt_ingest simulate`` can be told.

    Rates are per generated event, within [0, 1]. ``port``/``sf_port`` 0 bind
    a free port (read it from :attr:`Simulator.ws_port` / ``sf_port``).
    ``events`` 0 generates forever; ``rate`` 0 generates flat out (paced only by
    SNS publishing when it is on); ``retention`` 0 keeps the whole stream
    replayable. ``gap_rate`` and ``overflow_rate`` withhold content of main-org
    changes (see :class:`~amt_ingest.simulator.world.DeliveryRates`); the truth
    and the REST API keep the real changes.

    For benchmarks: ``on_demand`` generates only what a WebSocket subscriber
    has unused credits for, so with ``rate`` 0 the stream goes exactly as fast
    as credits allow and the simulator's memory stays bounded even with
    ``events`` 0 (with a ``rate``, no faster than it either);
    ``wait_for_subscriber`` starts generating at the first subscription;
    ``fresh_records`` makes every event create a new record (see
    :class:`~amt_ingest.simulator.world.World`).

    ``wall_clock`` (the default) stamps ``commitTimestamp`` with the real time
    of generation, as Salesforce does; without it the seeded clock runs from
    2026-11-25T09:00:00Z, 250 ms per transaction on average, so that a seed
    gives the same truth to the millisecond (the deleted-records resource then
    refuses windows that start more than ``deleted_lookback_s`` before that
    clock, and a service's own clock is far from it: for unit-level runs only).
    ``deleted_retention_s`` > 0 purges deletes older than that from the delete
    log (``earliestDateAvailable`` moves up); ``event_log`` writes one JSON
    line per main-org change and the id of what carried it.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    sf_port: int = 8766
    token: str = "dev-token"
    token_file: Path | None = None
    rate: float = 200.0
    events: int = 0
    records: int = 300
    seed: int = 1
    org_id: str = MAIN_ORG_ID
    foreign_org_id: str = FOREIGN_ORG_ID
    dup_rate: float = 0.0
    ooo_rate: float = 0.0
    ooo_window: int = 8
    ws_only_rate: float = 0.0
    sqs_only_rate: float = 0.0
    foreign_org_rate: float = 0.0
    malformed_rate: float = 0.0
    gap_rate: float = 0.0
    overflow_rate: float = 0.0
    max_batch: int = 100
    heartbeat_interval: float = 15.0
    retention: int = 0
    page_size: int = 200
    truth: Path | None = None
    stats: Path | None = None
    sqs_queue_urls: tuple[str, ...] = field(default_factory=tuple)
    sns: bool = True
    aws_region: str | None = None
    on_demand: bool = False
    wait_for_subscriber: bool = False
    wall_clock: bool = True
    fresh_records: bool = False
    event_log: Path | None = None
    deleted_lookback_s: float = 15 * 24 * 3600.0
    deleted_max_span_s: float = 30 * 24 * 3600.0
    deleted_retention_s: float = 0.0

    def __post_init__(self) -> None:
        rates = ("dup_rate", "ooo_rate", "ws_only_rate", "sqs_only_rate")
        for name in (*rates, "foreign_org_rate", "malformed_rate", "gap_rate", "overflow_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.ws_only_rate + self.sqs_only_rate > 1.0:
            raise ValueError("ws_only_rate + sqs_only_rate must not exceed 1")
        for name in ("rate", "events", "retention", "heartbeat_interval", "deleted_retention_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("records", "max_batch", "page_size", "ooo_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.heartbeat_interval == 0:
            raise ValueError("heartbeat_interval must be positive")
        if self.deleted_lookback_s <= 0 or self.deleted_max_span_s <= 60:
            raise ValueError("deleted_lookback_s must be positive, deleted_max_span_s over 60")


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not within [0, 1]")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the simulator's flags on ``parser`` (see :func:`options_from_args`)."""
    defaults = SimulatorOptions()
    for group in (
        _net_arguments,
        _gen_arguments,
        _faults_arguments,
        _proto_arguments,
        _out_arguments,
        _aws_arguments,
    ):
        group(parser, defaults)


def _net_arguments(parser: argparse.ArgumentParser, d: SimulatorOptions) -> None:
    net = parser.add_argument_group("endpoints")
    net.add_argument("--host", default=d.host, help="address to bind (default %(default)s)")
    net.add_argument("--port", type=int, default=d.port, help="WebSocket port (/stream)")
    net.add_argument("--sf-port", type=int, default=d.sf_port, help="Salesforce REST port")
    net.add_argument("--token", default=d.token, help="bearer token clients must send")
    net.add_argument(
        "--token-file",
        type=Path,
        help="read the token from this file on every request (rotating secrets); wins over --token",
    )


def _gen_arguments(parser: argparse.ArgumentParser, d: SimulatorOptions) -> None:
    gen = parser.add_argument_group("generation")
    gen.add_argument("--rate", type=float, default=d.rate, help="events/s, 0 = flat out")
    gen.add_argument("--events", type=int, default=d.events, help="events to generate, 0 = forever")
    gen.add_argument("--records", type=int, default=d.records, help="main org population")
    gen.add_argument("--seed", type=int, default=d.seed)
    gen.add_argument("--org-id", default=d.org_id)
    gen.add_argument("--foreign-org-id", default=d.foreign_org_id)
    gen.add_argument(
        "--on-demand",
        action="store_true",
        help="generate only what WebSocket subscribers have credits for: with --rate 0 as"
        " fast as credits allow (memory stays bounded with --events 0)",
    )
    gen.add_argument(
        "--wait-for-subscriber",
        action="store_true",
        help="start generating when the first WebSocket subscription is made",
    )
    clock = gen.add_mutually_exclusive_group()
    clock.add_argument(
        "--wall-clock",
        dest="wall_clock",
        action="store_true",
        default=d.wall_clock,
        help="commitTimestamp is the real time of generation (the default)",
    )
    clock.add_argument(
        "--seeded-clock",
        dest="wall_clock",
        action="store_false",
        help="commitTimestamp from a seeded clock starting 2026-11-25T09:00:00Z: the same"
        " seed gives the same truth to the millisecond",
    )
    gen.add_argument(
        "--fresh-records",
        action="store_true",
        help="every event creates a new record (one CREATE per transaction) until the"
        " --records population is used up",
    )


def _faults_arguments(parser: argparse.ArgumentParser, d: SimulatorOptions) -> None:
    faults = parser.add_argument_group("delivery faults (probabilities per event)")
    faults.add_argument("--dup-rate", type=_rate, default=d.dup_rate, help="sent twice on a path")
    faults.add_argument("--ooo-rate", type=_rate, default=d.ooo_rate, help="delayed on a path")
    faults.add_argument(
        "--ooo-window", type=int, default=d.ooo_window, help="max later events that overtake one"
    )
    faults.add_argument("--ws-only-rate", type=_rate, default=d.ws_only_rate)
    faults.add_argument("--sqs-only-rate", type=_rate, default=d.sqs_only_rate)
    faults.add_argument("--foreign-org-rate", type=_rate, default=d.foreign_org_rate)
    faults.add_argument("--malformed-rate", type=_rate, default=d.malformed_rate)
    faults.add_argument(
        "--gap-rate",
        type=_rate,
        default=d.gap_rate,
        help="main-org change sent as GAP_CREATE/UPDATE/DELETE/UNDELETE: header and"
        " recordIds, no fields (the truth and REST API keep the change; re-read it)",
    )
    faults.add_argument(
        "--overflow-rate",
        type=_rate,
        default=d.overflow_rate,
        help="main-org transaction changing 2+ records and deleting none sent as one"
        " GAP_OVERFLOW per topic instead of its events (resync: REST query from its"
        " commitTimestamp)",
    )


def _proto_arguments(parser: argparse.ArgumentParser, d: SimulatorOptions) -> None:
    proto = parser.add_argument_group("protocol")
    proto.add_argument("--max-batch", type=int, default=d.max_batch, help="events per frame")
    proto.add_argument("--heartbeat-interval", type=float, default=d.heartbeat_interval)
    proto.add_argument(
        "--retention",
        type=int,
        default=d.retention,
        help="replayable events, 0 = all; resuming from an older replay id gets"
        " replay_id_expired and close 4410 (tests: Simulator.expire_replay_ids())",
    )
    proto.add_argument("--page-size", type=int, default=d.page_size, help="REST query page size")
    proto.add_argument(
        "--deleted-lookback",
        type=float,
        default=d.deleted_lookback_s,
        metavar="SECONDS",
        help="deleted-records resource: how far back start may be (default 15 days)",
    )
    proto.add_argument(
        "--deleted-max-span",
        type=float,
        default=d.deleted_max_span_s,
        metavar="SECONDS",
        help="deleted-records resource: longest start-to-end window (default 30 days)",
    )
    proto.add_argument(
        "--deleted-retention",
        type=float,
        default=d.deleted_retention_s,
        metavar="SECONDS",
        help="purge deletes older than this from the delete log (earliestDateAvailable"
        " moves up); 0 keeps every delete",
    )


def _out_arguments(parser: argparse.ArgumentParser, d: SimulatorOptions) -> None:
    out = parser.add_argument_group("outputs")
    out.add_argument("--truth", type=Path, help="write the ground truth (JSON lines) here")
    out.add_argument("--stats", type=Path, help="write generation/delivery stats (JSON) here")
    out.add_argument(
        "--event-log",
        type=Path,
        help="append one JSON line per main-org change here (its event id, what carried"
        " it: itself, its GAP_* form or a GAP_OVERFLOW; topic, change, records)",
    )


def _aws_arguments(parser: argparse.ArgumentParser, d: SimulatorOptions) -> None:
    aws = parser.add_argument_group("AWS (endpoint and credentials from AWS_* variables)")
    aws.add_argument(
        "--sqs-queue-url",
        action="append",
        default=[],
        dest="sqs_queue_urls",
        help="queue for malformed SQS messages (repeatable)",
    )
    aws.add_argument("--no-sns", action="store_true", help="do not publish; everything goes to WS")
    aws.add_argument("--aws-region", default=None, help="default: AWS_REGION/AWS_DEFAULT_REGION")


def options_from_args(ns: argparse.Namespace) -> SimulatorOptions:
    """Build the options from a namespace parsed with :func:`add_arguments`'s flags."""
    return SimulatorOptions(
        host=ns.host,
        port=ns.port,
        sf_port=ns.sf_port,
        token=ns.token,
        token_file=ns.token_file,
        rate=ns.rate,
        events=ns.events,
        records=ns.records,
        seed=ns.seed,
        org_id=ns.org_id,
        foreign_org_id=ns.foreign_org_id,
        dup_rate=ns.dup_rate,
        ooo_rate=ns.ooo_rate,
        ooo_window=ns.ooo_window,
        ws_only_rate=ns.ws_only_rate,
        sqs_only_rate=ns.sqs_only_rate,
        foreign_org_rate=ns.foreign_org_rate,
        malformed_rate=ns.malformed_rate,
        gap_rate=ns.gap_rate,
        overflow_rate=ns.overflow_rate,
        max_batch=ns.max_batch,
        heartbeat_interval=ns.heartbeat_interval,
        retention=ns.retention,
        page_size=ns.page_size,
        truth=ns.truth,
        stats=ns.stats,
        sqs_queue_urls=tuple(ns.sqs_queue_urls),
        sns=not ns.no_sns,
        aws_region=ns.aws_region,
        on_demand=ns.on_demand,
        wait_for_subscriber=ns.wait_for_subscriber,
        wall_clock=ns.wall_clock,
        fresh_records=ns.fresh_records,
        event_log=ns.event_log,
        deleted_lookback_s=ns.deleted_lookback,
        deleted_max_span_s=ns.deleted_max_span,
        deleted_retention_s=ns.deleted_retention,
    )
