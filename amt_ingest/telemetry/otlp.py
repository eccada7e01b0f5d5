"""OTLP/HTTP span export with an encoder that writes the protobuf wire format directly.

The SDK's OTLP encoder builds a protobuf message object for every span, link,
attribute and value, then serializes the tree. In this process that work runs
in the batch span processor's thread and holds the interpreter lock while the
event loop wants it: it cost more than creating the spans. :func:`encode_spans`
writes the same ``ExportTraceServiceRequest`` bytes straight from the SDK's
spans (field for field what the SDK's encoder sets, including the messages it
sets while empty), and reuses the encoded form of attribute keys and of
repeated string attributes.

:class:`SpanExporter` is the SDK's OTLP/HTTP exporter (endpoint, headers,
compression, timeout, TLS, retries from the ``OTEL_EXPORTER_OTLP_*``
variables) with only the encoding replaced.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

import structlog
from opentelemetry.exporter.otlp.proto.http._common import RequestPayloadTooLargeError
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as _SdkOTLPSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import Link, SpanContext, StatusCode

__all__ = [
    "EMPTY_STATUS",
    "PreEncodedSpan",
    "SpanExporter",
    "attribute_field",
    "encode_spans",
    "flags_field",
    "head_field",
    "link_field",
    "spans_field",
    "status_field",
    "string_attribute_field",
]

log = structlog.get_logger("amt_ingest.telemetry.otlp")

_pack_double = struct.Struct("<d").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_fixed64 = struct.Struct("<Q").pack

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64: Final = 2**64 - 1

# SpanFlags: the context's is_remote is known (always), and it is remote.
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200

_SMALL_VARINTS: Final = tuple(bytes((i,)) for i in range(128))


def _varint(value: int) -> bytes:
    """An unsigned varint (callers pass negative int64 values as their two's complement)."""
    if value < 128:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: ``tag`` (already encoded), length, payload."""
    return tag + _varint(len(payload)) + payload


# AnyValue fields: string 1, bool 2, int 3, double 4, array 5, kvlist 6, bytes 7.
_TRUE: Final = b"\x10\x01"
_FALSE: Final = b"\x10\x00"


def _any_value(value: Any) -> bytes:
    """An AnyValue message's bytes; raises for what the SDK's encoder refuses too."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"Value out of range: {value}")
        return b"\x18" + _varint(value & _UINT64)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        items = b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items())
        return _field(b"\x32", items)
    raise TypeError(f"Invalid type {type(value)} of value {value}")


_KEYS: dict[str, bytes] = {}
_KEYS_MAX: Final = 1024
# Encoded fields of string attributes, by field tag, then key, then value: most
# of a span's attributes repeat from span to span (system, operation, topic,
# path, outcome). Values of a key that rarely repeat (ids) only churn their
# own key's entries.
_STRINGS: dict[bytes, dict[str, dict[str, bytes]]] = {}
_STRINGS_KEYS_MAX: Final = 1024
_STRINGS_VALUES_MAX: Final = 256


def _key(key: str) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _field(b"\x0a", key.encode())
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[key] = encoded
    return encoded


def _key_value(key: str, value: Any) -> bytes:
    """A KeyValue message's bytes (key 1, value 2)."""
    return _key(key) + _field(b"\x12", _any_value(value))


