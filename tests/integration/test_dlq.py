"""The dlq command over every dead-letter place: a moto server, real Redis, a real file."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession, web

from amt_ingest import aws
from amt_ingest.config import Settings
from amt_ingest.coordination import Coordinator, record_key
from amt_ingest.jobs import apply_record
from amt_ingest.operations.deadletters.command import NoTerminal, Options, run
from amt_ingest.operations.deadletters.letters import Filters, parse_age
from amt_ingest.operations.deadletters.sink import DeadLetters
from amt_ingest.routing.events import parse_event, parse_sqs_message
from amt_ingest.routing.router import Router
from amt_ingest.store import Store
from tests.conftest import SAMPLES
from tests.integration.test_coordination import RID, make_event, queued_jobs, run_job
from tests.integration.test_sqs_poller import drain, make_poller

ORG = "00D5g000004ZzABEA0"
OTHER_ORG = "00D5g000009XyZQEA0"
WS_URL = "ws://127.0.0.1:8765/stream"
ENVELOPE = json.loads((SAMPLES / "sqs-message-sns-envelope.json").read_text())["Body"]
RAW = json.loads((SAMPLES / "sqs-message-raw-delivery.json").read_text())
RAW_ATTRS = {k: v["StringValue"] for k, v in RAW["MessageAttributes"].items()}
ENVELOPE_EVENT_ID = "7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a"


@dataclass
class World:
    settings: Settings
    a: aws.BootstrapResult
    b: aws.BootstrapResult
    sqs: Any
    coordinator: Coordinator
    tmp: Path

    @property
    def dead_letters(self) -> DeadLetters:
        return DeadLetters(
            sqs=self.sqs,
            dlq_url=self.a.dlq_url,
            dlq_by_source={self.a.queue_url: self.a.dlq_url, self.b.queue_url: self.b.dlq_url},
            fallback_path=self.settings.dead_letter_file,
        )


@pytest.fixture
async def world(aws_env, redis_url, tmp_path: Path):
    base = Settings(redis_url=redis_url)
    # maxReceiveCount 1: the second receive of a message moves it to the DLQ.
    a = await aws.bootstrap(base, queue_name="dlq-test-a", max_receive_count=1)
    b = await aws.bootstrap(base, queue_name="dlq-test-b", max_receive_count=1)
    settings = Settings(
        redis_url=redis_url,
        sqs_queue_urls=[a.queue_url, b.queue_url],
        sqs_wait_seconds=0,
        dead_letter_file=tmp_path / "dead.jsonl",
        allowed_org_ids=[ORG],
    )
    client = aioredis.Redis.from_url(redis_url)
    async with aws.client(settings, "sqs") as sqs:
        yield World(settings, a, b, sqs, Coordinator(client, dedup_ttl=3600), tmp_path)
    await client.aclose()


# --- putting dead letters in place, the way the service does -------------------------


def _attributes(values: dict[str, str]) -> dict[str, dict[str, str]]:
    return {k: {"DataType": "String", "StringValue": v} for k, v in values.items()}


async def redrive(w: World, queue_url: str, body: str, attrs: dict[str, str] | None = None) -> None:
    """A message that keeps failing: SQS moves it to the DLQ after maxReceiveCount."""
    extra = {"MessageAttributes": _attributes(attrs)} if attrs else {}
    await w.sqs.send_message(QueueUrl=queue_url, MessageBody=body, **extra)
    first = await w.sqs.receive_message(QueueUrl=queue_url, VisibilityTimeout=0)
    assert len(first["Messages"]) == 1
    again = await w.sqs.receive_message(QueueUrl=queue_url, VisibilityTimeout=0)
    assert again.get("Messages", []) == []  # moved to the DLQ by SQS itself


async def reject_sqs(w: World, queue_url: str, body: str) -> None:
    """A malformed SQS message, dead-lettered by the poller's own path."""
    rejected = parse_sqs_message(body)
    assert await w.dead_letters.put(rejected, path="sqs", source=queue_url, body=body) == "sqs"


