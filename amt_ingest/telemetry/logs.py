"""Logs: structlog, JSON off a terminal and console on one, trace ids, secrets redacted.

Call :func:`configure_logging` once in the entry point; modules use
``structlog.get_logger(__name__)`` and bind context per event. Every line
written inside a recording span carries its ``trace_id`` and ``span_id``.

JSON lines are written and flushed one by one, except inside
:func:`batched_lines`: code that logs a line per event of a batch (the router)
writes the batch's lines at once when the block ends, one system call
instead of hundreds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import Any, BinaryIO, TextIO

import orjson
import structlog
from opentelemetry import trace

__all__ = [
    "add_timestamp",
    "add_trace_ids",
    "batched_lines",
    "configure_logging",
    "iso_utc",
    "log_lines",
    "redact",
]

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
_SUSPECT_WORDS = ("bearer", "akia", "asia", "secret", "token", "passw", "signature")
_SUSPECT = re.compile("|".join(_SUSPECT_WORDS), re.I)
# ... and a whole line (:func:`_maybe_secret`) also when it names a secret key.
_LINE_WORDS = (*_SUSPECT_WORDS, "authorization", "credential", "access_key", "api_key")


def _suspect(text: str) -> bool:
    if text.isascii():
        # For ASCII text, what the case-insensitive pattern matches, but several
        # times faster (most log values are ids, names and short words).
        low = text.lower()
        return any(word in low for word in _SUSPECT_WORDS)
    # Case-insensitive matching also pairs ASCII letters with a few others
    # (the Kelvin sign with k, the long s with s): leave that to the pattern.
    return _SUSPECT.search(text) is not None


def _scrub(text: str) -> str:
    if not _suspect(text):
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
    changed = {}
    for key, value in event_dict.items():
        clean = _clean(key, value)
        if clean is not value:
            changed[key] = clean
    if changed:
        event_dict.update(changed)
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


def iso_utc(ns: int) -> str:
    """An instant (epoch nanoseconds) as ``datetime.isoformat()`` writes it in UTC,
    with ``Z`` for ``+00:00`` (what structlog's ISO UTC TimeStamper writes)."""
    seconds, us = divmod(ns // 1000, 1_000_000)
    prefix = _second_text(seconds)
    return f"{prefix}.{us:06d}Z" if us else f"{prefix}Z"


@functools.lru_cache(maxsize=4)
def _second_text(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def add_timestamp(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``timestamp``: now, in ISO 8601 UTC (the date and time are formatted once a second)."""
    event_dict["timestamp"] = iso_utc(time.time_ns())
    return event_dict


class _LineOutput:
    """structlog's logger for JSON lines to a binary file: each line written and
    flushed at once, except while held by :func:`batched_lines`."""

    def __init__(self, file: BinaryIO):
        self._file = file
        self._lock = threading.Lock()
        self._held = 0
        self._lines: list[bytes] = []

    def write_many(self, messages: list[bytes]) -> None:
        """Several rendered lines at once (held like the others inside :func:`batched_lines`)."""
        with self._lock:
            if self._held:
                self._lines.extend(messages)
                return
            messages.append(b"")
            self._file.write(b"\n".join(messages))
            self._file.flush()

    def msg(self, message: bytes) -> None:
        with self._lock:
            if self._held:
                self._lines.append(message)
                return
            self._file.write(message + b"\n")
            self._file.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1
                if not self._held and self._lines:
                    self._lines.append(b"")
                    lines, self._lines = self._lines, []
                    self._file.write(b"\n".join(lines))
                    self._file.flush()


_output: _LineOutput | None = None
#: The level configured last (lines below it are dropped).
_level = logging.INFO
#: structlog's method names and their levels (getLevelNamesMapping copies a dict per call).
_LEVELS = {name.lower(): number for name, number in logging.getLevelNamesMapping().items()}


def batched_lines() -> contextlib.AbstractContextManager[None]:
    """Lines logged inside the block are written together when it ends (JSON
    output; elsewhere, and on a terminal, lines go out as they come). Keep the
    block short and free of waits: the lines are held in memory until then."""
    if _output is None:
        return contextlib.nullcontext()
    return _output.held()


def log_lines(logger: Any, level: str, event: str, lines: list[dict[str, Any]]) -> None:
    """``logger.<level>(event, **line)`` for each line, at a
    quarter of the cost where it counts: with JSON output, the lines are
    rendered here as the processors would render them (context variables, level,
    one timestamp for all, the same redaction) and written at once. Each line
    must name its own ``trace_id``/``span_id`` when it has them. Elsewhere (a
    terminal, a test's stream) each line goes through structlog."""
    if not lines:
        return
    output = _output
    if output is None or _LEVELS[level] < _level:
        method = getattr(logger, level)
        for line in lines:
            method(event, **line)
        return
    bound = structlog.contextvars.get_contextvars()
    timestamp = iso_utc(time.time_ns())
    rendered = []
    for event_dict in lines:
        event_dict["event"] = event
        # As merge_contextvars does: the call's own keys win, the context's follow.
        for key, value in bound.items():
            event_dict.setdefault(key, value)
        event_dict["level"] = level
        event_dict["timestamp"] = timestamp
        try:
            text: bytes | None = orjson.dumps(event_dict, default=str)
        except TypeError:
            text = None
        if text is None or _maybe_secret(text):
            text = orjson.dumps(redact(logger, level, event_dict), default=str)
        rendered.append(text)
    output.write_many(rendered)


def _maybe_secret(line: bytes) -> bool:
    """False when :func:`redact` would leave every key and value of the line as it
    is: the line has none of the words of the text patterns' first look
    (``_SUSPECT``) nor of the secret key names (``_SECRET_KEYS``)."""
    if not line.isascii():
        return True  # case-insensitive matching of non-ASCII text: leave it to redact()
    # Substring search is faster on str than on bytes.
    low = line.decode("ascii").lower()
    return any(word in low for word in _LINE_WORDS)


class _RedactedJson:
    """Renders a JSON line, redacted: the line is rendered first and looked at
    once; only a line that mentions a secret-looking word goes through
    :func:`redact` (each key and value) and is rendered again."""

    def __init__(self, *, text: bool):
        self.text = text

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> bytes | str:
        line: bytes | None
        try:
            line = orjson.dumps(event_dict, default=str)
        except TypeError:
            line = None  # redaction may blank what cannot be rendered
        if line is None or _maybe_secret(line):
            line = orjson.dumps(redact(logger, name, event_dict), default=str)
        return line.decode() if self.text else line


def configure_logging(
    level: str = "info", fmt: str = "auto", *, stream: TextIO | None = None
) -> None:
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    # JSON lines go out as bytes (no str round trip) where the stream has a buffer.
    binary = getattr(out, "buffer", None) if not use_console else None
    # Redaction comes last: after format_exc_info, and the JSON renderer
    # redacts only the lines that need it.
    last: list[Any] = (
        [redact, structlog.dev.ConsoleRenderer()]
        if use_console
        else [_RedactedJson(text=binary is None)]
    )
    global _output, _level
    _output = _LineOutput(binary) if binary is not None else None
    factory: Any = (
        (lambda *_args: _output) if _output is not None else structlog.PrintLoggerFactory(file=out)
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    _level = numeric
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_timestamp,
            add_trace_ids,
            structlog.processors.format_exc_info,
            *last,
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
