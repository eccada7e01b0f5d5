"""The command line: ``python -m amt_ingest [COMMAND]`` (``run`` when none is given)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from . import __version__, early_signals
from .config import Settings, load_settings
from .errors import ConfigError, IngestError
from .routing.events import TOPICS
from .telemetry import configure_logging

if TYPE_CHECKING:
    from .coordination import Coordinator
    from .store import Store

__all__ = ["main"]

DESCRIPTION = """\
Mirrors Passport's Salesforce admissions records (Opportunity, External_Attachment__c,
Application_Item__c) into a database, from the Passport WebSocket and the SNS/SQS safety net.
Configuration comes from AMT_* and AWS_* environment variables (see README.md)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m amt_ingest", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"amt_ingest {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _add_run,
        _add_worker,
        _add_status,
        _add_trace,
        _add_simulate,
        _add_bootstrap,
        _add_throttle,
        _add_dlq,
        _add_resync,
        _add_db,
        _add_orgs,
        _add_export,
    ):
        add(sub)
    return parser


def _add_run(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="run the service: WebSocket listener, SQS pollers, router and a worker (default)",
        description="Run the service until SIGTERM or Ctrl-C. Each part can be turned off, "
        "here or with AMT_RUN_WEBSOCKET, AMT_RUN_SQS and AMT_RUN_WORKER; replicas that run "
        "the WebSocket share it: one subscribes, the others stand by.",
    )
    run.add_argument(
        "--no-websocket",
        action="store_true",
        help="do not take part in WebSocket intake (AMT_RUN_WEBSOCKET=false)",
    )
    run.add_argument(
        "--no-sqs",
        action="store_true",
        help="do not poll the SQS queues (AMT_RUN_SQS=false)",
    )
    run.add_argument(
        "--no-worker",
        action="store_true",
        help="do not run the embedded worker; run `worker` processes instead "
        "(AMT_RUN_WORKER=false)",
    )


def _add_worker(sub: Any) -> None:
    sub.add_parser(
        "worker",
        help="run an arq worker only (applies queued record jobs)",
        description="Run a worker that applies record jobs until SIGTERM or Ctrl-C "
        "(the same as `run --no-websocket --no-sqs`).",
    )


def _add_status(sub: Any) -> None:
    status = sub.add_parser(
        "status",
        help="live view: events per second per path, lag, queues, retries, WebSocket state",
        description="Show the running system from Redis (all processes) and one process's "
        "/readyz, refreshed every --interval seconds until Ctrl-C.",
    )
    status.add_argument(
        "--url",
        help="a service's HTTP endpoint for readiness (default http://127.0.0.1:$AMT_HTTP_PORT)",
    )
    status.add_argument("--interval", type=float, default=2.0, help="seconds between readings")
    status.add_argument("--once", action="store_true", help="print one reading and exit")
    status.add_argument("--json", action="store_true", help="with --once: print JSON")


def _add_trace(sub: Any) -> None:
    trace = sub.add_parser(
        "trace",
        help="print the trace id of an event (search it in the trace explorer)",
        description="Every span about an event (both arrivals, the job that applied it) "
        "is in one trace whose id derives from the event id.",
    )
    trace.add_argument("event_id", nargs="+")


def _add_simulate(sub: Any) -> None:
    from .simulator import add_arguments as add_simulator_arguments

    sim = sub.add_parser(
        "simulate",
        help="run the Passport simulator (WebSocket stream, SNS publishing, re-read API)",
        description="Run the Passport simulator until SIGTERM or Ctrl-C.",
    )
    add_simulator_arguments(sim)


def _add_bootstrap(sub: Any) -> None:
    boot = sub.add_parser(
        "bootstrap",
        help="create the SNS topics, monitoring queue, DLQ and subscriptions (idempotent)",
        description="Create (or find) the SNS topics, SQS queue, dead-letter queue, redrive "
        "policy and subscriptions on the configured AWS endpoint.",
    )
    boot.add_argument("--queue-name", default="amt-ingest-monitor", help="monitoring queue name")
    boot.add_argument(
        "--max-receive-count",
        type=int,
        default=5,
        help="receives before SQS moves a message to the DLQ (default 5)",
    )
    boot.add_argument(
        "--raw-delivery",
        action="store_true",
        help="subscribe with raw message delivery instead of SNS envelopes",
    )
    boot.add_argument(
        "--format",
        choices=("json", "env"),
        default="json",
        help="json (default) or env: an AMT_SQS_QUEUE_URLS=... line",
    )


