"""Traces: one trace per event, across both paths, through to the job that applies it.

Span shapes follow the OpenTelemetry messaging semantic conventions:

- ``receive passport`` / ``receive <queue>`` (CLIENT): one per WebSocket frame of
  events and per non-empty SQS receive, with ``messaging.batch.message_count``;
- ``settle ...`` (CLIENT): WebSocket credits and cursor, SQS deletes and
  visibility changes, as children of the receive span;
- ``process <topic>`` (CONSUMER): one per event and arrival, with ``amt.event_id``,
  ``amt.record_id``, ``amt.topic``, ``amt.path`` and ``amt.outcome``. It links to
  its batch's receive span; a duplicate arrival also links to the first arrival;
- ``apply <topic>`` (CONSUMER): one per job run on a record. Its parent is the
  first arrival of the event that created the job (the context travels through
  Redis), and it links every event coalesced into the run.

Every ``process`` span of an event has the same trace id, derived from its
``event_id`` (:func:`event_trace_id`): both arrivals and the job that applied
the event are one trace, and an operator who has an event id can compute the
trace id (``python -m amt_ingest trace EVENT_ID``).
"""

from __future__ import annotations

import contextvars
import hashlib
from collections.abc import Sequence
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import Attributes

__all__ = [
    "MESSAGING_SYSTEM",
    "ROOT",
    "SAMPLERS",
    "EventTraceIds",
    "LibraryCallsInsideOurSpans",
    "decode_context",
    "encode_context",
    "event_trace_id",
    "links_from",
    "make_sampler",
    "next_trace_id",
    "span_ids",
]

#: ``messaging.system`` per path.
MESSAGING_SYSTEM: Final = {"ws": "passport", "sqs": "aws_sqs"}
#: An empty context: a span started in it is the root of a new trace.
ROOT: Final = otel_context.Context()
#: Encoded context: 32 hex trace id, 16 hex span id, 2 hex flags.
CONTEXT_CHARS: Final = 50
SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)

#: Set around the start of a root span to give it a chosen trace id.
next_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "amt_next_trace_id", default=None
)


def event_trace_id(event_id: str) -> int:
    """The trace id of every span about ``event_id`` (128 bits of its BLAKE2b hash)."""
    value = int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=16).digest(), "big")
    return value or 1


class EventTraceIds(RandomIdGenerator):
    """Random ids, except a root span's trace id when :data:`next_trace_id` is set."""

    def generate_trace_id(self) -> int:
        chosen = next_trace_id.get()
        return chosen if chosen is not None else super().generate_trace_id()


def encode_context(context: SpanContext) -> str:
    """A sampled span's context as 50 hex characters for Redis; "" when not sampled."""
    if not (context.is_valid and context.trace_flags.sampled):
        return ""
    return f"{context.trace_id:032x}{context.span_id:016x}{int(context.trace_flags):02x}"


def decode_context(text: str | bytes) -> SpanContext | None:
    """The span context written by :func:`encode_context`, or None if it is not one."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    if len(text) != CONTEXT_CHARS:
        return None
    try:
        trace_id = int(text[:32], 16)
        span_id = int(text[32:48], 16)
        flags = int(text[48:], 16)
    except ValueError:
        return None
    context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return context if context.is_valid else None


def span_ids(span: trace.Span) -> dict[str, str]:
    """``trace_id``/``span_id`` of a span, for a log line about it ({} if not recording)."""
    context = span.get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def links_from(encoded: str | bytes, *, limit: int = 128) -> list[SpanContext]:
    """The contexts of a comma-separated list written by the ingest script."""
    if isinstance(encoded, bytes):
        encoded = encoded.decode("ascii", errors="replace")
    contexts: list[SpanContext] = []
    for part in encoded.split(","):
        context = decode_context(part)
        if context is not None:
            contexts.append(context)
            if len(contexts) >= limit:
                break
    return contexts


class LibraryCallsInsideOurSpans(Sampler):
    """Drop library client spans (Redis, database) that have no parent; else delegate.

    arq's queue polling, health checks and lease claims are library calls that
    belong to no event; recorded, each would be a trace of its own. Our own
    root CLIENT spans (receives) carry ``messaging.system`` when they start.
    """

    def __init__(self, delegate: Sampler):
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT and not (attributes and "messaging.system" in attributes):
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid:
                return SamplingResult(Decision.DROP)
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"LibraryCallsInsideOurSpans{{{self.delegate.get_description()}}}"


def make_sampler(name: str, arg: float | None) -> Sampler:
    """The sampler named by ``OTEL_TRACES_SAMPLER`` (with ``OTEL_TRACES_SAMPLER_ARG``)."""
    ratio = 1.0 if arg is None else arg
    base: Sampler
    if name == "always_on":
        base = ALWAYS_ON
    elif name == "always_off":
        base = ALWAYS_OFF
    elif name == "traceidratio":
        base = TraceIdRatioBased(ratio)
    elif name == "parentbased_always_on":
        base = ParentBased(ALWAYS_ON)
    elif name == "parentbased_always_off":
        base = ParentBased(ALWAYS_OFF)
    elif name == "parentbased_traceidratio":
        base = ParentBased(TraceIdRatioBased(ratio))
    else:
        raise ValueError(f"unknown sampler {name!r}; one of {', '.join(SAMPLERS)}")
    return LibraryCallsInsideOurSpans(base)
