"""Retry and backoff policies as data: plain functions and generators of delays.

Callers take a policy as an argument, so tests pass short delays.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = [
    "backoff",
    "check_org_id",
    "job_retry_delay",
    "org_allowed",
    "org_prefix",
    "throttle_wait",
]

#: How often a paused retry looks at the throttle again (seconds).
PAUSE_RECHECK_S = 30.0


def backoff(
    initial: float = 0.5,
    maximum: float = 30.0,
    factor: float = 2.0,
    *,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Capped exponential backoff with full jitter: each delay is uniform in [d/2, d]."""
    rand = rng or random.Random()
    delay = initial
    while True:
        yield delay / 2 + rand.random() * delay / 2
        delay = min(maximum, delay * factor)


def job_retry_delay(retry_count: int, *, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``retry_count`` (1-based): ``retry_count**4 + 30 + jitter``.

    The jitter spreads up to ``10 * retry_count`` seconds, so records that failed
    together do not retry together.
    """
    if retry_count < 1:
        raise ValueError("retry_count starts at 1")
    rand = rng or random.Random()
    return float(retry_count**4 + 30) + rand.random() * 10 * retry_count


def org_prefix(org_id: str) -> str:
    """What org matching compares: the first 15 characters (a 15- and an 18-character
    id of one org are the same org)."""
    return org_id[:15]


def org_allowed(org_id: str, allowed: frozenset[str]) -> bool:
    """Whether events of ``org_id`` are kept. ``allowed`` holds 15-character ids;
    an empty set allows every org. 18-character ids match on their first 15."""
    return not allowed or org_prefix(org_id) in allowed


def check_org_id(org_id: str) -> str:
    """Return ``org_id`` if it looks like a Salesforce org id; raise :class:`ValueError`."""
    if not (org_id.startswith("00D") and len(org_id) in (15, 18) and org_id.isalnum()):
        raise ValueError(f"{org_id!r} is not a 15 or 18 character org id starting 00D")
    return org_id


def throttle_wait(
    mode: str | None,
    factor: float,
    *,
    failed_at_ms: int,
    retry_delay_s: float,
    now_ms: int,
) -> float | None:
    """Seconds a retry run must wait under the operator's throttle, or ``None`` to run now.

    ``pause`` holds every retry (rechecked every :data:`PAUSE_RECHECK_S`); ``slow``
    stretches each retry's delay by ``factor``, counted from its failure, so that
    retries already scheduled are stretched too. Waiting never uses up a retry.
    """
    if mode == "pause":
        return PAUSE_RECHECK_S
    if mode == "slow" and factor > 1:
        due_ms = failed_at_ms + retry_delay_s * factor * 1000
        if now_ms < due_ms:
            return (due_ms - now_ms) / 1000
    return None