def _items(attributes: Mapping[str, Any]) -> Any:
    # BoundedAttributes keeps a plain dict: iterating it directly is several
    # times faster than through the Mapping protocol (a lookup per key).
    inner = getattr(attributes, "_dict", None)
    return inner.items() if type(inner) is dict else attributes.items()


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Every attribute as a repeated KeyValue field ``tag``. As with the SDK's
    encoder, an attribute that cannot be encoded is logged and left out."""
    if not attributes:
        return b""
    out: list[bytes] = []
    strings = _STRINGS.get(tag)
    if strings is None:
        strings = _STRINGS.setdefault(tag, {})
    for key, value in _items(attributes):
        if type(value) is str:
            by_value = strings.get(key)
            if by_value is None:
                if len(strings) >= _STRINGS_KEYS_MAX:
                    strings.clear()
                by_value = strings.setdefault(key, {})
            cached = by_value.get(value)
            if cached is None:
                try:
                    cached = _field(tag, _key_value(key, value))
                except Exception as error:
                    log.warning("span_attribute_not_exported", key=key, error=repr(error))
                    continue
                if len(by_value) >= _STRINGS_VALUES_MAX:
                    by_value.clear()
                by_value[value] = cached
            out.append(cached)
            continue
        try:
            out.append(_field(tag, _key_value(key, value)))
        except Exception as error:
            log.warning("span_attribute_not_exported", key=key, error=repr(error))
    return b"".join(out)


_FLAGS_LOCAL: Final = _pack_fixed32(_HAS_IS_REMOTE)
_FLAGS_REMOTE: Final = _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)


def _flags(context: SpanContext | None) -> bytes:
    if context is not None and context.is_remote:
        return _FLAGS_REMOTE
    return _FLAGS_LOCAL


def _trace_state(context: SpanContext) -> str:
    state = context.trace_state
    if not state:
        return ""
    return ",".join(f"{key}={value}" for key, value in state.items())


# Encoded Link fields without attributes, by context: every process span of a
# batch links to the batch's receive span.
_BARE_LINKS: dict[tuple[int, int, bool], bytes] = {}
_BARE_LINKS_MAX: Final = 1024


def _link_field(link: Link) -> bytes:
    """A span's links field (13) for one link."""
    context = link.context
    attributes = link.attributes
    bare = not attributes and not link.dropped_attributes
    if bare:
        key = (context.trace_id, context.span_id, context.is_remote)
        cached = _BARE_LINKS.get(key)
        if cached is not None:
            return cached
    # The SDK's encoder leaves a link's trace_state out: so does this one.
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        _attributes(b"\x22", attributes),
    ]
    if link.dropped_attributes:
        parts.append(b"\x28" + _varint(link.dropped_attributes))
    parts.append(b"\x35" + _flags(context))
    encoded = _field(b"\x6a", b"".join(parts))
    if bare:
        if len(_BARE_LINKS) >= _BARE_LINKS_MAX:
            _BARE_LINKS.clear()
        _BARE_LINKS[key] = encoded
    return encoded


# Name and kind fields, by (name, kind): a handful of span names recur.
_HEADS: dict[tuple[str, int], bytes] = {}
_HEADS_MAX: Final = 1024
#: An empty status field (the SDK's encoder sets it even when empty).
EMPTY_STATUS: Final = b"\x7a\x00"


def _head(name: str, kind: int) -> bytes:
    head = _HEADS.get((name, kind))
    if head is None:
        head = (_field(b"\x2a", name.encode()) if name else b"") + b"\x30" + _varint(kind + 1)
        if len(_HEADS) < _HEADS_MAX:
            _HEADS[(name, kind)] = head
    return head


