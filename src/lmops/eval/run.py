"""``evaluate(model, tasks)``: score tasks, aggregate with standard errors, and register
the report as an ``eval_report`` asset with per-item outputs and lineage."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmops import __version__
from lmops.core.errors import UserError
from lmops.core.jsonl import finite
from lmops.core.progress import Progress
from lmops.eval._batching import ItemFailed, ItemNamed
from lmops.eval.lm import EvalModel
from lmops.eval.partial import PartialResults
from lmops.eval.tasks import ChatTemplate, Task, TaskConfig
from lmops.text.cjk import count_han

__all__ = [
    "NOT_METRICS",
    "PromptStyle",
    "TaskResult",
    "batch_size_used",
    "clean_key",
    "evaluate",
    "is_clean",
    "metric_names",
    "prompt_style",
    "register_report",
    "stderr_key",
    "task_docs",
]


# Summary fields that are counts or settings, not scores (compare, leaderboard and the
# pipeline's metrics skip them).
NOT_METRICS = frozenset({"n", "excluded", "num_fewshot", "seconds", "failed_requests", "tasks"})

# Documents per model call: progress moves per chunk. Large enough that a call still fills
# the largest batch (HFEvalModel's "auto" tries 64 contexts; a multiple-choice document is
# one context), and their shared prefix (description, few-shot examples) runs once per call.
# On CPU, 32-document calls cost the same CPU time as whole-task calls (within noise).
_LL_CHUNK = 64
_GEN_CHUNK = 8

# The scores of a multiple-choice task and of a rolling log-likelihood task, whatever its
# metric_list says; a generation task scores its metric_list under each filter, as
# "metric,filter" ("none" without a filter_list).
MC_METRICS = ("acc", "acc_norm")
ROLLING_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
_NO_FILTER = "none"


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
    failed: int = 0  # endpoint requests that failed after their retries
    # the batch sizes the model ran this task with, in the order first used (one, unless a
    # batch ran out of memory or "auto" chose by length; empty: a model that does not say)
    batch_sizes: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = {
            **self.metrics,
            "n": self.n,
            "excluded": self.excluded,
            "scorer": self.scorer,
            "template_hash": self.template_hash,
            "num_fewshot": self.num_fewshot,
            "group": self.group,
            "seconds": round(self.seconds, 3),
        }
        if self.failed:
            out["failed_requests"] = self.failed
        return out


def _stderr(values: Sequence[float]) -> float:
    """lm-evaluation-harness's ``mean_stderr``: sample standard deviation / sqrt(n)."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def stderr_key(key: str) -> str:
    """The key of metric ``key``'s stderr (lm-eval's names: ``exact_match_stderr,flex``)."""
    return key.replace(",", "_stderr,", 1) if "," in key else f"{key}_stderr"


@dataclass(frozen=True)
class PromptStyle:
    """How prompts are rendered, with lm-evaluation-harness's flags of the same names:
    ``chat_template`` is the model's ``apply_chat_template`` (None: plain text)."""

    chat_template: ChatTemplate | None = None
    system_instruction: str | None = None
    fewshot_as_multiturn: bool = False

    def context(self, task: Task, doc: dict[str, Any], k: int) -> str:
        return task.context(
            doc,
            k,
            system_instruction=self.system_instruction,
            chat_template=self.chat_template,
            fewshot_as_multiturn=self.fewshot_as_multiturn,
        )

    @property
    def name(self) -> str:
        """``plain``, ``chat`` or ``chat-multiturn`` (reports say which scored)."""
        if self.chat_template is None:
            return "plain"
        return "chat-multiturn" if self.fewshot_as_multiturn else "chat"


def prompt_style(
    model: EvalModel,
    *,
    apply_chat_template: bool | None = False,
    system_instruction: str | None = None,
    fewshot_as_multiturn: bool | None = None,
) -> PromptStyle:
    """The prompt style for these flags, checked as lm-eval checks them: few-shot examples
    as turns is the default with a chat template and needs one. ``apply_chat_template``
    None: the model's chat template when it has one of its own (``has_chat_template``: a
    local model's tokenizer, an endpoint's chat API), else plain text."""
    if apply_chat_template is None:
        apply_chat_template = bool(getattr(model, "has_chat_template", False))
    if fewshot_as_multiturn and not apply_chat_template:
        raise UserError("--fewshot-as-multiturn needs --apply-chat-template (as in lm-eval)")
    if not apply_chat_template:
        return PromptStyle(None, system_instruction or None, False)
    chat = getattr(model, "apply_chat_template", None)
    if chat is None:
        raise UserError(f"model {model.name} cannot apply a chat template")
    multiturn = True if fewshot_as_multiturn is None else fewshot_as_multiturn
    return PromptStyle(chat, system_instruction or None, multiturn)


