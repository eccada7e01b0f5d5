"""Configuration from the environment, validated once at start.

The variable names are a contract with outside tools (README's table lists
them all). Build :class:`Settings` in the entry point and pass it down;
nothing else reads ``os.environ``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigError
from .policy import check_org_id

__all__ = ["Settings", "env_name", "load_settings"]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]
_REPLICA_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class Settings(BaseSettings):
    """Every setting of the service; environment names are ``AMT_`` + the field name in capitals,
    except the standard AWS variables."""

    model_config = SettingsConfigDict(env_prefix="AMT_", extra="ignore", frozen=True)

    # Roles of this process, and the replicas
    run_websocket: bool = True
    run_sqs: bool = True
    run_worker: bool = True
    replica_id: str = ""
    ws_lease_s: float = Field(5.0, ge=1, le=300)

    # Passport WebSocket
    passport_ws_url: str = "ws://127.0.0.1:8765/stream"
    passport_token: SecretStr | None = None
    passport_token_file: Path | None = None
    passport_initial_replay: Literal["earliest", "latest"] = "earliest"
    ws_credits: int = Field(500, ge=1, le=100_000)
    ws_heartbeat_timeout: float = Field(30.0, gt=0)
    ws_max_frame_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    ws_backoff_initial: float = Field(0.5, gt=0)
    ws_backoff_max: float = Field(30.0, gt=0)
    salesforce_base_url: str = "http://127.0.0.1:8766"
    salesforce_deleted_lookback_s: float = Field(15 * 24 * 3600.0, gt=120)
    salesforce_deleted_max_span_s: float = Field(30 * 24 * 3600.0, gt=120)

    # SQS
    sqs_queue_urls: CsvList = Field(default_factory=list)
    sqs_wait_seconds: int = Field(20, ge=0, le=20)
    sqs_visibility_timeout: int = Field(60, ge=5, le=43_200)
    sqs_max_body_bytes: int = Field(256 * 1024, ge=1024)
    sqs_receivers_per_queue: int = Field(2, ge=1, le=32)

    # AWS (standard names, no prefix)
    aws_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL", "AMT_AWS_ENDPOINT_URL")
    )
    aws_region: str = Field(
        "us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION")
    )
    aws_access_key_id: SecretStr | None = Field(None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(None, validation_alias="AWS_SECRET_ACCESS_KEY")

    # Coordination, jobs and store
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "sqlite+aiosqlite:///./amt_ingest.db"
    db_auto_upgrade: bool = True
    allowed_org_ids: CsvList = Field(default_factory=list)
    orgs_cache_s: float = Field(30.0, ge=0)
    dedup_ttl_seconds: int = Field(4 * 24 * 3600, ge=60)
    worker_max_jobs: int = Field(50, ge=1, le=1000)
    worker_poll_delay: float = Field(0.02, gt=0)
    job_timeout: float = Field(120.0, gt=0)
    job_lease_s: float = Field(10.0, ge=1, le=3600)
    job_max_tries: int = Field(16, ge=1, le=100)
    job_batch: int = Field(50, ge=1, le=500)
    shutdown_grace: float = Field(20.0, ge=0)
    max_pending_records: int = Field(
        20_000,
        ge=1,
        validation_alias=AliasChoices("AMT_MAX_PENDING_RECORDS", "AMT_MAX_QUEUED_JOBS"),
    )
    resync_rate: float = Field(100.0, gt=0)
    resync_overlap_s: float = Field(300.0, ge=0)
    dead_letter_file: Path = Path("./amt_ingest-dead-letters.jsonl")

    # Operations
    http_port: int = Field(8080, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    reconcile_grace_s: float = Field(300.0, gt=0)
    ready_ws_grace_s: float = Field(60.0, ge=0)
    gauge_interval_s: float = Field(15.0, gt=0)

    # OpenTelemetry (standard names, no prefix)
    otel_sdk_disabled: bool = Field(False, validation_alias="OTEL_SDK_DISABLED")
    otel_service_name: str = Field("amt_ingest", validation_alias="OTEL_SERVICE_NAME")
    otel_traces_sampler: Literal[
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ] = Field("parentbased_always_on", validation_alias="OTEL_TRACES_SAMPLER")
    otel_traces_sampler_arg: float | None = Field(
        None, ge=0, le=1, validation_alias="OTEL_TRACES_SAMPLER_ARG"
    )
    otel_traces_exporter: Literal["otlp", "none"] = Field(
        "otlp", validation_alias="OTEL_TRACES_EXPORTER"
    )
    otel_metrics_exporter: Literal["otlp", "prometheus", "none"] = Field(
        "otlp", validation_alias="OTEL_METRICS_EXPORTER"
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        None, validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    otel_exporter_otlp_metrics_endpoint: str | None = Field(
        None, validation_alias="OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    )
    otel_exporter_otlp_protocol: Literal["http/protobuf"] = Field(
        "http/protobuf", validation_alias="OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    #: Exemplars cost a third of each histogram measurement (one per record applied).
    otel_metrics_exemplar_filter: Literal["always_off", "always_on", "trace_based"] = Field(
        "always_off", validation_alias="OTEL_METRICS_EXEMPLAR_FILTER"
    )
    otel_bsp_max_queue_size: int = Field(65_536, ge=1, validation_alias="OTEL_BSP_MAX_QUEUE_SIZE")
    otel_bsp_schedule_delay: int = Field(200, ge=1, validation_alias="OTEL_BSP_SCHEDULE_DELAY")
    otel_bsp_max_export_batch_size: int = Field(
        512, ge=1, validation_alias="OTEL_BSP_MAX_EXPORT_BATCH_SIZE"
    )

    _split = field_validator("sqs_queue_urls", "allowed_org_ids", mode="before")(_split_csv)

    @field_validator("allowed_org_ids")
    @classmethod
    def _org_ids(cls, value: list[str]) -> list[str]:
        for org in value:
            check_org_id(org)
        return value

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("replica_id")
    @classmethod
    def _replica(cls, value: str) -> str:
        if value and not _REPLICA_ID.fullmatch(value):
            raise ValueError("at most 64 letters, digits and . _ : - (no spaces)")
        return value

    @field_validator("passport_ws_url")
    @classmethod
    def _ws(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError("must be a ws:// or wss:// URL")
        return value

    @field_validator("sqs_queue_urls")
    @classmethod
    def _queues(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an SQS queue URL")
        return value

    @model_validator(mode="after")
    def _backoff(self) -> Settings:
        if self.ws_backoff_max < self.ws_backoff_initial:
            raise ValueError("AMT_WS_BACKOFF_MAX must not be below AMT_WS_BACKOFF_INITIAL")
        if self.otel_bsp_max_export_batch_size > self.otel_bsp_max_queue_size:
            raise ValueError(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE must not exceed OTEL_BSP_MAX_QUEUE_SIZE"
            )
        return self

    # -- derived ------------------------------------------------------------

    def read_token(self) -> str:
        """The current Passport token: the file is re-read on every call (rotating secrets)."""
        if self.passport_token_file is not None:
            try:
                token = self.passport_token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"AMT_PASSPORT_TOKEN_FILE: cannot read {self.passport_token_file}: {exc}"
                ) from exc
            if not token:
                raise ConfigError(f"AMT_PASSPORT_TOKEN_FILE: {self.passport_token_file} is empty")
            return token
        if self.passport_token is not None:
            return self.passport_token.get_secret_value()
        raise ConfigError("AMT_PASSPORT_TOKEN: not set (nor AMT_PASSPORT_TOKEN_FILE)")

    @property
    def otlp_traces_enabled(self) -> bool:
        """Spans go by OTLP when an endpoint is set and the exporter is not ``none``."""
        return self.otel_traces_exporter == "otlp" and bool(
            self.otel_exporter_otlp_traces_endpoint or self.otel_exporter_otlp_endpoint
        )

    @property
    def otlp_metrics_enabled(self) -> bool:
        return self.otel_metrics_exporter == "otlp" and bool(
            self.otel_exporter_otlp_metrics_endpoint or self.otel_exporter_otlp_endpoint
        )

    def require_token(self) -> None:
        """Fail at start, not at the first connection, when no token can be had."""
        self.read_token()


_ENV_NAMES = {
    "aws_endpoint_url": "AWS_ENDPOINT_URL",
    "aws_region": "AWS_REGION",
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
}


def env_name(field_name: str) -> str:
    if field_name.startswith("otel_"):
        return field_name.upper()
    return _ENV_NAMES.get(field_name, "AMT_" + field_name.upper())


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment; :class:`ConfigError` names the bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = err["loc"][0] if err["loc"] else ""
            name = env_name(str(loc)) if loc else "configuration"
            if str(loc).isupper():
                name = str(loc)
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{name}: {msg}")
        raise ConfigError("; ".join(lines)) from exc
