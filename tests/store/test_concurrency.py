"""Many processes registering the same name never lose or duplicate a version."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

from lmops.store import Store, VersionStatus

PROCS = 4
PER_PROC = 8


def _register_many(home: str, worker: int, barrier: object) -> list[int]:
    os.environ["LMOPS_HOME"] = home
    store = Store()
    src = Path(home).parent / f"src-{worker}"
    src.mkdir(exist_ok=True)
    barrier.wait()  # type: ignore[attr-defined]  # start together to maximise contention
    numbers = []
    for i in range(PER_PROC):
        f = src / f"{i}.txt"
        f.write_text(f"worker {worker} item {i}")
        numbers.append(store.assets.register("dataset", "shared", f).version)
    store.close()
    return numbers


def test_four_processes_register_same_name(lmops_home: Path) -> None:
    Store().close()  # not required (each process migrates under a lock) but keeps timing fair
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(PROCS)
    with ctx.Pool(PROCS) as pool:
        results = pool.starmap(
            _register_many, [(str(lmops_home), w, barrier) for w in range(PROCS)]
        )
    got = sorted(n for r in results for n in r)
    assert got == list(range(1, PROCS * PER_PROC + 1))  # no gap, no duplicate
    store = Store()
    versions = store.assets.show("shared").versions
    assert len(versions) == PROCS * PER_PROC
    assert all(v.status is VersionStatus.READY for v in versions)
    # every version holds the bytes its writer gave it
    texts = {store.assets.path(v.ref).read_text() for v in versions}
    assert len(texts) == PROCS * PER_PROC


def _open_fresh(home: str, barrier: object) -> str | None:
    os.environ["LMOPS_HOME"] = home
    barrier.wait()  # type: ignore[attr-defined]
    store = Store()
    rev = store.db.current_revision()
    store.close()
    return rev


def test_concurrent_first_open_migrates_once(lmops_home: Path) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Manager().Barrier(PROCS)
    with ctx.Pool(PROCS) as pool:
        revs = pool.starmap(_open_fresh, [(str(lmops_home), barrier)] * PROCS)
    from lmops.store.db import head_revision

    assert revs == [head_revision()] * PROCS
