"""The fallback file: appends and rewrites under its lock (threads, no event loop)."""

from __future__ import annotations

import threading

from amt_ingest.operations.deadletters.sink import append_fallback_line, rewrite_fallback


def test_rewrite_drops_only_refused_lines(tmp_path):
    path = tmp_path / "sub" / "dead.jsonl"
    assert rewrite_fallback(path, lambda _: False) == 0  # no file yet
    for n in range(5):
        append_fallback_line(path, f'{{"n": {n}}}'.encode())
    assert rewrite_fallback(path, lambda line: b"2" not in line and b"4" not in line) == 2
    assert path.read_text().splitlines() == ['{"n": 0}', '{"n": 1}', '{"n": 3}']
    assert rewrite_fallback(path, lambda _: True) == 0
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left


def test_appends_during_rewrites_are_never_lost(tmp_path):
    """A writer appends while another process-like thread keeps rewriting the file:
    every line the rewriter keeps must survive (an appender that waited on the
    replaced file appends to the new one)."""
    path = tmp_path / "dead.jsonl"
    lines = [f"keep-{n}" if n % 2 else f"drop-{n}" for n in range(400)]
    done = threading.Event()

    def writer() -> None:
        for line in lines:
            append_fallback_line(path, line.encode())
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    rewrites = 0
    while not done.is_set():
        rewrite_fallback(path, lambda line: not line.startswith(b"drop-"))
        rewrites += 1
    thread.join()
    rewrite_fallback(path, lambda line: not line.startswith(b"drop-"))
    assert rewrites > 1
    assert path.read_text().splitlines() == [line for line in lines if line.startswith("keep-")]
