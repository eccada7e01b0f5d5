"""Progress of long operator commands (``dlq``, ``resync``): a rich bar on a terminal,
plain outcome lines otherwise."""

from __future__ import annotations

from typing import Any, Protocol, TextIO

__all__ = ["PlainProgress", "Progress", "RichProgress", "progress_for"]


class Progress(Protocol):
    """Where a command reports its progress and its per-item outcome lines."""

    def begin(self, label: str, total: int | None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def end(self) -> None: ...
    def line(self, text: str) -> None: ...


class PlainProgress:
    """Off a terminal: no bar, each outcome line as it happens."""

    def __init__(self, out: TextIO):
        self.out = out

    def begin(self, label: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def end(self) -> None:
        pass

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


class RichProgress:
    """On a terminal: a rich progress bar on ``err``; outcome lines printed above it
    when ``out`` is the same terminal."""

    def __init__(self, out: TextIO, err: TextIO):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichBar

        self.out = out
        self.out_is_tty = out.isatty()
        self.console = Console(file=err)
        self.bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.task: Any = None

    def begin(self, label: str, total: int | None) -> None:
        self.end()
        self.bar.start()
        self.task = self.bar.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.bar.advance(self.task, n)

    def end(self) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        self.bar.stop()

    def line(self, text: str) -> None:
        if self.out_is_tty and self.task is not None:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self.out.write(text + "\n")
            self.out.flush()


def progress_for(out: TextIO, err: TextIO) -> Progress:
    """A bar on a terminal, plain lines otherwise."""
    return RichProgress(out, err) if err.isatty() else PlainProgress(out)
