"""The router's seams: what a hand-off answers, how hand-offs keep their order, and the
places the router hands to (the durable hand-off, the dead letters).

No I/O here: :mod:`amt_ingest.coordination` implements :class:`HandOff` on Redis,
:mod:`amt_ingest.operations.deadletters` implements :class:`DeadLetterSink`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .events import Event, Rejected

__all__ = ["DeadLetterSink", "HandOff", "IngestResult", "Turn"]


@dataclass(frozen=True, slots=True)
class Turn:
    """Keeps hand-offs that are under way at once in order: this one's ingest runs
    after ``previous`` is done (the previous hand-off's ran, or it failed), and
    ``done`` is set once this one's ran."""

    previous: asyncio.Future[None] | None
    done: asyncio.Future[None]

    def finish(self) -> None:
        """This hand-off's scripts ran, or will not run (no events, or it failed):
        the next may go once the one before is done too, never earlier."""
        if self.done.done():
            return
        if self.previous is None or self.previous.done():
            self.done.set_result(None)
        else:
            self.previous.add_done_callback(lambda _: self.finish())


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What the hand-off decided for one event: ``first``, ``duplicate`` or ``stale``."""

    outcome: str
    first_path: str
    first_context: str
    #: Records this event handed to a job (they had none; jobs are shared per batch).
    scheduled: int
    #: Path lag (ms) when this is the first arrival on the second path, else -1.
    lag_ms: int = -1


class HandOff(Protocol):
    """Where events are handed off durably (deduplicated, merged, jobs scheduled)."""

    #: Records pending as of the last hand-off (read in the same round trip).
    last_pending: int

    async def ingest(
        self,
        events: Sequence[Event],
        *,
        path: str,
        contexts: Sequence[str] | None = None,
        track_one_path: bool = False,
        turn: Turn | None = None,
        counts: Mapping[str, int] | None = None,
        lease: str | None = None,
    ) -> list[IngestResult]: ...

    async def count(self, counters: Mapping[str, int]) -> None: ...

    async def pending_records(self) -> int: ...


class DeadLetterSink(Protocol):
    """Where rejected input is kept with its reason."""

    async def put(
        self, rejected: Rejected, *, path: str, source: str, body: str | None = None
    ) -> str: ...
