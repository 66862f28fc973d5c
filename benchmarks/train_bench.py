"""Training-stage benchmark: ``lmops train`` SFT against TRL's ``SFTTrainer``, and packed
against unpacked SFT. Not a test: it prints its figures (4-5 minutes on 2 cores).

    python benchmarks/train_bench.py [--repeats 3] [--steps 12] [--lora] [--clock cpu|wall]

Data: the bilingual Alpaca sample of the shared datasets (``$LMOPS_SHARED_DATASETS`` or
``../shared/datasets`` beside the repository, ``alpaca_zh_en/part_0.json``; skipped with a
message when absent): the first ``--rows`` (400) records, alternately in English (``en_*``
fields) and Chinese, keeping those with an instruction and an output whose ChatML rendering
fits ``--max-seq-len`` (512) tokens, so neither trainer truncates or drops a row. A
byte-level BPE tokenizer (8k) is trained on all records of the part, and one model folder
(random weights, ``llama-small`` dimensions: hidden 256, 4 layers, tied embeddings, about
5 M parameters) is written once and read by every run.

Every run is a fresh subprocess, fp32 on CPU with ``--threads`` (1) torch threads, timed
at the end of each optimizer step (lmops: when the step's metrics are logged; TRL: its
``on_step_end`` callback). Runs alternate between the two configurations compared; each
figure is the median over ``--repeats`` runs. A run's rate counts steps ``warmup+1 .. N``
only: tokens of those steps / (clock at the end of step N - clock at the end of step
``warmup``), so imports, data preparation, model loading, the first steps and the final
save never count. The verdicts use CPU seconds of the run's process by default: on a shared
machine wall time swings with other jobs, while one thread's CPU time measures the work
itself; wall-clock rates are printed beside them (``--clock wall`` to judge by those).

Token counts (one definition for both trainers):

- input tokens: real (non-pad) tokens fed to the model, the sum of the example lengths of
  the batch; TRL counts the same (``num_tokens``, the attention-mask sum) and the script
  checks that both give the same count at every step. "padded tokens" are batch rows x the
  longest row, the positions the model actually computes.
- loss tokens: positions whose next-token label is not -100. lmops labels each assistant
  turn's content and its ``<|im_end|>``. TRL runs ``assistant_only_loss=True`` on
  conversational (``messages``) rows, with the same ChatML template plus
  ``{% generation %}`` around exactly that span; the script checks that TRL's prepared
  ``input_ids`` and ``labels`` equal lmops' examples row for row. (TRL's prompt-completion
  format with ``completion_only_loss`` would also train on the newline after
  ``<|im_end|>``, one token more per example.)

1. Overhead vs TRL: the same rows in the same order (TRL's dataset is laid out in the
   order of lmops' seeded batches and read with ``train_sampling_strategy="sequential"``),
   batch 8, no packing, same max length, lr, AdamW betas (0.9, 0.95), no weight decay,
   clipping at 1.0, cosine schedule to 10 % of lr, full fine-tuning (``--lora``: also LoRA
   r 16 / alpha 32 on all linear layers), no gradient checkpointing (TRL's default is on),
   fp32 (TRL's default is bf16), a log line every step in both. TRL keeps its default
   optimizer implementation (``adamw_torch_fused``; ``--trl-optim adamw_torch`` for the
   same as lmops'). Target: lmops input tokens/s >= 0.95 x TRL's.
2. Packed vs unpacked: ``lmops train`` with ``packing: true`` and ``false``, same steps
   (``--pack-steps``) and batch size (8 rows of up to ``--max-seq-len`` tokens when packed,
   8 examples when not). Speed-up = real tokens/s packed / real tokens/s unpacked; also
   shown: examples/s, and the time each needs for the examples / real tokens the unpacked
   run trains on. Target: >= 1.5x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# ChatML exactly as lmops renders it, with TRL's generation markers around what lmops
# trains on: the assistant content and its end-of-turn token (not the newline after it).
CHATML_MARKED = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def shared_datasets() -> Path:
    env = os.environ.get("LMOPS_SHARED_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


def alpaca_rows(records: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    """Alpaca rows from the first ``n`` records, alternately English and Chinese (records
    with an empty instruction or output in that language are skipped)."""
    rows = []
    for i, r in enumerate(records[:n]):
        pre = "en_" if i % 2 == 0 else ""
        row = {k: r[pre + k].strip() for k in ("instruction", "input", "output")}
        if row["instruction"] and row["output"]:
            rows.append(row)
    return rows


# -- setup (parent process) ---------------------------------------------------------------


def prepare(work: Path, args: argparse.Namespace, source: Path) -> dict[str, Any]:
    """Tokenizer, model folder and JSONL data, written once under ``work``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lmops.core.formats import to_chat
    from lmops.data.tokenizer import train_tokenizer
    from lmops.models.loading import load_tokenizer
    from lmops.train.data import encode_chat
    from lmops.train.models import MODEL_PRESETS

    records = json.loads(source.read_text(encoding="utf-8"))
    model_dir = work / "model"
    texts = (r[k] for r in records for k in r if isinstance(r[k], str) and r[k])
    train_tokenizer(texts, model_dir, vocab_size=8000)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(0)
    config = LlamaConfig(
        **{**MODEL_PRESETS[args.preset], "max_position_embeddings": max(1024, args.max_seq_len)},
        vocab_size=len(tok),
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(model_dir))
    tok = load_tokenizer(model_dir)
    kept, lengths = [], []
    for row in alpaca_rows(records, args.rows):
        ex, truncated = encode_chat(tok, to_chat(row), args.max_seq_len + 1)
        if not truncated and len(ex) <= args.max_seq_len:
            kept.append(row)
            lengths.append(len(ex))
    data = work / "alpaca.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), "utf-8")
    return {
        "model_dir": str(model_dir),
        "data": str(data),
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": len(tok),
        "rows": len(kept),
        "mean_len": statistics.mean(lengths),
        "max_len": max(lengths),
        "dropped": args.rows - len(kept),
    }


