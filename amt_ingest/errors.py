"""The service's exceptions. Edges translate library errors into these, ``raise ... from exc``.

::

    IngestError
    ├── ConfigError           the environment holds an invalid or missing value (exit code 2)
    ├── CoordinationError     Redis refused or lost a command: nothing may be acknowledged
    │   └── LeaseLostError    the WebSocket lease is another replica's: this one stops listening
    ├── StoreError            the database failed a write or read: the job retries
    ├── FencedError           a newer run of the record's job has written: this run stops
    ├── SalesforceError       a re-read failed after its retries: the job retries
    └── AwsError              an SNS/SQS call failed after its retries

Where each is raised: ConfigError by :mod:`amt_ingest.config`, CoordinationError by
:mod:`amt_ingest.coordination` (its only error), StoreError and FencedError by
:mod:`amt_ingest.store`, SalesforceError by :mod:`amt_ingest.salesforce`, AwsError by
:mod:`amt_ingest.aws`. The CLI maps them to exit codes once (2 for ConfigError, 1 for
the others). Duplicates, stale, filtered and rejected input are results, not exceptions.
"""

from __future__ import annotations

__all__ = [
    "AwsError",
    "ConfigError",
    "CoordinationError",
    "FencedError",
    "IngestError",
    "LeaseLostError",
    "SalesforceError",
    "StoreError",
]


class IngestError(Exception):
    """Base of every error the service raises on purpose."""


class ConfigError(IngestError):
    """The environment holds an invalid or missing value; the message names the variable."""


class CoordinationError(IngestError):
    """Redis did not confirm a command; whatever depended on it was not acknowledged."""


class LeaseLostError(CoordinationError):
    """Redis refused a hand-off or cursor save of a replica whose WebSocket lease is
    gone (another replica leads now): nothing of it was acknowledged."""


class StoreError(IngestError):
    """The database failed; the job that saw it retries."""


class FencedError(IngestError):
    """The store refused a write from a run that lost its record to a newer run."""


class SalesforceError(IngestError):
    """A re-read failed after its retries. ``status`` and ``code`` (the first
    ``errorCode`` of the body) are set when Salesforce answered."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class AwsError(IngestError):
    """An AWS call failed after its retries."""
