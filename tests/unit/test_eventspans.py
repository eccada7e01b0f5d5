"""The direct event spans decode to the spans the SDK path records.

Each case records the same arrivals through :class:`SdkEventSpans` (the SDK's
spans, in memory) and :class:`DirectEventSpans` (OTLP bytes written as each
span ends), encodes both into one ``ExportTraceServiceRequest`` and compares
the decoded spans field for field; only the random span ids and the clock
differ, and those are compared by shape.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags

from amt_ingest.telemetry.eventspans import (
    DirectApplySpans,
    DirectEventSpans,
    SdkApplySpans,
    SdkEventSpans,
    event_spans,
)
from amt_ingest.telemetry.otlp import PreEncodedSpan, encode_spans
from amt_ingest.telemetry.tracing import EventTraceIds, event_trace_id, make_sampler

RESOURCE = Resource.create({"service.name": "amt_ingest"})
BATCH = SpanContext(0xAB, 0xCD, is_remote=False, trace_flags=TraceFlags(1))
FIRST = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1))


class Collect:
    """Stands in for the SDK's batch span processor: keeps what ``on_end`` gets."""

    def __init__(self) -> None:
        self.spans: list[PreEncodedSpan] = []

    def on_end(self, span: PreEncodedSpan) -> None:
        self.spans.append(span)


