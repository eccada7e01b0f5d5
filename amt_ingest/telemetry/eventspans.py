"""The spans there is one of per event or per record, recorded at a few microseconds each.

Every arrival of every event gets one ``process <topic>`` span, and every record
a job run applies one ``apply <topic>`` span (see :mod:`.tracing` for their
shape): they carry what an operator looks for (the event and record ids, the
path, the outcome, the link from a duplicate to its first arrival, the events a
run applied) and the apply span is a child of the event's first arrival. At
tens of thousands of events a second, the SDK's span machinery (a span object,
bounded attributes, links, locks, a processor call) cost more than routing the
event, and its encoding in the export thread as much again.

For each kind, recorders with one face (:class:`EventSpans`, :class:`ApplySpans`),
chosen by :func:`event_spans` and :func:`apply_spans`:

- direct (:class:`DirectEventSpans`, :class:`DirectApplySpans`) when the process
  exports spans only by OTLP through :class:`~.otlp.SpanExporter`: each span's
  protobuf bytes are written when it ends (the parts that repeat encoded once)
  and handed to the SDK's batch span processor as a
  :class:`~.otlp.PreEncodedSpan`, which the exporter copies into its request as
  it is. Batching, queue limits, flushing and shutdown stay the SDK's. The bytes
  decode to the spans the SDK path records (``tests/unit/test_eventspans.py``);
- the SDK's spans (:class:`SdkEventSpans`, :class:`SdkApplySpans`) otherwise
  (other span processors, an exporter of an SDK release this module does not know);
- :class:`NoEventSpans` when telemetry is off.

Nothing is lost to the operator: same spans, same attributes, same links, same
sampling (the configured sampler decides as it would for the SDK's span).
"""

from __future__ import annotations

import functools
import random
import struct
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, StaticSampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from .otlp import (
    EMPTY_STATUS,
    PreEncodedSpan,
    SpanExporter,
    attribute_field,
    flags_field,
    head_field,
    link_field,
    spans_field,
    status_field,
    string_attribute_field,
)
from .tracing import (
    MESSAGING_SYSTEM,
    ROOT,
    LibraryCallsInsideOurSpans,
    encode_context,
    event_trace_id,
    next_trace_id,
    span_ids,
)

__all__ = [
    "ApplySpans",
    "DirectApplySpans",
    "DirectEventSpans",
    "EventSpans",
    "NoEventSpans",
    "SdkApplySpans",
    "SdkEventSpans",
    "apply_spans",
    "event_spans",
]

_pack_fixed64 = struct.Struct("<Q").pack
_FIRST_ARRIVAL: Final = {"amt.link": "first_arrival"}
_SAMPLED: Final = frozenset({Decision.RECORD_AND_SAMPLE})


class EventSpans(Protocol):
    """Opens a batch's ``process`` spans before its hand-off, closes them after."""

    def open(
        self,
        batch: SpanContext,
        path: str,
        topic: str,
        event_id: str,
        record_id: str,
        record_count: int,
        change_type: str,
    ) -> Any:
        """A span for one arrival, started now (``batch``: the receive span, linked)."""

    def context(self, span: Any) -> str:
        """Its context as :func:`~.tracing.encode_context` writes it ("" when not sampled)."""

    def ids(self, span: Any) -> dict[str, str]:
        """``trace_id``/``span_id`` for its log line ({} when there are none)."""

    def close(
        self,
        span: Any,
        outcome: str,
        *,
        first_path: str = "",
        first_arrival: SpanContext | None = None,
        lag_s: float | None = None,
        error: str | None = None,
    ) -> None:
        """End it with its outcome (and, for a duplicate, the link to the first
        arrival); ``error`` marks it failed (``outcome`` "" leaves it out)."""


class NoEventSpans:
    """Records nothing (telemetry off)."""

    def open(
        self,
        batch: SpanContext,
        path: str,
        topic: str,
        event_id: str,
        record_id: str,
        record_count: int,
        change_type: str,
    ) -> None:
        return None

    def context(self, span: None) -> str:
        return ""

    def ids(self, span: None) -> dict[str, str]:
        return {}

    def close(
        self,
        span: None,
        outcome: str,
        *,
        first_path: str = "",
        first_arrival: SpanContext | None = None,
        lag_s: float | None = None,
        error: str | None = None,
    ) -> None:
        return None


