"""Step types: each is a typed parameter model plus a function that runs it through the
stage's own library (the same code the ``lmops`` commands call) and returns the asset
versions it produced.

A step type also says which of its parameters are *inputs* (asset refs or local paths),
and which inputs only reading those finds (*found inputs*: the files a recipe's paths and
globs match, an operator's model file, the data files a task YAML names, the datasets a
job YAML names): the runner pins each to its version (or content digest) in the step's
cache key, so a moved alias or an edited file re-runs the step and everything after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmops.core.errors import UserError
from lmops.eval.spec import SCORING_VERSION, EvalSpec, with_preset
from lmops.pipelines.gate import Condition, fmt, higher_is_better, judge
from lmops.pipelines.keys import local_path

__all__ = [
    "STEP_TYPES",
    "StepContext",
    "StepOutput",
    "StepType",
    "step_type",
]


@dataclass
class StepContext:
    """What a running step may use: the store, its pipeline, and where to print."""

    store: Any
    pipeline: str
    step: str
    base_dir: Path
    console: Any  # rich Console
    progress: bool = True
    forced: bool = False  # --force / --force-step: run again from scratch, not from a checkpoint

    def path(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.base_dir / q


@dataclass
class StepOutput:
    """Asset versions produced (``output`` is the main one) and JSON-able facts to report."""

    outputs: dict[str, str] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    run_id: str | None = None


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def inputs(self) -> list[str]:
        """Asset refs or local paths this step reads (pinned in its cache key)."""
        return []

    def found_inputs(self, ctx: StepContext) -> list[str]:
        """What the step reads that only reading its inputs finds, found the way the step
        finds it: asset refs (``name:N`` where resolved) or local paths (relative to the
        pipeline's folder, or absolute), pinned like :meth:`inputs`. A ``UserError`` here
        is left for the step to report when it runs."""
        return []

    def key_params(self, ctx: StepContext) -> Any:
        """The parameters as the step will see them, for its cache key: every default
        filled in, and (where a step overrides this) nested jobs resolved as the step
        resolves them. A ``UserError`` leaves the key to the parameters with defaults."""
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class StepType:
    name: str
    params: type[Params]
    run: Callable[[StepContext, Any], StepOutput]
    doc: str
    always_run: Callable[[Any], bool] = lambda p: False  # e.g. a server kept running


STEP_TYPES: dict[str, StepType] = {}


def step_type(
    name: str, params: type[Params], *, always_run: Callable[[Any], bool] | None = None
) -> Callable[[Callable[[StepContext, Any], StepOutput]], Callable[[StepContext, Any], StepOutput]]:
    """Register a step type (the function's docstring is its help text)."""

    def deco(
        fn: Callable[[StepContext, Any], StepOutput],
    ) -> Callable[[StepContext, Any], StepOutput]:
        STEP_TYPES[name] = StepType(
            name, params, fn, (fn.__doc__ or "").strip(), always_run or (lambda p: False)
        )
        return fn

    return deco


# -- register ---------------------------------------------------------------------------------
class RegisterParams(Params):
    path: str
    name: str
    kind: str = "dataset"
    metadata: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    def inputs(self) -> list[str]:
        return [self.path]


@step_type("register", RegisterParams)
def _register(ctx: StepContext, p: RegisterParams) -> StepOutput:
    """Register a local file or folder as an asset version (e.g. raw data), with lineage to
    where it came from (the path, as an external reference, role ``source``)."""
    src = ctx.path(p.path)
    if not src.exists():
        raise UserError(f"path: {src} does not exist")
    source = ctx.store.assets.record_inputs([(src, "source")])
    v = ctx.store.assets.register(
        p.kind, p.name, src, metadata=p.metadata, description=p.description, inputs=source
    )
    return StepOutput({"output": v.ref}, {"files": v.files, "bytes": v.size}, f"{v.ref}")


# -- data -------------------------------------------------------------------------------------
class DataParams(Params):
    recipe: str | dict[str, Any]
    inputs_: list[str] | None = Field(None, alias="inputs")
    output: str | None = None
    overrides: list[str] = Field(default_factory=list)
    workers: int | None = Field(None, ge=1)
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def inputs(self) -> list[str]:
        refs = list(self.inputs_ or [])
        if isinstance(self.recipe, str):
            refs.append(self.recipe)
        elif not self.inputs_:
            refs += list(self.recipe.get("inputs") or [])
        return refs

    def found_inputs(self, ctx: StepContext) -> list[str]:
        # what the recipe's paths, globs and dataset refs match, and the operators' own
        # files (a scoring model)
        recipe, base = _recipe(ctx, self)
        files = [local_path(ctx, f) for op in recipe.build_ops() for f in op.files()]
        return _matched(ctx, recipe.inputs, base) + files

    def key_params(self, ctx: StepContext) -> Any:
        # the recipe as it runs (a file's or the inline one, with overrides, inputs and
        # output applied), each operator with its parameters' defaults, and the workers
        # as the executor takes them (run_recipe: ``workers or executor.workers``)
        recipe, _ = _recipe(ctx, self)
        data = recipe.model_dump(mode="json")
        data["process"] = [
            {"op": spec.op, "field": spec.field, **op.params.model_dump(mode="json")}
            for spec, op in zip(recipe.process, recipe.build_ops(), strict=True)
        ]
        data["executor"]["workers"] = self.workers or recipe.executor.workers
        return data


def _recipe(ctx: StepContext, p: DataParams) -> tuple[Any, Path]:
    """The recipe the step runs, and the folder its relative inputs are read from."""
    from lmops.core.yamlcfg import apply_overrides, validate_config
    from lmops.data.recipe import Recipe, load_recipe

    if isinstance(p.recipe, str):
        path = ctx.path(p.recipe)
        recipe = load_recipe(path, p.overrides)
        base = path.parent
    else:
        data = apply_overrides(dict(p.recipe), p.overrides) if p.overrides else dict(p.recipe)
        data.setdefault("name", f"{ctx.pipeline}-{ctx.step}")
        data.setdefault("output", {"dataset": p.output or f"{ctx.pipeline}-{ctx.step}"})
        if p.inputs_ is not None:
            data["inputs"] = p.inputs_
        recipe = validate_config(data, Recipe, source="recipe")
        recipe.build_ops("recipe")
        base = ctx.base_dir
    if p.inputs_ is not None:
        recipe.inputs = list(p.inputs_)
    if p.output is not None:
        recipe.output.dataset = p.output
    return recipe, base


@step_type("data", DataParams)
def _data(ctx: StepContext, p: DataParams) -> StepOutput:
    """Run a data recipe (clean, filter, dedup, PII) and register its output dataset."""
    from lmops.data.executor import dropped_reasons, run_recipe
    from lmops.data.report import format_summary

    recipe, base = _recipe(ctx, p)
    if not recipe.output.dataset:
        raise UserError("output: the recipe registers no dataset; set output: NAME")
    res = run_recipe(
        recipe, base_dir=base, store=ctx.store, workers=p.workers, progress=ctx.progress
    )
    rep = res.report
    result = {
        "docs_in": rep["docs_in"],
        "docs_out": rep["docs_out"],
        "dropped": dict(dropped_reasons(rep).most_common()),
        "pii": rep["pii"],
        "seconds": rep["wall_seconds"],
        "report": format_summary(rep),
    }
    if (rep.get("dropped") or {}).get("dataset"):  # keep_dropped: every dropped document
        result["dropped_dataset"] = rep["dropped"]["dataset"]
    summary = f"{res.dataset}: kept {rep.get('docs_out')} of {rep.get('docs_in')} documents"
    return StepOutput({"output": str(res.dataset)}, result, summary, res.run_id)


# -- tokenizer --------------------------------------------------------------------------------
class TokenizerParams(Params):
    sources: list[str] = Field(min_length=1)
    name: str
    kind: Literal["bpe", "sentencepiece_bpe", "sentencepiece_unigram"] = "bpe"
    vocab_size: int = Field(8000, ge=64)
    min_frequency: int = Field(2, ge=1)
    text_key: str = "text"

    def inputs(self) -> list[str]:
        return list(self.sources)

    def found_inputs(self, ctx: StepContext) -> list[str]:
        return _matched(ctx, self.sources, ctx.base_dir)  # globs and folders included


@step_type("tokenizer", TokenizerParams)
def _tokenizer(ctx: StepContext, p: TokenizerParams) -> StepOutput:
    """Train a tokenizer on datasets (refs or paths) and register it."""
    from lmops.data.jobs import train_tokenizer_asset

    v = train_tokenizer_asset(
        ctx.store,
        p.sources,
        p.name,
        kind=p.kind,
        vocab_size=p.vocab_size,
        text_key=p.text_key,
        min_frequency=p.min_frequency,
    )
    size = v.metadata.get("vocab_size")
    return StepOutput({"output": v.ref}, {"vocab_size": size}, f"{v.ref}: {size} tokens", v.run_id)


# -- mix --------------------------------------------------------------------------------------
class MixParams(Params):
    ratios: dict[str, float] = Field(min_length=1)
    output: str
    by: Literal["documents", "tokens"] = "documents"
    total: int | None = Field(None, ge=1)
    seed: int = 0
    text_key: str = "text"

    def inputs(self) -> list[str]:
        return list(self.ratios)

    def found_inputs(self, ctx: StepContext) -> list[str]:
        return _matched(ctx, list(self.ratios), ctx.base_dir)  # globs and folders included


@step_type("mix", MixParams)
def _mix(ctx: StepContext, p: MixParams) -> StepOutput:
    """Mix datasets by ratio into one dataset."""
    from lmops.data.jobs import mix_datasets

    v, report = mix_datasets(
        ctx.store, p.ratios, p.output, by=p.by, total=p.total, seed=p.seed, text_key=p.text_key
    )
    return StepOutput({"output": v.ref}, {"mix": report}, v.ref, v.run_id)


# -- train ------------------------------------------------------------------------------------
class TrainParams(Params):
    spec: str | dict[str, Any]  # a job YAML path, or the job itself (``preset:`` allowed)
    overrides: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_spec(self) -> TrainParams:
        # an inline job is checked when the pipeline loads, not when its step is reached;
        # its errors keep their place inside it (steps.NAME.spec.train.lr)
        if isinstance(self.spec, dict):
            from lmops.core.yamlcfg import nested_error, with_presets
            from lmops.train.spec import PRESETS, TrainSpec

            try:
                TrainSpec.model_validate(
                    with_presets(self.spec, PRESETS, self.overrides, source="spec")
                )
            except UserError as e:  # an unknown preset, a bad override
                raise ValueError(str(e)) from None
            except ValidationError as e:
                raise nested_error(e, "spec") from None
        return self

    def inputs(self) -> list[str]:
        if isinstance(self.spec, str):
            return [self.spec]
        from lmops.train.spec import spec_from_dict

        return spec_from_dict(self.spec, self.overrides, source="spec").inputs()

    def found_inputs(self, ctx: StepContext) -> list[str]:
        # what a job YAML names (an inline job's are its inputs)
        return _train_spec(ctx, self).inputs() if isinstance(self.spec, str) else []

    def key_params(self, ctx: StepContext) -> Any:
        # the job as it runs: its preset merged, the overrides applied, defaults filled in
        return _train_spec(ctx, self).model_dump(mode="json")


def _train_spec(ctx: StepContext, p: TrainParams) -> Any:
    from lmops.train.spec import load_spec, spec_from_dict

    if isinstance(p.spec, str):
        return load_spec(ctx.path(p.spec), p.overrides)
    return spec_from_dict(p.spec, p.overrides, source=f"steps.{ctx.step}.spec")


@step_type("train", TrainParams)
def _train(ctx: StepContext, p: TrainParams) -> StepOutput:
    """Train (pretrain, SFT, reward, DPO/KTO/ORPO, PPO) and register the model or adapter.
    Running the pipeline again resumes an interrupted run of the same job from its last
    checkpoint (``lmops train --resume``); a changed job, or a forced step (``--force``,
    ``--force-step``), starts over and deletes the old checkpoints (``--restart``)."""
    from lmops.train.run import previous_run, run_training

    spec = _train_spec(ctx, p)
    prev = previous_run(ctx.store, spec)
    resume = prev is not None and not prev.changed and not ctx.forced
    res = run_training(spec, ctx.store, resume=resume, restart=not resume, progress=ctx.progress)
    result = {
        "steps": res.steps,
        "seconds": round(res.seconds, 2),
        "tokens": res.tokens,
        "trainable_params": res.trainable_params,
        "total_params": res.total_params,
        "final": res.final,
        "resumed_from": res.resumed_from,
    }
    loss = res.final.get("loss")
    summary = f"{res.output}: {res.steps} steps" + (f", loss {loss:.3f}" if loss else "")
    if res.resumed_from:
        summary += f" (resumed from step {res.resumed_from})"
    elif prev is not None:
        summary += f" (started over; the interrupted run {prev.run_id} was at step {prev.step})"
    return StepOutput({"output": str(res.output)}, result, summary, res.run_id)


class MergeParams(Params):
    adapter: str
    output: str | None = None
    # what the merged weights are stored in, as `lmops train merge --dtype` (auto: the base's)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    def inputs(self) -> list[str]:
        return [self.adapter]


@step_type("merge", MergeParams)
def _merge(ctx: StepContext, p: MergeParams) -> StepOutput:
    """Merge a LoRA adapter into its base and register the full model."""
    from lmops.train.run import merge_adapter

    v = merge_adapter(ctx.store, p.adapter, p.output, dtype=p.dtype)
    return StepOutput({"output": v.ref}, {}, v.ref, v.run_id)


# -- eval -------------------------------------------------------------------------------------
class EvalParams(EvalSpec, Params):
    """The step is an eval spec (:class:`lmops.eval.spec.EvalSpec`, ``preset:`` included),
    the same job as ``lmops eval run``; relative task files and data dir are read from the
    pipeline's folder, an endpoint's key from ``LMOPS_API_KEY``."""

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return with_preset(data)

    def inputs(self) -> list[str]:
        return EvalSpec.inputs(self)

    def found_inputs(self, ctx: StepContext) -> list[str]:
        # what the tasks were read from: task files' data files and folders, a built-in's
        # shared data, dataset and prompt versions
        from lmops.eval.jobs import spec_tasks

        found: list[str] = []
        for t in spec_tasks(self.resolved(ctx), ctx.store):
            found += [local_path(ctx, path) for path, _ in t.local_inputs]
            found += [*t.dataset_refs, *t.prompt_refs]
        return found

    def key_params(self, ctx: StepContext) -> Any:
        data = self.model_dump(mode="json")
        # requests in flight change how fast, not what is scored: another number reuses the
        # cached step (and keys made before the field existed still match)
        data.pop("concurrency", None)
        # few-shot examples as turns is what a chat template defaults to (eval.run.prompt_style)
        if self.fewshot_as_multiturn is None:
            data["fewshot_as_multiturn"] = self.apply_chat_template
        if self.data_dir:  # not an input (the tasks' files under it are found inputs)
            data["data_dir"] = local_path(ctx, ctx.path(self.data_dir))
        # a step scored before lmops scored such jobs differently is not reused
        data["scoring"] = SCORING_VERSION
        return data

    def resolved(self, ctx: StepContext) -> EvalSpec:
        """The eval job, its relative paths read from the pipeline's folder."""
        return EvalSpec.model_validate(self.model_dump()).resolve_paths(ctx.base_dir)


_NOT_METRICS = ("n", "excluded", "num_fewshot", "seconds", "tasks", "failed_requests")


def _flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """``task/metric`` -> value for every score in an eval report (not counts or timings)."""
    out: dict[str, float] = {}
    for task, summary in (report.get("results") or {}).items():
        for k, v in (summary or {}).items():
            if (
                isinstance(v, int | float)
                and not isinstance(v, bool)
                and "stderr" not in k
                and k not in _NOT_METRICS
            ):
                out[f"{task}/{k}"] = float(v)
    for group, agg in (report.get("groups") or {}).items():
        for k, v in (agg or {}).items():
            if isinstance(v, int | float) and "stderr" not in k and k not in _NOT_METRICS:
                out.setdefault(f"{group}/{k}", float(v))
    return out


def _report_outputs(report: str, model_ref: str | None) -> dict[str, str]:
    """An eval step's outputs: the report and, when it read a model asset, that version.
    A local folder or an endpoint's model is no output (it stays in the result): the step
    cache trusts an entry only while each output resolves READY, so one would never hit."""
    return {"output": report, **({"model": model_ref} if model_ref else {})}


@step_type("eval", EvalParams)
def _eval(ctx: StepContext, p: EvalParams) -> StepOutput:
    """Score a model on benchmark tasks and task YAML files; registers an eval_report."""
    import os

    from lmops.eval.jobs import run_eval

    job = run_eval(
        ctx.store, p.resolved(ctx), api_key=os.environ.get("LMOPS_API_KEY"), progress=ctx.progress
    )
    metrics = _flat_metrics(job.report)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in list(metrics.items())[:4])
    return StepOutput(
        _report_outputs(job.version.ref, job.model_ref),
        {"metrics": metrics, "model": job.model_ref or p.model},
        f"{job.version.ref}: {shown}",
        job.version.run_id,
    )


class SafetyParams(Params):
    model: str
    limit: int | None = Field(None, ge=1)
    categories: list[str] | None = None
    max_gen_toks: int = Field(128, ge=1)
    prompts: str | None = None
    output: str | None = None

    def inputs(self) -> list[str]:
        return [self.model] + ([self.prompts] if self.prompts else [])


@step_type("safety", SafetyParams)
def _safety(ctx: StepContext, p: SafetyParams) -> StepOutput:
    """Red-team probe (bundled bilingual set unless ``prompts:``); registers an eval_report."""
    from lmops.eval.jobs import run_safety_probe

    job = run_safety_probe(
        ctx.store,
        p.model,
        prompts=ctx.path(p.prompts) if p.prompts else None,
        categories=p.categories,
        limit=p.limit,
        max_gen_toks=p.max_gen_toks,
        output=p.output,
    )
    rates = {
        f"safety/{k}": float(v)
        for k, v in job.report.items()
        if k.endswith("_rate") and isinstance(v, int | float)
    }
    return StepOutput(
        _report_outputs(job.version.ref, job.model_ref),
        {"metrics": rates, "model": job.model_ref or p.model},
        f"{job.version.ref}: " + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in rates.items()),
        job.version.run_id,
    )


