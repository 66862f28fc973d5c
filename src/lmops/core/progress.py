"""Progress of a long job, counted in its own units (documents, steps, shards).

On a terminal it is a live bar; when the output is a pipe or a file (CI logs, ``nohup``,
``| tee``), a bar would print nothing until the end, so it writes a plain line instead,
at the start, every ``every_s`` seconds and at the end::

    eval: 1,234/5,700 docs (21.6%), 3m12s elapsed, about 11m35s left (mmlu_redux_anatomy)

Usage::

    with Progress(total=len(docs), label="eval", unit="docs", enabled=show) as bar:
        bar.describe("mmlu_redux_anatomy")
        bar.advance(32)

It writes to standard error, so a command's standard output stays its result (``--json``).
Any stage can use it: evaluation counts documents, training could count steps, a data run
documents.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

from rich.markup import escape

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``42s``, ``3m12s``, ``2h05m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """``advance(n)`` units of ``total``; ``describe(text)`` names what is being worked on.

    ``stream`` defaults to standard error; ``live`` (default: whether ``stream`` is a
    terminal) picks the bar over plain lines. ``clock`` is injectable so the cadence of
    the plain lines can be tested without waiting."""

    def __init__(
        self,
        total: int,
        *,
        label: str,
        unit: str = "items",
        enabled: bool = True,
        stream: TextIO | None = None,
        live: bool | None = None,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        start: int = 0,
    ) -> None:
        """``start``: units done before this process began (a resumed job): counted as
        done, but not in the rate that estimates the time left."""
        self.total = max(0, total)
        self.label = label
        self.unit = unit
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.every_s = every_s
        self.clock = clock
        self.done = self.start = max(0, start)
        self.what = ""
        self._start = 0.0
        self._last_line = 0.0
        self._printed = -1  # units done at the last plain line
        self._bar: Any = None
        self._job: Any = None

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        self._start = self._last_line = self.clock()
        if not self.enabled:
            return self
        if self.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
            )
            self._bar.__enter__()
            self._job = self._bar.add_task(
                escape(self.label), total=self.total, completed=self.done
            )
        else:
            self._line()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
        elif exc_type is not None or self._printed != self.done:
            self._line(stopped=exc_type is not None)

    # -- reporting -------------------------------------------------------------------------------
    def describe(self, what: str) -> None:
        self.what = what
        if self._bar is not None:
            self._bar.update(self._job, description=escape(f"{self.label} {what}"))

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._moved()

    def update(self, done: int) -> None:
        """Set the units done (a job that reports where it is rather than each step)."""
        self.done = done
        self._moved()

    def _moved(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._job, completed=self.done)
        elif self.clock() - self._last_line >= self.every_s:
            self._line()

    def line(self, stopped: bool = False) -> str:
        """The plain progress line as it stands now."""
        elapsed = self.clock() - self._start
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = (
            f"{self.label}: {self.done:,}/{self.total:,} {self.unit} ({pct:.1f}%), "
            f"{format_duration(elapsed)} elapsed"
        )
        if stopped:
            text += ", stopped"
        elif self.start < self.done < self.total:
            left = elapsed / (self.done - self.start) * (self.total - self.done)
            text += f", about {format_duration(left)} left"
        return text + (f" ({self.what})" if self.what else "")

    def _line(self, stopped: bool = False) -> None:
        self._last_line = self.clock()
        self._printed = self.done
        print(self.line(stopped), file=self.stream, flush=True)