def _span_name(topic: str) -> str:
    return f"process {topic}"


class SdkEventSpans:
    """The SDK's spans (any processors, any exporter; a no-op tracer when off)."""

    def __init__(self, tracer: trace.Tracer):
        self.tracer = tracer

    def open(
        self,
        batch: SpanContext,
        path: str,
        topic: str,
        event_id: str,
        record_id: str,
        record_count: int,
        change_type: str,
    ) -> Span:
        # A root span whose trace id is the event's: both arrivals share a trace.
        token = next_trace_id.set(event_trace_id(event_id))
        try:
            return self.tracer.start_span(
                _span_name(topic),
                context=ROOT,
                kind=SpanKind.CONSUMER,
                links=[Link(batch)] if batch.is_valid else None,
                attributes={
                    "messaging.system": MESSAGING_SYSTEM.get(path, path),
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": topic,
                    "amt.event_id": event_id,
                    "amt.record_id": record_id,
                    "amt.record_count": record_count,
                    "amt.topic": topic,
                    "amt.path": path,
                    "amt.change_type": change_type,
                },
            )
        finally:
            next_trace_id.reset(token)

    def context(self, span: Span) -> str:
        return encode_context(span.get_span_context())

    def ids(self, span: Span) -> dict[str, str]:
        return span_ids(span)

    def close(
        self,
        span: Span,
        outcome: str,
        *,
        first_path: str = "",
        first_arrival: SpanContext | None = None,
        lag_s: float | None = None,
        error: str | None = None,
    ) -> None:
        if outcome:
            span.set_attribute("amt.outcome", outcome)
        if first_path:
            span.set_attribute("amt.first_path", first_path)
        if first_arrival is not None:
            span.add_link(first_arrival, _FIRST_ARRIVAL)
        if lag_s is not None:
            span.set_attribute("amt.path_lag_s", lag_s)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()


class _Open:
    """A direct span between open and close."""

    __slots__ = ("context", "head", "link", "sampled", "span_id", "start", "tail", "trace_id")

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        sampled: bool,
        start: int,
        head: bytes,
        tail: bytes,
        link: bytes,
    ):
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.start = start
        #: The trace id, span id, name and kind fields.
        self.head = head
        #: The attributes it starts with (messaging.system to amt.change_type).
        self.tail = tail
        #: The link field to the batch's receive span (b"" without one).
        self.link = link
        #: As :func:`~.tracing.encode_context` writes it.
        self.context = f"{trace_id:032x}{span_id:016x}01" if sampled else ""


# -- the parts of a direct span that repeat, encoded once (values of few kinds) --

#: Only the sampled flag of a pre-encoded span's context is read.
_SAMPLED_CONTEXT: Final = SpanContext(1, 1, is_remote=False, trace_flags=TraceFlags(1))


def _ids(trace_id: int, span_id: int) -> dict[str, str]:
    return {"trace_id": f"{trace_id:032x}", "span_id": f"{span_id:016x}"}


@functools.lru_cache(maxsize=4096)
def _constant_attribute(key: str, value: str | int) -> bytes:
    """An attribute whose values are few (outcomes, counts, tries). Never a bool:
    True and 1 are one key to the cache."""
    return attribute_field(key, value)


@functools.lru_cache(maxsize=1024)
def _process_head(path: str, topic: str) -> tuple[bytes, bytes]:
    """A process span's name and kind fields, and its attributes before the event id."""
    return (
        head_field(_span_name(topic), SpanKind.CONSUMER.value),
        b"".join(
            (
                attribute_field("messaging.system", MESSAGING_SYSTEM.get(path, path)),
                attribute_field("messaging.operation.type", "process"),
                attribute_field("messaging.operation.name", "process"),
                attribute_field("messaging.destination.name", topic),
            )
        ),
    )


