"""Every document a run drops, with its step and reason (the recipe's ``keep_dropped``).

Where they go. Never among the kept part files: whatever reads a dataset (``train``,
``eval``, the next recipe) reads every data file in it. The dropped documents are a dataset
of their own, made by the same run: the folder ``<output.path>-dropped`` and/or the asset
``<output.dataset>-dropped`` (``keep_dropped: {path: ..., dataset: ...}`` names them),
registered with lineage to the same inputs and to the run, and named in the kept dataset's
metadata (``dropped``) and in the report (``report["dropped"]``).

A row is the document's row as it was when it was dropped (after the steps before the one
that dropped it), with ``_lmops.dropped = {"step": 3, "op": "gopher_quality", "reason":
"gopher_short_doc"}`` beside its scores; a dedup step's rows name the kept document
(``_lmops.duplicate_of``, its cluster's first for ``minhash_dedup``, with
``scores.minhash_dedup.similarity``). A recipe with ``pii_mask`` masks the documents dropped
before its last ``pii_mask`` step, as it masks the report's examples.

Work files, resumable as the kept ones are: each shard stage writes what it drops to
``stage<k>/<shard>.dropped.jsonl`` (a temp file renamed into place before the stage's stats
file, which marks it finished); a global stage writes the same per-shard files, its
documents arriving in shard order. Rows come in the order the steps drop them, which is
deterministic, so a resumed run writes the same bytes. The output has one
``part-NNNNN.jsonl`` per shard that dropped documents, numbered as the kept parts are (in
shard order, without gaps), each holding that shard's dropped documents stage by stage.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmops.core.errors import UserError
from lmops.data.document import Document
from lmops.data.io import JsonlWriter
from lmops.data.ops import Op
from lmops.data.recipe import Recipe

if TYPE_CHECKING:
    from lmops.store import Store

__all__ = [
    "DropSink",
    "DroppedTarget",
    "drop_sink",
    "dropped_metadata",
    "dropped_target",
    "finish_dropped",
]

SUFFIX = ".dropped.jsonl"


def dropped_file(work: Path, stage: int, shard: int) -> Path:
    return work / f"stage{stage}" / f"{shard:05d}{SUFFIX}"


def drop_sink(
    recipe: Recipe, work: Path, stage: Any, ops: Sequence[Op], shard: int | None
) -> AbstractContextManager[Any]:
    """What ``ops`` (the steps of ``stage``) drop, written while the stage runs; nothing
    without ``keep_dropped``."""
    if recipe.keep_dropped is None:
        return nullcontext()
    return DropSink(recipe, work, stage.index, shard).attach(ops, stage.op_indices)


class DropSink:
    """Writes the documents one stage's operators drop in one shard (``shard``), or, in a
    global stage (``shard=None``), in each shard its documents came from (``_shard``)."""

    def __init__(self, recipe: Recipe, work: Path, stage: int, shard: int | None) -> None:
        self.recipe, self.work, self.stage, self.shard = recipe, work, stage, shard
        self.redact = recipe.redactor()
        # documents dropped before the last pii_mask step have not been through it
        self.mask_before = max(
            (i for i, s in enumerate(recipe.process) if s.op == "pii_mask"), default=-1
        )
        self._writer: JsonlWriter | None = None
        self._current = -1
        # what an interrupted attempt at this shard (stage) wrote is this attempt's to write
        if shard is not None:
            dropped_file(work, stage, shard).unlink(missing_ok=True)
        elif (work / f"stage{stage}").is_dir():
            for f in (work / f"stage{stage}").glob(f"*{SUFFIX}"):
                f.unlink()

    def attach(self, ops: Sequence[Op], steps: Sequence[int]) -> DropSink:
        for op, step in zip(ops, steps, strict=True):
            op.on_drop = functools.partial(self.add, step, op.name)
        return self

    def add(self, step: int, name: str, doc: Document, reason: str) -> None:
        meta = {k: v for k, v in doc.metadata.items() if k not in ("_shard", "drop_reason")}
        meta["dropped"] = {"step": step, "op": name, "reason": reason}
        text, parts = doc.text, doc.parts
        if self.redact is not None and step < self.mask_before:
            if parts is None:
                text = self.redact(text)
            else:  # the row is written from the parts (each field, each message)
                parts = {k: self.redact(v) for k, v in parts.items()}
        shard = self.shard if self.shard is not None else doc.metadata["_shard"]
        self._writer_for(shard, name).write(Document(text, doc.id, meta, doc.record, parts))

    def _writer_for(self, shard: int, name: str) -> JsonlWriter:
        if self._writer is not None and shard == self._current:
            return self._writer
        if shard < self._current:
            raise RuntimeError(f"operator {name} did not drop documents in order")
        if self._writer is not None:
            self._writer.close()
        self._current = shard
        self._writer = JsonlWriter(
            dropped_file(self.work, self.stage, shard), self.recipe.text_key, self.recipe.id_key
        )
        return self._writer

    def __enter__(self) -> DropSink:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self._writer is not None:
            if exc_type is None:
                self._writer.close()
            else:
                self._writer.abort()
            self._writer = None


def dropped_metadata(report: dict[str, Any]) -> dict[str, Any]:
    """What the kept dataset's metadata says of its dropped documents: their dataset."""
    ref = (report.get("dropped") or {}).get("dataset")
    return {"dropped": ref} if ref else {}


