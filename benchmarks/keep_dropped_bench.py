"""What ``keep_dropped`` costs: the same recipe over the bilingual Alpaca pairs, with and
without it, alternated in one process. Not a test: it prints its figures.

    python benchmarks/keep_dropped_bench.py [--repeats 3] [--copies 1] [--workers 1] [--no-pii]

The recipe cleans, filters (length, Gopher quality and repetition), deduplicates (exact,
MinHash) and masks PII over ``instruction``, ``input`` and ``output`` of
``alpaca_zh_en/part_{0,1,2}.json`` (``../shared/datasets`` or ``$LMOPS_SHARED_DATASETS``;
three files, three shards). ``--copies N`` reads each file N times (under other names), so
``exact_dedup`` drops N-1 of every N: a run that drops most of what it reads. A dropped
document is masked before it is written when the recipe masks (its last step here);
``--no-pii`` leaves ``pii_mask`` out, to see that cost apart.

Figures per setting, the median of the repeats: docs/s of the run (the report's
``docs_per_s``: documents over the wall time of the stages), docs per CPU second of the
stages, and the whole call's wall and CPU seconds (stages, part files, registering the
dataset(s) in a fresh store); then the overhead of keep_dropped in each. With one worker
everything runs in this process, so CPU time is what a busy machine disturbs least.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lmops.data.executor as executor
from lmops.core.config import find_shared_datasets

_stage_cpu: list[float] = []
_execute = executor._execute


def _timed_execute(*args: Any, **kwargs: Any) -> Any:
    cpu = time.process_time()
    try:
        return _execute(*args, **kwargs)
    finally:
        _stage_cpu.append(time.process_time() - cpu)


executor._execute = _timed_execute  # the stages' CPU time (workers=1: all in this process)

RECIPE = """\
name: bench
inputs: [raw/*.json]
fields: [instruction, input, output]
process:
  - op: clean_whitespace
  - op: length_filter
    min_chars: 80
  - op: gopher_quality
  - op: gopher_repetition
  - op: exact_dedup
  - op: minhash_dedup
  - op: pii_mask
output: {path: out/bench, dataset: bench}
executor: {workers: WORKERS}
"""


def one_run(
    src: Path, copies: int, workers: int, keep: bool, pii: bool = True
) -> tuple[float, float, float, float, int, int]:
    from lmops.data.executor import run_recipe
    from lmops.data.recipe import load_recipe
    from lmops.store import Store

    root = Path(tempfile.mkdtemp(prefix="lmops-kd-bench-"))
    try:
        os.environ["LMOPS_HOME"] = str(root / "home")
        (root / "raw").mkdir()
        for c in range(copies):
            for f in sorted(src.glob("part_*.json")):
                os.symlink(f, root / "raw" / f"c{c}_{f.name}")
        body = RECIPE.replace("WORKERS", str(workers)) + ("keep_dropped: true\n" if keep else "")
        body = body if pii else body.replace("  - op: pii_mask\n", "")
        (root / "r.yaml").write_text(body)
        store = Store()
        t, cpu = time.perf_counter(), time.process_time()
        res = run_recipe(load_recipe(root / "r.yaml"), base_dir=root, store=store, progress=False)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        store.close()
        rep = res.report
        dropped = rep["docs_in"] - rep["docs_out"]
        return (
            rep["docs_per_s"],
            rep["docs_in"] / _stage_cpu[-1],
            seconds,
            cpu,
            rep["docs_in"],
            dropped,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-pii", action="store_true", help="leave pii_mask out of the recipe")
    args = ap.parse_args()
    shared = find_shared_datasets()
    if shared is None or not (shared / "alpaca_zh_en").is_dir():
        raise SystemExit("alpaca_zh_en not found: set LMOPS_SHARED_DATASETS")
    src = shared / "alpaca_zh_en"
    one_run(src, 1, args.workers, True)  # warm-up: imports, jieba and spaCy loading
    results: dict[bool, list[tuple[float, float, float, float, int, int]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for keep in (False, True):  # alternated, so drift in the machine hits both alike
            results[keep].append(one_run(src, args.copies, args.workers, keep, not args.no_pii))
    docs, dropped = results[True][0][4], results[True][0][5]
    print(
        f"{docs:,} documents, {dropped:,} dropped; {args.workers} worker(s), {args.repeats} repeats"
    )
    med = {k: [statistics.median(r[i] for r in v) for i in range(4)] for k, v in results.items()}
    for keep in (False, True):
        m = med[keep]
        rates = ", ".join(f"{r[0]:,.0f}" for r in results[keep])
        print(
            f"  keep_dropped {'on ' if keep else 'off'}: {m[0]:,.0f} docs/s (runs: {rates}); "
            f"{m[1]:,.0f} docs per CPU s; per call {m[2]:.2f} s, {m[3]:.2f} CPU s"
        )
    off, on = med[False], med[True]
    print(
        f"  overhead: {100 * (off[0] / on[0] - 1):+.1f} % wall time in the stages, "
        f"{100 * (off[1] / on[1] - 1):+.1f} % CPU in the stages; per call "
        f"{100 * (on[2] / off[2] - 1):+.1f} % wall time, {100 * (on[3] / off[3] - 1):+.1f} % CPU"
    )


if __name__ == "__main__":
    main()
