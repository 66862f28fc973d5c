"""Learning, not just running: ``lmops train`` teaches a tiny Llama two-digit addition, and
greedy decoding of held-out sums must come out exactly right. Not a test: it prints its
figures (about 2.5 minutes per seed on 2 cores; two seeds by default).

    python benchmarks/train_learn.py [--seeds 0 1] [--steps 3000] [--lr 3e-3]

The task: ``a + b`` for ``a, b`` in 10..99, written digit by digit with spaces
(``4 7 + 3 5 =`` -> ``8 2``), so the byte-level BPE tokenizer trained on the task text
gives one token per digit (without the spaces its merges would fuse some digit pairs and
not others). Before anything is trained, ``--held-out`` (500) unordered pairs ``{a, b}``
are set aside: neither ``a + b`` nor ``b + a`` is in the training data (7 100 pairs).

Model: random weights with the ``llama-tiny`` preset's dimensions (hidden 64, 2 layers,
4 heads, tied embeddings: 110 k parameters with this 270-token vocabulary), built the way
``lmops train`` builds a preset, saved as a folder.

Training: ``lmops train JOB.yaml --json`` in a subprocess, with an isolated ``LMOPS_HOME``
in a temp folder: stage ``sft``, method ``full``, alpaca rows (``instruction`` = the
problem, ``output`` = the sum) rendered by a one-line chat template as
``<|endoftext|>4 7 + 3 5 = 8 2<|endoftext|>``, so the loss falls on the answer digits and
the closing end-of-text token only. Batch 128, lr 3e-3 (cosine to 10 %, 50 warm-up
steps), 3 000 steps, one torch thread. SFT beats pretraining on the same text here: with
the loss on every token the random operands dominate the gradient, and 1 500 pretraining
steps reached 100 % for one seed but 22-26 % for two others.

Evaluation: for each held-out pair, the prompt ``<|endoftext|>a1 a2 + b1 b2 =`` (the
prompt part of a training row, token for token), greedy decoding of up to 5 new tokens,
stopping at end-of-text; exact match = the decoded answer with spaces removed equals the
sum. Target: >= 90 % for every seed. Printed per seed: exact match, steps, final training
loss, training time as ``lmops train`` reports it (its train loop) and the seed's whole
wall time (tokenizer, model, data, training, registration, decoding).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def spaced(n: int) -> str:
    return " ".join(str(n))


def problem(a: int, b: int) -> str:
    return f"{spaced(a)} + {spaced(b)} ="


def split_pairs(held_out: int, seed: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(training pairs, held-out pairs): held-out unordered pairs never occur in training,
    in either order."""
    unordered = [(a, b) for a in range(10, 100) for b in range(a, 100)]
    rng = random.Random(seed)
    rng.shuffle(unordered)
    test = set(unordered[:held_out])
    train = [
        (a, b) for a in range(10, 100) for b in range(10, 100) if (min(a, b), max(a, b)) not in test
    ]
    return train, sorted(test)


# Renders a row as "<|endoftext|>4 7 + 3 5 = 8 2<|endoftext|>": the prompt exactly as at
# inference, and the assistant span (what SFT trains on) is " 8 2<|endoftext|>".
TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ ' ' + m['content'] + '<|endoftext|>' }}"
    "{% else %}{{ '<|endoftext|>' + m['content'] }}{% endif %}"
    "{% endfor %}"
)


