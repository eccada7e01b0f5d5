"""One ``dlq`` command (list, show, replay, purge) over the chosen places, with progress."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TextIO

import orjson

from ...config import Settings
from ...coordination import Coordinator
from ..progress import Progress, progress_for
from .letters import (
    PLACES,
    DeadLetter,
    Filters,
    Place,
    Plan,
    letter_json,
    list_line,
    place_of,
    plan_replay,
    show_text,
    table,
)
from .places import FileDeadLetters, RecordDeadLetters, SqsDeadLetters, chunks

__all__ = ["NoTerminal", "Options", "run"]

Action = Literal["list", "show", "replay", "purge"]


@dataclass(frozen=True, slots=True)
class Options:
    """One ``dlq`` command, as parsed from the command line."""

    action: Action
    places: tuple[Place, ...] = PLACES
    filters: Filters = field(default_factory=Filters)
    limit: int | None = None
    as_json: bool = False
    dry_run: bool = False
    force: bool = False
    yes: bool = False
    visibility_timeout: int = 60
    wait_seconds: int = 1
    now: dt.datetime | None = None


#: Asks the operator a yes/no question; raises :class:`NoTerminal` when it cannot.
Confirm = Callable[[str], bool]


class NoTerminal(Exception):
    """There is nobody to ask (standard input is not a terminal)."""


def ask_on_terminal(question: str) -> bool:
    if not sys.stdin.isatty():
        raise NoTerminal
    return input(question).strip().lower() in ("y", "yes")


async def _in_daemon_thread(confirm: Confirm, question: str) -> bool:
    """Ask in a thread of its own while the event loop keeps holding the DLQ messages.

    Not the default executor: asyncio.run waits for its threads at exit, so Ctrl-C
    at the prompt would hang until Enter.
    """
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bool] = loop.create_future()

    def settle(result: bool | None, exc: BaseException | None) -> None:
        if answer.done():
            return
        if exc is not None:
            answer.set_exception(exc)
        else:
            answer.set_result(bool(result))

    def ask() -> None:
        result: bool | None = None
        error: BaseException | None = None
        try:
            result = confirm(question)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=ask, name="dlq-confirm", daemon=True).start()
    return await answer


@dataclass
class _Session:
    settings: Settings
    options: Options
    out: TextIO
    err: TextIO
    progress: Progress
    now: dt.datetime
    records: RecordDeadLetters | None = None
    sqs: SqsDeadLetters | None = None
    file: FileDeadLetters | None = None

    def say(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()


async def run(
    settings: Settings,
    options: Options,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    progress: Progress | None = None,
    confirm: Confirm = ask_on_terminal,
) -> int:
    """Run one ``dlq`` command; returns the exit status (0 done, 1 some dead letter
    failed or ``show`` found none, 2 refused). Raises
    :class:`~amt_ingest.errors.IngestError` when a place cannot be read or written
    (what was held is released; running the command again is safe)."""
    out = out or sys.stdout
    err = err or sys.stderr
    session = _Session(
        settings,
        options,
        out,
        err,
        progress or progress_for(out, err),
        options.now or dt.datetime.now(dt.UTC),
    )
    wanted = _places_wanted(options)
    status = 0
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(session.progress.end)
        if "records" in wanted:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(settings.redis_url)
            stack.push_async_callback(client.aclose)
            session.records = RecordDeadLetters(
                Coordinator(client, dedup_ttl=settings.dedup_ttl_seconds)
            )
        needs_sqs = "sqs" in wanted or ("file" in wanted and options.action == "replay")
        if needs_sqs and settings.sqs_queue_urls:
            from ... import aws

            sqs_client = await stack.enter_async_context(aws.client(settings, "sqs"))
            session.sqs = await stack.enter_async_context(
                SqsDeadLetters(
                    sqs_client,
                    queue_urls=settings.sqs_queue_urls,
                    visibility_timeout=options.visibility_timeout,
                    wait_seconds=options.wait_seconds,
                    max_body_bytes=settings.sqs_max_body_bytes,
                    warn=session.say,
                )
            )
            if "sqs" in wanted:
                await session.sqs.discover()
        elif "sqs" in wanted:
            session.say("no SQS queues configured (AMT_SQS_QUEUE_URLS): no dead-letter queues read")
        if "file" in wanted:
            session.file = FileDeadLetters(
                settings.dead_letter_file,
                queues=settings.sqs_queue_urls,
                max_body_bytes=settings.sqs_max_body_bytes,
            )
        letters, limited = await _collect(session, wanted)
        if options.action == "list":
            status = _list(session, letters, limited)
        elif options.action == "show":
            status = _show(session, letters)
        elif not letters:
            out.write("no dead letters match\n")
        elif options.action == "replay":
            status = await _replay(session, letters)
        else:
            status = await _purge(session, letters, confirm)
    return status


def _places_wanted(options: Options) -> tuple[Place, ...]:
    named = {place_of(i) for i in options.filters.ids}
    return tuple(p for p in options.places if not named or p in named)


async def _collect(session: _Session, wanted: Sequence[Place]) -> tuple[list[DeadLetter], bool]:
    """The matching dead letters of every wanted place, in place order; and whether
    ``--limit`` stopped the reading."""
    options = session.options
    filters = options.filters
    found: list[DeadLetter] = []
    limited = False

    def keep(letter: DeadLetter) -> bool:
        return filters.matches(letter, session.now)

    def enough(in_place: int) -> bool:
        nonlocal limited
        total = len(found) + in_place
        if options.action == "show" and total >= max(1, len(filters.ids)):
            return True
        if options.limit is not None and total >= options.limit:
            limited = True
            return True
        return False

    for place in wanted:
        if enough(0):
            break
        if place == "records" and session.records is not None:
            found += await session.records.scan(keep=keep, enough=enough)
        elif place == "sqs" and session.sqs is not None:
            names = frozenset(
                i.split(":")[1] for i in filters.ids if place_of(i) == "sqs" and i.count(":") >= 2
            )
            found += await session.sqs.scan(
                keep=keep, enough=enough, progress=session.progress, dlq_names=names or None
            )
        elif place == "file" and session.file is not None:
            found += await session.file.scan(keep=keep, enough=enough)
    return found, limited


def _summary(letters: Sequence[DeadLetter], places: Sequence[Place]) -> str:
    counts = Counter(letter.place for letter in letters)
    noun = "dead letter" if len(letters) == 1 else "dead letters"
    return f"{len(letters)} {noun} ({', '.join(f'{p} {counts[p]}' for p in places)})"


def _list(session: _Session, letters: list[DeadLetter], limited: bool) -> int:
    out, now = session.out, session.now
    summary = _summary(letters, session.options.places)
    if limited:
        summary += f"; --limit {session.options.limit} reached, more may match"
    if session.options.as_json:
        for letter in letters:
            out.write(orjson.dumps(letter_json(letter, now)).decode() + "\n")
        session.say(summary)
        return 0
    header = ["ID", "PLACE", "TOPIC", "ORG", "REASON", "AGE", "EVENT/RECORD"]
    if letters:
        for line in table([header] + [list_line(letter, now) for letter in letters]):
            out.write(line + "\n")
    out.write(summary + "\n")
    return 0


def _show(session: _Session, letters: list[DeadLetter]) -> int:
    if not letters:
        session.say(f"no dead letter with id {', '.join(sorted(session.options.filters.ids))}")
        return 1
    for letter in letters:
        if session.options.as_json:
            text = orjson.dumps(letter_json(letter, session.now), option=orjson.OPT_INDENT_2)
            session.out.write(text.decode() + "\n")
        else:
            session.out.write(show_text(letter, session.now) + "\n")
    return 0


async def _replay(session: _Session, letters: list[DeadLetter]) -> int:
    options, out = session.options, session.out
    max_bytes = session.settings.sqs_max_body_bytes
    plans = [
        (letter, plan_replay(letter, force=options.force, max_body_bytes=max_bytes))
        for letter in letters
    ]
    counts: Counter[str] = Counter()
    if options.dry_run:
        for letter, plan in plans:
            verb = "replay" if plan.replay else "skip"
            out.write(f"would {verb} {letter.id}: {plan.why}\n")
            counts[verb] += 1
        out.write(f"would replay {counts['replay']}, would skip {counts['skip']} (dry run)\n")
        return 0
    progress, total = session.progress, len(plans)
    progress.begin("replaying", total)
    for done, (letter, plan) in enumerate(plans, 1):
        if plan.replay:
            ok, outcome = await _replay_one(session, letter, plan)
            counts["replayed" if ok else "failed"] += 1
        else:
            outcome = f"skipped: {plan.why}"
            counts["skipped"] += 1
        progress.advance()
        progress.line(f"[{done}/{total}] {letter.id}: {outcome}")
    progress.end()
    out.write(
        f"replayed {counts['replayed']}, skipped {counts['skipped']}, failed {counts['failed']}\n"
    )
    return 1 if counts["failed"] else 0


async def _replay_one(session: _Session, letter: DeadLetter, plan: Plan) -> tuple[bool, str]:
    """Send, then settle: an interruption in between leaves a duplicate, never a loss."""
    if letter.place == "records":
        assert session.records is not None
        return True, await session.records.replay(letter)
    assert session.sqs is not None
    await session.sqs.send(letter)
    if letter.place == "sqs":
        failure = (await session.sqs.delete([letter]))[letter.id]
        if failure is not None:
            return False, (
                f"sent, but not deleted from the DLQ ({failure}); replaying it again "
                "is harmless (dedup by event_id)"
            )
    else:
        assert session.file is not None
        await session.file.remove([letter.id])
    return True, plan.why


async def _purge(session: _Session, letters: list[DeadLetter], confirm: Confirm) -> int:
    options, out = session.options, session.out
    if options.dry_run:
        for letter in letters:
            out.write(f"would delete {letter.id} ({letter.reason})\n")
        out.write(f"would delete {len(letters)} (dry run)\n")
        return 0
    if not options.yes:
        question = f"Delete {_summary(letters, options.places)} for good? [y/N] "
        try:
            agreed = await _in_daemon_thread(confirm, question)
        except NoTerminal:
            session.say("amt_ingest: purge deletes for good: pass --yes (no terminal to ask on)")
            return 2
        if not agreed:
            out.write("nothing deleted\n")
            return 0
    progress, total = session.progress, len(letters)
    progress.begin("purging", total)
    failed = 0
    done = 0
    for place in PLACES:
        batch = [letter for letter in letters if letter.place == place]
        for chunk in chunks(batch):
            outcomes = await _delete(session, place, chunk)
            for letter in chunk:
                done += 1
                failure = outcomes.get(letter.id)
                failed += failure is not None
                outcome = "deleted" if failure is None else f"NOT deleted: {failure}"
                progress.advance()
                progress.line(f"[{done}/{total}] {letter.id}: {outcome}")
    progress.end()
    out.write(f"deleted {total - failed}, failed {failed}\n")
    return 1 if failed else 0


async def _delete(
    session: _Session, place: Place, letters: Sequence[DeadLetter]
) -> dict[str, str | None]:
    """Delete dead letters of one place; id -> ``None`` or why it was not deleted."""
    if place == "sqs":
        assert session.sqs is not None
        return await session.sqs.delete(letters)
    if place == "file":
        assert session.file is not None
        await session.file.remove(letter.id for letter in letters)
        return {letter.id: None for letter in letters}
    assert session.records is not None
    return {letter.id: await session.records.delete(letter) for letter in letters}
