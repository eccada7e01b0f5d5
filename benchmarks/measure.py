"""Pure helpers: rates from progress samples, percentiles, flatness, the results table.

No I/O here: the phases collect ``(time, count)`` samples or timestamps, these
functions turn them into figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Flatness",
    "Target",
    "flatness",
    "format_table",
    "percentile",
    "rate_from_samples",
    "rate_from_times",
]

#: The middle of a run: startup and the tail (a last partial batch) are left out.
LOW, HIGH = 0.1, 0.9


def _time_at(samples: Sequence[tuple[float, float]], level: float) -> float | None:
    """When the count first reached ``level``, interpolated between samples."""
    prev_t, prev_c = samples[0]
    if prev_c >= level:
        return prev_t
    for t, c in samples[1:]:
        if c >= level:
            if c == prev_c:
                return t
            return prev_t + (t - prev_t) * (level - prev_c) / (c - prev_c)
        prev_t, prev_c = t, c
    return None


def rate_from_samples(
    samples: Sequence[tuple[float, float]], *, low: float = LOW, high: float = HIGH
) -> float | None:
    """Items per second between ``low`` and ``high`` of the final count.

    ``samples`` are ``(seconds, cumulative count)`` in time order. None when
    there are too few items or samples to tell.
    """
    if len(samples) < 2:
        return None
    total = samples[-1][1]
    if total < 10:
        return None
    t_low = _time_at(samples, low * total)
    t_high = _time_at(samples, high * total)
    if t_low is None or t_high is None or t_high <= t_low:
        return None
    return (high - low) * total / (t_high - t_low)


def rate_from_times(
    times: Sequence[float], *, low: float = LOW, high: float = HIGH
) -> float | None:
    """Items per second from each item's completion time (any order), over the middle."""
    if len(times) < 10:
        return None
    ordered = sorted(times)
    i_low = int(low * (len(ordered) - 1))
    i_high = int(high * (len(ordered) - 1))
    span = ordered[i_high] - ordered[i_low]
    if span <= 0:
        return None
    return (i_high - i_low) / span


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); ``math.inf`` values (never happened)
    count as larger than everything. None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Flatness:
    peak: float
    first_half_max: float
    last_half_max: float
    flat: bool


def flatness(samples: Sequence[tuple[float, float]], *, tolerance: float = 0.10) -> Flatness | None:
    """Is a level flat over time? Compares the maximum of the last half (by time)
    with the maximum of the first half; flat when it grew by at most ``tolerance``."""
    if len(samples) < 4:
        return None
    start, end = samples[0][0], samples[-1][0]
    middle = start + (end - start) / 2
    first = [v for t, v in samples if t <= middle]
    last = [v for t, v in samples if t > middle]
    if not first or not last:
        return None
    first_max, last_max = max(first), max(last)
    return Flatness(
        peak=max(first_max, last_max),
        first_half_max=first_max,
        last_half_max=last_max,
        flat=last_max <= first_max * (1 + tolerance),
    )


@dataclass(frozen=True, slots=True)
class Target:
    """One pass/fail line: ``value`` compared with ``limit`` (``>=`` or ``<=``)."""

    name: str
    value: float | None
    op: str
    limit: float | None
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if self.value is None or self.limit is None:
            return None
        return self.value >= self.limit if self.op == ">=" else self.value <= self.limit

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)