# -- gate, alias ------------------------------------------------------------------------------
class GateParams(Params):
    """``conditions:`` (each a metric with rules; see :mod:`lmops.pipelines.gate`), or the
    single-metric form ``metric:`` + ``threshold`` / ``min_delta`` over the baseline, which
    is one condition."""

    candidates: list[str] = Field(min_length=1)  # eval_report refs; the best one is promoted
    baseline: str | None = None  # an eval_report ref that relative rules compare with
    conditions: list[Condition] = Field(default_factory=list)
    alias: str = "production"
    on_fail: Literal["skip", "fail"] = "skip"
    # the single-metric form
    metric: str | None = None  # "task/metric" as in the eval report, e.g. "addition/exact_match"
    threshold: float | None = None  # a value it must reach
    min_delta: float = Field(0.0, ge=0)  # beat the baseline by more than this
    higher_is_better: bool | None = None  # default: from the metric's name (else higher)

    @model_validator(mode="after")
    def _check_form(self) -> GateParams:
        if self.conditions and self.metric is not None:
            raise ValueError("give conditions: or the single metric:, not both")
        if not self.conditions and self.metric is None:
            raise ValueError("give conditions: (a list of {metric, rules}) or metric:")
        if self.conditions and (self.threshold is not None or self.min_delta):
            raise ValueError(
                "threshold/min_delta go with metric:; in conditions: use min/improve_by"
            )
        for i, c in enumerate(self.conditions):
            if c.relative and self.baseline is None:
                rule = "improve_by" if c.improve_by is not None else "not_worse_than"
                raise ValueError(
                    f"conditions[{i}].{rule} compares with the baseline: set baseline:"
                )
        return self

    def rules(self) -> list[Condition]:
        """The conditions, the single-metric form turned into one (none when it has neither
        a baseline nor a threshold: the best candidate is promoted)."""
        if self.conditions or self.metric is None:
            return list(self.conditions)
        hib = self.direction()
        rules: dict[str, Any] = {}
        if self.baseline is not None:
            rules["improve_by"] = self.min_delta
        if self.threshold is not None:
            rules["min" if hib else "max"] = self.threshold
        if not rules:
            return []
        return [Condition(metric=self.metric, higher_is_better=hib, **rules)]

    def direction(self) -> bool:
        """Which way the ranking metric (the first condition's) is better."""
        if self.conditions:
            return bool(self.conditions[0].direction)
        assert self.metric is not None
        found = higher_is_better(self.metric, self.higher_is_better)
        return True if found is None else found  # the single-metric form's old default

    def ranking_metric(self) -> str:
        return self.conditions[0].metric if self.conditions else str(self.metric)

    def inputs(self) -> list[str]:
        return [*self.candidates, *([self.baseline] if self.baseline else [])]


