"""The Ray executor: the same recipe, shards, work folder and output as the local one.

Local stages run :func:`run_local_shard` as Ray tasks, one per shard. ``minhash_dedup``
runs distributed in three steps that reproduce the local decision exactly: signatures per
shard in parallel; the ordered LSH pass and the clustering in the driver (signatures only,
4 bytes × 112 per document); then each shard filtered in parallel with the driver's
decisions. Other global
operators run in the driver, streaming, as in the local executor.

On a cluster (``executor.address``), the input, output and work folders must be on storage
every node sees, and lmops must be installed on every node.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from lmops.core.errors import LmopsError, UserError
from lmops.data._dropped import drop_sink
from lmops.data._resume import remove_temp_files
from lmops.data.document import Document
from lmops.data.executor import (
    LengthHistogram,
    Stage,
    _chain,
    _internal_opts,
    _Job,
    _op_stats,
    _stage_file,
    _write_json_atomic,
    run_global_stage,
    run_local_shard,
)
from lmops.data.io import InputFile, JsonlWriter, Shard, read_shard
from lmops.data.recipe import Recipe

__all__ = ["execute_ray"]


def _init_ray(address: str | None, workers: int) -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("the Ray executor needs Ray: pip install 'lmops[ray]'") from None
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = workers
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        ray.init(**kwargs)
    return ray


def _docs_of(recipe: Recipe, stage: Stage, shard: Shard, work: Path) -> Any:
    if stage.index == 0:
        return read_shard(shard, recipe.read_options())
    prev = _stage_file(work, stage.index - 1, shard.index)
    return read_shard(
        Shard(shard.index, InputFile(prev, prev.name, "jsonl")),
        _internal_opts(recipe),
    )


def _signatures(
    recipe_json: dict[str, Any], stage: Stage, shard: Shard, work: str
) -> tuple[list[str], np.ndarray]:
    from lmops.data.minhash import MinHasher

    recipe = Recipe.model_validate(recipe_json)
    op = recipe.build_ops()[stage.op_indices[0]]
    p = cast(Any, op.params)
    hasher = MinHasher(
        num_bands=p.num_bands, rows_per_band=p.rows_per_band, ngram=p.ngram, seed=p.seed
    )
    ids: list[str] = []
    texts: list[str] = []
    for doc in _docs_of(recipe, stage, shard, Path(work)):
        ids.append(doc.id)
        texts.append(doc.field_text(op.field) if op.field else doc.text)  # a step's `field:`
    sigs = hasher.signatures(texts) if texts else np.zeros((0, hasher.num_perm), dtype=np.uint32)
    return ids, sigs


def _apply_decisions(
    recipe_json: dict[str, Any],
    stage: Stage,
    shard: Shard,
    work: str,
    decisions: dict[int, tuple[str | None, float]],
    last_stage: bool,
) -> dict[str, Any]:
    """Filter one shard: position -> (kept id, similarity) drops a duplicate, (None, size)
    marks a kept document with duplicates (its cluster size), as the operator does."""
    recipe = Recipe.model_validate(recipe_json)
    op = recipe.build_ops()[stage.op_indices[0]]
    hist_in, hist_out = LengthHistogram(), LengthHistogram()

    def filtered(docs: Any) -> Any:
        for pos, doc in enumerate(docs):
            kept_id, value = decisions.get(pos, (None, 0.0))
            if kept_id is None:
                if value:
                    doc.scores(op.name)["cluster_size"] = value
                yield doc
                continue
            doc.metadata["duplicate_of"] = kept_id
            doc.scores(op.name)["similarity"] = value
            if op.field:
                doc.focus(op.field)  # the example shows the field compared, as locally
            op.drop(doc, "minhash_duplicate")

    def on_in(doc: Document) -> None:
        if stage.index == 0:
            hist_in.add(doc)

    meters, _ = _chain(_docs_of(recipe, stage, shard, Path(work)), [], on_in)
    meters.append(type(meters[0])(filtered(meters[0])))
    target = _stage_file(Path(work), stage.index, shard.index)
    drops = drop_sink(recipe, Path(work), stage, [op], shard.index)  # keep_dropped
    with JsonlWriter(target, recipe.text_key, recipe.id_key) as w, drops:
        for doc in meters[-1]:
            if last_stage:
                hist_out.add(doc)
            w.write(doc)
    return {
        "ops": _op_stats([op], meters),
        "read_seconds": meters[0].seconds,
        "hist_in": hist_in.to_json() if stage.index == 0 else None,
        "hist_out": hist_out.to_json() if last_stage else None,
    }


def _minhash_stage(
    ray: Any, recipe: Recipe, stage: Stage, shards: list[Shard], work: Path, last: bool
) -> None:
    from lmops.data.minhash import LSHIndex, MinHasher
    from lmops.data.operators.dedup import cluster_counters

    recipe_json = recipe.model_dump(mode="json")
    op = recipe.build_ops()[stage.op_indices[0]]
    p = cast(Any, op.params)
    sig_task = ray.remote(_signatures)
    apply_task = ray.remote(_apply_decisions)
    per_shard = ray.get([sig_task.remote(recipe_json, stage, s, str(work)) for s in shards])

    # The ordered pass and the clustering: exactly what the operator decides.
    hasher = MinHasher(
        num_bands=p.num_bands, rows_per_band=p.rows_per_band, ngram=p.ngram, seed=p.seed
    )
    index = LSHIndex(hasher, p.threshold)
    best: dict[int, float] = {}
    all_ids: list[str] = []
    for ids, sigs in per_shard:
        all_ids += ids
        for sig in sigs:
            i, matches = index.add(sig)
            for m in matches:
                best[i] = max(best.get(i, 0.0), m.similarity)
                best[m.index] = max(best.get(m.index, 0.0), m.similarity)
    roots = index.roots()
    sizes = np.bincount(roots, minlength=len(roots))
    decisions: list[dict[int, tuple[str | None, float]]] = []
    start = 0
    for ids, _ in per_shard:
        mine: dict[int, tuple[str | None, float]] = {}
        for pos in range(len(ids)):
            g = start + pos
            root = int(roots[g])
            if root != g:
                mine[pos] = (all_ids[root], best[g])
            elif sizes[g] > 1:
                mine[pos] = (None, float(sizes[g]))
        decisions.append(mine)
        start += len(ids)

    stats = ray.get(
        [
            apply_task.remote(recipe_json, stage, s, str(work), d, last)
            for s, d in zip(shards, decisions, strict=True)
        ]
    )
    merged = stats[0]["ops"][0] | {
        "docs_in": 0,
        "docs_out": 0,
        "seconds": 0.0,
        "dropped": {},
        "examples": {},
        "counters": dict(cluster_counters(roots)),
    }
    hist_in, hist_out = LengthHistogram(), LengthHistogram()
    for st in stats:
        o = st["ops"][0]
        merged["docs_in"] += o["docs_in"]
        merged["docs_out"] += o["docs_out"]
        merged["seconds"] += o["seconds"]
        for r, n in o["dropped"].items():
            merged["dropped"][r] = merged["dropped"].get(r, 0) + n
        for r, ex in o["examples"].items():
            kept = merged["examples"].setdefault(r, [])
            kept.extend(ex[: max(0, 3 - len(kept))])
        if st["hist_in"]:
            hist_in.merge(st["hist_in"])
        if st["hist_out"]:
            hist_out.merge(st["hist_out"])
    _write_json_atomic(
        work / f"stage{stage.index}" / "global.stats.json",
        {
            "shard": "all",
            "stage": stage.index,
            "read_seconds": sum(st["read_seconds"] for st in stats),
            "ops": [merged],
            "errors": {"count": 0, "by_reason": {}},
            "hist_in": hist_in.to_json() if stage.index == 0 else None,
            "hist_out": hist_out.to_json() if last else None,
        },
    )


def execute_ray(
    recipe: Recipe,
    stages: list[Stage],
    shards: list[Shard],
    work: Path,
    workers: int,
    progress: bool,
) -> int:
    """Run every stage on Ray; returns how many finished shards were reused."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    ray = _init_ray(recipe.executor.address, workers)
    ops = recipe.build_ops()
    recipe_json = recipe.model_dump(mode="json")
    shard_task = ray.remote(run_local_shard)
    resumed = 0
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
    ) as bar:
        for stage in stages:
            last = stage.index == len(stages) - 1
            names = ",".join(recipe.process[i].op for i in stage.op_indices) or "copy"
            if stage.is_global:
                task = bar.add_task(f"ray stage {stage.index} [global] {names}", total=1)
                if (work / f"stage{stage.index}" / "global.stats.json").exists():
                    resumed += 1
                elif ops[stage.op_indices[0]].name == "minhash_dedup" and stage.index > 0:
                    _minhash_stage(ray, recipe, stage, shards, work, last)
                else:
                    run_global_stage(recipe, stage, shards, work, last)
                bar.advance(task)
                continue
            todo = [
                s
                for s in shards
                if not _stage_file(work, stage.index, s.index, ".stats.json").exists()
            ]
            resumed += len(shards) - len(todo)
            task = bar.add_task(
                f"ray stage {stage.index} {names}",
                total=len(shards),
                completed=len(shards) - len(todo),
            )
            pending = [
                shard_task.remote(_Job(recipe_json, stage, s, str(work), last)) for s in todo
            ]
            try:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                    for ref in done:
                        _get(ray, ref)  # re-raise a task's error; finished shards stay on disk
                        bar.advance(task)
                    time.sleep(0)
            except BaseException:
                _cancel(ray, pending, work)
                raise
    return resumed


def _get(ray: Any, ref: Any) -> Any:
    """``ray.get``, with a task's own lmops error (a bad row's ``file:line``) raised as it
    is: Ray wraps it in a ``RayTaskError`` whose message is the task's whole traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, LmopsError):
            raise e.cause from None
        raise


def _cancel(ray: Any, pending: list[Any], work: Path) -> None:
    """A shard's error or Ctrl-C: cancel the stage's other tasks (killing the running ones)
    and wait until they are gone, so none writes into the work folder once this run has let
    go of its lock; then remove what they were writing. The finished shards stay."""
    for ref in pending:
        ray.cancel(ref, force=True)
    gone, _ = ray.wait(pending, num_returns=len(pending), timeout=60) if pending else ([], [])
    if len(gone) == len(pending):
        remove_temp_files(work)
