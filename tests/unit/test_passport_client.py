"""The Passport client's decisions after a connection ends (sources/passport.py), pure."""

from __future__ import annotations

import pytest

from amt_ingest.sources.passport import (
    FROM_EARLIEST,
    REFRESH_TOKEN,
    REPORT,
    RESUME,
    Ended,
    after,
    close_action,
    error_action,
)


def decide(
    ended: Ended,
    *,
    token: str = "t1",
    tried: str | None = None,
    file: bool = True,
    credits: int = 500,
):
    return after(
        ended, token=token, tried_token=tried, token_file=file, credits=credits, frame_limit=1024
    )


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (1000, RESUME),
        (1001, RESUME),
        (1011, RESUME),
        (1012, RESUME),
        (1013, RESUME),
        (4001, REFRESH_TOKEN),
        (4410, FROM_EARLIEST),
        (4400, REPORT),
        (1008, REPORT),
        (None, RESUME),
    ],
)
def test_close_codes(code: int | None, action: str) -> None:
    assert close_action(code) == action


def test_error_frames() -> None:
    assert error_action("token_expired") == error_action("unauthorized") == REFRESH_TOKEN
    assert error_action("replay_id_expired") == FROM_EARLIEST
    assert error_action("invalid_request") == error_action("unknown_topic") == REPORT
    assert error_action("overloaded") == RESUME


def test_a_refused_file_token_is_read_again_once_then_waited_for() -> None:
    first = decide(Ended("HTTP 401", http_status=401))
    assert (first.step, first.action, first.tried_token) == ("reconnect", REFRESH_TOKEN, "t1")
    again = decide(Ended("HTTP 403", http_status=403), tried="t1")
    assert again.step == "wait_for_token"
    fresh = decide(Ended("HTTP 401", http_status=401), token="t2", tried="t1")
    assert (fresh.step, fresh.tried_token) == ("reconnect", "t2")


def test_a_refused_fixed_token_stops_with_a_clear_reason() -> None:
    step = decide(Ended("HTTP 401", http_status=401), file=False)
    assert step.step == "stop" and step.fatal and "AMT_PASSPORT_TOKEN" in step.fatal


def test_a_frame_too_big_halves_the_credits_down_to_one_then_stops() -> None:
    step = decide(Ended("closed 1009", frame_too_big=True), credits=7)
    assert (step.step, step.credits) == ("reconnect", 3)
    assert "1024 bytes; now 3 credits" in step.reason
    assert decide(Ended("x", frame_too_big=True), credits=1).step == "stop"


def test_other_ends_reconnect_with_the_servers_action_and_keep_the_state() -> None:
    step = decide(Ended("closed 4410: gone", action=FROM_EARLIEST), tried="t0", credits=40)
    assert (step.step, step.action, step.credits, step.tried_token) == (
        "reconnect",
        FROM_EARLIEST,
        40,
        "t0",
    )
    assert decide(Ended("HTTP 503", http_status=503)).action == RESUME