def _span(span: ReadableSpan) -> bytes:
    """A Span message's bytes, with what the SDK's encoder sets."""
    context = span.context
    parent = span.parent
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
    ]
    if context.trace_state:
        parts.append(_field(b"\x1a", _trace_state(context).encode()))
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    parts.append(_head(span.name, span.kind.value))
    if span.start_time:
        parts.append(b"\x39" + _pack_fixed64(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _pack_fixed64(span.end_time))
    # The span's own attributes, not the read-only view ``attributes`` makes per call.
    attributes = getattr(span, "_attributes", None)
    parts.append(_attributes(b"\x4a", attributes if attributes is not None else span.attributes))
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        event_parts = []
        if event.timestamp:
            event_parts.append(b"\x09" + _pack_fixed64(event.timestamp))
        if event.name:
            event_parts.append(_field(b"\x12", event.name.encode()))
        event_parts.append(_attributes(b"\x1a", event.attributes))
        if event.dropped_attributes:
            event_parts.append(b"\x20" + _varint(event.dropped_attributes))
        parts.append(_field(b"\x5a", b"".join(event_parts)))
    if span.dropped_events:
        parts.append(b"\x60" + _varint(span.dropped_events))
    for link in span.links:
        parts.append(_link_field(link))
    if span.dropped_links:
        parts.append(b"\x70" + _varint(span.dropped_links))
    status = span.status
    code = status.status_code.value
    if code or status.description:
        parts.append(status_field(status.status_code, status.description))
    else:
        parts.append(EMPTY_STATUS)  # set even when empty, as the SDK's encoder does
    parts.append(flags_field(remote_parent=parent is not None and parent.is_remote))
    return b"".join(parts)


class PreEncodedSpan(ReadableSpan):
    """A span whose field in ``ScopeSpans.spans`` is already written (:attr:`encoded`).

    :func:`encode_spans` copies the bytes as they are; the SDK's batch span
    processor reads its context's sampled flag only. Not a full
    ``ReadableSpan``: hand it to that processor, with this module's exporter, only.
    """

    def __init__(
        self,
        encoded: bytes,
        context: SpanContext,
        resource: Resource,
        scope: InstrumentationScope,
    ):
        # ReadableSpan.__init__ is skipped on purpose: it is what would cost.
        self.encoded = encoded
        self._context = context
        self._resource = resource
        self._instrumentation_scope = scope


def attribute_field(key: str, value: Any) -> bytes:
    """A span's attributes field (9) holding one KeyValue."""
    return _field(b"\x4a", _key_value(key, value))


def string_attribute_field(key: str, value: str) -> bytes:
    """:func:`attribute_field` for a string value, faster: when every length
    fits in one byte (ids, names), the field is written in one concatenation."""
    prefix = _key(key)
    data = value.encode()
    size = len(data)
    whole = len(prefix) + size + 4
    if whole >= 128:
        return attribute_field(key, value)
    return b"".join(
        (
            b"\x4a",
            _SMALL_VARINTS[whole],
            prefix,
            b"\x12",
            _SMALL_VARINTS[size + 2],
            b"\x0a",
            _SMALL_VARINTS[size],
            data,
        )
    )


def head_field(name: str, kind: int) -> bytes:
    """A span's name (5) and kind (6) fields; ``kind`` is ``SpanKind.value``."""
    return _head(name, kind)


def link_field(link: Link) -> bytes:
    """A span's links field (13) for one link."""
    return _link_field(link)


def status_field(code: StatusCode, description: str | None) -> bytes:
    """A span's status field (15)."""
    parts = []
    if description:
        parts.append(_field(b"\x12", description.encode()))
    if code.value:
        parts.append(b"\x18" + _varint(code.value))
    return _field(b"\x7a", b"".join(parts))


def flags_field(*, remote_parent: bool) -> bytes:
    """A span's flags field (16): whether its parent is remote is known, and which."""
    return b"\x85\x01" + (_FLAGS_REMOTE if remote_parent else _FLAGS_LOCAL)


def spans_field(span: bytes) -> bytes:
    """One Span message (its fields, written) as a field of ``ScopeSpans.spans``."""
    return _field(b"\x12", span)


def _resource(resource: Resource) -> bytes:
    return _attributes(b"\x0a", resource.attributes)


def _scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    parts = []
    if scope.name:
        parts.append(_field(b"\x0a", scope.name.encode()))
    if scope.version:
        parts.append(_field(b"\x12", scope.version.encode()))
    parts.append(_attributes(b"\x1a", scope.attributes))
    return b"".join(parts)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """An ``ExportTraceServiceRequest`` of ``spans``, serialized: spans grouped by
    resource, then by instrumentation scope (equal ones together, as the SDK's
    encoder groups them), in order of first appearance."""
    grouped: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
    # The same objects recur span after span; comparing them by value (a
    # Resource hashes as JSON) once per distinct object is enough.
    by_identity: dict[tuple[int, int], list[bytes]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        key = (id(resource), id(scope))
        encoded = by_identity.get(key)
        if encoded is None:
            encoded = grouped.setdefault(resource, {}).setdefault(scope, [])
            by_identity[key] = encoded
        encoded.append(span.encoded if type(span) is PreEncodedSpan else spans_field(_span(span)))
    out: list[bytes] = []
    for resource, by_scope in grouped.items():
        parts = [_field(b"\x0a", _resource(resource))]
        for scope, encoded in by_scope.items():
            scope_parts = [_field(b"\x0a", _scope(scope)), *encoded]
            if scope is not None and scope.schema_url:
                scope_parts.append(_field(b"\x1a", scope.schema_url.encode()))
            parts.append(_field(b"\x12", b"".join(scope_parts)))
        if resource.schema_url:
            parts.append(_field(b"\x1a", resource.schema_url.encode()))
        out.append(_field(b"\x0a", b"".join(parts)))
    return b"".join(out)


class SpanExporter(_SdkOTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter with :func:`encode_spans` as its encoder.

    Everything else (configuration from the ``OTEL_EXPORTER_OTLP_*`` variables,
    compression, retries, the size limit, the exporter's own metrics) is the
    SDK's. On an SDK release whose exporter is built differently, :attr:`direct`
    is False and the SDK's own encoder is used, unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The exporter's parts this class drives exist (the SDK release it was written for).
        self.direct = all(
            hasattr(self, name)
            for name in ("_client", "_metrics", "_shutdown", "_max_request_size")
        ) and callable(getattr(self._client, "export", None))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.direct or self._shutdown:
            return super().export(spans)
        # The parent's export, with the encoder swapped.
        with self._metrics.export_operation(len(spans)) as result:
            try:
                data = encode_spans(spans)
            except Exception as error:
                log.error("span_batch_not_encoded", spans=len(spans), error=repr(error))
                result.error = error
                return SpanExportResult.FAILURE
            if 0 < self._max_request_size < len(data):
                log.warning(
                    "span_batch_too_large",
                    spans=len(spans),
                    size=len(data),
                    max_request_size=self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(data)} bytes exceeds "
                    f"max_request_size {self._max_request_size} bytes."
                )
                return SpanExportResult.FAILURE
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                result.error_attrs = (
                    {HTTP_RESPONSE_STATUS_CODE: sent.status_code}
                    if sent.status_code is not None
                    else None
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