def _add_throttle(sub: Any) -> None:
    throttle = sub.add_parser(
        "throttle",
        help="pause, slow down or resume every record job's retries at once",
        description="Set the retry throttle that every worker reads: `pause` holds all "
        "retries, `slow FACTOR` stretches each retry's delay, `resume` lifts it, `status` "
        "shows it. Held retries are not used up.",
    )
    throttle.add_argument("action", choices=("pause", "slow", "resume", "status"))
    throttle.add_argument("factor", nargs="?", type=float, help="with slow: the stretch, > 1")


def _add_dlq(sub: Any) -> None:
    dlq = sub.add_parser(
        "dlq",
        help="list, show, replay or purge dead letters (SQS DLQs, dead records, fallback file)",
        description="Dead letters in every place: the SQS dead-letter queue of each queue in "
        "AMT_SQS_QUEUE_URLS (messages SQS moved there after maxReceiveCount: reason "
        "`redriven`; input the service rejected: its reason), dead-lettered records in Redis "
        "(jobs that failed every try: reason `job_failed`) and the fallback file "
        "AMT_DEAD_LETTER_FILE. `list` prints one line each and a count; `show ID` one in "
        "full; `replay` sends SQS and file dead letters back to their source queue, then "
        "deletes them (an interruption leaves a duplicate, which dedup by event_id makes "
        "harmless), and gives records back to a job; `purge` deletes them for good. "
        "Reading a DLQ receives its messages: they are hidden from other readers while the "
        "command runs and visible again when it ends (after a crash, once "
        "--visibility-timeout lapses).",
    )
    dlq.add_argument("action", choices=("list", "show", "replay", "purge"))
    dlq.add_argument(
        "ids", nargs="*", metavar="ID", help="show: the dead letter; replay/purge: only these"
    )
    dlq.add_argument(
        "--source",
        choices=("sqs", "records", "file", "all"),
        default="all",
        help="which place (default all)",
    )
    dlq.add_argument("--topic", choices=list(TOPICS), help="only this record type")
    dlq.add_argument("--org", help="only this org id (15 or 18 characters)")
    dlq.add_argument(
        "--reason", help="only this reason (a rejection reason, redriven or job_failed)"
    )
    dlq.add_argument(
        "--older-than", type=_age, metavar="AGE", help="only older ones, e.g. 30m, 2h, 1d"
    )
    dlq.add_argument("--newer-than", type=_age, metavar="AGE", help="only newer ones")
    dlq.add_argument("--id", dest="record_id", help="only those of this record id")
    dlq.add_argument("--limit", type=_positive, metavar="N", help="at most N dead letters")
    dlq.add_argument("--json", action="store_true", help="list/show: JSON (lines) output")
    dlq.add_argument(
        "--dry-run", action="store_true", help="replay/purge: say what would happen, change nothing"
    )
    dlq.add_argument(
        "--force", action="store_true", help="replay: send bodies that still fail to parse too"
    )
    dlq.add_argument("--yes", action="store_true", help="purge: do not ask for confirmation")
    dlq.add_argument(
        "--visibility-timeout",
        type=_positive,
        default=60,
        metavar="SECONDS",
        help="how long DLQ messages read stay hidden if the command dies (default 60)",
    )


def _add_resync(sub: Any) -> None:
    resync = sub.add_parser(
        "resync",
        help="learn again every change of a type since an instant, or reconcile it in full",
        description="--since: mark every record of TOPIC that Salesforce says was modified at "
        "or after the instant for a re-read, and tombstone every record it says was deleted "
        "since (the deleted-records resource). --full: re-read every record the store holds "
        "as live; those Salesforce no longer has become tombstones (the remedy when "
        "Salesforce no longer knows every delete of a window). The service's workers do the "
        "reading and apply it. Resumable: run the same command again (same --id) to "
        "continue an interrupted resync.",
    )
    resync.add_argument("topic", choices=list(TOPICS))
    window = resync.add_mutually_exclusive_group(required=True)
    window.add_argument("--since", help="ISO-8601 instant, e.g. 2026-11-25T09:00:00Z")
    window.add_argument(
        "--full", action="store_true", help="reconcile every live record the store holds"
    )
    resync.add_argument(
        "--org",
        help="org id of the records (--since: default AMT_ALLOWED_ORG_IDS if one; "
        "--full: default every org)",
    )
    resync.add_argument(
        "--rate", type=float, help="records marked per second (default AMT_RESYNC_RATE)"
    )
    resync.add_argument("--id", dest="resync_id", help="resync id, to resume one (default: new)")