class ReportMetrics(NamedTuple):
    """What the gate reads from one eval_report version."""

    metrics: dict[str, float]  # every metric, ``task/metric``
    model: str | None  # the model asset's version ref; None: a local folder or an endpoint
    ref: str  # the report's version ref
    label: str  # the model as the report names it: its ref, else its folder or name


def report_metrics(store: Any, ref: str) -> ReportMetrics:
    """The metrics and model of an eval_report version. A report of a local folder (an
    external reference, not a model asset) has no model ref: it may be a baseline, or a
    candidate the gate does not pick, but the gate cannot promote it."""
    v = store.assets.resolve(ref)
    if v.kind != "eval_report":
        raise UserError(f"{ref} is a {v.kind}, not an eval_report")
    meta = v.metadata
    flat = _flat_metrics(meta)
    if "results" in meta and "safety" in meta["results"]:
        safety = meta["results"]["safety"].items()  # a rate with no prompt of its kind: None
        flat.update({f"safety/{k}": float(x) for k, x in safety if x is not None})
    model = (meta.get("model") or {}).get("ref")
    label = model or (meta.get("model") or {}).get("name") or v.ref
    return ReportMetrics(flat, str(model) if model else None, v.ref, str(label))


def _metric_in(flat: dict[str, float], metric: str, report: str) -> float:
    value = pick_metric(flat, metric)
    if value is None:
        known = ", ".join(sorted(flat)[:12]) or "none"
        raise UserError(f"metric {metric!r} is not in {report} (it has: {known})")
    return value


