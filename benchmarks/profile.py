"""py-spy's raw (collapsed stack) output summarised: where the sampled process spent time.

``py-spy record --format raw --idle`` writes one line per distinct stack,
``frame;frame;...;leaf count``, each frame ``function (file:line)``. Only the
main thread counts (the event loop; helper threads such as aiosqlite's mostly
wait). Samples whose leaf is the event loop's ``select`` are the loop waiting
(for Redis, the socket, a timer); the rest is CPU.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TRUNK_SHARE", "Profile", "summarise"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_PATH = re.compile(r".*/(?:lib/python3\.\d+/(?:site-packages/)?|(?=amt_ingest/))")
_IDLE_LEAF = "select (selectors.py)"
_MAIN_ROOT = "_run_module_as_main"
#: Inclusive shares at least this large are the common trunk (runner, event loop).
TRUNK_SHARE = 0.95


@dataclass
class Profile:
    samples: int = 0
    idle: int = 0
    self_time: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)

    def top(self, kind: str = "self", n: int = 20) -> list[tuple[str, float]]:
        """The ``n`` costliest functions as shares (0..1) of the non-idle samples;
        inclusively, the trunk every sample shares (the event loop) is left out."""
        counter = self.self_time if kind == "self" else self.inclusive
        busy = max(1, self.samples - self.idle)
        shares = [(name, count / busy) for name, count in counter.most_common()]
        if kind != "self":
            shares = [(name, share) for name, share in shares if share < TRUNK_SHARE]
        return shares[:n]

    def as_dict(self, n: int = 20) -> dict[str, object]:
        return {
            "samples": self.samples,
            "idle_share": round(self.idle / self.samples, 3) if self.samples else None,
            "top_self": [(name, round(share, 3)) for name, share in self.top("self", n)],
            "top_inclusive": [(name, round(share, 3)) for name, share in self.top("incl", n)],
        }


def _short(frame: str) -> str:
    """``function (file:line)`` as ``function (module path)``: lines merged, prefixes cut."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['func']} ({_PATH.sub('', match['file'], count=1)})"


def summarise(raw: Path) -> Profile:
    """Read a py-spy ``--format raw`` file (line numbers merged per function)."""
    profile = Profile()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames or not frames[0].startswith(_MAIN_ROOT):
            continue
        profile.samples += count
        leaf = _short(frames[-1])
        if leaf.endswith(_IDLE_LEAF):
            profile.idle += count
            continue
        profile.self_time[leaf] += count
        for name in {_short(f) for f in frames}:
            profile.inclusive[name] += count
    return profile
