"""The service's exceptions. Edges translate library errors into these, ``raise ... from exc``.

::

    IngestError
    ├── CoordinationError     Redis refused or lost a command: nothing may be acknowledged
    ├── StoreError            the database failed a write or read: the job retries
    ├── FencedError           a newer run of the record's job has written: this run stops
    ├── SourceError           a source cannot go on
    │   ├── AuthError         Passport refused the token and no fresh one can be had
    │   └── ProtocolError     the peer broke Passport Stream Protocol v1 (do not retry blindly)
    └── AwsError              an SNS/SQS call failed after its retries

Configuration problems are :class:`amt_ingest.config.ConfigError`, raised before
anything starts. Duplicates, stale and filtered events are results, not exceptions.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "AwsError",
    "CoordinationError",
    "FencedError",
    "IngestError",
    "ProtocolError",
    "SourceError",
    "StoreError",
]


class IngestError(Exception):
    """Base of every error the service raises on purpose."""


class CoordinationError(IngestError):
    """Redis did not confirm a command; whatever depended on it was not acknowledged."""


class StoreError(IngestError):
    """The database failed; the job that saw it retries."""


class FencedError(IngestError):
    """The store refused a write from a run that lost its record to a newer run."""


class SourceError(IngestError):
    """A source (WebSocket or SQS) cannot go on."""


class AuthError(SourceError):
    """The token was refused and no fresh one can be had."""


class ProtocolError(SourceError):
    """The peer broke the protocol; retrying the same request would fail the same way."""


class AwsError(IngestError):
    """An AWS call failed after its retries."""
