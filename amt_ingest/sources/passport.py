"""The Passport Stream Protocol v1 client's decisions, without I/O (PROTOCOL.md section 2).

:mod:`.websocket` drives a connection; when one ends, it describes how
(:class:`Ended`) and :func:`after` says what comes next (:class:`Next`): resume
with backoff, refresh the token at once, resubscribe from ``earliest`` and resync
the lost window, report a protocol error, wait for a new token, or stop for
good. Tests call these functions directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "FROM_EARLIEST",
    "REFRESH_TOKEN",
    "REPORT",
    "RESUME",
    "Ended",
    "Next",
    "after",
    "close_action",
    "error_action",
]

# What to do after the server closed the connection (PROTOCOL.md section 2).
RESUME: Final = "resume"
REFRESH_TOKEN: Final = "refresh_token"
FROM_EARLIEST: Final = "from_earliest"
REPORT: Final = "report"

_ERROR_ACTIONS: Final = {
    "token_expired": REFRESH_TOKEN,
    "unauthorized": REFRESH_TOKEN,
    "replay_id_expired": FROM_EARLIEST,
    "invalid_request": REPORT,
    "unknown_topic": REPORT,
}


def close_action(code: int | None) -> str:
    """The reconnect decision for a close code."""
    if code == 4001:
        return REFRESH_TOKEN
    if code == 4410:
        return FROM_EARLIEST
    if code in (4400, 1008):
        return REPORT
    return RESUME


def error_action(code: str) -> str:
    """The reconnect decision for an ``error`` frame's code (the server closes after it)."""
    return _ERROR_ACTIONS.get(code, RESUME)


@dataclass(frozen=True, slots=True)
class Ended:
    """How a connection attempt ended.

    ``http_status``: the upgrade was refused with it. ``action``: the server said
    what to do (a close code or an error frame, see :func:`close_action`).
    ``frame_too_big``: the client closed it because a frame exceeded the limit.
    """

    reason: str
    action: str = RESUME
    http_status: int | None = None
    frame_too_big: bool = False


@dataclass(frozen=True, slots=True)
class Next:
    """What the listener does next.

    ``step``: ``reconnect`` (after a backoff, or at once when ``at_once``),
    ``wait_for_token`` (the token file's token was refused: wait for it to
    change) or ``stop`` (``fatal`` says why). ``credits``: ask for this many on
    the next subscribe. ``tried_token``: the token a refusal may be retried
    with once (a rotating secret read again).
    """

    step: Literal["reconnect", "wait_for_token", "stop"]
    action: str = RESUME
    reason: str = ""
    credits: int = 0
    fatal: str | None = None
    tried_token: str | None = None


def after(
    ended: Ended,
    *,
    token: str,
    tried_token: str | None,
    token_file: bool,
    credits: int,
    frame_limit: int,
) -> Next:
    """What follows a connection that ended as ``ended`` with ``token``.

    A refused token (HTTP 401/403) is tried once more after the token file is
    read again; a fixed token, or the same file token refused twice, is not
    retried in a loop. A frame over the limit halves the credits (Passport sends
    fewer events per frame), down to one event; a single event over it stops.
    """
    if ended.http_status in (401, 403):
        if token_file and token != tried_token:
            return Next(
                "reconnect",
                action=REFRESH_TOKEN,
                reason=f"HTTP {ended.http_status}",
                credits=credits,
                tried_token=token,
            )
        if not token_file:
            return Next(
                "stop",
                fatal=f"Passport refused the token (HTTP {ended.http_status}); "
                "set a valid AMT_PASSPORT_TOKEN and restart",
            )
        return Next("wait_for_token", reason=f"HTTP {ended.http_status}", credits=credits)
    if ended.frame_too_big:
        if credits == 1:
            return Next(
                "stop",
                fatal=f"a single Passport event exceeds AMT_WS_MAX_FRAME_BYTES ({frame_limit} "
                "bytes); it stays unacknowledged after the saved cursor: raise the limit and "
                "restart",
            )
        fewer = max(1, credits // 2)
        return Next(
            "reconnect",
            action=ended.action,
            reason=f"a frame exceeded {frame_limit} bytes; now {fewer} credits",
            credits=fewer,
            tried_token=tried_token,
        )
    return Next(
        "reconnect",
        action=ended.action,
        reason=ended.reason,
        credits=credits,
        tried_token=tried_token,
    )