def _add_db(sub: Any) -> None:
    db = sub.add_parser(
        "db",
        help="upgrade the database schema (migrations) or show its revision",
        description="`upgrade [REVISION]` runs the schema migrations up to REVISION (default "
        "head, the newest); safe to repeat and to run while other processes start. `current` "
        "prints the database's revision. The service upgrades by itself at start unless "
        "AMT_DB_AUTO_UPGRADE=false.",
    )
    db.add_argument("action", choices=("upgrade", "current"))
    db.add_argument(
        "revision",
        nargs="?",
        metavar="REVISION",
        help="upgrade: the target revision (default head)",
    )


def _add_orgs(sub: Any) -> None:
    orgs = sub.add_parser(
        "orgs",
        help="add, remove or list the allowed Salesforce orgs kept in the database",
        description="The orgs whose events are kept are those of AMT_ALLOWED_ORG_IDS and those "
        "added here (none at all: every org). A change reaches running services within "
        "AMT_ORGS_CACHE_S seconds. `list` prints both as JSON lines.",
    )
    orgs.add_argument("action", choices=("add", "remove", "list"))
    orgs.add_argument(
        "org_id", nargs="?", metavar="ORG_ID", help="add, remove: the org id (15 or 18 characters)"
    )
    orgs.add_argument("--note", help="add: a note kept with the org (who, why)")


def _add_export(sub: Any) -> None:
    export = sub.add_parser(
        "export",
        help="print every stored record as JSON lines, sorted by topic and id",
        description="Print the store as JSON lines: "
        '{"topic", "id", "org_id", "deleted", "fields"}, sorted by topic then id.',
    )
    export.add_argument("--output", "-o", help="write to this file instead of standard output")