# -- what each step of a run contains (both trainers see exactly these batches) -----------


def planned_steps(cfg: dict[str, Any]) -> tuple[list[Any], list[list[int]], list[Any]]:
    """(lmops examples, example indices per step, train items) as ``lmops train`` builds
    them: items are the examples, or packed rows when ``cfg['packing']``."""
    from lmops.models.loading import load_tokenizer
    from lmops.train.data import build_sft_examples, pack, read_rows
    from lmops.train.loop import batch_indices

    tok = load_tokenizer(Path(cfg["model_dir"]))
    rows = list(read_rows([Path(cfg["data"])]))
    examples, _stats = build_sft_examples(rows, tok, cfg["max_seq_len"])
    if len(examples) != len(rows):
        raise SystemExit("lmops dropped rows; raise --max-seq-len")
    items: list[Any] = pack(examples, cfg["max_seq_len"]) if cfg["packing"] else examples
    order = [
        batch_indices(s, cfg["batch_size"], len(items), cfg["seed"]) for s in range(cfg["steps"])
    ]
    return examples, order, items


def step_counts(cfg: dict[str, Any]) -> list[dict[str, int]]:
    """Per step: examples, real input tokens, padded tokens, loss tokens."""
    _examples, order, items = planned_steps(cfg)
    out = []
    for idx in order:
        batch = [items[i] for i in idx]
        if cfg["packing"]:
            lengths = [len(ids) for ids, _lab, _pos in batch]
            labels = [lab for _ids, lab, _pos in batch]
            n_ex = sum(sum(1 for p in pos if p == 0) for _ids, _lab, pos in batch)
        else:
            lengths = [len(ex) for ex in batch]
            labels = [ex.labels for ex in batch]
            n_ex = len(batch)
        out.append(
            {
                "examples": n_ex,
                "tokens": sum(lengths),
                "padded": len(batch) * max(lengths),
                "loss_tokens": sum(sum(1 for x in lab[1:] if x != -100) for lab in labels),
            }
        )
    return out


# -- workers (one subprocess per run) ------------------------------------------------------


