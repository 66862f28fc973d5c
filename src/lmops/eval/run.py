"""``evaluate(model, tasks)``: score tasks, aggregate with standard errors, and register
the report as an ``eval_report`` asset with per-item outputs and lineage."""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmops import __version__
from lmops.eval.lm import EvalModel
from lmops.eval.tasks import Task

__all__ = ["TaskResult", "evaluate", "register_report"]


@dataclass
class TaskResult:
    task: str
    n: int
    metrics: dict[str, float]
    scorer: str
    template_hash: str
    num_fewshot: int
    group: str | None = None
    excluded: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            **self.metrics,
            "n": self.n,
            "excluded": self.excluded,
            "scorer": self.scorer,
            "template_hash": self.template_hash,
            "num_fewshot": self.num_fewshot,
            "group": self.group,
            "seconds": round(self.seconds, 3),
        }


def _stderr(values: Sequence[float]) -> float:
    """lm-evaluation-harness's ``mean_stderr``: sample standard deviation / sqrt(n)."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def _mc(
    task: Task, model: EvalModel, docs: list[dict[str, Any]], k: int, scorer: str
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    requests: list[tuple[str, str]] = []
    spans = []
    delim = task.config.target_delimiter
    for doc in docs:
        ctx = task.context(doc, k)
        choices = task.choices(doc)
        conts = [
            delim + (chr(ord("A") + i) if scorer == "letter" else c) for i, c in enumerate(choices)
        ]
        spans.append((len(requests), len(conts), ctx, choices))
        requests += [(ctx, c) for c in conts]
    lls = model.loglikelihood(requests)
    items, acc, acc_norm = [], [], []
    for doc, (start, n, ctx, choices) in zip(docs, spans, strict=True):
        scores = [lls[start + i][0] for i in range(n)]
        gold = task.target(doc)
        pred = max(range(n), key=lambda i: scores[i])
        # acc_norm divides by the choice's length in characters, as lm-eval does
        pred_norm = max(range(n), key=lambda i: scores[i] / max(1, len(choices[i])))
        acc.append(float(pred == gold))
        acc_norm.append(float(pred_norm == gold))
        items.append(
            {
                "context": ctx,
                "choices": choices,
                "loglikelihoods": scores,
                "gold": gold,
                "pred": pred,
                "pred_norm": pred_norm,
                "scores": {"acc": acc[-1], "acc_norm": acc_norm[-1]},
            }
        )
    return {
        "acc": statistics.fmean(acc),
        "acc_stderr": _stderr(acc),
        "acc_norm": statistics.fmean(acc_norm),
        "acc_norm_stderr": _stderr(acc_norm),
    }, items


def _generate(
    task: Task, model: EvalModel, docs: list[dict[str, Any]], k: int
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    from lmops.eval import extract, metrics

    gen_kwargs = task.config.generation_kwargs.model_dump()
    contexts = [task.context(doc, k) for doc in docs]
    outputs = model.generate([(c, gen_kwargs) for c in contexts])
    is_gsm8k = task.name == "gsm8k"
    filters: dict[str, Any] = {}
    if is_gsm8k:
        filters = {
            "strict-match": lambda s: extract.extract_number(s, mode="strict"),
            "flexible-extract": lambda s: extract.extract_number(s, mode="flexible"),
        }
    for f in task.config.filter_list:
        filters[f.name] = _filter_fn(f)
    if not filters:
        filters = {"none": lambda s: s.strip()}
    if not is_gsm8k:
        for m in task.config.metric_list:
            metrics.get_metric(m.metric)  # an unknown metric fails before generating
    per_item: dict[str, list[Any]] = {}
    items = []
    for doc, ctx, out in zip(docs, contexts, outputs, strict=True):
        ref = task.target_text(doc)
        item: dict[str, Any] = {"context": ctx, "output": out, "target": ref}
        for fname, fn in filters.items():
            pred = fn(out)
            if is_gsm8k:
                gold = extract.gsm8k_target(ref)
                ok = pred is not None and extract.numbers_equal(pred, gold)
                per_item.setdefault(f"exact_match,{fname}", []).append(float(ok))
            else:
                for m in task.config.metric_list:
                    value = metrics.get_metric(m.metric).item_fn(pred or "", ref)
                    per_item.setdefault(f"{m.metric},{fname}", []).append(value)
            item[f"pred,{fname}"] = pred
        item["scores"] = {k: v[-1] for k, v in per_item.items() if isinstance(v[-1], int | float)}
        items.append(item)
    out_metrics: dict[str, float] = {}
    for key, vals in per_item.items():
        name = key.split(",", 1)[0]
        # corpus metrics (BLEU) aggregate their items together; the rest are means
        out_metrics[key] = (
            float(metrics.aggregate(name, vals))
            if name in metrics.METRICS
            else statistics.fmean(vals)
        )
        numeric = all(isinstance(v, int | float) for v in vals)
        out_metrics[key.replace(",", "_stderr,", 1)] = (
            _stderr([float(v) for v in vals]) if numeric else float("nan")
        )
    return out_metrics, items


def _filter_fn(spec: Any) -> Any:
    import re

    steps = spec.filter

    def run(text: str) -> str | None:
        value: str | None = text
        for st in steps:
            if value is None:
                return None
            if st.function == "regex":
                matches = re.findall(st.regex_pattern or "", value)
                if not matches:
                    value = None
                    continue
                m = matches[st.group_select]
                value = next((g for g in m if g), "") if isinstance(m, tuple) else m
            elif st.function == "lowercase":
                value = value.lower()
            elif st.function == "strip":
                value = value.strip()
            elif st.function == "number":
                from lmops.eval.extract import extract_number

                value = extract_number(value, mode="flexible")
            # take_first: a single generation per doc already
        return value

    return run


def _rolling(
    task: Task, model: EvalModel, docs: list[dict[str, Any]]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    texts = [str(task.text(d)) for d in docs]
    results = model.loglikelihood_rolling(texts)
    total_ll = sum(ll for ll, _ in results)
    words = sum(len(t.split()) + sum(1 for ch in t if "\u4e00" <= ch <= "\u9fff") for t in texts)
    n_bytes = sum(len(t.encode()) for t in texts)
    items = [
        {"text": t[:200], "loglikelihood": ll, "tokens": n}
        for t, (ll, n) in zip(texts, results, strict=True)
    ]
    return {
        "word_perplexity": math.exp(-total_ll / max(1, words)),
        "byte_perplexity": math.exp(-total_ll / max(1, n_bytes)),
        "bits_per_byte": -total_ll / max(1, n_bytes) / math.log(2),
    }, items


def evaluate(
    model: EvalModel,
    tasks: list[Task],
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    scorer: str | None = None,
    progress: bool = True,
) -> list[TaskResult]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    results = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not progress,
    ) as bar:
        job = bar.add_task("evaluating", total=len(tasks))
        for task in tasks:
            bar.update(job, description=f"eval {task.name}")
            t0 = time.perf_counter()
            docs = task.eval_docs[:limit] if limit else task.eval_docs
            k = task.config.num_fewshot if num_fewshot is None else num_fewshot
            how = scorer or task.config.scorer
            if task.config.output_type == "multiple_choice":
                metrics, items = _mc(task, model, docs, k, how)
            elif task.config.output_type == "generate_until":
                metrics, items = _generate(task, model, docs, k)
                how = "generate"
            else:
                metrics, items = _rolling(task, model, docs)
                how = "loglikelihood_rolling"
            group = task.config.group if isinstance(task.config.group, str) else None
            results.append(
                TaskResult(
                    task.name,
                    len(docs),
                    metrics,
                    how,
                    task.config.template_hash(),
                    k,
                    group,
                    task.excluded,
                    items,
                    time.perf_counter() - t0,
                )
            )
            bar.advance(job)
    return results


def training_texts(store: Any, model_ref: str) -> tuple[list[str], list[str]]:
    """Texts of every dataset upstream of ``model_ref`` (its training data, recursively),
    and their refs. Token-shard datasets are skipped: their text is upstream of them."""
    graph = store.assets.lineage(model_ref)
    refs = sorted(
        r
        for r, v in graph.nodes.items()
        if v.kind == "dataset" and v.metadata.get("format") != "token_shards"
    )
    return dataset_texts(store, refs), refs


def dataset_texts(store: Any, refs: list[str]) -> list[str]:
    """Every string field (and chat message) of every row of the datasets, one text per row."""
    from lmops.train.data import read_rows

    texts = []
    for ref in refs:
        for _f, _n, row in read_rows([store.assets.path(ref)]):
            if isinstance(row, dict):
                parts = [v for v in row.values() if isinstance(v, str)]
                for m in row.get("messages") or []:
                    if isinstance(m, dict) and isinstance(m.get("content"), str):
                        parts.append(m["content"])
                texts.append("\n".join(parts))
    return texts


def flag_contamination(
    results: list[TaskResult],
    tasks: list[Task],
    texts: list[str],
    *,
    n: int = 13,
    limit: int | None = None,
) -> None:
    """Mark items whose question or answer shares an ``n``-gram with ``texts``; add the
    contaminated fraction and every per-item metric recomputed on the clean subset."""
    from lmops.eval.contamination import NgramIndex

    index = NgramIndex.build(texts, n=n)
    for res, task in zip(results, tasks, strict=True):
        docs = task.eval_docs[:limit] if limit else task.eval_docs
        flags = []
        for doc, item in zip(docs, res.items, strict=True):
            hit = index.check(task.text(doc) + " " + task.target_text(doc))
            item["contaminated"] = hit.contaminated
            item["overlap"] = hit.overlap_ratio
            flags.append(hit.contaminated)
        res.metrics["contaminated_fraction"] = sum(flags) / max(1, len(flags))
        clean = [it for it in res.items if not it["contaminated"]]
        for key in res.items[0].get("scores", {}) if res.items else []:
            vals = [float(it["scores"][key]) for it in clean if key in it.get("scores", {})]
            if vals:
                name = key.replace(",", "_clean,", 1) if "," in key else f"{key}_clean"
                res.metrics[name] = statistics.fmean(vals)


def group_results(results: list[TaskResult]) -> dict[str, dict[str, Any]]:
    """Groups averaged weighted by size (as lm-eval's MMLU group), with pooled stderr."""
    groups: dict[str, list[TaskResult]] = {}
    for r in results:
        if r.group:
            groups.setdefault(r.group, []).append(r)
    out = {}
    for g, members in groups.items():
        n = sum(m.n for m in members)
        agg: dict[str, Any] = {
            "n": n,
            "tasks": len(members),
            "excluded": sum(m.excluded for m in members),
        }
        for key in members[0].metrics:
            if "stderr" in key:
                continue
            mean = sum(m.metrics[key] * m.n for m in members) / max(1, n)
            agg[key] = mean
            # pooled variance of a weighted mean of means
            se_key = key.replace(",", "_stderr,", 1) if "," in key else f"{key}_stderr"
            var = sum(
                (m.n / n) ** 2 * (m.metrics.get(se_key, 0.0) or 0.0) ** 2
                for m in members
                if not math.isnan(m.metrics.get(se_key, 0.0))
            )
            agg[se_key] = math.sqrt(var)
        out[g] = agg
    return out


def report_dict(
    model_name: str, model_ref: str | None, results: list[TaskResult], config: dict[str, Any]
) -> dict[str, Any]:
    return {
        "model": {"name": model_name, "ref": model_ref},
        "lmops_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": {r.task: r.summary() for r in results},
        "groups": group_results(results),
        "config": config,
    }


def register_report(
    store: Any,
    name: str,
    report: dict[str, Any],
    results: list[TaskResult],
    *,
    inputs: list[tuple[str, str]],
    run_id: str | None,
) -> Any:
    with tempfile.TemporaryDirectory(prefix="lmops-eval-") as tmp:
        out = Path(tmp) / "report"
        out.mkdir()
        (out / "results.json").write_text(
            json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8"
        )
        with open(out / "items.jsonl", "w", encoding="utf-8") as fh:
            for r in results:
                for i, item in enumerate(r.items):
                    fh.write(
                        json.dumps({"task": r.task, "doc": i, **item}, ensure_ascii=False) + "\n"
                    )
        return store.assets.register(
            "eval_report",
            name,
            out,
            metadata={
                "model": report["model"],
                "results": report["results"],
                "groups": report["groups"],
            },
            inputs=inputs,
            run_id=run_id,
        )