@functools.lru_cache(maxsize=1024)
def _process_after(path: str, topic: str, change_type: str) -> bytes:
    """A process span's attributes after the record count."""
    return b"".join(
        (
            attribute_field("amt.topic", topic),
            attribute_field("amt.path", path),
            attribute_field("amt.change_type", change_type),
        )
    )


@functools.lru_cache(maxsize=64)
def _receive_link(trace_id: int, span_id: int) -> bytes:
    """The link of every process span of a batch to its (local) receive span."""
    return link_field(Link(SpanContext(trace_id, span_id, is_remote=False)))


@functools.lru_cache(maxsize=64)
def _apply_head(topic: str) -> bytes:
    return head_field(f"apply {topic}", SpanKind.CONSUMER.value)


@functools.lru_cache(maxsize=16)
def _queue_attributes(queue: str) -> bytes:
    """An apply span's first attributes."""
    return b"".join(
        (
            attribute_field("messaging.system", "arq"),
            attribute_field("messaging.operation.type", "process"),
            attribute_field("messaging.destination.name", queue),
        )
    )


class _DirectSpans:
    """What both direct recorders share: where a finished span goes, the sampler,
    the clock and the span ids (both injectable for tests)."""

    def __init__(
        self,
        processor: BatchSpanProcessor,
        resource: Resource,
        scope: InstrumentationScope,
        sampler: Sampler,
        *,
        clock: Callable[[], int] = time.time_ns,
        span_ids: Callable[[], int] | None = None,
    ):
        self.processor = processor
        self.resource = resource
        self.scope = scope
        self.sampler = sampler
        self.clock = clock
        self._span_id = span_ids or _random_span_id
        #: The decision for every root span, when the sampler takes one for all.
        self._always = _parent_decision(sampler, None)

    def _queue(self, fields: bytes) -> None:
        """A finished span (its fields, written) into the batch processor."""
        self.processor.on_end(
            PreEncodedSpan(spans_field(fields), _SAMPLED_CONTEXT, self.resource, self.scope)
        )


class DirectEventSpans(_DirectSpans):
    """Spans written as OTLP bytes as they end, queued in the SDK's batch processor."""

    def _sampled_for(self, trace_id: int, topic: str) -> bool:
        if self._always is not None:
            return self._always
        result = self.sampler.should_sample(None, trace_id, _span_name(topic), SpanKind.CONSUMER)
        return result.decision in _SAMPLED

    def open(
        self,
        batch: SpanContext,
        path: str,
        topic: str,
        event_id: str,
        record_id: str,
        record_count: int,
        change_type: str,
    ) -> _Open:
        trace_id = event_trace_id(event_id)
        span_id = self._span_id()
        name_kind, before = _process_head(path, topic)
        return _Open(
            trace_id,
            span_id,
            self._sampled_for(trace_id, topic),
            self.clock(),
            b"\x0a\x10"
            + trace_id.to_bytes(16, "big")
            + b"\x12\x08"
            + span_id.to_bytes(8, "big")
            + name_kind,
            b"".join(
                (
                    before,
                    string_attribute_field("amt.event_id", event_id),
                    string_attribute_field("amt.record_id", record_id),
                    _constant_attribute("amt.record_count", record_count),
                    _process_after(path, topic, change_type),
                )
            ),
            _receive_link(batch.trace_id, batch.span_id) if batch.is_valid else b"",
        )

    def context(self, span: _Open) -> str:
        return span.context

    def ids(self, span: _Open) -> dict[str, str]:
        return _ids(span.trace_id, span.span_id)

    def close(
        self,
        span: _Open,
        outcome: str,
        *,
        first_path: str = "",
        first_arrival: SpanContext | None = None,
        lag_s: float | None = None,
        error: str | None = None,
    ) -> None:
        if not span.sampled:
            return
        parts = [
            span.head,
            b"\x39" + _pack_fixed64(span.start),
            b"\x41" + _pack_fixed64(self.clock()),
            span.tail,
        ]
        if outcome:
            parts.append(_constant_attribute("amt.outcome", outcome))
        if first_path:
            parts.append(string_attribute_field("amt.first_path", first_path))
        if lag_s is not None:
            parts.append(attribute_field("amt.path_lag_s", lag_s))
        parts.append(span.link)
        if first_arrival is not None:
            parts.append(link_field(Link(first_arrival, _FIRST_ARRIVAL)))
        parts.append(status_field(StatusCode.ERROR, error) if error is not None else EMPTY_STATUS)
        parts.append(flags_field(remote_parent=False))
        self._queue(b"".join(parts))


