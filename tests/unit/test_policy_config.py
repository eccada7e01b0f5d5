"""Retry policies and configuration."""

from __future__ import annotations

import random

import pytest

from amt_ingest.config import load_settings
from amt_ingest.errors import ConfigError
from amt_ingest.policy import backoff, job_retry_delay, org_allowed


def test_job_retry_delay_follows_the_seed_rule():
    rng = random.Random(1)
    for retry in range(1, 16):
        delay = job_retry_delay(retry, rng=rng)
        assert retry**4 + 30 <= delay <= retry**4 + 30 + 10 * retry
    with pytest.raises(ValueError, match="starts at 1"):
        job_retry_delay(0)


def test_fifteen_retries_span_about_a_day_and_a_half():
    total = sum(job_retry_delay(r, rng=random.Random(0)) for r in range(1, 15))
    assert 35 * 3600 < total < 37 * 3600


def test_backoff_is_capped_and_jittered():
    delays = backoff(0.5, 4.0, rng=random.Random(2))
    values = [next(delays) for _ in range(10)]
    assert 0.25 <= values[0] <= 0.5
    assert all(v <= 4.0 for v in values)
    assert all(v >= 2.0 for v in values[4:])


def test_org_filter_matches_15_and_18_character_ids():
    allowed = frozenset({"00D5g000004ZzAB"})
    assert org_allowed("00D5g000004ZzABEA0", allowed)
    assert org_allowed("00D5g000004ZzAB", allowed)
    assert not org_allowed("00D5g000009XyZQEA0", allowed)
    assert org_allowed("00D5g000009XyZQEA0", frozenset())


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("AMT_SQS_QUEUE_URLS", "http://a/1/q1, http://a/1/q2")
    monkeypatch.setenv("AMT_ALLOWED_ORG_IDS", "00D5g000004ZzABEA0")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    settings = load_settings()
    assert settings.sqs_queue_urls == ["http://a/1/q1", "http://a/1/q2"]
    assert settings.allowed_org_ids == ["00D5g000004ZzABEA0"]
    assert settings.aws_region == "eu-west-1"


@pytest.mark.parametrize("name", ["AMT_MAX_PENDING_RECORDS", "AMT_MAX_QUEUED_JOBS"])
def test_the_high_water_mark_is_read_under_both_names(monkeypatch, name):
    monkeypatch.setenv(name, "1234")
    assert load_settings().max_pending_records == 1234


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AMT_HTTP_PORT", "eighty"),
        ("AMT_JOB_BATCH", "0"),
        ("AMT_MAX_PENDING_RECORDS", "0"),
        ("AMT_DATABASE_URL", "mysql://x"),
        ("AMT_REDIS_URL", "localhost:6379"),
        ("AMT_PASSPORT_WS_URL", "http://x"),
        ("AMT_ALLOWED_ORG_IDS", "00X123"),
        ("AMT_SQS_QUEUE_URLS", "not-a-url"),
        ("AMT_DB_AUTO_UPGRADE", "maybe"),
        ("AMT_ORGS_CACHE_S", "-1"),
    ],
)
def test_invalid_value_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(name + ":")
    assert "\n" not in str(info.value)


def test_token_file_is_reread(tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("one\n")
    monkeypatch.setenv("AMT_PASSPORT_TOKEN_FILE", str(token))
    settings = load_settings()
    assert settings.read_token() == "one"
    token.write_text("two")
    assert settings.read_token() == "two"


def test_missing_token_names_the_variable(monkeypatch):
    monkeypatch.delenv("AMT_PASSPORT_TOKEN", raising=False)
    monkeypatch.delenv("AMT_PASSPORT_TOKEN_FILE", raising=False)
    with pytest.raises(ConfigError, match=r"^AMT_PASSPORT_TOKEN"):
        load_settings().require_token()