def report_metric(store: Any, ref: str, metric: str) -> tuple[float, str | None, str]:
    """(value, model ref or None, report ref) of ``metric`` in an eval_report version."""
    flat, model, report, _ = report_metrics(store, ref)
    return _metric_in(flat, metric, report), model, report


def pick_metric(flat: dict[str, float], metric: str) -> float | None:
    """``metric`` in ``flat``; ``task/exact_match`` also names ``task/exact_match,FILTER``
    when the task has exactly one filter (lm-eval writes ``metric,filter`` keys)."""
    if metric in flat:
        return flat[metric]
    found = [v for k, v in flat.items() if k.startswith(metric + ",")]
    return found[0] if len(found) == 1 else None


@step_type("gate", GateParams)
def _gate(ctx: StepContext, p: GateParams) -> StepOutput:
    """Promote the best candidate's model to ``alias`` only if it meets every condition
    (metric up by a margin over ``baseline``, others not worse than a tolerance, absolute
    min/max); the decision, with each condition's value, baseline and verdict, is recorded
    as a ``gate`` run. The best is the best on the first condition among the candidates
    that pass (or among all, when none does). Outputs: ``output`` (the promoted model, only
    when promoted) and ``selected`` (the model to use after the decision: the winner, or
    else the baseline's model)."""
    store = ctx.store
    conditions = p.rules()
    rank = p.ranking_metric()
    sign = 1.0 if p.direction() else -1.0
    base_flat: dict[str, float] | None = None
    base_model: str | None = None
    base_ref = ""
    if p.baseline is not None:  # compared with, never promoted: a local folder's eval will do
        base_flat, base_model, base_ref, _ = report_metrics(store, p.baseline)
    judged = []  # (ranking value, model ref or None, report, verdicts, model label)
    for ref in p.candidates:
        flat, model_ref, report, label = report_metrics(store, ref)
        verdicts = [
            judge(
                c,
                _metric_in(flat, c.metric, report),
                _metric_in(base_flat, c.metric, base_ref) if base_flat is not None else None,
            )
            for c in conditions
        ]
        judged.append((_metric_in(flat, rank, report), model_ref, report, verdicts, label))
    passing = [j for j in judged if all(v.passed for v in j[3])]
    value, model_ref, report, verdicts, model = max(passing or judged, key=lambda j: sign * j[0])
    promote = bool(passing)
    if promote and model_ref is None:
        raise UserError(
            f"{report} was made from {model!r}, not a model asset, so the gate cannot promote "
            "it: register the model (a register step with kind: model) and evaluate that"
        )
    base_value = _metric_in(base_flat, rank, base_ref) if base_flat is not None else None
    reasons = [v.line() for v in verdicts if not v.passed]
    decision = {
        "decision": "promote" if promote else "hold",
        "metric": rank,
        "value": value,
        "baseline_value": base_value,
        "threshold": p.threshold,
        "model": model,
        "report": report,
        "alias": p.alias,
        "conditions": [v.to_dict() for v in verdicts],
        "candidates": {r: v for v, _, r, _, _ in judged},
        "passed": [r for _, _, r, _, _ in passing],
        "reasons": reasons,
    }
    with store.runs.track("gate", name=f"{ctx.pipeline}/{ctx.step}", config=p.model_dump()) as run:
        store.runs.update(run.id, params=decision)
        store.runs.log_metrics(run.id, {"value": value, "promoted": float(promote)}, step=0)
        if promote and model_ref is not None:
            store.assets.alias(model_ref, p.alias)
    name = model.split(":")[0]
    checks = "; ".join(v.line() for v in verdicts)
    if not verdicts:  # the single-metric form with neither baseline nor threshold
        checks = f"{rank} {fmt(value)}, the best of {len(judged)}"
    if promote:
        summary = f"promoted {model} to {name}@{p.alias}: {checks}"
        outputs = {"output": model, "selected": model, "report": report}
        return StepOutput(outputs, decision, summary, run.id)
    if p.on_fail == "fail":
        raise UserError(f"gate held {model}: {'; '.join(reasons)}")
    # "selected" is what to use after the decision: the winner, or else the baseline's model
    held = {"selected": base_model} if base_model else {}
    return StepOutput(held, decision, f"held {model}: {checks}", run.id)


