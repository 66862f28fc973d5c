"""Evaluation jobs: open a model, score it on tasks, the red-team probe or a judge, register the
report with lineage to the model and the data (local folders and files, task files
included, as external references) and, through an lmops gateway, to the model versions it
serves. ``run_eval`` takes one :class:`~lmops.eval.spec.EvalSpec`: ``lmops eval run`` (its
flags override the spec), the pipeline's ``eval`` step and any API route build one."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmops.core.errors import LmopsError, UserError
from lmops.core.logging import get_logger
from lmops.eval._batching import ItemNamed
from lmops.eval.endpoint import DEFAULT_CONCURRENCY
from lmops.eval.spec import EvalSpec

__all__ = [
    "EvalJob",
    "EvalSpec",
    "load_tasks",
    "open_model",
    "run_eval",
    "run_judge",
    "run_safety_probe",
    "served_model",
    "spec_metric_names",
    "spec_tasks",
]


def load_tasks(
    names: list[str],
    task_files: list[Path],
    store: Any,
    data_dir: Path | None = None,
    include_errors: bool = False,
) -> list[Any]:
    """Built-in tasks by name plus lm-eval style task YAML files."""
    from lmops.eval.builtin import load_builtin
    from lmops.eval.tasks import load_task_file

    tasks = []
    for name in names:
        tasks += load_builtin(name, root=data_dir, store=store, include_errors=include_errors)
    for f in task_files:
        tasks.append(load_task_file(f, store))
    if not tasks:
        raise UserError("give --tasks NAME[,NAME...] or --task-file FILE.yaml")
    return tasks


def spec_tasks(spec: EvalSpec, store: Any) -> list[Any]:
    """The tasks ``spec`` names, loaded with their data; each notes what it was read from
    (``Task.local_inputs``, ``dataset_refs``, ``prompt_refs``)."""
    return load_tasks(
        spec.tasks,
        [Path(f) for f in spec.task_files],
        store,
        Path(spec.data_dir) if spec.data_dir else None,
        spec.include_errors,
    )


def spec_metric_names(spec: EvalSpec, store: Any) -> list[str]:
    """The ``task/metric`` names a report of ``spec`` will hold (:func:`eval.run.metric_names`),
    read from its tasks' configs before anything is scored, so a pipeline's gate can check
    its metrics first: a task file's ``metric_list`` and filters, a built-in's tasks (a
    group's subtasks come from its data), ``perplexity:<dataset>`` named by the dataset as
    written, without reading it. A ``UserError`` where a task cannot be read now."""
    from lmops.core.yamlcfg import load_config
    from lmops.eval.builtin import load_builtin, perplexity_config
    from lmops.eval.run import metric_names
    from lmops.eval.tasks import TaskConfig

    configs = []
    for name in spec.tasks:
        if name.startswith("perplexity:"):
            configs.append(perplexity_config(name.split(":", 1)[1]))
            continue
        data_dir = Path(spec.data_dir) if spec.data_dir else None
        tasks = load_builtin(name, root=data_dir, store=store, include_errors=spec.include_errors)
        configs += [t.config for t in tasks]
    configs += [load_config(Path(f), TaskConfig) for f in spec.task_files]
    return metric_names(configs, contamination=spec.contamination.wanted)


def open_model(
    model: str,
    store: Any,
    *,
    endpoint: str | None = None,
    api_key: str | None = None,
    batch_size: str = "auto",
    device: str = "auto",
    max_length: int | None = None,
    retries: int = 3,
    chat: bool = True,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> tuple[Any, str | None]:
    """An evaluation backend for a local folder/asset, or an OpenAI-compatible endpoint
    (asked through its chat API, or with ``chat=False`` its completions API: plain text,
    ``concurrency`` requests in flight at once, each of up to ``batch_size`` prompts)."""
    bs: int | str = batch_size if batch_size == "auto" else int(batch_size)
    if endpoint:
        from lmops.eval.lm import OpenAIEvalModel

        lm = OpenAIEvalModel(
            endpoint,
            model,
            api_key=api_key,
            retries=retries,
            chat=chat,
            concurrency=concurrency,
            batch_size=bs,
        )
        return lm, None
    from lmops.core.modelfiles import refuse_reward_model
    from lmops.eval.lm import HFEvalModel
    from lmops.models.loading import merged_view, resolve_local

    path, ref = resolve_local(model, store, kind="model")
    refuse_reward_model(path, "evaluated", what=ref or model)
    if (path / "adapter_config.json").exists():
        path = merged_view(path, store)
    return HFEvalModel(
        path, device=device, batch_size=bs, max_length=max_length, name=ref or str(path)
    ), ref


def _local_model(model: str, ref: str | None, endpoint: str | None) -> list[tuple[Path, str]]:
    """The model as a local ``(folder, "model")`` input, when it was one (not an asset, not
    an endpoint's model name)."""
    return [] if endpoint or ref else [(Path(model).expanduser(), "model")]


def _register_results(
    store: Any,
    name: str,
    data: dict[str, Any],
    *,
    metadata: dict[str, Any],
    inputs: list[Any],
    run_id: str,
) -> Any:
    """An ``eval_report`` holding one ``results.json`` (a safety or judge run's)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report"
        out.mkdir()
        (out / "results.json").write_text(
            json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        return store.assets.register(
            "eval_report", name, out, metadata=metadata, inputs=inputs, run_id=run_id
        )


def _short(ref: str) -> str:
    return ref.split(":")[0].split("@")[0].split("/")[-1]


@dataclass
class EvalJob:
    """What an evaluation produced: the registered report and the per-task results."""

    version: Any  # the eval_report Version
    report: dict[str, Any]
    results: list[Any] = field(default_factory=list)
    model_ref: str | None = None
    tasks: list[Any] = field(default_factory=list)  # the tasks as loaded (eval.tasks.Task)


def _model_key(model: str, ref: str | None, endpoint: str | None, lm: Any) -> str:
    """Which model scored: an asset version, a local folder's files, or an endpoint's
    model; with the device and context length, which change the numbers."""
    from lmops.eval.partial import fingerprint_folder

    if endpoint:
        return f"endpoint {endpoint.rstrip('/')} {model}"
    where = f"device {getattr(lm, 'device', '')} max_length {getattr(lm, 'max_length', '')}"
    if ref:
        return f"asset {ref} {where}"
    return f"folder {fingerprint_folder(Path(model))} {where}"


def _contamination_refs(store: Any, c: Any, model_ref: str | None) -> list[str]:
    """The datasets an eval's contamination check reads: the ones given, else the model's
    training data from its lineage; an error (before anything is scored) where there are
    none, which would report every item clean."""
    from lmops.eval.run import training_datasets

    if c.datasets:
        return [store.assets.resolve(r).ref for r in c.datasets]
    if model_ref is None:
        raise UserError(
            "contamination needs a model asset (its lineage names the training data) "
            "or explicit contamination datasets (--contamination-datasets)"
        )
    refs = training_datasets(store, model_ref)
    if not refs:
        raise UserError(
            f"contamination: the lineage of {model_ref} names no dataset (imported, not "
            "trained here?); give the training data with --contamination-datasets"
        )
    return refs


def run_eval(
    store: Any, spec: EvalSpec, *, api_key: str | None = None, progress: bool = True
) -> EvalJob:
    """Score ``spec.model`` on the spec's tasks inside an ``eval`` run and register an
    eval_report with lineage to the model, the data and, through an endpoint, the served
    model (:func:`served_model`).

    ``apply_chat_template``, ``system_instruction`` and ``fewshot_as_multiturn`` are
    lm-evaluation-harness's flags. Each finished task is kept as it finishes
    (``eval.partial``): a run that is killed or fails keeps them, the same spec again reuses
    them (``resume: false`` scores everything again), and they are removed once the report
    is registered. ``api_key`` (an endpoint's) is never recorded."""
    from lmops.core.config import Settings, mask_url
    from lmops.eval.partial import PartialResults
    from lmops.eval.run import (
        batch_size_used,
        evaluate,
        prompt_style,
        register_report,
        report_dict,
    )

    spec.check()
    tasks = spec_tasks(spec, store)
    model, endpoint, limit = spec.model, spec.endpoint, spec.limit
    shown_endpoint = mask_url(endpoint) if endpoint else None
    config: dict[str, Any] = {
        "tasks": [t.name for t in tasks],
        "limit": limit,
        "num_fewshot": spec.num_fewshot,
        "batch_size": str(spec.batch_size),
        "scorer": spec.scorer,
        "endpoint": shown_endpoint,
        "apply_chat_template": spec.apply_chat_template,
        "system_instruction": spec.system_instruction,
        "fewshot_as_multiturn": spec.apply_chat_template
        if spec.fewshot_as_multiturn is None
        else spec.fewshot_as_multiturn,
    }
    run_config = spec.model_dump(mode="json") | {"endpoint": shown_endpoint}
    with store.runs.track("eval", name=model, config=run_config) as run_rec:
        lm, ref = open_model(
            model,
            store,
            endpoint=endpoint,
            api_key=api_key,
            batch_size=str(spec.batch_size),
            device=spec.device,
            max_length=spec.max_length,
            retries=spec.retries,
            concurrency=spec.concurrency,
            # plain text through /v1/completions unless the chat template is asked for, as
            # lm-eval's local-completions / local-chat-completions (the chat API applies the
            # server's template: a base-model prompt would be scored as a chat turn)
            chat=spec.apply_chat_template,
        )
        # local folders and files (the model, task files, their data), by content
        local = _local_model(model, ref, endpoint) + [x for t in tasks for x in t.local_inputs]
        served = served_model(model, endpoint, api_key=api_key) if endpoint else None
        served_inputs: list[tuple[str, str]] = []
        if served is not None and "warning" in served:
            get_logger(__name__).warning(served["warning"])
        if served is not None:
            served_inputs, served_local = _served_inputs(store, served)
            local += served_local
        local_refs = store.assets.record_inputs(local, run_id=run_rec.id)
        # what contamination is checked against, known before any item is scored
        c = spec.contamination
        c_refs = _contamination_refs(store, c, ref) if c.wanted else []
        style = prompt_style(
            lm,
            apply_chat_template=spec.apply_chat_template,
            system_instruction=spec.system_instruction,
            fewshot_as_multiturn=spec.fewshot_as_multiturn,
        )
        partial = PartialResults(
            Settings.from_env().home / "eval-partial",
            _model_key(model, ref, endpoint, lm),
            {
                "limit": limit,
                "num_fewshot": spec.num_fewshot,
                "scorer": spec.scorer,
                "prompt": style.name,
            },
        )
        if not spec.resume:
            partial.discard()
        try:
            results = evaluate(
                lm,
                tasks,
                limit=limit,
                num_fewshot=spec.num_fewshot,
                scorer=spec.scorer,
                progress=progress,
                apply_chat_template=spec.apply_chat_template,
                system_instruction=spec.system_instruction,
                fewshot_as_multiturn=spec.fewshot_as_multiturn,
                partial=partial,
            )
        except BaseException as e:  # interrupted, out of memory, endpoint down (a kill too
            # leaves the files, without this hint)
            kept = len(partial.finished())
            if kept:
                # a document that failed alone fails again until what its error names
                # changes (its data, the server, the memory); an interruption or an
                # endpoint that was down needs nothing changed
                again = (
                    "once that is changed, the same command scores only the rest"
                    if isinstance(e, ItemNamed)
                    else "run the same command again to score only the rest"
                )
                hint = f"{kept} finished task(s) are kept in {partial.dir}; {again}"
                if isinstance(e, LmopsError):
                    e.args = (f"{e}; {hint}",)
                else:
                    get_logger(__name__).warning(hint)
            raise
        finally:
            close = getattr(lm, "close", None)
            if close is not None:
                close()  # the generation engine's worker thread
        config["resumed_tasks"] = partial.reused
        # what ran, beside what was asked for (auto, or a batch split after running out of
        # memory): one size, or each task's (lm-eval's batch_sizes)
        config["batch_size_used"] = batch_size_used(results)
        if c.wanted:
            from lmops.eval.run import dataset_texts, flag_contamination

            texts = dataset_texts(store, c_refs)
            flag_contamination(results, tasks, texts, n=c.n, limit=limit)
            config["contamination"] = {"datasets": c_refs, "n": c.n}
        report = report_dict(lm.name, ref, results, config)
        if served is not None:
            report["model"]["served"] = served
            if "warning" in served:
                report["warnings"] = [served["warning"]]
        report["truncated_requests"] = getattr(lm, "truncated", 0)
        report["failed_requests"] = getattr(lm, "failed", 0)
        flat = {
            f"{r.task}/{k}": v for r in results for k, v in r.metrics.items() if "stderr" not in k
        }
        store.runs.log_metrics(run_rec.id, {k: v for k, v in flat.items() if v == v}, step=0)
        inputs = (
            ([(ref, "model")] if ref else [])
            + [(d, "dataset") for t in tasks for d in t.dataset_refs]
            + [(p, "prompt") for t in tasks for p in t.prompt_refs]
            + served_inputs
            + local_refs
        )
        name = spec.output or f"eval-{_short(ref or Path(model).name)}"
        version = register_report(store, name, report, results, inputs=inputs, run_id=run_rec.id)
        report["report"] = version.ref
        partial.clear()  # the report holds everything now
    return EvalJob(version, report, results, ref, tasks)


def served_model(model: str, endpoint: str, *, api_key: str | None = None) -> dict[str, Any]:
    """What answered at ``endpoint``: its URL (credentials masked) and, when it is an lmops
    gateway (the ``/v1/models/{model}`` card carries ``lmops.versions``), the deployment's
    name and the model versions behind it (several for an A/B split).

    The card is read as the prompt stage reads it (:func:`lmops.core.card.read_card`): a
    moment's failure is tried once more; a refusal (401, 403, 404...) or a card without an
    ``lmops`` part is the answer of an endpoint that is not an lmops gateway. A card that
    could not be read twice leaves the lineage unknown, and the result says so
    (``lineage: unknown`` and a ``warning``), never a foreign endpoint's silence."""
    from lmops.core.card import read_card
    from lmops.core.config import mask_url

    shown = mask_url(endpoint)
    out: dict[str, Any] = {"endpoint": shown, "gateway": None}
    found = read_card(endpoint, model, api_key=api_key)
    if found.unknown:
        out.update(
            lineage="unknown",
            warning=f"the /v1/models card of {model} at {shown} could not be read twice "
            f"({found.error}): the model versions it serves are not linked to this report",
        )
        return out
    meta = found.lmops
    if meta is not None and isinstance(meta.get("versions"), list):
        out.update(gateway="lmops", deployment=model, versions=[str(v) for v in meta["versions"]])
    return out


def _served_inputs(
    store: Any, served: dict[str, Any]
) -> tuple[list[tuple[str, str]], list[tuple[Path, str]]]:
    """The lineage of a gateway's served versions (role ``served_model``): asset versions of
    this store by ref, local folders on this host by content; others stay in the report's
    metadata only (a gateway on another store or host)."""
    refs: list[tuple[str, str]] = []
    local: list[tuple[Path, str]] = []
    for v in served.get("versions", []):
        try:
            refs.append((store.assets.resolve(v).ref, "served_model"))
            continue
        except UserError:
            pass
        if Path(v).is_absolute() and Path(v).exists():
            local.append((Path(v), "served_model"))
    return refs, local


def run_safety_probe(
    store: Any,
    model: str,
    *,
    judge: Any = None,
    endpoint: str | None = None,
    api_key: str | None = None,
    prompts: Path | None = None,
    categories: list[str] | None = None,
    limit: int | None = None,
    max_gen_toks: int = 128,
    output: str | None = None,
    judge_name: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> EvalJob:
    """Red-team probe (refusal of harmful prompts, answers to benign look-alikes), registered
    as an eval_report whose ``results.safety`` holds the rates. ``concurrency``: requests in
    flight at once at ``endpoint``."""
    from lmops.eval.safety import load_redteam, run_safety

    config = {"model": model, "judge": judge_name, "limit": limit}
    with store.runs.track("eval", name=f"safety:{model}", config=config) as rec:
        lm, ref = open_model(
            model, store, endpoint=endpoint, api_key=api_key, concurrency=concurrency
        )
        local = _local_model(model, ref, endpoint) + ([(prompts, "dataset")] if prompts else [])
        local_refs = store.assets.record_inputs(local, run_id=rec.id)
        rep = run_safety(
            lm,
            judge=judge,
            prompts=load_redteam(prompts) if prompts else None,
            categories=categories,
            limit=limit,
            max_gen_toks=max_gen_toks,
        )
        data = rep.to_dict()
        rates = {
            "safe_response_rate": rep.safe_response_rate,
            "refusal_rate": rep.refusal_rate,
            "compliance_rate": rep.compliance_rate,
        }
        # a rate with no prompt of its kind (a set of harmful prompts only) is None
        store.runs.log_metrics(rec.id, {k: v for k, v in rates.items() if v is not None}, step=0)
        v = _register_results(
            store,
            output or f"safety-{_short(ref or model)}",
            data,
            metadata={
                "model": {"name": lm.name, "ref": ref},
                "results": {"safety": {**rates, "n": rep.n}},
            },
            inputs=([(ref, "model")] if ref else []) + local_refs,
            run_id=rec.id,
        )
    data["report"] = v.ref
    return EvalJob(v, data, [rep], ref)


def _judge_results(rep: Any, vs_name: str | None) -> dict[str, Any]:
    """The numbers of a judge report as an eval_report's ``results`` (what the leaderboard
    ranks): the mean rating, or the win rate against the model it was compared with."""
    o = rep.overall
    if vs_name is None:
        return {"judge": {"mean_rating": o.mean, "n": o.n}} if o.mean is not None else {}
    if o.win_rate is None:
        return {}
    return {f"judge_pairwise:{vs_name}": {"win_rate": o.win_rate, "n": o.n}}


def run_judge(
    store: Any,
    model: str,
    judge: str,
    questions: Path,
    *,
    vs: str | None = None,
    endpoint: str | None = None,
    judge_endpoint: str | None = None,
    api_key: str | None = None,
    retries: int = 2,
    limit: int | None = None,
    output: str | None = None,
    apply_chat_template: bool | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> EvalJob:
    """LLM-as-judge on a subjective set (``eval.subjective``): ``model`` answers and
    ``judge`` rates each answer 1-10, or, with ``vs``, both models answer and the judge
    compares them in both orders. The report is registered as an eval_report (its
    ``results.json`` is the report's ``to_dict()`` plus ``config`` and ``report``) with
    lineage to the models, the judge and the set, before anything is printed.
    ``limit``: the first ``limit`` questions of the set. ``apply_chat_template``: each
    model's prompts as a user turn through its chat template (None: when it has one); the
    report's ``config.chat_template`` says per model what was done. ``concurrency``: requests
    in flight at once at each endpoint (per model)."""
    from lmops.core.config import mask_url
    from lmops.eval.subjective import judge_pairwise, judge_single, load_subjective_set

    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, got {limit}")
    items = load_subjective_set(questions)
    items = items[:limit] if limit else items
    config: dict[str, Any] = {
        "model": model,
        "vs": vs,
        "judge": judge,
        "set": str(questions),
        "limit": limit,
        "retries": retries,
        "apply_chat_template": "auto" if apply_chat_template is None else apply_chat_template,
        "endpoint": mask_url(endpoint) if endpoint else None,
        "judge_endpoint": mask_url(judge_endpoint) if judge_endpoint else None,
    }
    label = f"judge:{model}" + (f":vs:{vs}" if vs else "")
    with store.runs.track("eval", name=label, config=config) as rec:
        # an endpoint asked for plain text is asked through its completions API: its chat
        # API would apply the template anyway
        kw: dict[str, Any] = {
            "api_key": api_key,
            "chat": apply_chat_template is not False,
            "concurrency": concurrency,
        }
        lm_a, ref_a = open_model(model, store, endpoint=endpoint, **kw)
        lm_b, ref_b = open_model(vs, store, endpoint=endpoint, **kw) if vs else (None, None)
        jm, ref_j = open_model(judge, store, endpoint=judge_endpoint, **kw)
        local = (
            _local_model(model, ref_a, endpoint)
            + (_local_model(vs, ref_b, endpoint) if vs else [])
            + [(p, "judge") for p, _ in _local_model(judge, ref_j, judge_endpoint)]
            + [(questions, "dataset")]
        )
        local_refs = store.assets.record_inputs(local, run_id=rec.id)
        if lm_b is not None:
            rep: Any = judge_pairwise(
                lm_a, lm_b, jm, items, retries=retries, apply_chat_template=apply_chat_template
            )
        else:
            rep = judge_single(
                lm_a, jm, items, retries=retries, apply_chat_template=apply_chat_template
            )
        config["chat_template"] = rep.chat_template
        data = rep.to_dict() | {"config": config}
        results = _judge_results(rep, (ref_b or vs) if vs else None)
        for section in results.values():
            store.runs.log_metrics(rec.id, {k: v for k, v in section.items() if k != "n"}, step=0)
        v = _register_results(
            store,
            # single grading and a pairwise match are different reports: not one name
            output
            or f"judge-{_short(ref_a or model)}"
            + (f"-vs-{_short(ref_b or vs)}" if lm_b is not None and vs else ""),
            data,
            metadata={
                "model": {"name": lm_a.name, "ref": ref_a},
                "judge": {"name": jm.name, "ref": ref_j},
                **({"vs": {"name": lm_b.name, "ref": ref_b}} if lm_b is not None else {}),
                "results": results,
                # what makes two judge scores comparable: the same questions (by
                # content) judged by the same judge (the leaderboard checks it)
                "basis": {
                    "set": next((r for r, role in local_refs if role == "dataset"), None),
                    "judge": ref_j or jm.name,
                    "limit": limit,
                },
            },
            inputs=([(ref_a, "model")] if ref_a else [])
            + ([(ref_b, "model")] if ref_b else [])
            + ([(ref_j, "judge")] if ref_j else [])
            + local_refs,
            run_id=rec.id,
        )
    data["report"] = v.ref
    return EvalJob(v, data, [rep], ref_a)