async def reject_ws(w: World, obj: Any, *, to_file: bool = False) -> None:
    """A bad WebSocket event: to the first queue's DLQ, or the file when SQS refuses."""
    rejected = parse_event(obj)
    dead = w.dead_letters
    if to_file:
        dead = DeadLetters(sqs=None, dlq_url=None, fallback_path=w.settings.dead_letter_file)
    where = await dead.put(rejected, path="ws", source=WS_URL)
    assert where == ("file" if to_file else "sqs")


async def dead_record(w: World) -> None:
    """A record whose job failed its only try (the database is down)."""
    await w.coordinator.handoff.ingest(
        [make_event(100, {"StageName": "A", "Name": "n"}, change="CREATE")], path="ws"
    )
    ((job, _),) = await queued_jobs(w.coordinator)
    down = Store.open("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    ctx = {
        "coordinator": w.coordinator,
        "store": down,
        "max_tries": 1,
        "job_id": job,
        "job_try": 1,
        "lease_ms": 5000,
    }
    assert await apply_record(ctx, "Opportunity", RID) == "dead_lettered"
    await down.close()


def lead_event(org: str = OTHER_ORG) -> dict[str, Any]:
    obj = json.loads((SAMPLES / "event-opportunity-update.json").read_text())
    obj.update(event_id="5a0c7d2e-1b3f-4c5d-8e9f-0a1b2c3d4e5f", org_id=org, topic="Lead")
    obj["payload"]["ChangeEventHeader"]["recordIds"] = ["00Q5g00000LeAdBEAQ"]
    return obj


# --- running the command -------------------------------------------------------------


@dataclass
class Result:
    status: int
    out: str
    err: str


async def dlq(
    w: World,
    action: str,
    *ids: str,
    settings: Settings | None = None,
    confirm: Any = None,
    **options: Any,
) -> Result:
    filter_names = {"topic", "org", "reason", "older_than", "newer_than", "record_id"}
    filters = Filters(ids=frozenset(ids), **{k: v for k, v in options.items() if k in filter_names})
    rest = {k: v for k, v in options.items() if k not in filter_names}
    rest.setdefault("wait_seconds", 0)
    out, err = io.StringIO(), io.StringIO()
    status = await run(
        settings or w.settings,
        Options(action=action, filters=filters, **rest),
        out=out,
        err=err,
        confirm=confirm or refuse_to_ask,
    )
    return Result(status, out.getvalue(), err.getvalue())


def refuse_to_ask(question: str) -> bool:
    raise NoTerminal


async def listed(w: World, **options: Any) -> list[dict[str, Any]]:
    result = await dlq(w, "list", as_json=True, **options)
    assert result.status == 0, result.err
    return [json.loads(line) for line in result.out.splitlines()]


def ids_of(letters: list[dict[str, Any]]) -> list[str]:
    return sorted(letter["id"] for letter in letters)


def by_reason(letters: list[dict[str, Any]]) -> Counter[str]:
    return Counter(f"{letter['place']}:{letter['reason']}" for letter in letters)


async def dlq_bodies(w: World, dlq_url: str) -> list[str]:
    """The bodies in a DLQ (received, then made visible again)."""
    reply = await w.sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)
    messages = reply.get("Messages", [])
    if messages:
        await w.sqs.change_message_visibility_batch(
            QueueUrl=dlq_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(messages)
            ],
        )
    return sorted(m["Body"] for m in messages)


