"""Logging setup: structlog, JSON off a terminal, console on one, secrets redacted.

Call :func:`configure_logging` once in the entry point; modules use
``structlog.get_logger(__name__)`` and bind context per event.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging", "redact"]

_SECRET_KEYS = re.compile(r"(token|secret|password|authorization|credential)", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+")


def redact(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Blank values of secret-looking keys and bearer tokens inside strings."""
    for key, value in list(event_dict.items()):
        if _SECRET_KEYS.search(key) and value is not None:
            event_dict[key] = "[redacted]"
        elif isinstance(value, str) and "Bearer" in value:
            event_dict[key] = _BEARER.sub(r"\1[redacted]", value)
    return event_dict


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (arq, botocore, websockets) go to stderr too.
    logging.basicConfig(
        level=max(numeric, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # arq logs every job start and end; the job's own "job_done" line says more.
    for noisy in ("botocore", "aiobotocore", "websockets", "aiohttp.access", "arq.worker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Alembic narrates every migration step; the migrations log one line per revision.
    logging.getLogger("alembic").setLevel(logging.WARNING)
