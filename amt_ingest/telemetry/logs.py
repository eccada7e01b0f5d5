"""Logs: structlog, JSON off a terminal and console on one, trace ids, secrets redacted.

Call :func:`configure_logging` once in the entry point; modules use
``structlog.get_logger(__name__)`` and bind context per event. Every line
written inside a recording span carries its ``trace_id`` and ``span_id``.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog
from opentelemetry import trace

__all__ = ["add_trace_ids", "configure_logging", "redact"]

_SECRET_KEYS = re.compile(
    r"(token|secret|password|passwd|authorization|credential|access_key|api_key)", re.I
)
# Bearer tokens, AWS access key ids and "secret=..."-style pairs inside free text.
_IN_TEXT = (
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"), "[redacted]"),
    (
        re.compile(
            r"((?:secret|token|password|signature)[\w-]*['\"]?\s*[:=]\s*['\"]?)[^\s'\",&]+", re.I
        ),
        r"\1[redacted]",
    ),
)


# Cheap first look: only text that mentions one of these can hold a secret above.
_SUSPECT = re.compile(r"bearer|akia|asia|secret|token|passw|signature", re.I)


def _scrub(text: str) -> str:
    if not _SUSPECT.search(text):
        return text
    for pattern, replacement in _IN_TEXT:
        text = pattern.sub(replacement, text)
    return text


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    return _SECRET_KEYS.search(key) is not None


def _clean(key: str, value: Any, depth: int = 0) -> Any:
    if value is None:
        return None
    if _secret_key(key):
        return "[redacted]"
    if isinstance(value, str):
        return _scrub(value)
    if depth < 4 and isinstance(value, dict):
        return {k: _clean(str(k), v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, list | tuple):
        return [_clean("", v, depth + 1) for v in value]
    return value


def redact(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Blank the values of secret-looking keys and secrets inside strings, nested
    values and formatted exceptions (runs after ``format_exc_info``)."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _clean(key, value)
    return event_dict


def add_trace_ids(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Add ``trace_id``/``span_id`` of the current span (unless the line names its own)."""
    if "trace_id" not in event_dict:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event_dict["trace_id"] = format(context.trace_id, "032x")
            event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def _orjson_text(value: Any, **_kw: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _orjson_bytes(value: Any, **_kw: Any) -> bytes:
    return orjson.dumps(value, default=str)


def configure_logging(
    level: str = "info", fmt: str = "auto", *, stream: TextIO | None = None
) -> None:
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    # JSON lines go out as bytes (no str round trip) where the stream has a buffer.
    binary = getattr(out, "buffer", None) if not use_console else None
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if use_console
        else structlog.processors.JSONRenderer(
            serializer=_orjson_bytes if binary is not None else _orjson_text
        )
    )
    factory: Any = (
        structlog.BytesLoggerFactory(file=binary)
        if binary is not None
        else structlog.PrintLoggerFactory(file=out)
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_trace_ids,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=stream is None,
    )
    # Libraries that use stdlib logging (arq, botocore, websockets) go to stderr too.
    logging.basicConfig(
        level=max(numeric, logging.INFO),
        stream=out,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # arq logs every job start and end; the job's own "job_done" line says more.
    for noisy in ("botocore", "aiobotocore", "websockets", "aiohttp.access", "arq.worker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Alembic narrates every migration step; the migrations log one line per revision.
    logging.getLogger("alembic").setLevel(logging.WARNING)
