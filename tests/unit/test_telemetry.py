"""Telemetry decisions without an event loop: trace ids, contexts, sampling, readiness, logs."""

from __future__ import annotations

import copy
import io
import json
import logging

import orjson
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from amt_ingest.config import load_settings
from amt_ingest.errors import ConfigError
from amt_ingest.operations.health import sources_readiness
from amt_ingest.telemetry import configure_logging
from amt_ingest.telemetry.tracing import (
    ROOT,
    EventTraceIds,
    decode_context,
    encode_context,
    event_trace_id,
    links_from,
    make_sampler,
    next_trace_id,
)


def test_event_trace_id_is_stable_and_spread():
    a = event_trace_id("7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a")
    assert a == event_trace_id("7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a")
    assert a != event_trace_id("7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4b")
    assert 0 < a < 2**128


def test_context_round_trip_and_unsampled_is_empty():
    context = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    text = encode_context(context)
    assert len(text) == 50
    back = decode_context(text)
    assert back is not None
    assert (back.trace_id, back.span_id, back.trace_flags.sampled) == (0xABC, 0xDEF, True)
    assert encode_context(SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(0))) == ""
    for bad in ("", "x" * 50, "0" * 50, "ab"):
        assert decode_context(bad) is None


def test_links_from_skips_garbage_and_keeps_the_limit():
    parts = [encode_context(SpanContext(i, i, False, TraceFlags(1))) for i in range(1, 6)]
    assert [c.span_id for c in links_from(",".join(parts))] == [1, 2, 3, 4, 5]
    assert [c.span_id for c in links_from(",".join(parts), limit=2)] == [1, 2]
    assert [c.span_id for c in links_from(b"junk," + parts[0].encode())] == [1]
    assert links_from("") == []


def test_a_root_span_takes_the_chosen_trace_id():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=EventTraceIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    token = next_trace_id.set(event_trace_id("e1"))
    try:
        tracer.start_span("chosen", context=ROOT).end()
    finally:
        next_trace_id.reset(token)
    tracer.start_span("random", context=ROOT).end()
    chosen, random = exporter.get_finished_spans()
    assert chosen.context.trace_id == event_trace_id("e1")
    assert random.context.trace_id != event_trace_id("e1")


def _decide(sampler, *, kind, attributes=None, parent=None):
    context = ROOT
    if parent is not None:
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
    return sampler.should_sample(context, 123, "x", kind, attributes).decision


def test_library_client_spans_need_a_parent():
    sampler = make_sampler("parentbased_always_on", None)
    parent = SpanContext(5, 6, is_remote=True, trace_flags=TraceFlags(1))
    assert _decide(sampler, kind=SpanKind.CLIENT) is Decision.DROP
    assert _decide(sampler, kind=SpanKind.CLIENT, parent=parent) is Decision.RECORD_AND_SAMPLE
    ours = {"messaging.system": "aws_sqs"}
    assert _decide(sampler, kind=SpanKind.CLIENT, attributes=ours) is Decision.RECORD_AND_SAMPLE
    assert _decide(sampler, kind=SpanKind.CONSUMER) is Decision.RECORD_AND_SAMPLE


def test_samplers_by_name_and_ratio():
    assert _decide(make_sampler("always_off", None), kind=SpanKind.CONSUMER) is Decision.DROP
    none = make_sampler("traceidratio", 0.0)
    assert _decide(none, kind=SpanKind.CONSUMER) is Decision.DROP
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("sometimes", None)


def test_otel_settings_are_validated_with_their_names(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER"):
        load_settings()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "2")
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        load_settings()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    settings = load_settings()
    assert settings.otlp_traces_enabled and settings.otlp_metrics_enabled
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not load_settings().otlp_traces_enabled
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        load_settings()


@pytest.mark.parametrize(
    ("kwargs", "ready"),
    [
        ({"ws_connected": True}, True),
        ({"ws_down_for": 5.0}, True),  # reconnecting, within the grace
        ({"ws_down_for": 500.0}, False),
        ({"ws_down_for": 500.0, "sqs_ok": True}, True),
        ({}, False),  # never subscribed, no SQS poll yet
        ({"ws_connected": True, "ws_fatal": "token refused"}, False),
        ({"ws_enabled": False, "sqs_ok": True}, True),
        ({"ws_enabled": False, "sqs_enabled": False}, False),
        ({"ws_standby": True}, True),  # another replica leads; this one serves SQS, or waits
        ({"ws_standby": True, "sqs_enabled": False}, True),
        ({"ws_standby": True, "ws_fatal": "token refused"}, False),
    ],
)
def test_readiness_of_the_sources(kwargs, ready):
    args = {
        "ws_enabled": True,
        "ws_connected": False,
        "ws_down_for": None,
        "ws_fatal": None,
        "sqs_enabled": True,
        "sqs_ok": False,
        "grace_s": 60.0,
    } | kwargs
    ok, detail = sources_readiness(**args)
    assert ok is ready, detail
    if not ready:
        assert "no SQS poll" in detail
    if kwargs.get("ws_standby") and not kwargs.get("ws_fatal"):
        assert detail.startswith("websocket=standby")