def write_data(folder: Path, train: list[tuple[int, int]], seed: int) -> Path:
    """The training problems as alpaca rows (``instruction`` = problem, ``output`` = sum)."""
    rng = random.Random(seed)
    order = train[:]
    rng.shuffle(order)
    rows = [{"instruction": problem(a, b), "output": spaced(a + b)} for a, b in order]
    path = folder / "additions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_model(
    folder: Path, tok_dir: Path, preset: str, overrides: dict[str, Any], seed: int
) -> Path:
    """Random weights of a ``MODEL_PRESETS`` config, built as ``lmops train`` builds a
    preset (tied embeddings, the tokenizer's vocabulary and special ids)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lmops.train.models import MODEL_PRESETS

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(seed)
    config = LlamaConfig(
        **{
            **MODEL_PRESETS[preset],
            "vocab_size": len(tok),
            "tie_word_embeddings": True,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            **overrides,
        }
    )
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def make_tokenizer(folder: Path, train: list[tuple[int, int]]) -> Path:
    from lmops.data.tokenizer import load_tokenizer, train_tokenizer

    texts = (f"{problem(a, b)} {spaced(a + b)}" for a, b in train)
    train_tokenizer(texts, folder, vocab_size=300, min_frequency=1)
    sample = f"{problem(47, 85)} {spaced(132)}"
    if len(load_tokenizer(folder).encode(sample).ids) != len(sample.split()):
        raise SystemExit(f"the tokenizer does not give one token per digit/sign: {sample!r}")
    return folder


def train(home: Path, job: dict[str, Any]) -> dict[str, Any]:
    """Run ``lmops train JOB.yaml --json`` in a subprocess; its JSON result."""
    import yaml

    path = home / f"{job['output']}.yaml"
    path.write_text(yaml.safe_dump(job))
    env = {**os.environ, "LMOPS_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lmops.cli.main", "train", str(path), "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"lmops train failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def exact_match(model_dir: Path, pairs: list[tuple[int, int]]) -> tuple[float, list[str]]:
    """Greedy answers for ``pairs``; (fraction exactly right, a few wrong ones)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    prompts = [tok.eos_token + problem(a, b) for a, b in pairs]
    enc = tok(prompts, add_special_tokens=False, return_tensors="pt")  # all the same length
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=5,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    right, wrong = 0, []
    for (a, b), ids in zip(pairs, out[:, enc["input_ids"].shape[1] :], strict=True):
        answer = tok.decode(ids, skip_special_tokens=True).replace(" ", "")
        if answer == str(a + b):
            right += 1
        elif len(wrong) < 5:
            wrong.append(f"{a}+{b}={answer!r}")
    return right / len(pairs), wrong


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmops-learn-") as tmp:
        home = Path(tmp)
        os.environ["LMOPS_HOME"] = str(home)  # this process's Store, for reading the output
        train_pairs, test_pairs = split_pairs(args.held_out, seed)
        tok_dir = make_tokenizer(home / "tokenizer", train_pairs)
        data = write_data(home, train_pairs, seed)
        base = make_model(home / "base", tok_dir, args.preset, args.overrides, seed)
        job = {
            "stage": "sft",
            "method": "full",
            "model": str(base),
            "chat_template": TEMPLATE,
            "dataset": str(data),
            "output": f"adder-{seed}",
            "device": "cpu",
            "dtype": "float32",
            "train": {
                "max_steps": args.steps,
                "lr": args.lr,
                "batch_size": args.batch_size,
                "max_seq_len": 32,
                "seed": seed,
                "warmup_steps": args.warmup,
                "lr_scheduler": "cosine",
                "min_lr_ratio": 0.1,
                "weight_decay": args.weight_decay,
                "log_steps": 50,
                "save_steps": args.steps,
            },
        }
        result = train(home, job)
        from lmops.store import Store

        model_dir = Store().assets.path(result["output"])
        em, wrong = exact_match(model_dir, test_pairs)
        return {
            "seed": seed,
            "em": em,
            "n": len(test_pairs),
            "steps": result["steps"],
            "train_s": result["seconds"],
            "loss": result["final"].get("loss", float("nan")),
            "params": result["total_params"],
            "wall_s": time.perf_counter() - began,
            "wrong": wrong,
            "train_pairs": len(train_pairs),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--held-out", type=int, default=500, help="unordered pairs set aside")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--preset", default="llama-tiny")
    ap.add_argument(
        "--overrides",
        type=json.loads,
        default={},
        help='model config overrides, JSON: {"num_hidden_layers": 4}',
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # lmops train and the decoding here

    rows = []
    for seed in args.seeds:
        r = run_seed(seed, args)
        rows.append(r)
        print(
            f"seed {seed}: exact match {r['em']:.1%} on {r['n']} held-out sums "
            f"({r['train_pairs']} training pairs); {r['steps']} steps, final loss {r['loss']:.3f}, "
            f"training {r['train_s']:.0f} s, whole run {r['wall_s']:.0f} s; "
            f"{r['params'] / 1e3:.0f} k parameters"
            + (f"; e.g. wrong: {', '.join(r['wrong'])}" if r["wrong"] else "")
        )
    worst = min(r["em"] for r in rows)
    print(
        f"[{'PASS' if worst >= 0.9 else 'FAIL'}] learning: exact match {worst:.1%} at worst over "
        f"{len(rows)} seed(s) (target >= 90 %)"
    )


if __name__ == "__main__":
    main()