@dataclass(frozen=True)
class DroppedTarget:
    path: Path | None  # the folder of part files
    dataset: str | None  # the asset name


def dropped_target(recipe: Recipe, base: Path, out_path: Path | None) -> DroppedTarget | None:
    """Where this run puts its dropped documents (None: it keeps none); refuses a folder
    that exists unless the output may be overwritten, as the output's own."""
    spec = recipe.keep_dropped
    if spec is None:
        return None
    path: Path | None = None
    if spec.path:
        path = Path(spec.path).expanduser()
        path = path if path.is_absolute() else base / path
    elif out_path is not None and spec.dataset is None:
        path = out_path.with_name(out_path.name + "-dropped")
    dataset = spec.dataset
    if dataset is None and spec.path is None and recipe.output.dataset:
        dataset = f"{recipe.output.dataset}-dropped"
    if (
        path is not None
        and out_path is not None
        # resolved: "x/../out/dropped" and a symlink into the output are inside it too
        and (
            path.resolve().is_relative_to(out_path.resolve())
            or out_path.resolve().is_relative_to(path.resolve())
        )
    ):
        # inside the output folder they would be read as kept documents, and replaced with it
        raise UserError(
            f"keep_dropped: path {path} and the output folder {out_path} overlap; "
            "give a folder beside the output"
        )
    if path is not None and path.exists() and not recipe.output.overwrite:
        raise UserError(
            f"dropped-documents path {path} exists; remove it or set output.overwrite: true"
        )
    return DroppedTarget(path, dataset)


def _parts(work: Path, stages: Sequence[Any], shards: Sequence[Any], build: Path) -> None:
    """The dropped parts: per shard, its stages' dropped files in stage order."""
    n = 0
    for shard in shards:
        files = [dropped_file(work, st.index, shard.index) for st in stages]
        files = [f for f in files if f.exists() and f.stat().st_size]
        if not files:
            continue
        part = build / f"part-{n:05d}.jsonl"
        if len(files) == 1:
            os.link(files[0], part)
        else:
            with open(part, "wb") as out:
                for f in files:
                    with open(f, "rb") as fh:
                        shutil.copyfileobj(fh, out, 1 << 20)
        n += 1


class FinishedDropped:
    """The dropped documents' folder, built in the work folder and registered; ``place``
    moves it to its path once the kept output is registered."""

    def __init__(self, build: Path, target: DroppedTarget, docs: int) -> None:
        self.build, self.target, self.docs = build, target, docs
        self.png = build / "_report" / "report.png"  # the run's plot, for the kept output too

    def place(self) -> None:
        path = self.target.path
        if path is None:
            return
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if self.docs:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(self.build, path)  # a rename, or a copy to a named folder elsewhere


def finish_dropped(
    target: DroppedTarget,
    recipe: Recipe,
    stages: Sequence[Any],
    shards: Sequence[Any],
    work: Path,
    report: dict[str, Any],
    store: Store | None,
    run: Any | None,
    input_refs: list[str | tuple[str, str]],
) -> FinishedDropped:
    """Build the dropped documents' part files and register them (with a store and a
    dataset name); record in ``report["dropped"]`` how many there are and where. A run that
    dropped nothing makes no folder and no asset: an empty dataset is never what was meant."""
    from lmops.data.report import write_report_files

    docs = sum(sum(op["dropped"].values()) for op in report["ops"])
    build = work / "dropped"
    if build.exists():
        shutil.rmtree(build)
    build.mkdir()
    _parts(work, stages, shards, build)
    report["dropped"] = {
        "docs": docs,
        "path": str(target.path) if target.path is not None and docs else None,
        "dataset": None,
    }
    write_report_files(report, build / "_report")  # `lmops data report` reads it there too
    if docs and store is not None and target.dataset:
        v = store.assets.register(
            "dataset",
            target.dataset,
            build,
            metadata={
                "docs": docs,
                "recipe": recipe.name,
                "format": "jsonl",
                "text_key": recipe.text_key,
                "dropped_by": recipe.name,
                "kept": recipe.output.dataset,
            },
            inputs=input_refs,
            run_id=run.id if run is not None else None,
            description=f"the documents recipe {recipe.name} dropped, each with its step and "
            "reason (_lmops.dropped)",
        )
        report["dropped"]["dataset"] = v.ref
    return FinishedDropped(build, target, docs)