def _random_span_id() -> int:
    return random.getrandbits(64) or 1


def apply_spans(
    tracer: trace.Tracer,
    provider: TracerProvider | None,
    processor: BatchSpanProcessor | None,
    scope: InstrumentationScope,
    *,
    only_processor: bool,
) -> ApplySpans:
    """As :func:`event_spans`, for the apply spans of the records a job runs on."""
    if provider is not None and _direct(processor, only_processor):
        assert processor is not None  # checked by _direct
        return DirectApplySpans(processor, provider.resource, scope, provider.sampler)
    return SdkApplySpans(tracer)


def _direct(processor: BatchSpanProcessor | None, only_processor: bool) -> bool:
    """The OTLP batch processor is the provider's only one, and its exporter
    writes pre-encoded spans."""
    exporter = getattr(processor, "span_exporter", None)
    return (
        processor is not None
        and only_processor
        and isinstance(exporter, SpanExporter)
        and exporter.direct
    )


def event_spans(
    tracer: trace.Tracer,
    provider: TracerProvider | None,
    processor: BatchSpanProcessor | None,
    scope: InstrumentationScope,
    *,
    only_processor: bool,
) -> EventSpans:
    """The direct recorder when ``processor`` (the OTLP batch processor) is the
    provider's only one and its exporter writes pre-encoded spans; else the SDK's."""
    if provider is not None and _direct(processor, only_processor):
        assert processor is not None  # checked by _direct
        return DirectEventSpans(processor, provider.resource, scope, provider.sampler)
    return SdkEventSpans(tracer)


# -- the apply span of each record a job run applies ------------------------------


class ApplySpans(Protocol):
    """Opens the ``apply <topic>`` span of each record of a job run, closes it after."""

    def open(
        self,
        queue: str,
        topic: str,
        record_id: str,
        job_id: str,
        job_try: int,
        events: list[SpanContext],
        changes: int,
        batch: SpanContext | None,
    ) -> Any:
        """A span in the trace of ``events[0]`` (the first event it applies), linking
        every event and the run's ``apply batch`` span (``batch``)."""

    def span(self, span: Any) -> trace.Span:
        """What to make current while it runs (its children's parent)."""

    def ids(self, span: Any) -> dict[str, str]:
        """``trace_id``/``span_id`` for its log lines ({} when there are none)."""

    def close(self, span: Any, outcome: str, error: str | None) -> None:
        """End it with the job's outcome for the record; ``error`` marks it failed."""


_COALESCED: Final = {"amt.link": "coalesced_event"}
_JOB_RUN: Final = {"amt.link": "job_run"}


def _apply_attributes(
    queue: str, job_id: str, topic: str, record_id: str, job_try: int, events: int, changes: int
) -> dict[str, Any]:
    return {
        "messaging.system": "arq",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
        "amt.topic": topic,
        "amt.record_id": record_id,
        "amt.job_try": job_try,
        "amt.events": events,
        "amt.changes": changes,
    }


class SdkApplySpans:
    """The SDK's spans."""

    def __init__(self, tracer: trace.Tracer):
        self.tracer = tracer

    def open(
        self,
        queue: str,
        topic: str,
        record_id: str,
        job_id: str,
        job_try: int,
        events: list[SpanContext],
        changes: int,
        batch: SpanContext | None,
    ) -> Span:
        parent = trace.set_span_in_context(NonRecordingSpan(events[0])) if events else ROOT
        links = [Link(event, _COALESCED) for event in events]
        if batch is not None:
            links.append(Link(batch, _JOB_RUN))
        return self.tracer.start_span(
            f"apply {topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=_apply_attributes(
                queue, job_id, topic, record_id, job_try, len(events), changes
            ),
        )

    def span(self, span: Span) -> trace.Span:
        return span

    def ids(self, span: Span) -> dict[str, str]:
        return span_ids(span)

    def close(self, span: Span, outcome: str, error: str | None) -> None:
        span.set_attribute("amt.job_outcome", outcome)
        if error is not None:
            span.set_status(StatusCode.ERROR, error)
        span.end()


