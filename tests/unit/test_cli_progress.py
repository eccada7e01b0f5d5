"""A resync's progress callback drives the shared progress bar by increments."""

from __future__ import annotations

from amt_ingest.cli import _Marking


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def begin(self, label: str, total: int | None) -> None:
        self.calls.append(("begin", (label, total)))

    def advance(self, n: int = 1) -> None:
        self.calls.append(("advance", n))

    def end(self) -> None:
        self.calls.append(("end", None))

    def line(self, text: str) -> None:
        self.calls.append(("line", text))


def test_a_resumed_resync_starts_the_bar_where_it_stands() -> None:
    marking = _Marking("resync Opportunity")
    recorder = Recorder()
    marking.progress = recorder
    for done in (6, 7, 8):  # five were marked by an earlier run
        marking.update(done, 10)
    marking.close()
    assert recorder.calls == [
        ("begin", ("resync Opportunity", 10)),
        ("advance", 6),
        ("advance", 1),
        ("advance", 1),
        ("end", None),
    ]
