"""Tiny models for the training tests: a byte-level BPE tokenizer with ChatML specials and
a 2-layer Llama (hidden 64), both written to folders like real Hugging Face models."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "今天天气很好，我们去公园散步吧。",
    "Machine learning models need clean data.",
    "12+34=46. 50+25=75. 99+1=100.",
    "Hello, how are you today? I am fine, thank you.",
] * 20


def make_tokenizer(folder: Path, vocab_size: int = 320) -> Path:
    from lmops.data.tokenizer import train_tokenizer

    train_tokenizer(SENTENCES, folder, vocab_size=vocab_size, min_frequency=1)
    return folder


def tiny_shape(tok: Any) -> dict[str, Any]:
    """The tests' tiny decoder shape (2 layers, hidden 64, 4 heads over 2 KV heads, 256
    positions) over tokenizer ``tok``: config keywords that Llama, Mistral, Qwen2 and Qwen3
    configs all take."""
    return {
        "vocab_size": len(tok),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }


def make_model(
    folder: Path, tokenizer_dir: Path, seed: int = 0, intermediate_size: int = 128
) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        **{**tiny_shape(tok), "intermediate_size": intermediate_size},
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def write_alpaca(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            a, b = rng.randint(10, 49), rng.randint(10, 49)
            fh.write(json.dumps({"instruction": f"{a}+{b}=", "output": str(a + b)}) + "\n")
    return path