def worker_lmops(cfg: dict[str, Any], home: Path) -> dict[str, Any]:
    """``lmops train JOB.yaml --json``, in this process, timed at each step's log call."""
    import yaml

    os.environ["LMOPS_HOME"] = str(home)
    from lmops.cli.main import app
    from lmops.train import tracking

    ends: dict[int, float] = {}
    cpu: dict[int, float] = {}
    real_log = tracking.StoreTracker.log

    def timed_log(self: Any, step: int, metrics: dict[str, float]) -> None:
        real_log(self, step, metrics)
        ends[step] = time.perf_counter()
        cpu[step] = time.process_time()

    tracking.StoreTracker.log = timed_log  # type: ignore[method-assign]
    job = {
        "stage": "sft",
        "method": cfg["method"],
        "model": cfg["model_dir"],
        "dataset": cfg["data"],
        "output": "bench",
        "device": "cpu",
        "dtype": "float32",
        "packing": cfg["packing"],
        "train": {
            "max_steps": cfg["steps"],
            "batch_size": cfg["batch_size"],
            "max_seq_len": cfg["max_seq_len"],
            "lr": cfg["lr"],
            "seed": cfg["seed"],
            "save_steps": cfg["steps"],
            "log_steps": 1,
            "warmup_steps": 0,
            "lr_scheduler": "cosine",
            "min_lr_ratio": 0.1,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "adam_betas": [0.9, 0.95],
        },
        "lora": {"r": 16, "alpha": 32, "targets": "all-linear"},
    }
    path = home / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    app(["train", str(path), "--json"], standalone_mode=False)
    steps = range(1, cfg["steps"] + 1)
    return {"ends": [ends[s] for s in steps], "cpu": [cpu[s] for s in steps]}


