"""Running a recipe: shards, worker processes, global operators, resume, output, lineage.

The process list is cut into *stages* at every global operator::

    [clean_unicode, gopher_quality] | minhash_dedup | [pii_mask]
          local stage 0               global stage 1    local stage 2

A local stage runs each shard independently in a worker process, streaming documents
through its operators into ``<work>/stage<k>/<shard>.jsonl``; a global stage runs once in
the main process over every shard's documents in shard order and writes them back per
shard. A shard is finished when its ``.stats.json`` exists (written after the data file
is renamed into place), so a re-run after a crash or ``kill -9`` skips finished shards
and, because every step is deterministic, produces byte-identical output. The output
folder appears only when everything is done (built beside it, then renamed). Workers die
with the driver (``core.proc.die_with_parent``), so a killed run leaves no process behind.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmops import __version__
from lmops.core.errors import UserError
from lmops.core.proc import die_with_parent
from lmops.core.signals import StopSignals
from lmops.data import _dropped
from lmops.data._pool import run_in_pool
from lmops.data._resume import drop_stale_work, remove_temp_files, run_writes
from lmops.data._worklock import (
    clear_own,
    refuse_other_work,
    remove_retired,
    retire,
    work_lock,
)
from lmops.data.document import Document
from lmops.data.io import (
    ErrorSink,
    InputFile,
    JsonlWriter,
    ReadOptions,
    Shard,
    plan_shards,
    read_shard,
)
from lmops.data.ops import GlobalOp, Op
from lmops.data.recipe import Recipe, resolve_inputs
from lmops.text.cjk import count_han

if TYPE_CHECKING:
    from lmops.store import Store

__all__ = ["DataRunResult", "LengthHistogram", "run_recipe"]

# Histogram bin edges shared by every shard so histograms add up across shards.
EDGES = [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]


def approx_tokens(text: str) -> int:
    """A tokenizer-free length: whitespace words plus CJK characters (each ~1 token)."""
    return len(text.split()) + count_han(text)


@dataclass
class LengthHistogram:
    chars: list[int] = field(default_factory=lambda: [0] * len(EDGES))
    tokens: list[int] = field(default_factory=lambda: [0] * len(EDGES))
    docs: int = 0
    total_chars: int = 0
    total_tokens: int = 0

    @staticmethod
    def _bin(n: int) -> int:
        for i in range(len(EDGES) - 1, -1, -1):
            if n >= EDGES[i]:
                return i
        return 0

    def add(self, doc: Document) -> None:
        c, t = len(doc.text), approx_tokens(doc.text)
        self.chars[self._bin(c)] += 1
        self.tokens[self._bin(t)] += 1
        self.docs += 1
        self.total_chars += c
        self.total_tokens += t

    def merge(self, other: dict[str, Any]) -> None:
        self.chars = [a + b for a, b in zip(self.chars, other["chars"], strict=True)]
        self.tokens = [a + b for a, b in zip(self.tokens, other["tokens"], strict=True)]
        self.docs += other["docs"]
        self.total_chars += other["total_chars"]
        self.total_tokens += other["total_tokens"]

    def to_json(self) -> dict[str, Any]:
        return {
            "edges": EDGES,
            "chars": self.chars,
            "tokens": self.tokens,
            "docs": self.docs,
            "total_chars": self.total_chars,
            "total_tokens": self.total_tokens,
        }


class _Meter:
    """Counts documents and the time spent producing them (including upstream time)."""

    def __init__(
        self, it: Iterable[Document], on_doc: Callable[[Document], None] | None = None
    ) -> None:
        self.it = iter(it)
        self.count = 0
        self.seconds = 0.0
        self.on_doc = on_doc

    def __iter__(self) -> _Meter:
        return self

    def __next__(self) -> Document:
        t = time.perf_counter()
        try:
            doc = next(self.it)
        finally:
            self.seconds += time.perf_counter() - t
        self.count += 1
        if self.on_doc is not None:
            self.on_doc(doc)
        return doc


def _chain(
    source: Iterable[Document], ops: list[Op], on_in: Callable[[Document], None] | None
) -> tuple[list[_Meter], Iterator[Document]]:
    meters = [_Meter(source, on_in)]
    for op in ops:
        meters.append(_Meter(op(meters[-1])))
    return meters, meters[-1]


def _op_stats(ops: list[Op], meters: list[_Meter]) -> list[dict[str, Any]]:
    out = []
    for i, op in enumerate(ops):
        out.append(
            {
                "name": op.name,
                "docs_in": meters[i].count,
                "docs_out": meters[i + 1].count,
                "dropped": dict(op.dropped),
                "examples": op.examples,
                "counters": dict(op.counters),
                # time inside this op = time to produce its output minus its input's time
                "seconds": max(0.0, meters[i + 1].seconds - meters[i].seconds),
            }
        )
    return out


# -- stage planning -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    index: int
    op_indices: tuple[int, ...]
    is_global: bool


def plan_stages(ops: list[Op]) -> list[Stage]:
    stages: list[Stage] = []
    current: list[int] = []
    for i, op in enumerate(ops):
        if isinstance(op, GlobalOp):
            if current:
                stages.append(Stage(len(stages), tuple(current), False))
                current = []
            stages.append(Stage(len(stages), (i,), True))
        else:
            current.append(i)
    if current or not stages:
        stages.append(Stage(len(stages), tuple(current), False))
    return stages


# -- worker side ----------------------------------------------------------------------------------
_counter: Any = None  # a shared mp.Value with the number of documents read, for the progress bar


def _init_worker(counter: Any, parent_pid: int | None = None) -> None:
    """Per worker process: the progress counter, one thread, and death with the driver.

    A pool worker blocks on its task queue forever once the driver is gone (the workers
    hold that queue's write end themselves, so it never reaches EOF): a ``kill -9`` of
    ``lmops data run`` used to leave them all behind. SIGKILL is safe here, a shard's
    output is a temp file renamed into place when done, and the re-run redoes the shard.
    """
    global _counter
    _counter = counter
    if parent_pid is not None:
        die_with_parent(parent_pid, signal.SIGKILL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _bump(n: int) -> None:
    if _counter is not None:
        with _counter.get_lock():
            _counter.value += n


@dataclass(frozen=True)
class _Job:
    recipe_json: dict[str, Any]
    stage: Stage
    shard: Shard
    work: str
    last_stage: bool


def _stage_file(work: Path, stage: int, shard: int, suffix: str = ".jsonl") -> Path:
    return work / f"stage{stage}" / f"{shard:05d}{suffix}"


def _internal_opts(recipe: Recipe) -> ReadOptions:
    """How a stage reads the previous stage's files (our own JSONL, possibly empty)."""
    return ReadOptions(text_key=recipe.text_key, id_key=recipe.id_key, allow_empty=True)


def _source(job: _Job, recipe: Recipe, sink: ErrorSink | None) -> Iterable[Document]:
    if job.stage.index == 0:
        return read_shard(job.shard, recipe.read_options(), sink)
    prev = _stage_file(Path(job.work), job.stage.index - 1, job.shard.index)
    return read_shard(
        Shard(job.shard.index, InputFile(prev, prev.name, "jsonl")),
        _internal_opts(recipe),
    )


def run_local_shard(job: _Job) -> dict[str, Any]:
    """Process one shard through one local stage; returns (and writes) its stats."""
    recipe = Recipe.model_validate(job.recipe_json)
    all_ops = recipe.build_ops()
    ops = [all_ops[i] for i in job.stage.op_indices]
    work = Path(job.work)
    sink = (
        ErrorSink(work / "errors" / f"{job.shard.index:05d}.jsonl")
        if job.stage.index == 0
        else None
    )
    hist_in, hist_out = LengthHistogram(), LengthHistogram()
    pending = 0

    def on_in(doc: Document) -> None:
        nonlocal pending
        if job.stage.index == 0:
            hist_in.add(doc)
            pending += 1
            if pending >= 256:
                _bump(pending)
                pending = 0

    meters, out = _chain(_source(job, recipe, sink), ops, on_in)
    target = _stage_file(work, job.stage.index, job.shard.index)
    drops = _dropped.drop_sink(recipe, work, job.stage, ops, job.shard.index)
    with JsonlWriter(target, recipe.text_key, recipe.id_key) as w, drops:
        for doc in out:
            if job.last_stage:
                hist_out.add(doc)
            w.write(doc)
    _bump(pending)
    if sink is not None:
        sink.close()
    stats = {
        "shard": job.shard.index,
        "label": job.shard.label,
        "stage": job.stage.index,
        "read_seconds": meters[0].seconds,
        "ops": _op_stats(ops, meters),
        "errors": {"count": sink.count, "by_reason": sink.by_reason}
        if sink
        else {"count": 0, "by_reason": {}},
        "hist_in": hist_in.to_json() if job.stage.index == 0 else None,
        "hist_out": hist_out.to_json() if job.last_stage else None,
    }
    _write_json_atomic(_stage_file(work, job.stage.index, job.shard.index, ".stats.json"), stats)
    return stats


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def run_global_stage(
    recipe: Recipe, stage: Stage, shards: list[Shard], work: Path, last_stage: bool
) -> dict[str, Any]:
    """Run a global operator over every shard in order, writing documents back per shard."""
    op = recipe.build_ops()[stage.op_indices[0]]
    hist_in, hist_out = LengthHistogram(), LengthHistogram()
    sink = ErrorSink(work / "errors" / "global.jsonl") if stage.index == 0 else None

    def source() -> Iterator[Document]:
        for shard in shards:
            if stage.index == 0:
                docs: Iterable[Document] = read_shard(shard, recipe.read_options(), sink)
            else:
                prev = _stage_file(work, stage.index - 1, shard.index)
                docs = read_shard(
                    Shard(shard.index, InputFile(prev, prev.name, "jsonl")),
                    _internal_opts(recipe),
                )
            for doc in docs:
                if stage.index == 0:
                    hist_in.add(doc)
                doc.metadata["_shard"] = shard.index
                yield doc

    meters, out = _chain(source(), [op], None)
    writer: JsonlWriter | None = None
    current = -1
    written: set[int] = set()
    try:
        with _dropped.drop_sink(recipe, work, stage, [op], None):
            for doc in out:
                idx = doc.metadata.pop("_shard")
                if writer is None or idx != current:
                    if writer is not None:
                        writer.close()
                    if idx in written:
                        raise RuntimeError(f"operator {op.name} did not keep document order")
                    current = idx
                    written.add(idx)
                    writer = JsonlWriter(
                        _stage_file(work, stage.index, idx), recipe.text_key, recipe.id_key
                    )
                if last_stage:
                    hist_out.add(doc)
                writer.write(doc)
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    for shard in shards:  # shards whose every document was dropped still get a file
        if shard.index not in written:
            JsonlWriter(
                _stage_file(work, stage.index, shard.index), recipe.text_key, recipe.id_key
            ).close()
    if sink is not None:
        sink.close()
    stats = {
        "shard": "all",
        "stage": stage.index,
        "read_seconds": meters[0].seconds,
        "ops": _op_stats([op], meters),
        "errors": {"count": sink.count, "by_reason": sink.by_reason}
        if sink
        else {"count": 0, "by_reason": {}},
        "hist_in": hist_in.to_json() if stage.index == 0 else None,
        "hist_out": hist_out.to_json() if last_stage else None,
    }
    _write_json_atomic(work / f"stage{stage.index}" / "global.stats.json", stats)
    return stats


# -- driver ---------------------------------------------------------------------------------------
@dataclass
class DataRunResult:
    recipe: str
    output_path: Path | None
    dataset: str | None  # "name:N" when registered
    run_id: str | None
    report: dict[str, Any]
    resumed_shards: int = 0
    late_interrupt: bool = False  # a Ctrl-C came after the last stage; the run finished


class FinishInterrupted(KeyboardInterrupt):
    """A second Ctrl-C after every stage had finished: ``left`` was not written."""

    def __init__(self, stages: int, left: str) -> None:
        super().__init__(f"all {stages} stage(s) had finished; {left} not written")
        self.stages, self.left = stages, left


def _fingerprint(recipe: Recipe) -> str:
    """Work from an earlier run is reused only if the recipe's steps and lmops match; which
    shards of it are still valid (their inputs unchanged; ``on_error``) is
    ``_resume.drop_stale_work``'s to say."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            recipe.model_dump(
                mode="json", exclude={"executor", "output", "on_error", "keep_dropped"}
            ),
            sort_keys=True,
        ).encode()
    )
    if recipe.keep_dropped is not None:  # finished work without dropped files is redone
        h.update(b"keep_dropped")
    h.update(str(recipe.executor.shard_bytes).encode())
    h.update(__version__.encode())
    return h.hexdigest()


def _reuse_or_reset(work: Path, key: str) -> None:
    """Keep the work of an earlier run of the same recipe and inputs; else start over
    (the lock file stays: it is held; another run's work folder inside stays too)."""
    key_file = work / "fingerprint"
    if not key_file.exists() or key_file.read_text() != key:
        clear_own(work)
    key_file.write_text(key)


_WORK_SUFFIX = ".lmops-work"  # beside the output: out/web -> out/web.lmops-work


def _work_dir(recipe: Recipe, base: Path, home: Path) -> tuple[Path | None, Path]:
    out = None
    if recipe.output.path:
        out = Path(recipe.output.path).expanduser()
        out = out if out.is_absolute() else base / out
        return out, out.with_name(out.name + _WORK_SUFFIX)
    return None, home / "work" / "data" / recipe.name


def run_recipe(
    recipe: Recipe,
    *,
    base_dir: Path,
    store: Store | None = None,
    workers: int | None = None,
    executor: str | None = None,
    progress: bool = True,
    source: str = "recipe",
) -> DataRunResult:
    """Run ``recipe``; ``base_dir`` anchors relative input/output paths (the recipe's folder)."""
    from lmops.data.report import build_report, write_report_files
    from lmops.store.external import absolute

    kind = executor or recipe.executor.type
    n_workers = workers or recipe.executor.workers
    recipe.build_ops(source)
    inputs = resolve_inputs(recipe, base_dir, store)
    if store is not None and recipe.output.dataset:
        from lmops.store.refs import check_name

        check_name(recipe.output.dataset)
    home = (
        store.settings.home
        if store is not None
        else Path(os.environ.get("LMOPS_HOME", "~/.lmops")).expanduser()
    )
    out_path, work = _work_dir(recipe, base_dir, home)
    if out_path is not None and out_path.exists() and not recipe.output.overwrite:
        raise UserError(f"output path {out_path} exists; remove it or set output.overwrite: true")
    drop_to = _dropped.dropped_target(recipe, base_dir, out_path)
    shards = plan_shards(inputs.files, recipe.executor.shard_bytes)
    stages = plan_stages(recipe.build_ops(source))

    # what cleanups killed mid-delete left beside this work folder, or any in this home
    remove_retired(home / "work" / "data")
    if out_path is not None:  # beside the output, in the user's folder: work folders' only
        remove_retired(work.parent, work_suffix=_WORK_SUFFIX)
    # From here on the work folder is this run's alone: a second run of it is refused.
    with work_lock(work):
        refuse_other_work(work, run_writes)  # nested runs of old recipe names
        _reuse_or_reset(work, _fingerprint(recipe))
        remove_temp_files(work)  # what a killed run was writing: no writer is left
        global_from = next((s.index for s in stages if s.is_global), None)
        drop_stale_work(work, shards, global_from, recipe.on_error)
        (work / "recipe.json").write_text(recipe.model_dump_json(indent=1))

        config = recipe.model_dump(mode="json")
        tracker = (
            store.runs.track("data", name=recipe.name, config=config) if store is not None else None
        )
        run = tracker.__enter__() if tracker is not None else None
        try:
            # local files and folders, recorded by content before they are read (lineage)
            local_refs = (
                store.assets.record_inputs([(p, "input") for p in inputs.local], run_id=run.id)
                if store is not None and run is not None
                else []
            )
            # the shard stages an interrupted run finished: docs/s counts only the others
            reused = {f.relative_to(work).as_posix() for f in work.glob("stage*/*.stats.json")}
            started = time.perf_counter()
            if kind == "ray":
                from lmops.data.ray_executor import execute_ray

                resumed = execute_ray(recipe, stages, shards, work, n_workers, progress)
            else:
                resumed = _execute(recipe, stages, shards, work, n_workers, progress)
            wall = time.perf_counter() - started
            # Every stage is done: a Ctrl-C now waits until the output is written and
            # registered (then says it came late); a second one stops at once, saying what
            # was left, which a re-run finishes without processing anything again.
            with StopSignals(graceful=True) as late:
                left = "the report"
                try:
                    stage_stats = _collect_stats(stages, shards, work, reused)
                    report = build_report(
                        recipe,
                        stage_stats,
                        wall_seconds=wall,
                        shards=len(shards),
                        workers=n_workers,
                        # what was read: dataset versions, then local files and folders by the path
                        # their external references record (those references are the lineage's)
                        inputs=[*inputs.refs, *(str(absolute(p)) for p in inputs.local)],
                        input_refs=[*inputs.refs, *(ref for ref, _ in local_refs)],
                    )
                    out = recipe.output.dataset if store is not None else None
                    left = f"the output{f' (dataset {out})' if out else ''}"
                    if not report["docs_out"]:
                        write_report_files(report, work / "_report")
                        if store is not None and run is not None:
                            write_report_files(report, Path(store.runs.dir(run.id)))
                        raise UserError(_nothing_kept(recipe, report, work))
                    result = _finish(
                        recipe,
                        stages,
                        shards,
                        work,
                        out_path,
                        report,
                        store,
                        run,
                        [*inputs.refs, *local_refs],
                        inputs.files,
                        drop_to,
                        late.hold,
                    )
                    result.resumed_shards = resumed
                    if store is not None and run is not None:
                        store.runs.update(
                            run.id,
                            params={
                                "inputs": inputs.refs,
                                "shards": len(shards),
                                "workers": n_workers,
                            },
                        )
                        store.runs.log_metrics(
                            run.id,
                            {
                                "docs_in": report["docs_in"],
                                "docs_out": report["docs_out"],
                                "docs_per_s": report["docs_per_s"],
                            },
                            step=0,
                        )
                        write_report_files(report, Path(store.runs.dir(run.id)))
                except KeyboardInterrupt:
                    raise FinishInterrupted(len(stages), left) from None
            result.late_interrupt = late.requested
        except BaseException as e:
            if tracker is not None:
                tracker.__exit__(type(e), e, e.__traceback__)
            raise
        if tracker is not None:
            tracker.__exit__(None, None, None)
        return result


def _execute(
    recipe: Recipe,
    stages: list[Stage],
    shards: list[Shard],
    work: Path,
    n_workers: int,
    progress: bool,
) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    counter = mp.get_context("fork").Value("q", 0)
    recipe_json = recipe.model_dump(mode="json")
    resumed = 0
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[docs]:>9,} docs  {task.fields[rate]:>7,.0f} docs/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not progress,
        transient=False,
    ) as bar:
        t0 = time.perf_counter()

        def tick(task: Any, advance: int = 0) -> None:
            docs = counter.value
            bar.update(
                task, advance=advance, docs=docs, rate=docs / max(1e-9, time.perf_counter() - t0)
            )

        for stage in stages:
            last = stage.index == len(stages) - 1
            names = ",".join(recipe.process[i].op for i in stage.op_indices) or "copy"
            if stage.is_global:
                task = bar.add_task(
                    f"stage {stage.index} [global] {names}", total=1, docs=0, rate=0.0
                )
                if (work / f"stage{stage.index}" / "global.stats.json").exists():
                    resumed += 1
                else:
                    run_global_stage(recipe, stage, shards, work, last)
                tick(task, 1)
                continue
            todo = [
                s
                for s in shards
                if not _stage_file(work, stage.index, s.index, ".stats.json").exists()
            ]
            resumed += len(shards) - len(todo)
            done = " (done before)" if not todo else ""  # its 0 docs/s: none run now
            task = bar.add_task(
                f"stage {stage.index} {names}{done}", total=len(shards), docs=0, rate=0.0
            )
            tick(task, len(shards) - len(todo))
            jobs = [_Job(recipe_json, stage, s, str(work), last) for s in todo]
            if n_workers <= 1 or len(jobs) <= 1:
                _init_worker(counter)
                for job in jobs:
                    run_local_shard(job)
                    tick(task, 1)
                continue
            try:  # a shard's error or Ctrl-C stops the stage at once (see _pool)
                run_in_pool(
                    run_local_shard, jobs, n_workers, _init_worker, (counter, os.getpid()),
                    functools.partial(tick, task),
                )  # fmt: skip
            except BaseException:
                remove_temp_files(work)  # what the killed workers were writing
                raise
    return resumed