def recorders(
    sampler: str = "always_on", arg: float | None = None, *, kind: str = "event"
) -> tuple[Any, Any, Any]:
    """(SDK recorder, its in-memory exporter), (direct recorder, what it queued), the
    tracer; ``kind`` "event" (process spans) or "apply"."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=RESOURCE, sampler=make_sampler(sampler, arg), id_generator=EventTraceIds()
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("amt_ingest", "1.0")
    collect = Collect()
    sdk_kind, direct_kind = (
        (SdkEventSpans, DirectEventSpans) if kind == "event" else (SdkApplySpans, DirectApplySpans)
    )
    direct = direct_kind(
        collect,  # type: ignore[arg-type]
        RESOURCE,
        tracer._instrumentation_scope,  # type: ignore[attr-defined]
        provider.sampler,
    )
    return (sdk_kind(tracer), exporter), (direct, collect), tracer


def decoded(spans: list[Any]) -> list[dict[str, Any]]:
    request = ExportTraceServiceRequest.FromString(encode_spans(spans))
    out = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    {
                        "resource": [
                            (a.key, a.value.string_value)
                            for a in resource_spans.resource.attributes
                        ],
                        "scope": (scope_spans.scope.name, scope_spans.scope.version),
                        "trace_id": span.trace_id.hex(),
                        "span_id_len": len(span.span_id),
                        "parent": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "attributes": [(a.key, str(a.value).strip()) for a in span.attributes],
                        "links": [
                            (
                                link.trace_id.hex(),
                                link.span_id.hex(),
                                [(a.key, a.value.string_value) for a in link.attributes],
                                link.flags,
                            )
                            for link in span.links
                        ],
                        "status": (span.status.code, span.status.message),
                        "flags": span.flags,
                        "ordered": span.end_time_unix_nano >= span.start_time_unix_nano > 0,
                    }
                )
    return out


ARRIVALS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {
            "batch": BATCH,
            "path": "ws",
            "topic": "Opportunity",
            "record_count": 1,
            "change_type": "UPDATE",
        },
        {"outcome": "first"},
    ),
    (
        {
            "batch": BATCH,
            "path": "sqs",
            "topic": "Application_Item__c",
            "record_count": 3,
            "change_type": "CREATE",
        },
        {"outcome": "duplicate", "first_path": "ws", "first_arrival": FIRST, "lag_s": 0.125},
    ),
    (
        {
            "batch": SpanContext(0, 0, False),
            "path": "ws",
            "topic": "External_Attachment__c",
            "record_count": 0,
            "change_type": "GAP_OVERFLOW",
        },
        {"outcome": "filtered"},
    ),
    (
        {
            "batch": BATCH,
            "path": "ws",
            "topic": "Opportunity",
            "record_count": 2,
            "change_type": "DELETE",
        },
        {"outcome": "stale", "lag_s": 0.0},
    ),
    (
        {
            "batch": BATCH,
            "path": "sqs",
            "topic": "Opportunity",
            "record_count": 1,
            "change_type": "UPDATE",
        },
        {"outcome": "", "error": "hand-off failed: Redis is down"},
    ),
]


def record(
    spans: Any, arrivals: list[tuple[dict[str, Any], dict[str, Any]]], ids: list[str]
) -> list[str]:
    contexts = []
    opened = []
    for (where, _), event_id in zip(arrivals, ids, strict=True):
        span = spans.open(
            where["batch"],
            where["path"],
            where["topic"],
            event_id,
            "006Dn00000ABCDE" if where["record_count"] else "",
            where["record_count"],
            where["change_type"],
        )
        opened.append(span)
        contexts.append(spans.context(span))
    for span, (_, how) in zip(opened, arrivals, strict=True):
        spans.close(span, **how)
    return contexts


def test_the_direct_spans_decode_to_the_sdk_spans() -> None:
    (sdk, exporter), (direct, collect), _ = recorders()
    ids = [str(uuid.uuid4()) for _ in ARRIVALS]
    sdk_contexts = record(sdk, ARRIVALS, ids)
    direct_contexts = record(direct, ARRIVALS, ids)
    sdk_spans: list[ReadableSpan] = list(exporter.get_finished_spans())
    assert decoded(collect.spans) == decoded(sdk_spans)
    assert len(collect.spans) == len(ARRIVALS)
    # The contexts handed to Redis: the event's trace id, a span id of its own, sampled.
    for sdk_context, direct_context, event_id in zip(
        sdk_contexts, direct_contexts, ids, strict=True
    ):
        assert direct_context[:32] == sdk_context[:32] == f"{event_trace_id(event_id):032x}"
        assert len(direct_context) == len(sdk_context) == 50 and direct_context.endswith("01")


def test_the_context_and_log_ids_name_the_span_that_is_exported() -> None:
    _, (direct, collect), _ = recorders()
    span = direct.open(
        BATCH, "ws", "Opportunity", str(uuid.uuid4()), "006Dn00000ABCDE", 1, "UPDATE"
    )
    context, ids = direct.context(span), direct.ids(span)
    direct.close(span, "first")
    (exported,) = (
        ExportTraceServiceRequest.FromString(encode_spans(collect.spans))
        .resource_spans[0]
        .scope_spans[0]
        .spans
    )
    assert exported.trace_id.hex() == context[:32] == ids["trace_id"]
    assert exported.span_id.hex() == context[32:48] == ids["span_id"]


@pytest.mark.parametrize(
    ("sampler", "arg"),
    [
        ("always_off", None),
        ("parentbased_always_off", None),
        ("traceidratio", 0.5),
        ("parentbased_traceidratio", 0.3),
    ],
)
def test_the_configured_sampler_keeps_the_same_arrivals(sampler: str, arg: float | None) -> None:
    (sdk, exporter), (direct, collect), _ = recorders(sampler, arg)
    arrivals = [ARRIVALS[0]] * 200
    ids = [str(uuid.uuid4()) for _ in arrivals]
    sdk_contexts = record(sdk, arrivals, ids)
    direct_contexts = record(direct, arrivals, ids)
    assert [bool(c) for c in direct_contexts] == [bool(c) for c in sdk_contexts]
    kept = {s.context.trace_id for s in exporter.get_finished_spans()}
    decoded_direct = decoded(collect.spans)
    assert {int(s["trace_id"], 16) for s in decoded_direct} == kept
    if sampler.endswith("always_off"):
        assert not collect.spans
    else:
        assert 0 < len(collect.spans) < len(arrivals)


def test_a_pre_encoded_span_groups_with_sdk_spans_of_its_scope() -> None:
    (_sdk, exporter), (direct, collect), tracer = recorders()
    record(direct, ARRIVALS[:1], [str(uuid.uuid4())])
    with tracer.start_as_current_span("receive passport"):
        pass
    request = ExportTraceServiceRequest.FromString(
        encode_spans([*collect.spans, *exporter.get_finished_spans()])
    )
    assert len(request.resource_spans) == 1
    assert len(request.resource_spans[0].scope_spans) == 1
    assert [s.name for s in request.resource_spans[0].scope_spans[0].spans] == [
        "process Opportunity",
        "receive passport",
    ]


def test_the_direct_recorder_is_chosen_only_for_the_otlp_exporter_alone() -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from amt_ingest.telemetry.otlp import SpanExporter

    provider = TracerProvider(resource=RESOURCE)
    tracer = provider.get_tracer("amt_ingest", "1.0")
    scope = tracer._instrumentation_scope  # type: ignore[attr-defined]
    otlp = BatchSpanProcessor(SpanExporter(endpoint="http://127.0.0.1:9/v1/traces"))
    try:
        assert isinstance(
            event_spans(tracer, provider, otlp, scope, only_processor=True), DirectEventSpans
        )
        assert isinstance(
            event_spans(tracer, provider, otlp, scope, only_processor=False), SdkEventSpans
        )
        assert isinstance(
            event_spans(tracer, provider, None, scope, only_processor=True), SdkEventSpans
        )
        other = BatchSpanProcessor(InMemorySpanExporter())
        assert isinstance(
            event_spans(tracer, provider, other, scope, only_processor=True), SdkEventSpans
        )
        other.shutdown()
    finally:
        otlp.shutdown()


EVENT_A = SpanContext(0xA1, 0xA2, is_remote=True, trace_flags=TraceFlags(1))
EVENT_B = SpanContext(0xB1, 0xB2, is_remote=True, trace_flags=TraceFlags(1))
RUN = SpanContext(0xC1, 0xC2, is_remote=False, trace_flags=TraceFlags(1))
APPLIES: list[tuple[list[SpanContext], SpanContext | None, str, str | None]] = [
    (
        [EVENT_A, EVENT_B],
        RUN,
        "applied",
        None,
    ),  # in the first event's trace, links both and the run
    ([EVENT_A], None, "applied", None),  # a run of one record
    ([], RUN, "dead_lettered", "403 from Salesforce"),  # no event context: a root span
]


def record_applies(spans: Any) -> list[dict[str, str]]:
    ids = []
    for events, batch, outcome, error in APPLIES:
        span = spans.open(
            "arq:queue", "Opportunity", "006Dn00000ABCDE", "job-1", 2, events, 3, batch
        )
        ids.append(spans.ids(span))
        spans.close(span, outcome, error)
    return ids


def test_the_direct_apply_spans_decode_to_the_sdk_spans() -> None:
    (sdk, exporter), (direct, collect), _ = recorders("parentbased_always_on", kind="apply")
    sdk_ids = record_applies(sdk)
    direct_ids = record_applies(direct)
    sdk_decoded = decoded(list(exporter.get_finished_spans()))
    direct_decoded = decoded(collect.spans)
    # The root span's trace id is random on both sides; the others are the event's.
    for one in (sdk_decoded, direct_decoded):
        assert one[0]["trace_id"] == one[1]["trace_id"] == f"{0xA1:032x}"
        assert one[0]["parent"] == f"{0xA2:016x}" and one[2]["parent"] == ""
        one[2]["trace_id"] = "random"
    assert direct_decoded == sdk_decoded
    for ids in (sdk_ids, direct_ids):
        assert ids[0]["trace_id"] == ids[1]["trace_id"] == f"{0xA1:032x}"


def test_an_apply_span_follows_its_first_events_sampling() -> None:
    _, (direct, collect), _ = recorders("parentbased_always_on", kind="apply")
    dropped = SpanContext(0xD1, 0xD2, is_remote=True, trace_flags=TraceFlags(0))
    span = direct.open("q", "Opportunity", "006Dn00000ABCDE", "job-1", 1, [dropped], 1, None)
    direct.close(span, "applied", None)
    assert not collect.spans  # the event was not sampled: neither is its apply span
    assert not direct.span(span).get_span_context().trace_flags.sampled
    _, (direct, collect), _ = recorders("always_off", kind="apply")
    span = direct.open("q", "Opportunity", "006Dn00000ABCDE", "job-1", 1, [EVENT_A], 1, None)
    direct.close(span, "applied", None)
    assert not collect.spans


def test_children_of_a_direct_apply_span_name_it_as_parent() -> None:
    from opentelemetry import trace

    _, (direct, collect), _ = recorders("parentbased_always_on", kind="apply")
    span = direct.open("q", "Opportunity", "006Dn00000ABCDE", "job-1", 1, [EVENT_A], 1, None)
    with trace.use_span(direct.span(span), end_on_exit=False):
        current = trace.get_current_span().get_span_context()
    direct.close(span, "applied", None)
    (exported,) = decoded(collect.spans)
    assert f"{current.span_id:016x}" == direct.ids(span)["span_id"]
    assert exported["trace_id"] == f"{current.trace_id:032x}" == f"{0xA1:032x}"
