"""Telemetry: traces, metrics and logs, set up once in the entry point.

:func:`setup_telemetry` builds a :class:`Telemetry` from the settings (the
standard ``OTEL_*`` variables among them) and the process hands it to the
sources, the router and the jobs. :meth:`Telemetry.off` is the no-op stand-in
used where nothing is recorded.

Exports: spans and metrics go by OTLP (http/protobuf) when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the per-signal variable) is set; metrics
are always served on ``/metrics`` for Prometheus. Spans are recorded even
without an exporter, so that log lines carry trace ids.

May import: config and errors only; every layer above uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import Meter, NoOpMeter
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    ExemplarFilter,
    MeterProvider,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, generate_latest

from ..config import Settings
from .eventspans import (
    ApplySpans,
    EventSpans,
    NoEventSpans,
    SdkApplySpans,
    SdkEventSpans,
    apply_spans,
    event_spans,
)
from .logs import configure_logging, redact
from .metrics import Gauges, Metrics
from .tracing import EventTraceIds, make_sampler

__all__ = [
    "ApplySpans",
    "EventSpans",
    "Gauges",
    "Metrics",
    "Telemetry",
    "configure_logging",
    "redact",
    "setup_telemetry",
]

SCOPE = "amt_ingest"
#: ``OTEL_METRICS_EXEMPLAR_FILTER``: the SDK's filters by name (the service defaults
#: to always_off: exemplars cost a third of each histogram measurement).
EXEMPLAR_FILTERS: dict[str, type[ExemplarFilter]] = {
    "always_off": AlwaysOffExemplarFilter,
    "always_on": AlwaysOnExemplarFilter,
    "trace_based": TraceBasedExemplarFilter,
}


def _version() -> str:
    try:
        return metadata.version("amt_ingest")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


@dataclass
class Telemetry:
    """The process's tracer and instruments, and the providers behind them."""

    tracer: trace.Tracer
    metrics: Metrics
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    registry: CollectorRegistry | None = None
    exports: list[str] = field(default_factory=list)
    #: Records the ``process`` span of each arrival (:mod:`.eventspans`).
    event_spans: EventSpans | None = None
    #: Records the ``apply`` span of each record a job run applies.
    apply_spans: ApplySpans | None = None

    def __post_init__(self) -> None:
        if self.event_spans is None:
            self.event_spans = SdkEventSpans(self.tracer)
        if self.apply_spans is None:
            self.apply_spans = SdkApplySpans(self.tracer)

    @property
    def spans(self) -> EventSpans:
        assert self.event_spans is not None  # set in __post_init__
        return self.event_spans

    @property
    def applies(self) -> ApplySpans:
        assert self.apply_spans is not None  # set in __post_init__
        return self.apply_spans

    @classmethod
    def off(cls) -> Telemetry:
        """Records nothing (``OTEL_SDK_DISABLED=true``, and tests that do not look)."""
        return cls(tracer=trace.NoOpTracer(), metrics=Metrics(), event_spans=NoEventSpans())

    @property
    def tracing(self) -> bool:
        return self.tracer_provider is not None

    def meter(self) -> Meter:
        if self.meter_provider is None:
            return NoOpMeter(SCOPE)
        return self.meter_provider.get_meter(SCOPE, _version())

    def instrument_redis(self, client: Any) -> None:
        """Redis commands of ``client`` become child spans of the span they run in."""
        if self.tracer_provider is not None:
            RedisInstrumentor.instrument_client(client, tracer_provider=self.tracer_provider)

    def instrument_engine(self, engine: Any) -> None:
        """SQL statements of an (async) SQLAlchemy engine become child spans."""
        if self.tracer_provider is None:
            return
        sync_engine = getattr(engine, "sync_engine", engine)
        tracer = self.tracer_provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
        usage = self.meter().create_up_down_counter(
            "db.client.connections.usage",
            unit="connections",
            description="Database connections in use, by state",
        )
        EngineTracer(tracer, sync_engine, usage)  # type: ignore[no-untyped-call]

    def prometheus_text(self) -> bytes:
        """The metrics in the Prometheus text format (what ``/metrics`` serves)."""
        if self.registry is None:
            return b"# telemetry is off (OTEL_SDK_DISABLED)\n"
        return generate_latest(self.registry)

    def flush(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush()
        if self.meter_provider is not None:
            self.meter_provider.force_flush()

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporters (call once, at exit)."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def setup_telemetry(
    settings: Settings,
    *,
    span_processors: tuple[SpanProcessor, ...] = (),
    metric_readers: tuple[MetricReader, ...] = (),
) -> Telemetry:
    """Build the process's telemetry from the settings.

    ``span_processors`` and ``metric_readers`` are added beside the configured
    exporters (tests pass in-memory ones). Never installs global providers:
    the :class:`Telemetry` is passed down explicitly.
    """
    if settings.otel_sdk_disabled:
        return Telemetry.off()
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    resource = Resource.create(
        {"service.name": settings.otel_service_name, "service.version": _version()}
    )
    exports: list[str] = ["prometheus:/metrics"]
    tracer_provider = TracerProvider(
        resource=resource,
        sampler=make_sampler(settings.otel_traces_sampler, settings.otel_traces_sampler_arg),
        id_generator=EventTraceIds(),
    )
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    otlp: BatchSpanProcessor | None = None
    registry = CollectorRegistry(auto_describe=True)
    readers: list[MetricReader] = [PrometheusMetricReader(registry=registry), *metric_readers]
    if settings.otlp_traces_enabled:
        from .otlp import SpanExporter

        otlp = BatchSpanProcessor(
            SpanExporter(),
            max_queue_size=settings.otel_bsp_max_queue_size,
            schedule_delay_millis=settings.otel_bsp_schedule_delay,
            max_export_batch_size=settings.otel_bsp_max_export_batch_size,
        )
        tracer_provider.add_span_processor(otlp)
        exports.append("otlp:traces")
    if settings.otlp_metrics_enabled:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        exports.append("otlp:metrics")
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=readers,
        exemplar_filter=EXEMPLAR_FILTERS[settings.otel_metrics_exemplar_filter](),
    )
    gauges = Gauges()
    tracer = tracer_provider.get_tracer(SCOPE, _version())
    # The tracer's own scope: the SDK's spans and the pre-encoded ones group together.
    scope = getattr(tracer, "_instrumentation_scope", None) or InstrumentationScope(
        SCOPE, _version()
    )
    return Telemetry(
        tracer=tracer,
        metrics=Metrics(meter_provider.get_meter(SCOPE, _version()), gauges),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        registry=registry,
        exports=exports,
        event_spans=event_spans(
            tracer, tracer_provider, otlp, scope, only_processor=not span_processors
        ),
        apply_spans=apply_spans(
            tracer, tracer_provider, otlp, scope, only_processor=not span_processors
        ),
    )
