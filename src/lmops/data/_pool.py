"""A local stage's shards in a pool of worker processes, stopped at once when one fails.

Leaving a ``ProcessPoolExecutor``'s ``with`` block waits for every shard still queued: after
Ctrl-C, or after one shard's error (a bad row under ``on_error: raise``), the run went on
through the rest of the stage, minutes to hours, before it said anything. Here the first
error stops the pool instead: queued shards never start and the running ones are killed.
That is safe: a shard's output is a temp file renamed into place when done and its stats
file is written after that, so a killed shard simply is not finished, and a re-run redoes
it while keeping every finished one (the caller removes the killed workers' temp files,
:func:`lmops.data._resume.remove_temp_files`).

A job's error reaches the driver pickled. One that cannot be rebuilt there (an exception
class whose ``__init__`` takes other arguments than its ``args``) used to break the pool,
which then read as a worker's death; the worker now sends such an error as a plain
``RuntimeError`` with its type and message, and the driver tells a pool broken by what a
worker sent (naming that error) from a worker that died (naming its signal), also when it
broke while the jobs were still being queued (the queueing's own error says neither).
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import pickle
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from lmops.core.errors import LmopsError

__all__ = ["run_in_pool"]


def run_in_pool(
    fn: Callable[[Any], Any],
    jobs: Iterable[Any],
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...],
    tick: Callable[[int], None],
    what: str = "shard",
) -> None:
    """``fn(job)`` for every job on ``workers`` forked processes; ``tick(n)`` after ``n``
    more finished (``tick(0)`` between, for a progress bar's rate). Re-raises the first
    error of a job (or Ctrl-C, also while the jobs are being queued) once every worker is
    gone; a worker that died (a signal, the out-of-memory killer) is an
    :class:`LmopsError` saying so and naming the signal."""
    jobs = list(jobs)
    call = functools.partial(_sendable_errors, fn)
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=mp.get_context("fork"),
        initializer=initializer,
        initargs=initargs,
    ) as pool:
        try:
            futures, broken = set(), None
            for j in jobs:
                try:
                    futures.add(pool.submit(call, j))
                except BrokenProcessPool as b:
                    # broken while queueing (a job done at once): this error says nothing
                    # of why, the failed jobs' futures do
                    broken = b
                    break
            while futures:
                done, futures = wait(futures, timeout=0.2, return_when=FIRST_EXCEPTION)
                for f in done:
                    f.result()  # re-raise a worker's error; finished shards stay
                tick(len(done))
            if broken is not None:
                raise broken
        except BrokenProcessPool as e:
            death = _death(pool)  # before _stop kills the rest
            _stop(pool)
            if e.__cause__ is not None:  # the pool could not read what a worker sent
                raise LmopsError(
                    f"a worker's {what} failed and its error could not be read here "
                    f"({_last_line(e.__cause__)}); the finished shards are kept"
                ) from e.__cause__
            raise LmopsError(
                f"a worker process died while running its {what} ({death}; by the "
                "out-of-memory killer if memory ran out); the finished shards are kept: run "
                "the recipe again to resume (with fewer executor.workers if memory ran out)"
            ) from None
        except BaseException:
            _stop(pool)
            raise


def _sendable_errors(fn: Callable[[Any], Any], job: Any) -> Any:
    """``fn(job)`` in a worker; an error that would not survive the trip back to the driver
    (its class cannot be rebuilt from its ``args``) is raised as a ``RuntimeError`` naming
    its type and message, chained to it (the traceback the driver gets shows both)."""
    try:
        return fn(job)
    except Exception as e:
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:
            raise RuntimeError(f"{type(e).__name__}: {e}") from e
        raise


def _last_line(cause: BaseException) -> str:
    # the cause is the remote traceback as text; its last line names the error
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip().strip("'")]
    return lines[-1] if lines else type(cause).__name__


def _death(pool: ProcessPoolExecutor) -> str:
    """How the pool's dead worker ended, from the exit codes: "killed by SIGKILL" (the
    out-of-memory killer's), "exited with status 3", or "killed by a signal" when none
    is known. The pool notices a death before the dead worker's exit status can be read,
    and sends its other workers SIGTERM: so this waits (5 s at most) until some worker has
    a code that says more than that, or every one has a code, and a SIGTERM says least."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    deadline = time.monotonic() + 5
    while True:
        codes = [p.exitcode for p in processes]
        telling = [c for c in codes if c not in (None, 0, -signal.SIGTERM)]
        if telling or None not in codes or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    ended = [c for c in codes if c]  # neither running (None) nor a clean exit (0)
    if not ended:
        return "killed by a signal"
    code = min(ended, key=lambda c: (c == -signal.SIGTERM, c > 0))
    if code > 0:
        return f"exited with status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop the pool now: kill its workers, so leaving its ``with`` does not wait for every
    shard still queued. The futures are left to the broken pool, which fails them itself
    (cancelling them first made its thread print a traceback on Python 3.11: it set an
    exception on a cancelled future)."""
    processes = getattr(pool, "_processes", None) or {}  # no public way before Python 3.14
    for proc in list(processes.values()):
        proc.kill()