Advance = Callable[[int], None]


@contextlib.contextmanager
def _naming_items(task: Task, first: int, starts: list[int] | None = None) -> Iterator[None]:
    """A request that failed alone (``ItemFailed``: out of memory in a batch of one) as one
    error naming its task and document: the call's documents start at ``first`` in the
    task's evaluation split (as ``items.jsonl`` numbers them), one request each, or document
    k's requests at ``starts[k]``."""
    try:
        yield
    except ItemFailed as e:
        k = e.index if starts is None else bisect.bisect_right(starts, e.index) - 1
        raise ItemNamed(f"task {task.name}, doc {first + k}: {e.reason}") from None


def _mc(
    task: Task,
    model: EvalModel,
    docs: list[dict[str, Any]],
    k: int,
    scorer: str,
    style: PromptStyle,
    advance: Advance,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    delim = task.choice_delimiter(style.chat_template is not None)
    items, acc, acc_norm = [], [], []
    for at in range(0, len(docs), _LL_CHUNK):
        chunk = docs[at : at + _LL_CHUNK]
        requests: list[tuple[str, str]] = []
        spans = []
        for doc in chunk:
            ctx = style.context(task, doc, k)
            choices = task.choices(doc)
            conts = [
                delim + (chr(ord("A") + i) if scorer == "letter" else c)
                for i, c in enumerate(choices)
            ]
            spans.append((len(requests), len(conts), ctx, choices))
            requests += [(ctx, c) for c in conts]
        starts = [start for start, *_ in spans]
        with _naming_items(task, at, starts):
            lls = model.loglikelihood(requests)
        for doc, (start, n, ctx, choices) in zip(chunk, spans, strict=True):
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
        advance(len(chunk))
    return {
        "acc": statistics.fmean(acc),
        "acc_stderr": _stderr(acc),
        "acc_norm": statistics.fmean(acc_norm),
        "acc_norm_stderr": _stderr(acc_norm),
    }, items


def _generate(
    task: Task,
    model: EvalModel,
    docs: list[dict[str, Any]],
    k: int,
    style: PromptStyle,
    advance: Advance,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    from lmops.eval import metrics

    gen_kwargs = task.config.generation_kwargs.model_dump()
    # each filter chain turns an output into the prediction its metrics score (lm-eval's
    # filter_list; the built-in GSM8K declares its number extractors there too). Without
    # one, lm-eval's default "none" (take_first) scores the output as generated, spaces
    # included: " Paris" is not an exact match of "Paris" (a task that wants it stripped
    # says so, with remove_whitespace, as lm-eval's TriviaQA does)
    filters: dict[str, Any] = {f.name: _filter_fn(f) for f in task.config.filter_list}
    if not filters:
        filters = {_NO_FILTER: lambda s: s}
    # metric name -> (item function, its options from the task file: ignore_case, ...)
    scorers = [(m.metric, *_metric_fn(m)) for m in task.config.metric_list]
    # every answer each document accepts, read before anything is generated: a target that
    # cannot be read fails now, naming its document (an empty list is no answer: scores 0)
    golds: list[list[str]] = []
    # the report lists a document's answers as the task gives them: a list (of one too, as
    # lm-eval's samples keep it), or the one answer
    targets: list[str | list[str]] = []
    for i, doc in enumerate(docs):
        try:
            answers, listed = task.answers(doc)
        except UserError as e:
            raise UserError(f"task {task.name}, doc {i}: {e}") from None
        golds.append(answers)
        targets.append(answers if listed else answers[0])
    contexts: list[str] = []
    outputs: list[str] = []
    # a model that batches generations across requests takes larger calls
    size = int(getattr(model, "generate_chunk", _GEN_CHUNK))
    for at in range(0, len(docs), size):
        chunk = [style.context(task, doc, k) for doc in docs[at : at + size]]
        with _naming_items(task, at):
            outputs += model.generate([(c, gen_kwargs) for c in chunk])
        contexts += chunk
        advance(len(chunk))
    per_item: dict[str, list[Any]] = {}
    items = []
    for gold, target, ctx, out in zip(golds, targets, contexts, outputs, strict=True):
        item: dict[str, Any] = {"context": ctx, "output": out, "target": target}
        for fname, fn in filters.items():
            pred = fn(out)
            for name, item_fn, options in scorers:
                value = _best_of(name, item_fn, pred or "", gold, options)
                per_item.setdefault(f"{name},{fname}", []).append(value)
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
        out_metrics[stderr_key(key)] = (
            _stderr([float(v) for v in vals]) if numeric else float("nan")
        )
    return out_metrics, items


def _best_of(
    name: str, item_fn: Callable[..., Any], pred: str, golds: list[str], options: dict[str, Any]
) -> Any:
    """Metric ``name`` of ``pred`` against a document's answers, as lm-eval scores a
    generation task whose target is a list (``multiple_target``).

    One answer: scored as it is. Several: each scored alone and the best kept, in the
    metric's direction as the registry gives it (``metrics.METRICS``, what the pipelines'
    gates read; eval may not import them); an answer the metric gives no score (None or
    NaN) is left out, and none scored is no score (None; NaN when one was NaN). No answer (an
    empty list, SQuAD v2's unanswerable question): 0, as lm-eval, for which no answer
    matches, the empty prediction included. A corpus metric's item (BLEU's ``(pred,
    refs)``, not a number) keeps every answer as its references, and the empty reference,
    which nothing matches, when there is none."""
    from lmops.eval import metrics

    if len(golds) == 1:
        return item_fn(pred, golds[0], **options)
    metric = metrics.get_metric(name)
    if metric.aggregate_fn is not metrics.mean:  # a corpus metric: its items are not scores
        return item_fn(pred, golds or [""], **options)
    if not golds:
        return 0.0
    values = [item_fn(pred, g, **options) for g in golds]
    scored = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not scored:
        return None if all(v is None for v in values) else math.nan
    return max(scored) if metric.higher_is_better else min(scored)


def _metric_fn(spec: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    """A metric's item function and the options the task file gives it (lm-eval passes a
    metric_list entry's other keys to the metric, e.g. exact_match's ``ignore_case``); an
    unknown metric or option fails before anything is generated."""
    from lmops.eval import metrics

    options = dict(spec.model_extra or {})
    problem = metrics.metric_problem(spec.metric, options)
    if problem is not None:
        raise UserError(f"metric_list: {problem}")
    return metrics.get_metric(spec.metric).item_fn, options


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
                # as lm-eval's regex filter: the first group that matched, stripped
                value = (next((g for g in m if g), "") if isinstance(m, tuple) else m).strip()
            elif st.function == "lowercase":
                value = value.lower()
            elif st.function in ("strip", "remove_whitespace"):
                value = value.strip()
            elif st.function == "number":
                from lmops.eval.extract import extract_number

                value = extract_number(value, mode=st.mode)
            # take_first: a single generation per doc already
        return value

    return run


def _rolling(
    task: Task, model: EvalModel, docs: list[dict[str, Any]], advance: Advance
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    texts = [str(task.text(d)) for d in docs]
    results: list[tuple[float, int]] = []
    for at in range(0, len(texts), _GEN_CHUNK):
        with _naming_items(task, at):
            results += model.loglikelihood_rolling(texts[at : at + _GEN_CHUNK])
        advance(len(texts[at : at + _GEN_CHUNK]))
    total_ll = sum(ll for ll, _ in results)
    words = sum(len(t.split()) + count_han(t) for t in texts)
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


def task_docs(task: Task, limit: int | None) -> list[dict[str, Any]]:
    """The documents a run scores: the first ``limit`` of the task's evaluation split.
    ``limit`` counts per task, and a group's subtasks are tasks (lm-eval's ``--limit``)."""
    return task.eval_docs[:limit] if limit else task.eval_docs


def evaluate(
    model: EvalModel,
    tasks: list[Task],
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    scorer: str | None = None,
    progress: bool = True,
    apply_chat_template: bool = False,
    system_instruction: str | None = None,
    fewshot_as_multiturn: bool | None = None,
    partial: PartialResults | None = None,
) -> list[TaskResult]:
    """Score every task. ``limit`` documents per task; ``apply_chat_template``,
    ``system_instruction`` and ``fewshot_as_multiturn`` as lm-evaluation-harness's flags.
    Progress counts documents (a bar on a terminal, plain lines otherwise). With
    ``partial``, each finished task is saved as it finishes and a task saved by an earlier,
    interrupted run with the same settings is reused instead of scored again."""
    style = prompt_style(
        model,
        apply_chat_template=apply_chat_template,
        system_instruction=system_instruction,
        fewshot_as_multiturn=fewshot_as_multiturn,
    )
    if (
        style.chat_template is not None
        and not getattr(model, "chat_loglikelihood", True)
        and any(t.config.output_type != "generate_until" for t in tasks)
    ):
        names = [t.name for t in tasks if t.config.output_type != "generate_until"]
        raise UserError(
            f"--apply-chat-template on an endpoint scores generation tasks only ({names[0]} "
            "is not one): evaluate a local model to score it with its chat template"
        )
    settings = {
        "limit": limit,
        "num_fewshot": num_fewshot,
        "scorer": scorer,
        "prompt": style.name,
        "system_instruction": style.system_instruction,
    }
    results = []
    total = sum(len(task_docs(t, limit)) for t in tasks)
    with Progress(total, label="eval", unit="docs", enabled=progress) as bar:
        for task in tasks:
            bar.describe(task.name)
            docs = task_docs(task, limit)
            key = partial.key(task, docs, settings) if partial is not None else ""
            saved = partial.load(task.name, key) if partial is not None else None
            if saved is not None:
                results.append(TaskResult(**saved))
                bar.advance(len(docs))
                continue
            t0 = time.perf_counter()
            failed_before = int(getattr(model, "failed", 0))
            runs_before = len(getattr(model, "batches_run", []))
            k = task.config.num_fewshot if num_fewshot is None else num_fewshot
            how = scorer or task.config.scorer
            if task.config.output_type == "multiple_choice":
                metrics, items = _mc(task, model, docs, k, how, style, bar.advance)
            elif task.config.output_type == "generate_until":
                metrics, items = _generate(task, model, docs, k, style, bar.advance)
                how = "generate"
            else:
                metrics, items = _rolling(task, model, docs, bar.advance)
                how = "loglikelihood_rolling"
            group = task.config.group if isinstance(task.config.group, str) else None
            result = TaskResult(
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
                int(getattr(model, "failed", 0)) - failed_before,
                list(dict.fromkeys(getattr(model, "batches_run", [])[runs_before:])),
            )
            results.append(result)
            if partial is not None and not result.failed:  # a re-run retries failed requests
                partial.save(task.name, key, dataclasses.asdict(result))
    return results


def training_datasets(store: Any, model_ref: str) -> list[str]:
    """The refs of every dataset upstream of ``model_ref`` (its training data,
    recursively). Token-shard datasets are skipped: their text is upstream of them."""
    graph = store.assets.lineage(model_ref)
    return sorted(
        r
        for r, v in graph.nodes.items()
        if v.kind == "dataset" and v.metadata.get("format") != "token_shards"
    )


def dataset_texts(store: Any, refs: list[str]) -> list[str]:
    """Every string field (and chat message) of every row of the datasets, one text per row."""
    from lmops.core.rows import read_rows

    texts = []
    for ref in refs:
        for r in read_rows([store.assets.path(ref)]):
            row = r.values
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
        docs = task_docs(task, limit)
        flags = []
        for doc, item in zip(docs, res.items, strict=True):
            hit = index.check(task.text(doc) + " " + " ".join(task.golds(doc)))
            item["contaminated"] = hit.contaminated
            item["overlap"] = hit.overlap_ratio
            flags.append(hit.contaminated)
        res.metrics["contaminated_fraction"] = sum(flags) / max(1, len(flags))
        clean = [it for it in res.items if not it["contaminated"]]
        for key in res.items[0].get("scores", {}) if res.items else []:
            vals = [float(it["scores"][key]) for it in clean if key in it.get("scores", {})]
            if vals:
                res.metrics[clean_key(key)] = statistics.fmean(vals)


def clean_key(key: str) -> str:
    """The name of metric ``key`` recomputed on the uncontaminated items."""
    return key.replace(",", "_clean,", 1) if "," in key else f"{key}_clean"


def metric_names(configs: Sequence[TaskConfig], *, contamination: bool = False) -> list[str]:
    """The ``task/metric`` names (and ``group/metric`` of the groups) that a report of tasks
    with these configs holds, known before anything is scored: as :func:`evaluate` and
    :func:`group_results` name them, scores only (no stderrs, counts or timings). With
    ``contamination``, the contaminated fraction and the scores on clean items too (a task
    with no clean item has none: these are the names a report may hold)."""
    names: dict[str, None] = {}
    for cfg in configs:
        if cfg.output_type == "multiple_choice":
            keys = list(MC_METRICS)
        elif cfg.output_type == "generate_until":
            filters = [f.name for f in cfg.filter_list] or [_NO_FILTER]
            keys = [f"{m.metric},{f}" for f in filters for m in cfg.metric_list]
        else:
            keys = list(ROLLING_METRICS)
        if contamination:
            scored = list(keys) if cfg.output_type != "loglikelihood_rolling" else []
            keys += ["contaminated_fraction", *(clean_key(k) for k in scored)]
        owners = [cfg.task, *([cfg.group] if isinstance(cfg.group, str) else [])]
        names.update((f"{owner}/{k}", None) for owner in owners for k in keys)
    return list(names)


def is_clean(key: str) -> bool:
    """A metric recomputed on the uncontaminated items (``acc_clean``, ``em_clean,f``)."""
    return key.endswith("_clean") or "_clean," in key


def _group_stderr(members: list[TaskResult], key: str, n: int) -> float:
    """The stderr of a group's size-weighted mean of ``key``: from the subtasks' stderrs
    (a weighted mean of independent means) where each has one; where some cannot have one
    (a subtask of one item, as ``--limit 1`` gives), from all the group's items at once
    (the subtasks taken as one sample: it counts the spread between them too, so it is
    larger, never smaller); NaN where neither is known."""
    ses = [m.metrics[stderr_key(key)] for m in members]
    if not any(math.isnan(se) for se in ses):
        return math.sqrt(sum((m.n / n) ** 2 * se**2 for m, se in zip(members, ses, strict=True)))
    scores = [it.get("scores", {}).get(key) for m in members for it in m.items]
    pooled = [float(v) for v in scores if isinstance(v, int | float)]
    return _stderr(pooled) if len(pooled) == n else float("nan")


def group_results(results: list[TaskResult]) -> dict[str, dict[str, Any]]:
    """Groups averaged weighted by size (as lm-eval's MMLU group), with their stderr
    (:func:`_group_stderr`). A metric recomputed on clean items is weighted by each
    subtask's clean items, and a metric some subtask lacks is averaged over those that have
    it; a stderr is given only where every subtask has one (none is made up: ``-``)."""
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
        keys = dict.fromkeys(k for m in members for k in m.metrics if "stderr" not in k)
        for key in keys:
            having = [m for m in members if key in m.metrics]
            weights = [
                sum(not it.get("contaminated") for it in m.items) if is_clean(key) else m.n
                for m in having
            ]
            if not sum(weights):
                continue
            agg[key] = sum(m.metrics[key] * w for m, w in zip(having, weights, strict=True)) / sum(
                weights
            )
            if len(having) == len(members) and all(stderr_key(key) in m.metrics for m in members):
                agg[stderr_key(key)] = _group_stderr(members, key, n)
        out[g] = agg
    return out


def batch_size_used(results: list[TaskResult]) -> int | dict[str, list[int]] | None:
    """The batch size the model ran with: one number where every task ran with the same;
    else each task's sizes (lm-eval's ``batch_sizes``); None where the model does not say."""
    per = {r.task: r.batch_sizes for r in results if r.batch_sizes}
    if not per:
        return None
    sizes = {b for v in per.values() for b in v}
    if len(sizes) == 1 and len(per) == len(results):
        return sizes.pop()
    return per


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
        # valid JSON: a stderr that cannot be computed (NaN) is null
        (out / "results.json").write_text(
            json.dumps(finite(report), indent=1, ensure_ascii=False), encoding="utf-8"
        )
        with open(out / "items.jsonl", "w", encoding="utf-8") as fh:
            for r in results:
                for i, item in enumerate(r.items):
                    row = finite({"task": r.task, "doc": i, **item})
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        return store.assets.register(
            "eval_report",
            name,
            out,
            metadata={
                "model": report["model"],
                "results": report["results"],
                "groups": report["groups"],
                # what was asked for and what ran (auto resolves per model and task)
                "batch_size": report["config"].get("batch_size"),
                "batch_size_used": report["config"].get("batch_size_used"),
                **({"warnings": report["warnings"]} if report.get("warnings") else {}),
            },
            inputs=inputs,
            run_id=run_id,
        )