class AliasParams(Params):
    ref: str
    alias: str

    def inputs(self) -> list[str]:
        return [self.ref]


@step_type("alias", AliasParams)
def _alias(ctx: StepContext, p: AliasParams) -> StepOutput:
    """Point an alias at a version unconditionally (see ``gate`` for the guarded move)."""
    v = ctx.store.assets.alias(p.ref, p.alias)
    return StepOutput({"output": v.ref}, {"alias": p.alias}, f"{v.asset}@{p.alias} -> {v.ref}")


# -- serve ------------------------------------------------------------------------------------
class ServeParams(Params):
    model: str  # an asset ref; an alias ref (name@production) follows the alias
    name: str = "chat"  # the deployment name clients send as "model"
    prompt: str = "Hello! Who are you?"
    max_tokens: int = Field(32, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)  # 0: a free port
    keep: bool = False  # keep serving until interrupted (never cached)
    # the fresh API key expires after this many hours (null: never); key_ttl_days, when
    # given, takes its place
    key_ttl_hours: float | None = Field(24.0, gt=0)
    key_ttl_days: int | None = Field(None, ge=1)

    def key_ttl(self) -> timedelta | None:
        if self.key_ttl_days is not None:
            return timedelta(days=self.key_ttl_days)
        return timedelta(hours=self.key_ttl_hours) if self.key_ttl_hours is not None else None

    def inputs(self) -> list[str]:
        return [self.model]


@step_type("serve", ServeParams, always_run=lambda p: bool(p.keep))
def _serve(ctx: StepContext, p: ServeParams) -> StepOutput:
    """Serve a model through the OpenAI-compatible gateway with a fresh API key, send one
    chat request, print the answer and ready-to-paste snippets; ``keep: true`` keeps
    serving until Ctrl-C."""
    from lmops.pipelines.serving import serve_and_probe

    return serve_and_probe(ctx, p)


def _matched(ctx: StepContext, items: list[str], base: Path) -> list[str]:
    """The dataset versions (``name:N``) and local files that data-stage inputs (paths,
    globs, dataset refs, relative to ``base``) resolve to, as the data stage reads them."""
    from lmops.data.recipe import resolve_inputs

    found = resolve_inputs(items, base, ctx.store)
    return [*found.refs, *(local_path(ctx, f.path) for f in found.files if f.ref is None)]