async def _bootstrap(settings: Settings, args: argparse.Namespace) -> int:
    from .aws import bootstrap

    result = await bootstrap(
        settings,
        queue_name=args.queue_name,
        max_receive_count=args.max_receive_count,
        raw_delivery=args.raw_delivery,
    )
    if args.format == "env":
        print(f"AMT_SQS_QUEUE_URLS={result.queue_url}")
    else:
        print(
            orjson.dumps(
                {
                    "topics": result.topic_arns,
                    "queue_url": result.queue_url,
                    "dlq_url": result.dlq_url,
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    return 0


async def _export(settings: Settings, args: argparse.Namespace) -> int:
    from .store import Store

    store = Store.open(settings.database_url)
    out: Any = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115, ASYNC230
    try:
        await store.ensure_schema(upgrade=settings.db_auto_upgrade)
        async for record in store.export():
            out.write(orjson.dumps(record) + b"\n")
    finally:
        if args.output:
            out.close()
        else:
            out.flush()
        await store.close()
    return 0


async def _db(settings: Settings, args: argparse.Namespace) -> int:
    from .store import migrations

    url = settings.database_url
    if args.action == "current":
        if args.revision is not None:
            print("amt_ingest: db current takes no REVISION", file=sys.stderr)
            return 2
        at = await migrations.current(url)
        newest = migrations.head()
        if at is None:
            print(f"none (empty database; run `{migrations.UPGRADE_COMMAND}`)")
        elif at == newest:
            print(f"{at} (head)")
        else:
            print(f"{at} (head is {newest}; run `{migrations.UPGRADE_COMMAND}`)")
        return 0
    before = await migrations.current(url)
    after = await migrations.upgrade(url, args.revision or "head")
    suffix = " (head)" if after == migrations.head() else ""
    if before == after:
        print(f"database schema already at {after}{suffix}")
    else:
        print(f"database schema upgraded from {before or 'none'} to {after}{suffix}")
    return 0


async def _orgs(settings: Settings, args: argparse.Namespace) -> int:
    from .policy import check_org_id, org_prefix
    from .store import Store

    org_id: str | None = args.org_id
    note: str | None = args.note
    problem = None
    if args.action == "list" and (org_id is not None or note is not None):
        problem = "orgs list takes no ORG_ID or --note"
    elif args.action == "remove" and note is not None:
        problem = "--note goes with orgs add"
    elif args.action != "list":
        try:
            check_org_id(org_id or "")
        except ValueError as exc:
            problem = f"orgs {args.action} needs an ORG_ID: {exc}"
    if problem is not None:
        print(f"amt_ingest: {problem}", file=sys.stderr)
        return 2
    store = Store.open(settings.database_url)
    try:
        await store.ensure_schema(upgrade=settings.db_auto_upgrade)
        if org_id is None:
            await _orgs_list(settings, store)
        elif args.action == "add":
            org, added = await store.orgs.add(org_id, note=note)
            if added:
                print(
                    f"added {org.org_id}; running services keep its events within "
                    f"AMT_ORGS_CACHE_S ({settings.orgs_cache_s:g} s)"
                )
            else:
                print(f"{org_id} is already allowed (as {org.org_id})")
        else:
            removed = await store.orgs.remove(org_id)
            if removed is None:
                print(f"{org_id} is not in the allowed_org table; nothing removed")
            else:
                print(f"removed {removed.org_id}")
            for env_org in settings.allowed_org_ids:
                if org_prefix(env_org) == org_prefix(org_id):
                    print(f"{env_org} stays allowed through AMT_ALLOWED_ORG_IDS")
    finally:
        await store.close()
    return 0


async def _orgs_list(settings: Settings, store: Store) -> None:
    entries: list[dict[str, Any]] = [
        {"org_id": org, "source": "AMT_ALLOWED_ORG_IDS"} for org in settings.allowed_org_ids
    ]
    entries += [
        {
            "org_id": row.org_id,
            "source": "database",
            "added_at": row.added_at.isoformat(),
            "note": row.note,
        }
        for row in await store.orgs.list()
    ]
    for entry in entries:
        sys.stdout.write(orjson.dumps(entry).decode() + "\n")
    if not entries:
        print("no allowed orgs: the events of every org are kept", file=sys.stderr)


async def _throttle(settings: Settings, args: argparse.Namespace) -> int:
    import redis.asyncio as aioredis

    from .coordination import Coordinator

    if args.action == "slow" and (args.factor is None or args.factor <= 1):
        print(
            "amt_ingest: throttle slow needs a FACTOR above 1, e.g. `throttle slow 4`",
            file=sys.stderr,
        )
        return 2
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        coordinator = Coordinator(client, dedup_ttl=settings.dedup_ttl_seconds)
        if args.action == "pause":
            await coordinator.throttle.set("pause")
        elif args.action == "slow":
            await coordinator.throttle.set("slow", args.factor)
        elif args.action == "resume":
            await coordinator.throttle.set(None)
        mode, factor = await coordinator.throttle.get()
    finally:
        await client.aclose()
    if mode is None:
        print("retries: normal")
    elif mode == "slow":
        print(f"retries: slowed x{factor:g}")
    else:
        print("retries: paused")
    return 0


def _age(text: str) -> object:
    from .operations.deadletters.letters import parse_age

    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


async def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    from .operations.deadletters import command as dlq
    from .operations.deadletters.letters import PLACES, Filters

    if args.action == "show" and len(args.ids) != 1:
        print("amt_ingest: dlq show takes one ID (see `dlq list`)", file=sys.stderr)
        return 2
    if args.action == "list" and args.ids:
        print("amt_ingest: dlq list takes no ID (use `dlq show ID`)", file=sys.stderr)
        return 2
    options = dlq.Options(
        action=args.action,
        places=PLACES if args.source == "all" else (args.source,),
        filters=Filters(
            topic=args.topic,
            org=args.org,
            reason=args.reason,
            older_than=args.older_than,
            newer_than=args.newer_than,
            record_id=args.record_id,
            ids=frozenset(args.ids),
        ),
        limit=args.limit,
        as_json=args.json,
        dry_run=args.dry_run,
        force=args.force,
        yes=args.yes,
        visibility_timeout=args.visibility_timeout,
    )
    return await dlq.run(settings, options)


async def _resync(settings: Settings, args: argparse.Namespace) -> int:
    import uuid

    import redis.asyncio as aioredis

    from .coordination import Coordinator

    since = None if args.full else _instant(args.since)
    if not args.full and since is None:
        print(f"amt_ingest: --since {args.since!r} is not an ISO-8601 instant", file=sys.stderr)
        return 2
    org = args.org or (settings.allowed_org_ids[0] if len(settings.allowed_org_ids) == 1 else None)
    if org is None and since is not None:
        print(
            "amt_ingest: name the org with --org (AMT_ALLOWED_ORG_IDS holds no single org)",
            file=sys.stderr,
        )
        return 2
    resync_id = args.resync_id or f"cli-{uuid.uuid4().hex[:12]}"
    client = aioredis.Redis.from_url(settings.redis_url)
    coordinator = Coordinator(client, dedup_ttl=settings.dedup_ttl_seconds)
    bar = _Marking(f"resync {args.topic}")
    try:
        if since is None:
            return await _resync_full(settings, args, coordinator, resync_id, bar)
        assert org is not None
        return await _resync_since(settings, args, coordinator, resync_id, bar, since, org)
    finally:
        bar.close()
        await client.aclose()


async def _resync_full(
    settings: Settings,
    args: argparse.Namespace,
    coordinator: Coordinator,
    resync_id: str,
    bar: _Marking,
) -> int:
    from .salesforce.resync import run_full_resync
    from .store import Store

    store = Store.open(settings.database_url)
    try:
        result = await run_full_resync(
            coordinator,
            store,
            topic=args.topic,
            org=args.org,
            resync_id=resync_id,
            rate=args.rate or settings.resync_rate,
            on_progress=bar.update,
        )
    finally:
        await store.close()
    print(
        f"resync {resync_id}: {result.found} live records in the store, "
        f"{result.marked} marked for a re-read, {result.already_done} done before"
    )
    return 0


async def _resync_since(
    settings: Settings,
    args: argparse.Namespace,
    coordinator: Coordinator,
    resync_id: str,
    bar: _Marking,
    since: dt.datetime,
    org: str,
) -> int:
    from .salesforce.client import SalesforceClient
    from .salesforce.resync import position_at, run_resync

    salesforce = SalesforceClient.from_settings(settings)
    try:
        result = await run_resync(
            coordinator,
            salesforce,
            topic=args.topic,
            position=position_at(since),
            org=org,
            resync_id=resync_id,
            rate=args.rate or settings.resync_rate,
            on_progress=bar.update,
        )
    finally:
        await salesforce.aclose()
    print(
        f"resync {resync_id}: {result.found - result.deleted} records modified and "
        f"{result.deleted} deleted since {since.isoformat()}, {result.marked} marked, "
        f"{result.already_done} done before"
    )
    if result.deletes_known_from is not None:
        print(
            f"amt_ingest: Salesforce no longer knows every delete before "
            f"{result.deletes_known_from}: run `python -m amt_ingest resync {args.topic} --full`",
            file=sys.stderr,
        )
        return 3
    return 0


def _instant(text: str) -> dt.datetime | None:
    """An ISO-8601 instant (``Z`` or an offset; a naive one is UTC), or None."""
    try:
        instant = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=dt.UTC)


class _Marking:
    """A resync's progress (``on_progress(done, total)``): a bar on a terminal."""

    def __init__(self, label: str):
        from .operations.progress import progress_for

        self.label = label
        self.progress = progress_for(sys.stdout, sys.stderr)
        self.shown: int | None = None

    def update(self, done: int, total: int) -> None:
        if self.shown is None:
            self.progress.begin(self.label, total)
            self.shown = 0
        self.progress.advance(done - self.shown)
        self.shown = done

    def close(self) -> None:
        self.progress.end()


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from .service import run_service

    off = {
        field: False
        for field, flag in (
            ("run_websocket", "no_websocket"),
            ("run_sqs", "no_sqs"),
            ("run_worker", "no_worker"),
        )
        if getattr(args, flag, False)
    }
    return await run_service(settings.model_copy(update=off))


async def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from .service import run_service

    roles = {"run_websocket": False, "run_sqs": False, "run_worker": True}
    return await run_service(settings.model_copy(update=roles))


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    from .operations.status import run_status

    url = args.url or f"http://127.0.0.1:{settings.http_port}"
    return await run_status(
        settings, url=url, interval=args.interval, once=args.once, as_json=args.json
    )


#: The commands that read the settings, by name.
COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "run": _run,
    "worker": _worker,
    "status": _status,
    "bootstrap": _bootstrap,
    "export": _export,
    "db": _db,
    "orgs": _orgs,
    "throttle": _throttle,
    "dlq": _dlq,
    "resync": _resync,
}


def _trace(args: argparse.Namespace) -> int:
    from .telemetry.tracing import event_trace_id

    for event_id in args.event_id:
        print(f"{event_id} {event_trace_id(event_id):032x}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from .simulator import options_from_args, run_simulator

    configure_logging("info")
    asyncio.run(run_simulator(options_from_args(args)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    if command not in ("run", "worker"):
        # Only the service turns SIGTERM into a clean shutdown (see __main__).
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if early_signals:
            return 128 + early_signals[0]
    try:
        if command == "trace":
            return _trace(args)
        if command == "simulate":
            return _simulate(args)
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        return asyncio.run(COMMANDS[command](settings, args))
    except ConfigError as exc:
        print(f"amt_ingest: configuration error: {exc}", file=sys.stderr)
        return 2
    except IngestError as exc:
        print(f"amt_ingest: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
