"""Evaluation jobs: open a model, score it on tasks or the red-team probe, register the
report with lineage to the model and the data (local folders and files, task files
included, as external references). The ``lmops eval`` commands and the pipeline's ``eval``
step call these."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmops.core.errors import LmopsError, UserError
from lmops.core.logging import get_logger

__all__ = ["EvalJob", "load_tasks", "open_model", "run_eval", "run_safety_probe"]


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
) -> tuple[Any, str | None]:
    """An evaluation backend for a local folder/asset, or an OpenAI-compatible endpoint."""
    if endpoint:
        from lmops.eval.lm import OpenAIEvalModel

        return OpenAIEvalModel(endpoint, model, api_key=api_key, retries=retries), None
    from lmops.eval.lm import HFEvalModel
    from lmops.models.loading import merged_view, resolve_local

    path, ref = resolve_local(model, store, kind="model")
    if (path / "adapter_config.json").exists():
        path = merged_view(path, store)
    bs: int | str = batch_size if batch_size == "auto" else int(batch_size)
    return HFEvalModel(
        path, device=device, batch_size=bs, max_length=max_length, name=ref or str(path)
    ), ref


def _local_model(model: str, ref: str | None, endpoint: str | None) -> list[tuple[Path, str]]:
    """The model as a local ``(folder, "model")`` input, when it was one (not an asset, not
    an endpoint's model name)."""
    return [] if endpoint or ref else [(Path(model).expanduser(), "model")]


def _short(ref: str) -> str:
    return ref.split(":")[0].split("@")[0].split("/")[-1]


@dataclass
class EvalJob:
    """What an evaluation produced: the registered report and the per-task results."""

    version: Any  # the eval_report Version
    report: dict[str, Any]
    results: list[Any] = field(default_factory=list)
    model_ref: str | None = None


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


def run_eval(
    store: Any,
    model: str,
    tasks: list[Any],
    *,
    output: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: str = "auto",
    scorer: str | None = None,
    endpoint: str | None = None,
    api_key: str | None = None,
    device: str = "auto",
    max_length: int | None = None,
    retries: int = 3,
    contamination: bool = False,
    contamination_datasets: list[str] | None = None,
    contamination_n: int = 13,
    progress: bool = True,
    apply_chat_template: bool = False,
    system_instruction: str | None = None,
    fewshot_as_multiturn: bool | None = None,
    resume: bool = True,
) -> EvalJob:
    """Score ``model`` on ``tasks`` inside an ``eval`` run and register an eval_report.

    ``apply_chat_template``, ``system_instruction`` and ``fewshot_as_multiturn`` are
    lm-evaluation-harness's flags. Each finished task is kept as it finishes
    (``eval.partial``): a run that is killed or fails keeps them, the same call again reuses
    them (``resume=False`` scores everything again), and they are removed once the report
    is registered."""
    from lmops.core.config import Settings
    from lmops.eval.partial import PartialResults
    from lmops.eval.run import evaluate, prompt_style, register_report, report_dict

    if scorer not in (None, "loglikelihood", "letter"):
        raise UserError(f"scorer {scorer!r}: use loglikelihood or letter")
    if fewshot_as_multiturn and not apply_chat_template:
        raise UserError("--fewshot-as-multiturn needs --apply-chat-template (as in lm-eval)")
    config: dict[str, Any] = {
        "tasks": [t.name for t in tasks],
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "scorer": scorer,
        "endpoint": endpoint,
        "apply_chat_template": apply_chat_template,
        "system_instruction": system_instruction,
        "fewshot_as_multiturn": bool(apply_chat_template)
        if fewshot_as_multiturn is None
        else fewshot_as_multiturn,
    }
    with store.runs.track("eval", name=model, config={"model": model, **config}) as run_rec:
        lm, ref = open_model(
            model,
            store,
            endpoint=endpoint,
            api_key=api_key,
            batch_size=batch_size,
            device=device,
            max_length=max_length,
            retries=retries,
        )
        # local folders and files (the model, task files, their data), by content
        local = _local_model(model, ref, endpoint) + [x for t in tasks for x in t.local_inputs]
        local_refs = store.assets.record_inputs(local, run_id=run_rec.id)
        style = prompt_style(
            lm,
            apply_chat_template=apply_chat_template,
            system_instruction=system_instruction,
            fewshot_as_multiturn=fewshot_as_multiturn,
        )
        partial = PartialResults(
            Settings.from_env().home / "eval-partial",
            _model_key(model, ref, endpoint, lm),
            {"limit": limit, "num_fewshot": num_fewshot, "scorer": scorer, "prompt": style.name},
        )
        if not resume:
            partial.discard()
        try:
            results = evaluate(
                lm,
                tasks,
                limit=limit,
                num_fewshot=num_fewshot,
                scorer=scorer,
                progress=progress,
                apply_chat_template=apply_chat_template,
                system_instruction=system_instruction,
                fewshot_as_multiturn=fewshot_as_multiturn,
                partial=partial,
            )
        except BaseException as e:  # interrupted, out of memory, endpoint down (a kill too
            # leaves the files, without this hint)
            kept = len(partial.finished())
            if kept:
                hint = (
                    f"{kept} finished task(s) are kept in {partial.dir}; "
                    "run the same command again to score only the rest"
                )
                if isinstance(e, LmopsError):
                    e.args = (f"{e}; {hint}",)
                else:
                    get_logger(__name__).warning(hint)
            raise
        config["resumed_tasks"] = partial.reused
        if contamination or contamination_datasets:
            from lmops.eval.run import dataset_texts, flag_contamination, training_texts

            if contamination_datasets:
                c_refs = [store.assets.resolve(r).ref for r in contamination_datasets]
                texts = dataset_texts(store, c_refs)
            elif ref is None:
                raise UserError(
                    "contamination needs a model asset (its lineage names the training data) "
                    "or explicit contamination datasets"
                )
            else:
                texts, c_refs = training_texts(store, ref)
            flag_contamination(results, tasks, texts, n=contamination_n, limit=limit)
            config["contamination"] = {"datasets": c_refs, "n": contamination_n}
        report = report_dict(lm.name, ref, results, config)
        report["truncated_requests"] = getattr(lm, "truncated", 0)
        report["failed_requests"] = getattr(lm, "failed", 0)
        flat = {
            f"{r.task}/{k}": v for r in results for k, v in r.metrics.items() if "stderr" not in k
        }
        store.runs.log_metrics(run_rec.id, {k: v for k, v in flat.items() if v == v}, step=0)
        inputs = (
            ([(ref, "model")] if ref else [])
            + [(d, "dataset") for t in tasks for d in t.dataset_refs]
            + local_refs
        )
        name = output or f"eval-{_short(ref or Path(model).name)}"
        version = register_report(store, name, report, results, inputs=inputs, run_id=run_rec.id)
        report["report"] = version.ref
        partial.clear()  # the report holds everything now
    return EvalJob(version, report, results, ref)


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
) -> EvalJob:
    """Red-team probe (refusal of harmful prompts, answers to benign look-alikes), registered
    as an eval_report whose ``results.safety`` holds the rates."""
    from lmops.eval.safety import load_redteam, run_safety

    config = {"model": model, "judge": judge_name, "limit": limit}
    with store.runs.track("eval", name=f"safety:{model}", config=config) as rec:
        lm, ref = open_model(model, store, endpoint=endpoint, api_key=api_key)
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
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "safety"
            out.mkdir()
            (out / "results.json").write_text(
                json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8"
            )
            v = store.assets.register(
                "eval_report",
                output or f"safety-{_short(ref or model)}",
                out,
                metadata={
                    "model": {"name": lm.name, "ref": ref},
                    "results": {"safety": {**rates, "n": rep.n}},
                },
                inputs=([(ref, "model")] if ref else []) + local_refs,
                run_id=rec.id,
            )
    data["report"] = v.ref
    return EvalJob(v, data, [rep], ref)
