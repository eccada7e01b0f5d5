"""Positions in time: the triple ``(commitTimestamp, commitNumber, sequenceNumber)`` of
PROTOCOL.md section 1 as a fixed-width string whose order is the triple's.

The same strings are compared in Redis (Lua compares strings) and in the store, so
"newer" means the same everywhere. Pure.
"""

from __future__ import annotations

from typing import Final

__all__ = ["POSITION_WIDTH", "lost_window_position", "position_key", "position_ms"]

#: Characters of a position key: 15 (ms), 20 (commit number), 10 (sequence).
POSITION_WIDTH: Final = 45


def position_key(commit_timestamp: int, commit_number: int, sequence_number: int) -> str:
    """The position triple as a fixed-width string: string order equals triple order."""
    return f"{commit_timestamp:015d}{commit_number:020d}{sequence_number:010d}"


def position_ms(position: str) -> int:
    """The commit time (epoch ms) of a position key."""
    return int(position[:15])


def lost_window_position(newest: str, overlap_s: float) -> str:
    """Where the resync of a lost WebSocket window starts: ``overlap_s`` before the
    newest event handed off. Events reach the stream a little out of commit order, so
    an event after the resume point may have committed before the newest one handed
    off; starting there alone would miss it."""
    return position_key(max(0, position_ms(newest) - int(overlap_s * 1000)), 0, 0)