async def depth(w: World, url: str) -> tuple[int, int]:
    attrs = await w.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    a = attrs["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


async def fill(w: World) -> float:
    """Dead letters in every place, in two batches; returns the instant between them
    (the older batch is more than 2 s older than it, the newer one is not older)."""
    await redrive(w, w.a.queue_url, ENVELOPE)  # Opportunity, ORG, redriven
    await redrive(w, w.a.queue_url, RAW["Body"], RAW_ATTRS)  # attachment, ORG, redriven
    await dead_record(w)  # Opportunity RID, ORG, job_failed
    await reject_ws(w, {"event_id": "x"}, to_file=True)  # file, invalid_event
    await asyncio.sleep(2.2)
    between = time.time()
    await reject_sqs(w, w.b.queue_url, "not json")  # DLQ b, invalid_json
    await reject_ws(w, lead_event())  # DLQ a, unknown_topic, OTHER_ORG
    return between


# --- list and show ---------------------------------------------------------------------


def field(text: str, name: str) -> str:
    """The value of one ``name: value`` line of ``show``."""
    (value,) = [
        line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(name + ":")
    ]
    return value


async def test_list_covers_every_place_and_each_filter(world: World):
    import datetime as dt

    w = world
    between = await fill(w)
    everything = await listed(w)
    assert by_reason(everything) == {
        "records:job_failed": 1,
        "sqs:redriven": 2,
        "sqs:invalid_json": 1,
        "sqs:unknown_topic": 1,
        "file:invalid_event": 1,
    }
    assert [letter["place"] for letter in everything] == ["records"] + ["sqs"] * 4 + ["file"]
    ids = {letter["id"] for letter in everything}
    assert len(ids) == 6

    assert by_reason(await listed(w, places=("sqs",))) == {
        "sqs:redriven": 2,
        "sqs:invalid_json": 1,
        "sqs:unknown_topic": 1,
    }
    assert by_reason(await listed(w, places=("records",))) == {"records:job_failed": 1}
    assert by_reason(await listed(w, places=("file",))) == {"file:invalid_event": 1}

    opportunity = await listed(w, topic="Opportunity")
    assert by_reason(opportunity) == {"records:job_failed": 1, "sqs:redriven": 1}
    assert {letter["event_id"] for letter in opportunity} == {None, ENVELOPE_EVENT_ID}
    assert by_reason(await listed(w, org=OTHER_ORG[:15])) == {"sqs:unknown_topic": 1}
    assert by_reason(await listed(w, org=ORG)) == {"records:job_failed": 1, "sqs:redriven": 2}
    assert by_reason(await listed(w, reason="redriven")) == {"sqs:redriven": 2}
    assert by_reason(await listed(w, reason="invalid_json")) == {"sqs:invalid_json": 1}
    assert by_reason(await listed(w, record_id=RID)) == {
        "records:job_failed": 1,
        "sqs:redriven": 1,
    }

    now = dt.datetime.fromtimestamp(between, dt.UTC)
    older = await listed(w, older_than=parse_age("2s"), now=now)
    assert by_reason(older) == {"records:job_failed": 1, "sqs:redriven": 2, "file:invalid_event": 1}
    newer = await listed(w, newer_than=parse_age("2s"), now=now)
    assert by_reason(newer) == {"sqs:invalid_json": 1, "sqs:unknown_topic": 1}
    assert await listed(w, older_than=parse_age("1d")) == []

    limited = await dlq(w, "list", limit=2)
    lines = limited.out.splitlines()
    assert lines[0].split() == ["ID", "PLACE", "TOPIC", "ORG", "REASON", "AGE", "EVENT/RECORD"]
    assert len(lines) == 1 + 2 + 1
    assert (
        lines[-1] == "2 dead letters (records 1, sqs 1, file 0); --limit 2 reached, more may match"
    )

    # Listing hid nothing for good: every DLQ message is visible again at once.
    assert await depth(w, w.a.dlq_url) == (3, 0)
    assert await depth(w, w.b.dlq_url) == (1, 0)


async def test_list_text_lines(world: World):
    w = world
    await redrive(w, w.a.queue_url, ENVELOPE)
    await reject_sqs(w, w.b.queue_url, "not json")
    result = await dlq(w, "list", places=("sqs",))
    header, envelope, junk, summary = result.out.splitlines()
    assert header.startswith("ID ")
    columns = envelope.split()
    assert columns[0].startswith("sqs:dlq-test-a-dlq:")
    assert columns[1:5] == ["sqs", "Opportunity", ORG, "redriven"]
    assert columns[5].endswith("s")  # seconds old
    assert columns[6] == ENVELOPE_EVENT_ID
    assert junk.split()[1:5] == ["sqs", "-", "-", "invalid_json"]
    assert summary == "2 dead letters (sqs 2)"


async def test_show_prints_one_in_full(world: World):
    w = world
    await redrive(w, w.a.queue_url, ENVELOPE)
    await dead_record(w)
    (envelope,) = await listed(w, places=("sqs",))
    shown = await dlq(w, "show", envelope["id"])
    assert shown.status == 0
    text = shown.out
    assert field(text, "id") == envelope["id"]
    assert field(text, "reason") == "redriven"
    assert field(text, "replays to") == w.a.queue_url
    receive_count = int(field(text, "receive count"))
    assert receive_count >= 2  # the source queue's receives, and this read
    assert field(text, "first received").startswith("20")
    assert '  "Type": "Notification",' in text
    assert "SNS Message (decoded):" in text and f'"event_id": "{ENVELOPE_EVENT_ID}"' in text
    assert await depth(w, w.a.dlq_url) == (1, 0)  # still there, visible

    as_json = json.loads((await dlq(w, "show", envelope["id"], as_json=True)).out)
    assert as_json["body"] == ENVELOPE
    assert int(as_json["system_attributes"]["ApproximateReceiveCount"]) > receive_count

    record = await dlq(w, "show", f"records:Opportunity:{RID}")
    assert field(record.out, "reason") == "job_failed" and '"StageName"' in record.out

    missing = await dlq(w, "show", "sqs:dlq-test-a-dlq:no-such-message")
    assert missing.status == 1
    assert "no dead letter with id sqs:dlq-test-a-dlq:no-such-message" in missing.err


# --- replay ----------------------------------------------------------------------------


async def route_queue(w: World, queue_url: str) -> None:
    """The real poller and router take everything in the queue."""
    poller = make_poller(
        w.settings,
        w.sqs,
        queue_url,
        w.coordinator,
        w.dead_letters,
        router=Router(w.coordinator.handoff, allowed_orgs=[ORG]),
    )
    await drain(poller, w.sqs, queue_url)


async def test_replayed_envelope_flows_through_the_router_and_twice_is_applied_once(
    world: World,
):
    w = world
    store = Store.open(f"sqlite+aiosqlite:///{w.tmp}/store.db")
    await store.ensure_schema()
    try:
        await redrive(w, w.a.queue_url, ENVELOPE)
        result = await dlq(w, "replay", places=("sqs",))
        assert result.status == 0, result.out + result.err
        assert f"event {ENVELOPE_EVENT_ID} sent to dlq-test-a" in result.out
        assert result.out.splitlines()[-1] == "replayed 1, skipped 0, failed 0"
        assert await depth(w, w.a.dlq_url) == (0, 0)
        await route_queue(w, w.a.queue_url)
        assert (await w.coordinator.observations.stats())["first:sqs:Opportunity"] == 1
        ((job, _),) = await queued_jobs(w.coordinator)
        assert await run_job(w.coordinator, store, job) == "released"
        (row,) = [r async for r in store.export()]
        assert row["fields"]["StageName"] == "Submitted"

        # The same event dead-lettered and replayed once more: a duplicate, no job.
        await redrive(w, w.a.queue_url, ENVELOPE)
        assert (await dlq(w, "replay", places=("sqs",))).status == 0
        await route_queue(w, w.a.queue_url)
        stats = await w.coordinator.observations.stats()
        assert stats["first:sqs:Opportunity"] == 1
        assert stats["duplicate:sqs:Opportunity"] == 1
        # No job was created after the first (r:1 stays in arq's queue: no arq worker ran it).
        assert [job_id for job_id, _ in await queued_jobs(w.coordinator)] == [job]
        assert await w.coordinator.redis.get("amt:jobseq") == b"1"
    finally:
        await store.close()


async def test_replay_keeps_attributes_skips_the_malformed_and_dry_run_changes_nothing(
    world: World,
):
    w = world
    await redrive(w, w.a.queue_url, RAW["Body"], RAW_ATTRS)
    await reject_sqs(w, w.b.queue_url, "not json")
    await reject_ws(w, {"event_id": "x"}, to_file=True)
    dead_file = w.settings.dead_letter_file.read_bytes()
    letters = {letter["reason"]: letter for letter in await listed(w)}

    dry = await dlq(w, "replay", dry_run=True)
    assert dry.status == 0
    assert f"would replay {letters['redriven']['id']}: event " in dry.out
    assert f"would skip {letters['invalid_json']['id']}: still malformed (invalid_json" in dry.out
    assert f"would skip {letters['invalid_event']['id']}: still malformed" in dry.out
    assert dry.out.splitlines()[-1] == "would replay 1, would skip 2 (dry run)"
    assert await depth(w, w.a.dlq_url) == (1, 0)
    assert await depth(w, w.b.dlq_url) == (1, 0)
    assert await depth(w, w.a.queue_url) == (0, 0)
    assert await depth(w, w.b.queue_url) == (0, 0)
    assert w.settings.dead_letter_file.read_bytes() == dead_file

    done = await dlq(w, "replay")
    assert done.status == 0
    assert "skipped: still malformed (invalid_json" in done.out
    assert done.out.splitlines()[-1] == "replayed 1, skipped 2, failed 0"
    (sent,) = (await w.sqs.receive_message(QueueUrl=w.a.queue_url, MessageAttributeNames=["All"]))[
        "Messages"
    ]
    assert sent["Body"] == RAW["Body"]
    assert {k: v["StringValue"] for k, v in sent["MessageAttributes"].items()} == RAW_ATTRS
    assert await dlq_bodies(w, w.b.dlq_url) == ["not json"]  # skipped, still there
    assert w.settings.dead_letter_file.read_bytes() == dead_file

    forced = await dlq(w, "replay", letters["invalid_json"]["id"], force=True)
    assert forced.status == 0 and "although malformed" in forced.out
    assert await depth(w, w.b.dlq_url) == (0, 0)
    (back,) = (await w.sqs.receive_message(QueueUrl=w.b.queue_url))["Messages"]
    assert back["Body"] == "not json"
    assert "reason" not in back.get("MessageAttributes", {})

    from_file = await dlq(w, "replay", letters["invalid_event"]["id"], force=True)
    assert from_file.status == 0
    assert w.settings.dead_letter_file.read_bytes() == b""
    (ws_reject,) = (await w.sqs.receive_message(QueueUrl=w.a.queue_url))["Messages"]
    assert json.loads(ws_reject["Body"]) == {"event_id": "x"}  # the WebSocket event


async def test_dead_records_are_replayed_into_a_job(world: World):
    w = world
    await dead_record(w)
    result = await dlq(w, "replay", places=("records",))
    assert result.status == 0
    assert f"records:Opportunity:{RID}: replayed, 3 changes back in a job" in result.out
    assert await w.coordinator.dead_records.list() == []
    # A fresh job owns the record (r:1 was the job that failed).
    assert await w.coordinator.redis.hget(record_key("Opportunity", RID), "job") == b"r:2"
    again = await dlq(w, "replay", places=("records",))
    assert again.out == "no dead letters match\n"


class Proxy:
    """An HTTP proxy in front of the moto server; ``hang`` names SQS actions that get no
    answer (the process is killed meanwhile), ``seen`` counts the actions."""

    def __init__(self, upstream: str, hang: frozenset[str] = frozenset()):
        self.upstream = upstream
        self.hang = hang
        self.seen: Counter[str] = Counter()
        self.hung = asyncio.Event()
        self.closing = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        action = request.headers.get("X-Amz-Target", "").removeprefix("AmazonSQS.")
        self.seen[action] += 1
        if action in self.hang:
            self.hung.set()
            await self.closing.wait()
            return web.Response(status=503)
        async with (
            ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=request.headers,
                data=await request.read(),
            ) as reply,
        ):
            body = await reply.read()
            skip = ("content-length", "transfer-encoding", "content-encoding")
            headers = {k: v for k, v in reply.headers.items() if k.lower() not in skip}
            return web.Response(status=reply.status, body=body, headers=headers)

    async def __aenter__(self) -> Proxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        self.closing.set()
        await self.runner.cleanup()


