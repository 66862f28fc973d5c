"""Evaluation tasks: the common subset of lm-evaluation-harness task YAML.

Supported keys: ``task``, ``dataset_path`` (``json``/``csv``/``parquet`` with
``dataset_kwargs.data_files``, a local file/folder, or an lmops dataset ref),
``test_split``, ``validation_split``, ``fewshot_split``, ``num_fewshot``, ``doc_to_text``,
``doc_to_choice``, ``doc_to_target`` (Jinja, a column name, or a literal), ``description``,
``target_delimiter``, ``fewshot_delimiter``, ``output_type`` (``multiple_choice``,
``generate_until``, ``loglikelihood_rolling``), ``generation_kwargs`` (``until``,
``max_gen_toks``, ``do_sample``, ``temperature``), ``metric_list``, ``filter_list`` (regex
extraction, take-first), ``group``/``tag``. Unknown keys are errors that name the line.

Rendering follows lm-evaluation-harness: a template that is exactly a column name yields
that column; otherwise it is Jinja; a rendered list/int is parsed as a Python literal.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmops.core.errors import UserError
from lmops.core.yamlcfg import load_config

__all__ = ["Doc", "Task", "TaskConfig", "load_task_file"]

Doc = dict[str, Any]


class MetricSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    metric: str
    aggregation: str = "mean"
    higher_is_better: bool = True


class FilterStep(BaseModel):
    model_config = ConfigDict(extra="allow")
    function: Literal["regex", "take_first", "lowercase", "strip", "number"]
    regex_pattern: str | None = None
    group_select: int = 0


class FilterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    filter: list[FilterStep]


class GenerationKwargs(BaseModel):
    model_config = ConfigDict(extra="allow")
    until: list[str] | str = Field(default_factory=lambda: ["\n\n"])
    max_gen_toks: int = 256
    do_sample: bool = False
    temperature: float = 0.0


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str
    group: str | list[str] | None = None
    tag: str | list[str] | None = None
    dataset_path: str
    dataset_name: str | None = None
    dataset_kwargs: dict[str, Any] = Field(default_factory=dict)
    test_split: str | None = None
    validation_split: str | None = None
    training_split: str | None = None
    fewshot_split: str | None = None
    num_fewshot: int = 0
    fewshot_config: dict[str, Any] = Field(default_factory=dict)  # {sampler: first_n | random}
    description: str = ""
    doc_to_text: str
    doc_to_choice: str | list[str] | None = None
    doc_to_target: str | int
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    output_type: Literal["multiple_choice", "generate_until", "loglikelihood_rolling"] = (
        "multiple_choice"
    )
    generation_kwargs: GenerationKwargs = Field(default_factory=GenerationKwargs)
    metric_list: list[MetricSpec] = Field(default_factory=list)
    filter_list: list[FilterSpec] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    # lmops extensions
    doc_filter: dict[str, Any] = Field(default_factory=dict)  # {field: allowed value(s)}
    scorer: Literal["loglikelihood", "letter"] = "loglikelihood"

    def template_hash(self) -> str:
        """sha256 of everything that shapes a prompt, so reports say which template scored."""
        parts = {
            k: getattr(self, k)
            for k in (
                "description",
                "doc_to_text",
                "doc_to_choice",
                "doc_to_target",
                "target_delimiter",
                "fewshot_delimiter",
            )
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]


def _jinja() -> Any:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    # lm-eval's helpers used in common task files
    env.filters["regex_replace"] = lambda s, find, repl: __import__("re").sub(find, repl, s)
    return env


_ENV: Any = None


def render(template: str | int | list[Any], doc: Doc, field_name: str = "template") -> Any:
    """Apply a doc_to_* template as lm-evaluation-harness does."""
    global _ENV
    if isinstance(template, int | list):
        return template
    if template in doc:
        return doc[template]
    if _ENV is None:
        _ENV = _jinja()
    try:
        out = _ENV.from_string(template).render(**doc)
    except Exception as e:  # jinja2 errors: undefined column, syntax
        raise UserError(f"{field_name}: cannot render {template!r}: {e}") from None
    stripped = out.strip()
    if stripped.startswith("[") or stripped.lstrip("-").isdigit():
        try:
            return ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            return out
    return out


def _read_rows(path: Path, fmt: str) -> list[Doc]:
    if not path.exists():
        raise UserError(f"{path}: data file not found")
    if fmt == "csv":
        with open(path, encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(path).to_pylist())
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return list(json.loads(text))
    rows = []
    for i, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{i}: malformed JSON ({e.msg})") from None
    return rows


@dataclass
class Task:
    """A loaded task: its config, its docs per split, and where they came from."""

    config: TaskConfig
    splits: dict[str, list[Doc]]
    dataset_refs: list[str] = field(default_factory=list)
    source: str = ""
    excluded: int = 0  # docs removed by doc_filter (e.g. MMLU-Redux rows with errors)
    # A built-in task may render its own prompts (few-shot from a fixed dev split, etc.).
    custom_fewshot: Callable[[Doc], list[Doc]] | None = None

    @property
    def name(self) -> str:
        return self.config.task

    @property
    def eval_docs(self) -> list[Doc]:
        c = self.config
        split = c.test_split or c.validation_split
        if split is None or split not in self.splits:
            raise UserError(
                f"task {c.task}: split {split!r} not found; available: {', '.join(self.splits)}"
            )
        return self.splits[split]

    def fewshot_docs(self) -> list[Doc]:
        c = self.config
        split = c.fewshot_split or c.training_split or c.validation_split
        if c.num_fewshot and (split is None or split not in self.splits):
            raise UserError(f"task {c.task}: num_fewshot {c.num_fewshot} needs a fewshot_split")
        return self.splits.get(split or "", [])

    # -- rendering -------------------------------------------------------------------------------
    def text(self, doc: Doc) -> str:
        return str(render(self.config.doc_to_text, doc, "doc_to_text"))

    def choices(self, doc: Doc) -> list[str]:
        c = self.config
        if c.doc_to_choice is None:
            raise UserError(f"task {c.task}: output_type multiple_choice needs doc_to_choice")
        out = render(c.doc_to_choice, doc, "doc_to_choice")
        if not isinstance(out, list):
            raise UserError(f"task {c.task}: doc_to_choice rendered {out!r}, not a list")
        return [str(x) for x in out]

    def target(self, doc: Doc) -> Any:
        t = render(self.config.doc_to_target, doc, "doc_to_target")
        if self.config.output_type == "multiple_choice":
            if isinstance(t, str) and not t.lstrip("-").isdigit():
                choices = self.choices(doc)
                if t not in choices:
                    raise UserError(
                        f"task {self.name}: target {t!r} is not one of the choices {choices}"
                    )
                return choices.index(t)
            return int(t)
        return t

    def target_text(self, doc: Doc) -> str:
        t = self.target(doc)
        if self.config.output_type == "multiple_choice":
            return self.choices(doc)[t]
        return str(t)

    def context(self, doc: Doc, num_fewshot: int, rng_seed: int = 1234) -> str:
        """Description + few-shot examples + the question, as lm-eval builds it."""
        c = self.config
        shots: list[Doc] = []
        if num_fewshot:
            if self.custom_fewshot is not None:
                shots = self.custom_fewshot(doc)[:num_fewshot]
            else:
                pool = [d for d in self.fewshot_docs() if d is not doc]
                if c.fewshot_config.get("sampler", "first_n") == "random":
                    import random

                    shots = random.Random(rng_seed).sample(pool, min(num_fewshot, len(pool)))
                else:
                    shots = pool[:num_fewshot]
        parts = [self.text(s) + c.target_delimiter + self.target_text(s) for s in shots]
        body = c.fewshot_delimiter.join([*parts, self.text(doc)]) if parts else self.text(doc)
        return c.description + body


def load_task_file(path: Path, store: Any | None = None) -> Task:
    """Load an lm-eval-style task YAML with its data."""
    cfg = load_config(path, TaskConfig)
    return load_task(cfg, base=path.parent, store=store, source=str(path))


def load_task(cfg: TaskConfig, *, base: Path, store: Any | None, source: str = "") -> Task:
    refs: list[str] = []
    splits: dict[str, list[Doc]] = {}
    kind = cfg.dataset_path
    if kind in ("json", "csv", "parquet"):
        files = cfg.dataset_kwargs.get("data_files")
        if not files:
            raise UserError(f"{source}: dataset_path {kind} needs dataset_kwargs.data_files")
        if isinstance(files, str):
            files = {"train": files}
        for split, f in files.items():
            paths = f if isinstance(f, list) else [f]
            rows: list[Doc] = []
            for one in paths:
                p = Path(one).expanduser()
                rows += _read_rows(
                    p if p.is_absolute() else base / p, "json" if kind == "json" else kind
                )
            splits[split] = rows
    else:
        p = Path(kind).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.exists():
            if store is None:
                raise UserError(
                    f"{source}: dataset_path {kind!r} is not a file, a known format or a dataset ref"
                )
            v = store.assets.resolve(kind)
            refs.append(v.ref)
            p = store.assets.path(v.ref)
        files_in = sorted(p.glob("*")) if p.is_dir() else [p]
        for f in files_in:
            if f.is_file() and not f.name.startswith(("_", ".")):
                fmt = (
                    "csv" if f.suffix == ".csv" else "parquet" if f.suffix == ".parquet" else "json"
                )
                splits.setdefault(
                    f.stem.split("-")[0] if p.is_dir() else (cfg.test_split or "test"), []
                ).extend(_read_rows(f, fmt))
    task = Task(cfg, splits, refs, source)
    if cfg.doc_filter:
        task.excluded = _apply_doc_filter(task)
    _check_templates(task, source)
    return task


def _apply_doc_filter(task: Task) -> int:
    removed = 0
    for split, docs in task.splits.items():
        kept = []
        for d in docs:
            ok = all(
                (
                    str(d.get(k, "")).lower()
                    in {str(x).lower() for x in (v if isinstance(v, list) else [v])}
                )
                for k, v in task.config.doc_filter.items()
            )
            if ok:
                kept.append(d)
        removed += len(docs) - len(kept)
        task.splits[split] = kept
    return removed


def _check_templates(task: Task, source: str) -> None:
    """Render the first document now, so a broken template or a missing column fails before
    any model loads, naming the field."""
    docs = task.eval_docs
    if not docs:
        raise UserError(f"{source or task.name}: the evaluation split is empty")
    doc = docs[0]
    try:
        task.text(doc)
        task.target(doc)
        if task.config.output_type == "multiple_choice":
            task.choices(doc)
    except UserError as e:
        raise UserError(f"{source or task.name}: {e} (columns: {', '.join(doc)})") from None
