"""A local stage's shards in a pool of worker processes, stopped at once when one fails.

Leaving a ``ProcessPoolExecutor``'s ``with`` block waits for every shard still queued: after
Ctrl-C, or after one shard's error (a bad row under ``on_error: raise``), the run went on
through the rest of the stage, minutes to hours, before it said anything. Here the first
error stops the pool instead: queued shards never start and the running ones are killed.
That is safe: a shard's output is a temp file renamed into place when done and its stats
file is written after that, so a killed shard simply is not finished, and a re-run redoes
it while keeping every finished one (the caller removes the killed workers' temp files,
:func:`lmops.data._resume.remove_temp_files`).
"""

from __future__ import annotations

import multiprocessing as mp
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
    error of a job (or Ctrl-C) once every worker is gone; a worker that died (a signal,
    the out-of-memory killer) is an :class:`LmopsError` saying so."""
    jobs = list(jobs)
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=mp.get_context("fork"),
        initializer=initializer,
        initargs=initargs,
    ) as pool:
        futures = {pool.submit(fn, j) for j in jobs}
        try:
            while futures:
                done, futures = wait(futures, timeout=0.2, return_when=FIRST_EXCEPTION)
                for f in done:
                    f.result()  # re-raise a worker's error; finished shards stay
                tick(len(done))
        except BrokenProcessPool:
            _stop(pool)
            raise LmopsError(
                f"a worker process died while running its {what} (killed by a signal; by the "
                "out-of-memory killer if memory ran out); the finished shards are kept: run "
                "the recipe again to resume (with fewer executor.workers if memory ran out)"
            ) from None
        except BaseException:
            _stop(pool)
            raise


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop the pool now: kill its workers, so leaving its ``with`` does not wait for every
    shard still queued. The futures are left to the broken pool, which fails them itself
    (cancelling them first made its thread print a traceback on Python 3.11: it set an
    exception on a cancelled future)."""
    processes = getattr(pool, "_processes", None) or {}  # no public way before Python 3.14
    for proc in list(processes.values()):
        proc.kill()
