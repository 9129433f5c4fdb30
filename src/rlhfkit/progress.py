"""How long-running work reports itself. Every stage takes a `Progress` and calls it; the
CLI draws a bar on a terminal and plain lines elsewhere (`PlainProgress`), the pipeline
hands its own to each stage, and a caller who wants nothing passes nothing: the base class
is silent.

A task is one countable piece of work (prompts sampled, training steps, bytes read); a new
`start` ends the task before it. `note` and `warn` are single lines worth keeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """The protocol, and the default that says nothing."""

    def start(self, task: str, total: int | None = None, completed: int = 0) -> None:
        """A task of `total` units begins (None: unknown), `completed` of them done already."""

    def advance(self, n: int = 1, description: str | None = None) -> None:
        """`n` more units done; `description` replaces the task's name (a running loss, say)."""

    def note(self, message: str) -> None:
        """A line worth keeping in the output: a stage begins, a held-out accuracy."""

    def warn(self, message: str) -> None:
        """Something the user should know about, though the work goes on."""

    def done(self, summary: str | None = None) -> None:
        """The current task (or stage) ended; `summary` says how, in one line."""


def duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class PlainProgress(Progress):
    """Progress as plain lines, for output that is not a terminal (a log, CI): a task's
    state every `interval` seconds while it runs, and its end if it ran that long, so a
    long stage is never silent for minutes; notes, warnings and summaries as they come."""

    def __init__(
        self,
        write: Callable[[str], None],
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.write, self.interval, self.clock = write, interval, clock
        self.task: str | None = None
        self.description = ""
        self.total: int | None = None
        self.completed = 0
        self.started = self.last = 0.0
        self.shown = False  # whether this task has printed a line

    def start(self, task: str, total: int | None = None, completed: int = 0) -> None:
        self._end()
        self.task, self.description, self.total, self.completed = task, task, total, completed
        self.started = self.last = self.clock()
        self.shown = False

    def advance(self, n: int = 1, description: str | None = None) -> None:
        if self.task is None:
            return
        self.completed += n
        self.description = description or self.description
        if self.clock() - self.last >= self.interval:
            self._line()

    def note(self, message: str) -> None:
        self.write(message)

    def warn(self, message: str) -> None:
        self.write(f"warning: {message}")

    def done(self, summary: str | None = None) -> None:
        self._end()
        if summary:
            self.write(summary)

    def _end(self) -> None:
        if self.task is not None and self.shown:
            self._line("done, ")
        self.task = None

    def _line(self, state: str = "") -> None:
        now = self.clock()
        count = f"{self.completed}/{self.total}" if self.total else str(self.completed)
        if self.total:
            count += f" ({self.completed / self.total:.0%})"
        self.write(f"{self.description}: {state}{count}, {duration(now - self.started)}")
        self.last, self.shown = now, True
