"""Evaluation generates on the serving engine (continuous batching, stop strings ending a
sequence at once) with the very outputs of one ``transformers`` ``generate`` per document,
item by item: greedy decoding of a tiny random Llama, prompts of different lengths, stop
strings, the model's end-of-sequence token, and more documents than batch slots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lmops.eval.lm import HFEvalModel
from tests.eval.test_parity import _untied_model

PROMPTS = [
    "the cat sat on the mat",
    "hello world",
    "a",
    "machine learning needs data and the model learns from it every day",
    "今天天气很好",
    "the quick brown fox jumps over the lazy dog and then",
    "2 + 2 =",
    "once upon a time there was",
    "water boils at one hundred degrees",
    "question: what is the capital of france? answer:",
    "x",
    "the the the",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lmops.data.tokenizer import train_tokenizer
    from tests.train.tiny import SENTENCES

    root = tmp_path_factory.mktemp("gen")
    train_tokenizer(SENTENCES, root / "tok", vocab_size=320, min_frequency=1)
    return _untied_model(root / "model", root / "tok", seed=11)


def _reference(lm: HFEvalModel, context: str, kw: dict[str, Any]) -> str:
    """What lmops produced before the engine: transformers' greedy ``generate`` for the one
    document, stopped at the model's end-of-sequence ids, cut at the first stop string."""
    import torch

    ids = lm._tok(context)[-(lm.max_length - kw["max_gen_toks"]) :] or [lm.prefix_id]
    inp = torch.tensor([ids])
    with torch.no_grad():
        gen = lm.model.generate(
            input_ids=inp,
            attention_mask=torch.ones_like(inp),
            max_new_tokens=kw["max_gen_toks"],
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
            eos_token_id=lm.stop_ids,
        )
    text = str(lm.tokenizer.decode(gen[0, len(ids) :], skip_special_tokens=True))
    for stop in kw["until"]:
        if stop in text:
            text = text[: text.index(stop)]
    return text


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_engine_generations_equal_hf_generate_item_by_item(tiny: Path, batch_size: int) -> None:
    lm = HFEvalModel(tiny, device="cpu", batch_size=batch_size)
    try:
        free = {"until": [], "max_gen_toks": 24}
        # stop strings that the free generations contain, so some sequences end early
        first = lm.generate([(p, free) for p in PROMPTS])
        stops = sorted({w for out in first for w in out.split()[1:2] if w})[:3]
        assert stops, "the tiny model generated nothing to stop at"
        kw = {"until": stops, "max_gen_toks": 24}
        ours = lm.generate([(p, kw) for p in PROMPTS])
        theirs = [_reference(lm, p, kw) for p in PROMPTS]
        assert ours == theirs
        assert first == [_reference(lm, p, free) for p in PROMPTS]
        # the stop strings did end some sequences: they are shorter than the free ones
        assert sum(len(a) < len(b) for a, b in zip(ours, first, strict=True)) >= 2
        assert lm.truncated == 0
    finally:
        lm.close()


def test_long_context_keeps_its_end_and_is_counted(tiny: Path) -> None:
    lm = HFEvalModel(tiny, device="cpu", batch_size=2, max_length=40)
    try:
        long = " ".join(["the cat sat on the mat"] * 20)
        kw = {"until": [], "max_gen_toks": 8}
        assert lm.generate([(long, kw), ("hello", kw)]) == [
            _reference(lm, long, kw),
            _reference(lm, "hello", kw),
        ]
        assert lm.truncated == 1
    finally:
        lm.close()
