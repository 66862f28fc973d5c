"""The quickstart's content: a generated bilingual web corpus with planted problems, the data
recipe that cleans it, a bilingual skill the tiny model learns (two-digit addition), a slice
of bilingual Alpaca, and the tuned hyperparameter profiles.

Everything here is deterministic: the same arguments and seed write byte-identical files.

- :func:`write_corpus` writes JSONL shards of short Chinese and English articles (half each)
  built from templates and word lists (``resources/corpus_vocab.yaml``), optionally with
  Shakespeare speeches, and plants problems whose counts it returns: exact and near
  duplicates, PII (mobile numbers, e-mails, ID numbers with a valid check digit, bank cards
  passing Luhn, IP addresses), junk (HTML boilerplate, keyboard spam, repeated lines, very
  short posts) and repairable damage (an article inside HTML markup, mojibake, 火星文,
  traditional characters).
- :func:`write_recipe` writes ``resources/quickstart_recipe.yaml`` for that corpus: repair,
  clean, quality-filter, deduplicate (exact + MinHash), mask PII.
- :func:`write_skill_task` writes the addition task: SFT chats, DPO pairs, a held-out
  evaluation set disjoint from training and an lm-eval style task YAML for
  ``lmops eval run --task-file``. Digits are separated by spaces ("4 7 + 3 5") so the
  byte-level BPE tokenizer gives one token per digit (:func:`digits_split` checks it).
- :func:`alpaca_slice` takes rows of the shared bilingual Alpaca set in chat form.
- :data:`PROFILES` holds the measured hyperparameters of the quickstart chain.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lmops.core.errors import UserError

__all__ = [
    "PROFILES",
    "CorpusStats",
    "SkillTask",
    "alpaca_slice",
    "digits_split",
    "resource_path",
    "shakespeare_docs",
    "spaced",
    "write_corpus",
    "write_jsonl",
    "write_recipe",
    "write_skill_task",
]

from lmops.pipelines.sample_corpus import (  # noqa: F401  (re-exported)
    CorpusStats,
    _vocab,
    resource_path,
    shakespeare_docs,
    write_corpus,
)

# ===================================================================================== recipe


def write_recipe(
    path: Path,
    *,
    inputs: Sequence[str] = ("corpus/*.jsonl",),
    output_path: str | None = "clean",
    dataset: str | None = "quickstart-clean",
    workers: int = 2,
) -> Path:
    """Write the quickstart data recipe to ``path`` with the given inputs (globs relative
    to ``path``'s folder, or dataset refs), output and worker count."""
    recipe: dict[str, Any] = yaml.safe_load(
        resource_path("quickstart_recipe.yaml").read_text(encoding="utf-8")
    )
    recipe["inputs"] = list(inputs)
    recipe["output"] = {
        k: val for k, val in (("path", output_path), ("dataset", dataset)) if val is not None
    }
    recipe["executor"]["workers"] = workers
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False, width=100), encoding="utf-8"
    )
    return path


# ================================================================================= skill task


def spaced(n: int) -> str:
    """``47`` -> ``"4 7"``: one BPE token per digit."""
    return " ".join(str(n))


_PROMPTS = {
    "en": ("What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} + {b}."),
    "zh": ("{a} 加 {b} 等于多少？", "计算 {a} + {b}。", "{a} 与 {b} 的和是多少？"),
}


def _question(rng: random.Random, lang: str, a: int, b: int) -> str:
    return rng.choice(_PROMPTS[lang]).format(a=spaced(a), b=spaced(b))