TOKEN = "pp-live-9f8e7d6c5b4a"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"


@pytest.fixture(autouse=True)
def _restore_logging():
    """configure_logging() is global: put structlog and the root logger back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(fmt: str, emit) -> str:
    out = io.StringIO()
    configure_logging("debug", fmt, stream=out)
    emit(structlog.get_logger("t"))
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_secrets_never_reach_the_output(fmt):
    def emit(log):
        log.info("connect", token=TOKEN, aws_secret_access_key=AWS_SECRET, password="pw-123456")
        log.warning("failed", error=f"401 for Authorization: Bearer {TOKEN}")
        log.warning("aws", detail=f"Credential={AWS_KEY_ID}/20261125/us-east-1 secret={AWS_SECRET}")
        log.info("header", headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            raise RuntimeError(f"token={TOKEN} refused")
        except RuntimeError:
            log.exception("crashed")

    text = _lines(fmt, emit)
    for secret in (TOKEN, AWS_SECRET, AWS_KEY_ID, "pw-123456"):
        assert secret not in text, text
    assert text.count("[redacted]") >= 5


def test_json_lines_carry_trace_ids_inside_a_span():
    provider = TracerProvider()
    tracer = provider.get_tracer("t")

    def emit(log):
        log.info("outside")
        with tracer.start_as_current_span("s") as span:
            log.info("inside")
            emit.context = span.get_span_context()

    text = _lines("json", emit)
    outside, inside = (json.loads(line) for line in text.splitlines())
    assert "trace_id" not in outside
    context = emit.context
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_secrets_never_reach_a_binary_output(fmt, tmp_path):
    path = tmp_path / "log"
    with open(path, "w") as out:  # a real file: JSON lines go to its binary buffer
        configure_logging("debug", fmt, stream=out)
        log = structlog.get_logger("t")
        log.info("connect", token=TOKEN, headers={"Authorization": f"Bearer {TOKEN}"})
        log.warning("aws", detail=f"Credential={AWS_KEY_ID}/x secret={AWS_SECRET}")
        log.info("kelvin", detail=f"to\u212aen={TOKEN}")  # the Kelvin sign matches k, case-blind
        log.info("plain", event_id="7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a", topic="Opportunity")
    text = path.read_text()
    for secret in (TOKEN, AWS_SECRET, AWS_KEY_ID):
        assert secret not in text, text
    assert "7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c4a" in text


# Text that often holds, or almost holds, what redaction looks for.
_pieces = st.sampled_from(
    [
        "token", "TOKEN", "to\u212aen", "\u017fecret", "Secret", "passw", "Bearer ", "bearer\t",
        "AKIA", "ASIA", "IOSFODNN7EXAMPLE", "signature", "=", ":", " ", "'", '"', "&", ",",
        "abc123", "x", "\u00e9", "\u6771", "api_key", "Authorization", "credential", "-", "_",
    ]
)  # fmt: skip
_texts = st.lists(_pieces | st.text(max_size=4), max_size=8).map("".join)
_values = st.recursive(
    st.none() | st.integers() | st.booleans() | _texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_texts, children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_texts, _values, max_size=5))
def test_json_lines_are_redacted_exactly_as_redact_does(event_dict):
    from amt_ingest.telemetry.logs import _RedactedJson, redact

    try:
        expected = orjson.dumps(redact(None, "info", copy.deepcopy(event_dict)), default=str)
    except TypeError:  # e.g. an integer beyond 64 bits, under a key that is not secret
        with pytest.raises(TypeError):
            _RedactedJson(text=False)(None, "info", copy.deepcopy(event_dict))
        return
    assert _RedactedJson(text=False)(None, "info", copy.deepcopy(event_dict)) == expected
    assert _RedactedJson(text=True)(None, "info", copy.deepcopy(event_dict)) == expected.decode()


@pytest.mark.parametrize(
    "event_dict",
    [
        *({key: "x"} for key in ("api_key", "Access_Key", "credentials", "authorization")),
        *({key: "x"} for key in ("TOKEN", "client_secret", "password", "passwd")),
        *({"detail": f"{word}=x1"} for word in ("token", "secret", "password", "signature")),
        {"detail": "Bearer abc"},
        {"detail": "AKIAIOSFODNN7EXAMPLE"},
        {"detail": "ASIAIOSFODNN7EXAMPLE"},
        {"detail": "to\u212aen=abc"},
        {"nested": {"x": ["password: hunter2"]}},
    ],
)
def test_each_word_alone_is_redacted_as_redact_does(event_dict):
    from amt_ingest.telemetry.logs import _RedactedJson, redact

    expected = orjson.dumps(redact(None, "info", copy.deepcopy(event_dict)), default=str)
    assert b"redacted" in expected
    assert _RedactedJson(text=False)(None, "info", copy.deepcopy(event_dict)) == expected


@settings(max_examples=500)
@given(_texts)
def test_the_first_look_agrees_with_the_pattern(text):
    from amt_ingest.telemetry.logs import _SUSPECT, _suspect

    assert _suspect(text) == (_SUSPECT.search(text) is not None)


def test_batched_lines_are_written_together_at_the_end(tmp_path):
    from amt_ingest.telemetry.logs import batched_lines

    path = tmp_path / "log"
    with open(path, "w") as out:
        configure_logging("info", "json", stream=out)
        log = structlog.get_logger("t")
        log.info("before")
        assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == ["before"]
        with batched_lines():
            for n in range(3):
                log.info("held", n=n)
            with batched_lines():
                log.info("nested")
            assert len(path.read_text().splitlines()) == 1  # nothing written yet
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [(line["event"], line.get("n")) for line in lines] == [
            ("before", None),
            ("held", 0),
            ("held", 1),
            ("held", 2),
            ("nested", None),
        ]

        def fail_inside() -> None:
            with batched_lines():
                log.info("before the failure")
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            fail_inside()
        assert json.loads(path.read_text().splitlines()[-1])["event"] == "before the failure"
        log.info("after")
        assert json.loads(path.read_text().splitlines()[-1])["event"] == "after"


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=4_102_444_800 * 10**9))  # up to 2100
def test_timestamps_are_written_as_datetime_writes_them(ns):
    import datetime

    from amt_ingest.telemetry.logs import iso_utc

    seconds, us = divmod(ns // 1000, 1_000_000)
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).replace(microsecond=us)
    assert iso_utc(ns) == moment.isoformat().replace("+00:00", "Z")
    whole = seconds * 10**9
    assert iso_utc(whole) == moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def test_json_lines_carry_a_current_utc_timestamp():
    import datetime

    before = datetime.datetime.now(datetime.UTC)
    (line,) = _lines("json", lambda log: log.info("now")).splitlines()
    stamp = json.loads(line)["timestamp"]
    assert stamp.endswith("Z")
    moment = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before <= moment <= datetime.datetime.now(datetime.UTC)


def _routed(n: int, **extra: object) -> dict[str, object]:
    return {
        "event_id": f"7d7c3c1e-2b2f-4d69-9a0e-3f1f3b1d2c{n:02d}",
        "record_ids": ["006Dn00000ABCDE"],
        "topic": "Opportunity",
        "path": "ws",
        "outcome": "first",
        "trace_id": "82a0422421a0fd824b1c6dc567cb8341",
        "span_id": "00000000000000cd",
        **extra,
    }


def test_log_lines_write_what_structlog_writes_line_by_line(tmp_path):
    from amt_ingest.telemetry.logs import log_lines

    path = tmp_path / "log"
    with open(path, "w") as out:
        configure_logging("info", "json", stream=out)
        log = structlog.get_logger("t")
        structlog.contextvars.bind_contextvars(replica="r1")
        try:
            for n in range(3):
                log.info("event_routed", **_routed(n))
            log_lines(log, "info", "event_routed", [_routed(n) for n in range(3)])
            log_lines(log, "debug", "event_routed", [_routed(9)])  # below the level: dropped
            log_lines(log, "info", "event_routed", [_routed(4, record_ids=[f"Bearer {TOKEN}"])])
        finally:
            structlog.contextvars.clear_contextvars()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 7
    by_structlog, direct, secret = lines[:3], lines[3:6], lines[6]
    for one, other in zip(by_structlog, direct, strict=True):
        assert one.pop("timestamp") and other.pop("timestamp")
        assert one == other
        assert list(one) == list(other)  # the same key order
    assert TOKEN not in path.read_text() and "[redacted]" in secret["record_ids"][0]


def test_log_lines_go_through_structlog_where_output_is_not_json(tmp_path):
    from amt_ingest.telemetry.logs import log_lines

    out = io.StringIO()
    configure_logging("info", "console", stream=out)
    log = structlog.get_logger("t")
    log_lines(log, "info", "event_routed", [_routed(1, record_ids=[f"token={TOKEN}"])])
    text = out.getvalue()
    assert "event_routed" in text and TOKEN not in text
