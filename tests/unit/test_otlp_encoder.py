"""The direct OTLP span encoder says what the SDK's encoder says, and the exporter sends it."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from amt_ingest.telemetry.otlp import SpanExporter, encode_spans
from amt_ingest.telemetry.tracing import ROOT


def _provider(
    resource: dict[str, Any], **kwargs: Any
) -> tuple[TracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(resource), **kwargs)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def _decoded(data: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(data)
    return message


def assert_same_request(spans: list[ReadableSpan]) -> None:
    ours = encode_spans(spans)
    theirs = sdk_encode(spans)
    assert _decoded(ours) == theirs
    # Nothing the SDK leaves unset is written (a decoder would keep it as set).
    assert len(ours) == len(theirs.SerializePartialToString())


def _every_shape() -> list[ReadableSpan]:
    provider, memory = _provider({"service.name": "amt-test", "service.version": "9.9"})
    other, other_memory = _provider({"service.name": "other"})
    tracer = provider.get_tracer("amt_ingest", "1.2.3")
    no_version = provider.get_tracer("amt_ingest.other")
    with_schema = provider.get_tracer("amt_ingest.schema", "1", schema_url="https://x/1.0")
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    stated = SpanContext(
        0x123,
        0x456,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "a=1"), ("k", "v")]),
    )
    span = tracer.start_span(
        "process Opportunity",
        context=ROOT,
        kind=SpanKind.CONSUMER,
        links=[
            Link(remote, {"amt.link": "first_arrival", "n": 3}),
            Link(SpanContext(7, 8, is_remote=False, trace_flags=TraceFlags(0))),
        ],
        attributes={
            "s": "text",
            "empty": "",
            "unicode": "Zo\u00eb \u2013 \u6771\u4eac",
            "t": True,
            "f": False,
            "zero": 0,
            "neg": -5,
            "big": 2**63 - 1,
            "small": -(2**63),
            "pi": 3.25,
            "negf": -0.0,
            "strs": ("a", "", "b"),
            "ints": [1, -2, 3],
            "bools": (True, False),
            "floats": (1.5,),
            "empty_list": (),
        },
    )
    span.add_event("retry", {"attempt": 2, "why": "timeout"})
    span.add_event("bare")
    span.record_exception(RuntimeError("boom"))
    span.set_status(Status(StatusCode.ERROR, "hand-off failed: boom"))
    span.end()
    child = tracer.start_span(
        "settle passport", context=set_span_in_context(span), kind=SpanKind.CLIENT
    )
    child.set_status(Status(StatusCode.OK))
    child.end()
    tracer.start_span("remote child", context=set_span_in_context(_span_of(remote))).end()
    tracer.start_span("stated child", context=set_span_in_context(_span_of(stated))).end()
    no_version.start_span("", kind=SpanKind.PRODUCER).end()  # no name, no version
    with_schema.start_span("server", kind=SpanKind.SERVER).end()
    tracer.start_span("internal again").end()  # the first scope again, after others
    other.get_tracer("elsewhere").start_span("other resource").end()
    limited, limited_memory = _provider(
        {"service.name": "limited"},
        span_limits=SpanLimits(max_span_attributes=2, max_links=1, max_events=1),
    )
    many = limited.get_tracer("t").start_span(
        "dropping",
        attributes={"a": 1, "b": 2, "c": 3},
        links=[Link(remote), Link(remote, {"x": 1})],
    )
    many.add_event("one")
    many.add_event("two")
    many.end()
    return [
        *memory.get_finished_spans(),
        *other_memory.get_finished_spans(),
        *limited_memory.get_finished_spans(),
    ]


def _span_of(context: SpanContext) -> Any:
    from opentelemetry.trace import NonRecordingSpan

    return NonRecordingSpan(context)


def test_every_span_shape_encodes_as_the_sdk_encodes_it():
    spans = _every_shape()
    assert len({span.resource.attributes["service.name"] for span in spans}) == 3
    assert_same_request(spans)
    # Interleaved resources and scopes: grouped the same way, in the same order.
    assert_same_request(spans[::-1])
    assert_same_request([spans[0], spans[-1], spans[1], spans[-2], spans[2]])
    assert encode_spans([]) == sdk_encode([]).SerializePartialToString() == b""


def test_unencodable_attributes_are_left_out_like_the_sdk_does():
    provider, memory = _provider({"service.name": "x"})
    span = provider.get_tracer("t").start_span("s", attributes={"ok": 1})
    # Values the SDK's attribute cleaning would refuse, written behind its back.
    span._attributes._dict.update({"huge": 2**64, "bad": "\ud800", "obj": object(), "fine": "y"})  # type: ignore[attr-defined]
    span.end()
    (finished,) = memory.get_finished_spans()
    assert_same_request([finished])
    keys = [
        a.key
        for a in _decoded(encode_spans([finished]))
        .resource_spans[0]
        .scope_spans[0]
        .spans[0]
        .attributes
    ]
    assert keys == ["ok", "fine"]


attribute_values = (
    st.text(max_size=30)
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.lists(st.text(max_size=5), max_size=3).map(tuple)
    | st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3).map(tuple)
    | st.lists(st.floats(allow_nan=False), max_size=3).map(tuple)
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=12),
            st.dictionaries(st.text(min_size=1, max_size=10), attribute_values, max_size=6),
            st.sampled_from(list(SpanKind)),
            st.booleans(),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_arbitrary_spans_encode_as_the_sdk_encodes_them(shapes):
    provider, memory = _provider({"service.name": "prop"})
    tracer = provider.get_tracer("prop", "1")
    previous = None
    for name, attributes, kind, linked in shapes:
        links = [Link(previous.get_span_context(), attributes)] if linked and previous else []
        span = tracer.start_span(name, kind=kind, attributes=attributes, links=links)
        span.end()
        previous = span
    assert_same_request(list(memory.get_finished_spans()))


class _Receiver:
    """An OTLP/HTTP endpoint on a free local port that keeps the request bodies."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                receiver.bodies.append(self.rfile.read(length))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/v1/traces"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_exporter_posts_the_direct_encoding():
    receiver = _Receiver()
    try:
        exporter = SpanExporter(endpoint=receiver.url)
        assert exporter.direct  # the installed SDK's exporter is the one this drives
        spans = _every_shape()
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        (body,) = receiver.bodies
        assert _decoded(body) == sdk_encode(spans)
        exporter.shutdown()
        assert exporter.export(spans) is SpanExportResult.FAILURE  # as the SDK's, once shut
    finally:
        receiver.stop()


def test_the_exporter_reports_a_refused_export():
    receiver = _Receiver()
    url = receiver.url
    receiver.stop()  # nothing listens there any more
    exporter = SpanExporter(endpoint=url, timeout=0.5)
    assert exporter.export(_every_shape()[:1]) is SpanExportResult.FAILURE