def _wrong(rng: random.Random, a: int, b: int) -> int:
    """A plausible wrong sum: a dropped or invented carry, off by one, or swapped digits."""
    right = a + b
    carry_dropped = (a % 10 + b % 10) % 10 + 10 * (a // 10 + b // 10)
    options = {carry_dropped, right + 10, right - 1, right + 1, int(str(right)[::-1])}
    options = {o for o in options if o != right and o >= 0}
    return rng.choice(sorted(options))


@dataclass(frozen=True)
class SkillTask:
    """The files :func:`write_skill_task` wrote."""

    sft: Path  # chat rows: {"messages": [user, assistant]}
    prefs: Path  # preference rows: {"prompt", "chosen", "rejected"} (strings)
    eval: Path  # held-out rows: {"question", "answer", "lang", "a", "b"}
    task_yaml: Path  # lm-eval style generation task over eval.jsonl, exact match
    text: Path  # {"text"} rows of every training problem, for tokenizer training
    train_rows: int
    pref_rows: int
    eval_rows: int


def write_skill_task(
    out_dir: Path, *, train: int, eval: int, seed: int = 0, prefs: int | None = None
) -> SkillTask:
    """Two-digit addition asked in English or Chinese ("What is 2 3 + 4 5?" /
    "2 3 加 4 5 等于多少？" -> "6 8").

    ``eval`` unordered pairs ``{a, b}`` (10 <= a, b <= 99) are held out first: neither
    ``a + b`` nor ``b + a`` appears in the SFT or preference rows. ``train`` SFT rows are
    drawn from the other ordered pairs (cycling through them when ``train`` is larger, each
    time with a new wording); ``prefs`` preference rows (default ``train // 2``) pair the
    right sum with a plausible wrong one. Languages alternate, so each file is half Chinese.
    """
    if not 1 <= eval <= 1000:
        raise UserError(f"write_skill_task: eval must be between 1 and 1000, got {eval}")
    if train < 1:
        raise UserError(f"write_skill_task: train must be at least 1, got {train}")
    n_prefs = train // 2 if prefs is None else prefs
    rng = random.Random(seed)
    unordered = [(a, b) for a in range(10, 100) for b in range(a, 100)]
    rng.shuffle(unordered)
    held = unordered[:eval]
    held_set = set(held)
    pool = [
        (a, b)
        for a in range(10, 100)
        for b in range(10, 100)
        if (min(a, b), max(a, b)) not in held_set
    ]

    def draw(n: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        while len(out) < n:
            batch = pool[:]
            rng.shuffle(batch)
            out += batch[: n - len(out)]
        return out

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    langs = ("en", "zh")
    sft_rows, text_rows = [], []
    for i, (a, b) in enumerate(draw(train)):
        q = _question(rng, langs[i % 2], a, b)
        sft_rows.append(
            {
                "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": spaced(a + b)},
                ]
            }
        )
        text_rows.append({"text": f"{q}\n{spaced(a + b)}"})
    pref_rows = []
    for i, (a, b) in enumerate(draw(n_prefs)):
        pref_rows.append(
            {
                "prompt": _question(rng, langs[i % 2], a, b),
                "chosen": spaced(a + b),
                "rejected": spaced(_wrong(rng, a, b)),
            }
        )
    eval_rows = []
    for i, (a, b) in enumerate(held):
        if rng.random() < 0.5:
            a, b = b, a
        lang = langs[i % 2]
        eval_rows.append(
            {"question": _question(rng, lang, a, b), "answer": spaced(a + b), "lang": lang}
            | {"a": a, "b": b}
        )
    paths = {
        "sft": write_jsonl(out_dir / "sft.jsonl", sft_rows),
        "prefs": write_jsonl(out_dir / "prefs.jsonl", pref_rows),
        "eval": write_jsonl(out_dir / "eval.jsonl", eval_rows),
        "text": write_jsonl(out_dir / "task_text.jsonl", text_rows),
    }
    task_yaml = out_dir / "addition_task.yaml"
    task_yaml.write_text(
        resource_path("addition_task.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    return SkillTask(
        task_yaml=task_yaml,
        train_rows=len(sft_rows),
        pref_rows=len(pref_rows),
        eval_rows=len(eval_rows),
        **paths,
    )


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rows`` as UTF-8 JSONL (non-ASCII kept), creating the folder; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def digits_split(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` (a Hugging Face tokenizer) gives every digit of the task's
    spaced numbers its own token, in both languages' prompts."""
    for text in ("What is 4 7 + 3 5?", "8 2", "4 7 加 3 5 等于多少？", "1 9 8"):
        pieces = [
            tokenizer.decode([t]) for t in tokenizer(text, add_special_tokens=False)["input_ids"]
        ]
        if any(sum(ch.isdigit() for ch in p) > 1 for p in pieces):
            return False
    return True


# ===================================================================================== alpaca


def alpaca_slice(path: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows of the shared bilingual Alpaca set (``alpaca_zh_en``: a folder of
    ``part_*.json``, or one such file) as chat rows, half in Chinese and half in English,
    chosen by ``seed``; rows with an empty answer are skipped."""
    path = Path(path)
    files = sorted(path.glob("part_*.json")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise UserError(f"{path}: no alpaca_zh_en part_*.json files found")
    items: list[dict[str, Any]] = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{f}: not a JSON list of Alpaca rows ({e})") from None
        if not isinstance(data, list):
            raise UserError(f"{f}: expected a JSON list of Alpaca rows")
        items += data
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    rows: list[dict[str, Any]] = []
    for i in order:
        if len(rows) >= n:
            break
        prefix = "" if len(rows) % 2 else "en_"
        item = items[i]
        instruction = str(item.get(f"{prefix}instruction") or "").strip()
        extra = str(item.get(f"{prefix}input") or "").strip()
        answer = str(item.get(f"{prefix}output") or "").strip()
        if not instruction or not answer:
            continue
        user = f"{instruction}\n\n{extra}" if extra else instruction
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


# =================================================================================== profiles

# The quickstart's hyperparameters. Keys: the corpus (``corpus_docs``, ``shakespeare_fraction``),
# the task files (``task_train`` / ``task_eval`` / ``task_prefs`` rows), ``heldout_docs`` (text for
# perplexity), ``alpaca`` (rows mixed into SFT), the tokenizer's ``vocab_size``, the pretraining
# ``model`` (a ModelPreset without its tokenizer), and per stage the ``train`` block of a TrainSpec
# (``pretrain``, ``sft``, ``dpo``) with ``sft_packing``, ``replay_docs`` (cleaned pretraining
# documents mixed into SFT), the adapters (``lora`` for SFT, ``dpo_lora``), ``preference`` (DPO),
# ``eval_limit``, ``safety_limit`` and the gate's ``ppl_tolerance`` (how much worse than the base
# model's held-out perplexity a promoted model may be).
#
# How "full" was tuned, with real runs on 2 shared CPU cores:
# - LoRA needs an output layer it can change. The answers end with <|im_end|>, which never occurs in
#   the pretraining text, so its output row stays where pretraining pushed it. With tied embeddings
#   (frozen under LoRA) the SFT loss stayed near 3.5 and exact match at 3 %; untied, a LoRA on the
#   decoder alone learned the digits but never to end the turn (loss 2.1); a LoRA on the untied
#   ``lm_head`` as well gives 99-100 %.
# - r = 64, the model's width: with r = 32, 1000 steps gave 95-100 % in 8 runs of 9 and 62 % in one
#   (learning the carries comes as a sudden drop in loss, somewhere after 400-900 steps); r = 64
#   gave 99.5-100 % in 4 runs of 4. lr 6e-3 never learned; a constant lr was worse.
# - Packing: Alpaca answers are long; padded batches made mixing 5 % of them 2.5x slower, packed it
#   costs about 25 % more time.
# - Replay: SFT on the skill alone wrecked ordinary text (held-out word perplexity 67 -> 6,797, so
#   the gate, which also asks perplexity not to get worse, held it). 500 cleaned pretraining
#   documents mixed in (about a fifth of the SFT tokens, trained on every token) keep it: 67 ->
#   17.5 with exact match 98 %; 1000 gave 8.6 and 95 %. Perplexity falls below the base's because
#   the replay is 1000 more steps of language modelling on the corpus the base saw for 200.
# - DPO starts from the merged SFT model: TRL's DPO refuses a LoRA on ``lm_head``, and ``lmops
#   eval`` failed on a DPO adapter trained on top of the SFT adapter. With SFT at ~100 % there is
#   little left to fix; lr 5e-4 and beta 0.1 pulled the chosen answers down with the rejected ones
#   (100 % -> 67 %), lr 1e-4 and beta 0.5 keep it at 100 % while the reward margin grows.
# - Measured for "full" through the CLI (one command per step, OMP_NUM_THREADS=1): data 5 s,
#   tokenizer 1 s, pretrain 53 s, SFT 135 s, merge 6 s, DPO 22 s, three evals 7 s each: 4.1 min (3.0
#   min with 2 threads, 3.4 min in one process). Exact match on the 200 held-out problems: base 0 %,
#   SFT 100 %, DPO 100 %. "tiny" only has to run every step: 8 s of work in one process.
_MODEL = {"preset": "llama-tiny", "overrides": {"tie_word_embeddings": False}}
_SFT_LORA = {
    "r": 64,
    "alpha": 128,
    "targets": [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head",
    ],
}  # fmt: skip
_DPO_LORA = {"r": 16, "alpha": 32, "targets": "all-linear"}

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "corpus_docs": 1500,
        "shakespeare_fraction": 0.5,
        "task_train": 8000,
        "task_eval": 200,
        "task_prefs": 2000,
        "heldout_docs": 100,
        "alpaca": 400,
        "vocab_size": 2048,
        "model": _MODEL,
        "pretrain": {
            "max_steps": 200,
            "batch_size": 32,
            "max_seq_len": 128,
            "lr": 3e-3,
            "warmup_steps": 20,
            "log_steps": 20,
            "save_steps": 200,
        },
        "sft": {
            "max_steps": 1000,
            "batch_size": 16,
            "max_seq_len": 128,
            "lr": 3e-3,
            "warmup_steps": 30,
            "log_steps": 50,
            "save_steps": 1000,
        },
        "sft_packing": True,
        "replay_docs": 500,
        "ppl_tolerance": "25%",
        "lora": _SFT_LORA,
        "dpo": {
            "max_steps": 60,
            "batch_size": 32,
            "max_seq_len": 48,
            "lr": 1e-4,
            "warmup_steps": 5,
            "log_steps": 10,
            "save_steps": 60,
        },
        "dpo_lora": _DPO_LORA,
        "preference": {"beta": 0.5, "max_prompt_len": 40},
        "eval_limit": 200,
        "safety_limit": 2,
    },
    "tiny": {
        "corpus_docs": 40,
        "shakespeare_fraction": 0.0,
        "task_train": 64,
        "task_eval": 16,
        "task_prefs": 32,
        "heldout_docs": 30,
        "alpaca": 8,
        "vocab_size": 320,
        "model": _MODEL,
        "pretrain": {
            "max_steps": 8,
            "batch_size": 4,
            "max_seq_len": 64,
            "lr": 3e-3,
            "log_steps": 4,
            "save_steps": 8,
        },
        "sft": {
            "max_steps": 8,
            "batch_size": 8,
            "max_seq_len": 64,
            "lr": 3e-3,
            "log_steps": 4,
            "save_steps": 8,
        },
        "sft_packing": True,
        "replay_docs": 8,
        "ppl_tolerance": "25%",
        "lora": _SFT_LORA,
        "dpo": {
            "max_steps": 4,
            "batch_size": 4,
            "max_seq_len": 48,
            "lr": 1e-4,
            "log_steps": 2,
            "save_steps": 4,
        },
        "dpo_lora": _DPO_LORA,
        "preference": {"beta": 0.5, "max_prompt_len": 40},
        "eval_limit": 8,
        "safety_limit": 1,
    },
}
