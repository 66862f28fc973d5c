"""Tiny models for the training tests: a byte-level BPE tokenizer trained on a few
sentences and a 2-layer Llama (hidden size 64) saved as a Hugging Face folder, built once
per session; plus spec helpers and an independent log-probability reference."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

# fmt: off
WORDS = [
    "the", "cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish", "house",
    "road", "car", "book", "song", "day", "night", "red", "blue", "green", "small", "big",
    "old", "new", "happy", "quick", "slow", "warm", "cold", "light", "dark", "sky", "sea",
]
# fmt: on
GOOD = ("good", "great", "nice")
BAD = ("bad", "awful", "poor")


def _corpus() -> list[str]:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS + list(GOOD + BAD)) for _ in range(8)) for _ in range(200)]
    lines += ["Answer: yes. Answer: no. Tell me about the day.", "1 + 2 = 3, 2 + 2 = 4."]
    return lines


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tokenizer (ChatML template, ~400 tokens) and a random tiny Llama."""
    from lmops.data.tokenizer import train_tokenizer
    from tests.train.tiny import make_model

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = train_tokenizer(_corpus(), out / "tokenizer", vocab_size=400).path
    return make_model(out, tok, seed=0, intermediate_size=176)


def make_spec(model_dir: Path, stage: str, method: str = "full", **sections: Any) -> Any:
    """A CPU TrainSpec for ``stage`` on the tiny model; ``sections`` are spec sections
    (``train={...}``, ``preference={...}``) or top-level fields (``eval_split=0.2``)."""
    from lmops.train.spec import TrainSpec

    data: dict[str, Any] = {
        "stage": stage,
        "method": method,
        "model": str(model_dir),
        "dataset": "unused.jsonl",
        "output": "out",
        "device": "cpu",
        "lora": {"r": 8, "alpha": 16, "targets": "all-linear"},
    }
    data.update(sections)
    return TrainSpec.model_validate(data)


def sentiment_pairs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Preference rows: the chosen answer has a positive word, the rejected a negative one,
    among the same filler words; prompts are strings or chat messages, alternately."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        topic = rng.choice(WORDS)
        filler = [rng.choice(WORDS) for _ in range(3)]
        pos = rng.randrange(4)
        chosen = " ".join([*filler[:pos], rng.choice(GOOD), *filler[pos:]])
        rejected = " ".join([*filler[:pos], rng.choice(BAD), *filler[pos:]])
        prompt: Any = f"Tell me about the {topic}."
        if i % 2:
            prompt = [{"role": "user", "content": prompt}]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def logprob_margin(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> float:
    """Mean over rows of log p(chosen | prompt) - log p(rejected | prompt), summed over the
    answer tokens: an independent reference for what DPO should raise."""
    import torch

    from lmops.core.formats import to_preference

    def answer_logprob(prompt: list[dict[str, str]], answer: list[dict[str, str]]) -> float:
        head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        assert full.startswith(head)
        n_head = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()  # [T-1, V]
        logps = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]  # [T-1]
        return float(logps[n_head - 1 :].sum())

    model.eval()
    margins = []
    for row in rows:
        prompt, chosen, rejected = to_preference(row)
        margins.append(answer_logprob(prompt, chosen) - answer_logprob(prompt, rejected))
    return sum(margins) / len(margins)