def _collect_stats(
    stages: list[Stage], shards: list[Shard], work: Path, reused: set[str]
) -> list[list[dict[str, Any]]]:
    """Every stage's stats per shard (one for a global stage), each marked ``reused`` when
    its file is in ``reused`` (finished by an earlier, interrupted run)."""
    out = []
    for stage in stages:
        names = (
            ["global.stats.json"]
            if stage.is_global
            else [f"{s.index:05d}.stats.json" for s in shards]
        )
        files = [f"stage{stage.index}/{n}" for n in names]
        out.append([{**json.loads((work / f).read_text()), "reused": f in reused} for f in files])
    return out


def _finish(
    recipe: Recipe,
    stages: list[Stage],
    shards: list[Shard],
    work: Path,
    out_path: Path | None,
    report: dict[str, Any],
    store: Store | None,
    run: Any | None,
    input_refs: list[str | tuple[str, str]],
    input_files: list[InputFile],
    drop_to: _dropped.DroppedTarget | None = None,
    commit: Callable[[], None] = lambda: None,  # from here on, signals wait (register, place)
) -> DataRunResult:
    from lmops.data.report import write_report_files

    last = stages[-1].index
    build = work / "output"
    if build.exists():
        shutil.rmtree(build)
    build.mkdir()
    # A shard left without documents gives no part file: an empty file is no data, and
    # the readers of a dataset refuse one in a user's input. Parts are numbered in shard
    # order without gaps, from the finished stage files alone, so a resumed run names
    # them exactly as an uninterrupted one.
    kept = [src for src in (_stage_file(work, last, s.index) for s in shards) if src.stat().st_size]
    for n, src in enumerate(kept):
        os.link(src, build / f"part-{n:05d}.jsonl")
    errors = sorted((work / "errors").glob("*.jsonl")) if (work / "errors").exists() else []
    if any(e.stat().st_size for e in errors):
        with open(build / "_errors.jsonl", "wb") as fh:
            for e in errors:
                fh.write(e.read_bytes())
    dropped = (
        _dropped.finish_dropped(
            drop_to, recipe, stages, shards, work, report, store, run, input_refs
        )
        if drop_to
        else None
    )
    write_report_files(report, build / "_report", dropped.png if dropped else None)

    dataset_ref = None
    if store is not None and recipe.output.dataset:
        # Inputs that were plain files (not assets) are named in the metadata with their
        # size and sha256 (their external references in the lineage say the same; the hash
        # cache that recorded them answers without reading them again).
        from lmops.store.external import HashCache, absolute

        plain = [f.path for f in input_files if f.ref is None and f.path.is_file()]
        hashed = HashCache(store).digests([absolute(p) for p in plain])
        sources = [
            {"path": str(p), "size": size, "sha256": digest}
            for p, (digest, size) in zip(plain, hashed, strict=True)
        ]
        commit()
        v = store.assets.register(
            "dataset",
            recipe.output.dataset,
            build,
            metadata={
                "docs": report["docs_out"],
                "recipe": recipe.name,
                "format": "jsonl",
                "text_key": recipe.text_key,
                "source_files": sources,
                **_dropped.dropped_metadata(report),
            },
            inputs=input_refs,
            run_id=run.id if run is not None else None,
            description=recipe.output.description,
        )
        dataset_ref = v.ref
        report["dataset"] = dataset_ref
    commit()
    final = None
    if dropped:
        dropped.place()  # before the output: the output's folder says the run is done
    if out_path is not None:
        if out_path.exists():
            shutil.rmtree(out_path) if out_path.is_dir() else out_path.unlink()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        os.rename(build, out_path)
        final = out_path
    retire(work)
    return DataRunResult(
        recipe.name, final, dataset_ref, run.id if run is not None else None, report
    )