def worker_trl(cfg: dict[str, Any], home: Path) -> dict[str, Any]:
    """TRL ``SFTTrainer`` on the same model folder, rows and batch order."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from lmops.core.formats import to_chat
    from lmops.train.data import read_rows

    examples, order, _items = planned_steps(cfg)
    rows = [to_chat(r) for _f, _n, r in read_rows([Path(cfg["data"])])]
    flat = [i for idx in order for i in idx]  # row i of TRL's dataset = lmops example flat[i]
    dataset = Dataset.from_list([{"messages": rows[i]} for i in flat])
    tok = AutoTokenizer.from_pretrained(cfg["model_dir"])
    tok.chat_template = CHATML_MARKED
    model = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], dtype=torch.float32)
    peft_config = None
    if cfg["method"] == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    args = SFTConfig(
        output_dir=str(home / "trl"),
        max_steps=cfg["steps"],
        per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=cfg["lr"],
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        optim=cfg["trl_optim"],
        max_length=cfg["max_seq_len"],
        packing=False,
        assistant_only_loss=True,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        seed=cfg["seed"],
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    ends: list[float] = []
    cpu: list[float] = []
    tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            ends.append(time.perf_counter())
            cpu.append(time.process_time())
            tokens.append(trainer._total_train_tokens)

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[Clock()],
    )
    # Parity: TRL's prepared rows are lmops' examples, token for token and label for label.
    prepared = trainer.train_dataset
    mismatched = sum(
        1
        for j, i in enumerate(flat)
        if prepared[j]["input_ids"] != examples[i].input_ids
        or prepared[j]["labels"] != examples[i].labels
    )
    trainer.train()
    per_step = [b - a for a, b in zip([0, *tokens], tokens, strict=False)]
    return {"ends": ends, "cpu": cpu, "trl_tokens": per_step, "mismatched_rows": mismatched}


def run_worker(kind: str, cfg: dict[str, Any], work: Path, threads: int) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
    out = home / "result.json"
    env = {
        **os.environ,
        "LMOPS_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
        "HF_DATASETS_CACHE": str(home / "hf-datasets"),
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", kind, json.dumps(cfg), str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def steady(res: dict[str, Any], counts: list[dict[str, int]], warmup: int) -> dict[str, float]:
    """Rates over steps warmup+1 .. N, per wall second and per CPU second of the run's
    process (``wall_`` and ``cpu_`` keys)."""
    window = counts[warmup:]
    out: dict[str, float] = {}
    for clock, key in (("wall", "ends"), ("cpu", "cpu")):
        seconds = res[key][-1] - res[key][warmup - 1]
        for k in ("examples", "tokens", "padded", "loss_tokens"):
            out[f"{clock}_{k}_per_s"] = sum(c[k] for c in window) / seconds
        out[f"{clock}_s_per_step"] = seconds / len(window)
    return out


# -- main ----------------------------------------------------------------------------------


def median_rates(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def compare_trl(cfg: dict[str, Any], work: Path, args: argparse.Namespace) -> str:
    """Interleaved lmops / TRL runs on identical batches; returns the verdict line."""
    counts = step_counts(cfg)
    runs: dict[str, list[dict[str, float]]] = {"lmops": [], "trl": []}
    mismatched = 0
    for _ in range(args.repeats):
        for kind in ("lmops", "trl"):
            res = run_worker(kind, cfg, work, args.threads)
            if kind == "trl":
                mismatched = max(mismatched, res["mismatched_rows"])
                if res["trl_tokens"] != [c["tokens"] for c in counts]:
                    raise SystemExit("TRL counted other input tokens per step than lmops")
            runs[kind].append(steady(res, counts, args.warmup))
    med = {k: median_rates(v) for k, v in runs.items()}
    c = args.clock
    loss_share = sum(x["loss_tokens"] for x in counts) / sum(x["tokens"] for x in counts)
    print(
        f"## {cfg['method']} fine-tuning, no packing: lmops train vs TRL SFTTrainer "
        f"(TRL optim {cfg['trl_optim']})"
    )
    print(
        f"TRL's prepared rows that differ from lmops' examples (input_ids or labels): {mismatched} of "
        f"{cfg['steps'] * cfg['batch_size']}; loss tokens = {loss_share:.0%} of input tokens in both"
    )
    rows = []
    for kind in ("lmops", "trl"):
        m = med[kind]
        rows.append(
            [
                kind,
                f"{m[c + '_tokens_per_s']:,.0f}",
                f"{m[c + '_padded_per_s']:,.0f}",
                f"{m[c + '_loss_tokens_per_s']:,.0f}",
                f"{m[c + '_s_per_step']:.3f}",
                f"{m['wall_tokens_per_s']:,.0f}" if c == "cpu" else f"{m['cpu_tokens_per_s']:,.0f}",
                " ".join(f"{r[c + '_tokens_per_s']:,.0f}" for r in runs[kind]),
            ]
        )
    other = "wall" if c == "cpu" else "cpu"
    table(
        [
            f"per {c} s",
            "input tok/s",
            "padded tok/s",
            "loss tok/s",
            "s/step",
            f"input tok/{other} s",
            "input tok/s of each run",
        ],
        rows,
    )
    ratio = med["lmops"][c + "_tokens_per_s"] / med["trl"][c + "_tokens_per_s"]
    other_ratio = med["lmops"][other + "_tokens_per_s"] / med["trl"][other + "_tokens_per_s"]
    pairs = [
        a[c + "_tokens_per_s"] / b[c + "_tokens_per_s"]
        for a, b in zip(runs["lmops"], runs["trl"], strict=True)
    ]
    print(
        f"lmops / TRL input tokens/s: {ratio:.3f} per {c} s ({other_ratio:.3f} per {other} s); "
        f"per interleaved pair: {', '.join(f'{p:.3f}' for p in pairs)}\n"
    )
    return (
        f"[{'PASS' if ratio >= 0.95 else 'FAIL'}] overhead vs TRL ({cfg['method']}): lmops runs at "
        f"{ratio:.2f}x TRL's input tokens/s (target >= 0.95x, i.e. overhead <= 5 %)"
    )


def compare_packing(base: dict[str, Any], work: Path, args: argparse.Namespace) -> str:
    """Interleaved lmops runs with packing false / true; returns the verdict line."""
    steps = args.pack_steps
    cfgs = {k: dict(base, packing=k == "packed", steps=steps) for k in ("unpacked", "packed")}
    counts = {k: step_counts(cfg) for k, cfg in cfgs.items()}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in cfgs}
    warmup = min(args.warmup, steps - 1)
    for _ in range(args.repeats):
        for k, cfg in cfgs.items():
            runs[k].append(steady(run_worker("lmops", cfg, work, args.threads), counts[k], warmup))
    med = {k: median_rates(v) for k, v in runs.items()}
    c = args.clock
    n_examples = sum(x["examples"] for x in counts["unpacked"][warmup:])
    n_tokens = sum(x["tokens"] for x in counts["unpacked"][warmup:])
    print(
        f"## lmops train SFT (full), packing true vs false: batch {args.batch_size} rows, {steps} steps, "
        f"max_seq_len {args.max_seq_len}, rates over steps {warmup + 1}-{steps}"
    )
    rows = []
    for k in ("unpacked", "packed"):
        m = med[k]
        pad = 1 - sum(x["tokens"] for x in counts[k]) / sum(x["padded"] for x in counts[k])
        per_step = sum(x["examples"] for x in counts[k][warmup:]) / (steps - warmup)
        rows.append(
            [
                k,
                f"{m[c + '_tokens_per_s']:,.0f}",
                f"{m[c + '_padded_per_s']:,.0f}",
                f"{pad:.0%}",
                f"{per_step:.1f}",
                f"{m[c + '_examples_per_s']:.2f}",
                f"{m[c + '_s_per_step']:.2f}",
                f"{n_examples / m[c + '_examples_per_s']:.1f}",
                f"{n_tokens / m[c + '_tokens_per_s']:.1f}",
            ]
        )
    table(
        [
            f"per {c} s",
            "real tok/s",
            "padded tok/s",
            "pad share",
            "examples/step",
            "examples/s",
            "s/step",
            f"s for {n_examples} examples",
            f"s for {n_tokens:,} real tok",
        ],
        rows,
    )
    speedup = med["packed"][c + "_tokens_per_s"] / med["unpacked"][c + "_tokens_per_s"]
    ex_speedup = med["packed"][c + "_examples_per_s"] / med["unpacked"][c + "_examples_per_s"]
    wall = med["packed"]["wall_tokens_per_s"] / med["unpacked"]["wall_tokens_per_s"]
    print(
        f"packed / unpacked: real tokens/s {speedup:.2f}x, examples/s {ex_speedup:.2f}x "
        f"(per {c} s; real tokens per wall s: {wall:.2f}x)\n"
    )
    return (
        f"[{'PASS' if speedup >= 1.5 else 'FAIL'}] packing speed-up: {speedup:.2f}x real tokens/s, "
        f"{ex_speedup:.2f}x examples/s (target >= 1.5x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=400, help="Alpaca records to read")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per TRL-comparison run")
    ap.add_argument("--pack-steps", type=int, default=8, help="optimizer steps per packing run")
    ap.add_argument("--warmup", type=int, default=3, help="first steps left out of the rates")
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--preset", default="llama-small", help="model dimensions (MODEL_PRESETS)")
    ap.add_argument("--lora", action="store_true", help="also compare LoRA (r 16, all-linear)")
    ap.add_argument("--trl-optim", default="adamw_torch_fused", help="TRL's `optim` (its default)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="seconds the verdicts use: CPU seconds of the run's process (robust on a shared "
        "machine when --threads 1) or wall seconds",
    )
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--skip-packing", action="store_true")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "CFG", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        kind, cfg_json, out = args.worker
        cfg = json.loads(cfg_json)
        import torch

        torch.set_num_threads(cfg["threads"])
        fn = worker_lmops if kind == "lmops" else worker_trl
        Path(out).write_text(json.dumps(fn(cfg, Path(out).parent)))
        return

    source = shared_datasets() / "alpaca_zh_en" / "part_0.json"
    if not source.exists():
        print(f"skipped: {source} not found (set LMOPS_SHARED_DATASETS)")
        return
    if not 1 <= args.warmup < min(args.steps, args.pack_steps):
        raise SystemExit("--warmup must be at least 1 and below --steps and --pack-steps")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmops-train-bench-") as tmp:
        work = Path(tmp)
        os.environ["LMOPS_HOME"] = str(work / "home")
        info = prepare(work, args, source)
        print(
            f"data: {info['rows']} bilingual Alpaca rows ({info['dropped']} of the first {args.rows} records "
            f"left out: empty, or over {args.max_seq_len} tokens), {info['mean_len']:.0f} tokens on average, "
            f"{info['max_len']} at most\n"
            f"model: {args.preset} dimensions, vocabulary {info['vocab']}, {info['params'] / 1e6:.2f} M "
            f"parameters, fp32 on CPU, {args.threads} torch thread(s)\n"
            f"each figure: median of {args.repeats} runs (interleaved, one process each), rates per "
            f"{args.clock} second of steps after the first {args.warmup}\n"
        )
        base = {
            "model_dir": info["model_dir"],
            "data": info["data"],
            "steps": args.steps,
            "batch_size": args.batch_size,
            "max_seq_len": args.max_seq_len,
            "lr": args.lr,
            "seed": 0,
            "threads": args.threads,
            "trl_optim": args.trl_optim,
            "packing": False,
            "method": "full",
        }
        verdicts: list[str] = []
        if not args.skip_trl:
            for method in ["full", "lora"] if args.lora else ["full"]:
                verdicts.append(compare_trl(dict(base, method=method), work, args))
        if not args.skip_packing:
            verdicts.append(compare_packing(base, work, args))
    print("\n".join(verdicts))
    print(f"(total {time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