class _OpenApply:
    __slots__ = ("attributes", "context", "head", "links", "parent_remote")

    def __init__(
        self,
        context: SpanContext,
        head: bytes = b"",
        attributes: bytes = b"",
        links: bytes = b"",
        parent_remote: bool = False,
    ):
        self.context = context
        #: The fields from the trace id to the start time (b"": not sampled).
        self.head = head
        self.attributes = attributes
        self.links = links
        self.parent_remote = parent_remote


def _parent_decision(sampler: Sampler, parent: SpanContext | None) -> bool | None:
    """The decision for a span with this (remote) parent, when the sampler takes
    one without looking at the trace id; None when it must be asked."""
    while True:
        if isinstance(sampler, LibraryCallsInsideOurSpans):
            sampler = sampler.delegate
        elif isinstance(sampler, ParentBased):
            if parent is None:
                sampler = sampler._root
            elif parent.trace_flags.sampled:
                sampler = sampler._remote_parent_sampled
            else:
                sampler = sampler._remote_parent_not_sampled
            parent = None  # the chosen sampler decides as for a root
        elif isinstance(sampler, StaticSampler):
            return sampler._decision in _SAMPLED
        else:
            return None


class DirectApplySpans(_DirectSpans):
    """Apply spans written as OTLP bytes as they end (see :class:`DirectEventSpans`)."""

    def _decide(self, trace_id: int, parent: SpanContext | None, name: str) -> bool:
        decided = _parent_decision(self.sampler, parent)
        if decided is not None:
            return decided
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
        result = self.sampler.should_sample(context, trace_id, name, SpanKind.CONSUMER)
        return result.decision in _SAMPLED

    def open(
        self,
        queue: str,
        topic: str,
        record_id: str,
        job_id: str,
        job_try: int,
        events: list[SpanContext],
        changes: int,
        batch: SpanContext | None,
    ) -> _OpenApply:
        parent = events[0] if events else None
        trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
        span_id = self._span_id()
        sampled = self._decide(trace_id, parent, f"apply {topic}")
        context = SpanContext(
            trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1 if sampled else 0)
        )
        if not sampled:
            return _OpenApply(context)
        parts = [
            b"\x0a\x10" + trace_id.to_bytes(16, "big"),
            b"\x12\x08" + span_id.to_bytes(8, "big"),
        ]
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        parts.append(_apply_head(topic))
        parts.append(b"\x39" + _pack_fixed64(self.clock()))
        # The attributes of _apply_attributes(), in its order, the constant ones cached.
        attributes = b"".join(
            (
                _queue_attributes(queue),
                string_attribute_field("messaging.message.id", job_id),
                string_attribute_field("amt.topic", topic),
                string_attribute_field("amt.record_id", record_id),
                _constant_attribute("amt.job_try", job_try),
                _constant_attribute("amt.events", len(events)),
                _constant_attribute("amt.changes", changes),
            )
        )
        links = [link_field(Link(event, _COALESCED)) for event in events]
        if batch is not None:
            links.append(link_field(Link(batch, _JOB_RUN)))
        return _OpenApply(
            context,
            b"".join(parts),
            attributes,
            b"".join(links),
            parent is not None and parent.is_remote,
        )

    def span(self, span: _OpenApply) -> trace.Span:
        return NonRecordingSpan(span.context)

    def ids(self, span: _OpenApply) -> dict[str, str]:
        return _ids(span.context.trace_id, span.context.span_id)

    def close(self, span: _OpenApply, outcome: str, error: str | None) -> None:
        if not span.head:
            return
        self._queue(
            b"".join(
                (
                    span.head,
                    b"\x41" + _pack_fixed64(self.clock()),
                    span.attributes,
                    attribute_field("amt.job_outcome", outcome),
                    span.links,
                    status_field(StatusCode.ERROR, error) if error is not None else EMPTY_STATUS,
                    flags_field(remote_parent=span.parent_remote),
                )
            )
        )