def _nothing_kept(recipe: Recipe, report: dict[str, Any], work: Path) -> str:
    """Why a run kept no document, in one line: an empty dataset is never what was meant."""
    errors = report["errors"]
    unreadable = (
        f"unreadable rows skipped: {errors['count']:,} ("
        + ", ".join(f"{r} {n:,}" for r, n in errors["by_reason"].items())
        + ")"
        if errors["count"]
        else ""
    )
    if report["docs_in"]:
        reasons = ", ".join(f"{r} {n:,}" for r, n in dropped_reasons(report).most_common())
        what = f"all {report['docs_in']:,} documents were dropped ({reasons})"
        what += f"; {unreadable}" if unreadable else ""
        fix = "loosen the steps that dropped them"
        if recipe.keep_dropped is not None:
            fix += f" (each is in {work}/stage*/*.dropped.jsonl, with its step and reason)"
    else:
        what = "no document was read" + (f": {unreadable}" if unreadable else "")
        fix = "check the inputs"
    return (
        f"recipe {recipe.name}: {what}; nothing was written or registered; {fix} "
        f"(the finished work is kept in {work}, report in {work / '_report' / 'report.json'})"
    )


def dropped_reasons(report: dict[str, Any]) -> Counter[str]:
    c: Counter[str] = Counter()
    for op in report["ops"]:
        for reason, n in op["dropped"].items():
            c[f"{op['name']}:{reason}"] += n
    return c
