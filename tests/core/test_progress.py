"""core.progress: plain periodic lines when the output is not a terminal (a piped run is
never silent), a bar on a terminal, nothing when disabled. The clock is a counter, so the
cadence is checked without waiting."""

from __future__ import annotations

import io

import pytest

from lmops.core.progress import Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_at_start_every_interval_and_at_the_end() -> None:
    out, clock = io.StringIO(), Clock()
    with Progress(100, label="eval", unit="docs", stream=out, every_s=30, clock=clock) as bar:
        bar.describe("mmlu_redux_anatomy")
        bar.advance(10)  # no time has passed: no line
        clock.now += 31
        bar.advance(10)  # 31 s since the last line: a line
        clock.now += 10
        bar.advance(30)  # 10 s: no line
        clock.now += 139
        bar.advance(50)
    lines = out.getvalue().splitlines()
    assert lines == [
        "eval: 0/100 docs (0.0%), 0s elapsed",
        "eval: 20/100 docs (20.0%), 31s elapsed, about 2m04s left (mmlu_redux_anatomy)",
        "eval: 100/100 docs (100.0%), 3m00s elapsed (mmlu_redux_anatomy)",  # once
    ]


def test_a_failed_job_says_it_stopped() -> None:
    out, clock = io.StringIO(), Clock()
    bar = Progress(8, label="eval", unit="docs", stream=out, clock=clock)
    with pytest.raises(KeyboardInterrupt), bar:
        bar.advance(3)
        raise KeyboardInterrupt
    assert out.getvalue().splitlines()[-1] == "eval: 3/8 docs (37.5%), 0s elapsed, stopped"


def test_disabled_prints_nothing_and_a_terminal_gets_a_bar() -> None:
    out = io.StringIO()
    with Progress(5, label="eval", enabled=False, stream=out) as bar:
        bar.advance(5)
    assert out.getvalue() == "" and bar.done == 5
    tty = io.StringIO()
    with Progress(5, label="eval", unit="docs", stream=tty, live=True) as bar:
        bar.advance(5)
    assert "5/5" in tty.getvalue() and "eval:" not in tty.getvalue()  # rich, not plain lines


def test_durations() -> None:
    assert [format_duration(s) for s in (0, 59.4, 61, 3599, 7500)] == [
        "0s",
        "59s",
        "1m01s",
        "59m59s",
        "2h05m",
    ]


def test_a_resumed_job_starts_where_it_was_and_its_rate_counts_this_run_only() -> None:
    """Training resumed at step 40 of 100: the line starts at 40, and the time left is
    estimated from the steps this process did (not 60 steps in 20 s)."""
    out, clock = io.StringIO(), Clock()
    with Progress(100, label="sft m", unit="steps", stream=out, clock=clock, start=40) as bar:
        clock.now += 40
        bar.update(60)  # a job that reports where it is: 20 steps in 40 s
    assert out.getvalue().splitlines() == [
        "sft m: 40/100 steps (40.0%), 0s elapsed",
        "sft m: 60/100 steps (60.0%), 40s elapsed, about 1m20s left",
    ]