async def test_a_replay_killed_between_send_and_delete_loses_nothing(world: World, redis_url):
    """SIGKILL after the send, before the delete: the message is in the source queue
    and (after its visibility timeout) back in the DLQ. Replaying again sends a second
    copy; the router takes the event once and counts the other as a duplicate."""
    w = world
    await redrive(w, w.a.queue_url, ENVELOPE)
    async with Proxy(
        w.settings.aws_endpoint_url or "", hang=frozenset({"DeleteMessageBatch"})
    ) as proxy:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")}
        env.update(
            AWS_ENDPOINT_URL=proxy.url,
            AMT_REDIS_URL=redis_url,
            AMT_SQS_QUEUE_URLS=f"{w.a.queue_url},{w.b.queue_url}",
            AMT_DEAD_LETTER_FILE=str(w.tmp / "dead.jsonl"),
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "amt_ingest",
            "dlq",
            "replay",
            "--source",
            "sqs",
            "--visibility-timeout",
            "2",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await asyncio.wait_for(proxy.hung.wait(), 60)
        finally:
            process.kill()
            await process.wait()
        assert proxy.seen["SendMessage"] == 1
    assert await depth(w, w.a.queue_url) == (1, 0)  # sent before the kill
    for _ in range(100):  # back in the DLQ once the visibility timeout lapses
        if (await depth(w, w.a.dlq_url))[0] == 1:
            break
        await asyncio.sleep(0.1)
    assert await depth(w, w.a.dlq_url) == (1, 0)

    rerun = await dlq(w, "replay", places=("sqs",))
    assert rerun.out.splitlines()[-1] == "replayed 1, skipped 0, failed 0"
    assert await depth(w, w.a.dlq_url) == (0, 0)
    assert await depth(w, w.a.queue_url) == (2, 0)
    await route_queue(w, w.a.queue_url)
    stats = await w.coordinator.observations.stats()
    assert stats["first:sqs:Opportunity"] == 1
    assert stats["duplicate:sqs:Opportunity"] == 1
    assert len(await queued_jobs(w.coordinator)) == 1


# --- purge -----------------------------------------------------------------------------


async def test_purge_deletes_only_the_matches_one_by_one(world: World):
    w = world
    await fill(w)
    before = await listed(w)
    assert len(before) == 6

    dry = await dlq(w, "purge", reason="invalid_json", dry_run=True)
    assert dry.out.splitlines()[-1] == "would delete 1 (dry run)"
    assert ids_of(await listed(w)) == ids_of(before)

    refused = await dlq(w, "purge", reason="invalid_json")
    assert refused.status == 2 and "--yes" in refused.err
    declined = await dlq(w, "purge", reason="invalid_json", confirm=lambda question: False)
    assert declined.out == "nothing deleted\n"
    asked: list[str] = []
    assert len(await listed(w)) == 6

    def agree(question: str) -> bool:
        asked.append(question)
        return True

    async with Proxy(w.settings.aws_endpoint_url or "") as proxy:
        through_proxy = w.settings.model_copy(update={"aws_endpoint_url": proxy.url})
        purged = await dlq(w, "purge", reason="invalid_json", confirm=agree, settings=through_proxy)
    assert purged.status == 0, purged.out + purged.err
    assert asked == ["Delete 1 dead letter (records 0, sqs 1, file 0) for good? [y/N] "]
    assert purged.out.splitlines()[-1] == "deleted 1, failed 0"
    assert proxy.seen["DeleteMessageBatch"] == 1
    assert proxy.seen["PurgeQueue"] == 0
    assert ids_of(await listed(w)) == ids_of(
        [letter for letter in before if letter["reason"] != "invalid_json"]
    )

    assert (await dlq(w, "purge", places=("records",), topic="Opportunity", yes=True)).status == 0
    assert await w.coordinator.dead_records.list() == []
    assert (await dlq(w, "purge", places=("file",), yes=True)).status == 0
    assert w.settings.dead_letter_file.read_bytes() == b""
    assert (await dlq(w, "purge", org=OTHER_ORG, yes=True)).status == 0
    assert by_reason(await listed(w)) == {"sqs:redriven": 2}
    assert await depth(w, w.a.dlq_url) == (2, 0)
    assert await depth(w, w.b.dlq_url) == (0, 0)


async def test_purging_a_record_dead_lettered_again_since_it_was_read_keeps_it(world: World):
    from amt_ingest.operations.deadletters.letters import record_letter
    from amt_ingest.operations.deadletters.places import RecordDeadLetters

    w = world
    await dead_record(w)
    (entry,) = await w.coordinator.dead_records.list()
    stale = record_letter({**entry, "at": entry["at"] - 1})
    place = RecordDeadLetters(w.coordinator)
    assert "dead-lettered again" in (await place.delete(stale) or "")
    assert len(await w.coordinator.dead_records.list()) == 1
    assert await place.delete(record_letter(entry)) is None
    assert await w.coordinator.dead_records.list() == []
