"""Evaluation generates on the serving engine (continuous batching, stop strings ending a
sequence at once) with the very outputs of one ``transformers`` ``generate`` per document,
item by item: greedy decoding of a tiny random Llama, prompts of different lengths, stop
strings, the model's end-of-sequence token, and more documents than batch slots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lmops.eval.lm import HFEvalModel

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
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lmops.data.tokenizer import train_tokenizer
    from tests.train.tiny import SENTENCES

    root = tmp_path_factory.mktemp("gen")
    train_tokenizer(SENTENCES, root / "tok", vocab_size=320, min_frequency=1)
    tok = AutoTokenizer.from_pretrained(str(root / "tok"))
    torch.manual_seed(11)
    # untied output weights and a wide initialisation: a tied random model greedily
    # repeats its last token, which would make equal outputs trivial
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(root / "model"))
    tok.save_pretrained(str(root / "model"))
    return root / "model"


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


# a few-shot prefix every prompt starts with: prefilled once (Engine.cache_prefix), each
# prompt's own tokens on top of it
FEWSHOT = "question: the cat sat on the mat? answer: yes\n\nquestion: hello world? answer: no\n\n"


@pytest.mark.parametrize(("batch_size", "prefix"), [(1, ""), (5, ""), (5, FEWSHOT)])
def test_engine_generations_equal_hf_generate_item_by_item(
    tiny: Path, batch_size: int, prefix: str
) -> None:
    lm = HFEvalModel(tiny, device="cpu", batch_size=batch_size)
    prompts = [prefix + p for p in PROMPTS]
    try:
        free = {"until": [], "max_gen_toks": 24}
        # stop strings that the free generations contain, so some sequences end early
        first = lm.generate([(p, free) for p in prompts])
        shared = lm._gen_engine._prefix
        if prefix:  # the prefix's keys and values were computed and used
            assert shared is not None and shared[1] is not None and len(shared[0]) >= 16
        else:
            assert shared is None
        stops = sorted({w for out in first for w in out.split()[1:2] if w})[:3]
        assert stops, "the tiny model generated nothing to stop at"
        kw = {"until": stops, "max_gen_toks": 24}
        ours = lm.generate([(p, kw) for p in prompts])
        theirs = [_reference(lm, p, kw) for p in prompts]
        assert ours == theirs
        assert first == [_reference(lm, p, free) for p in prompts]
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
