"""A tiny BERT-like sentence encoder written as a sentence-transformers folder: a WordPiece
vocabulary of a few words, a 2-layer ``BertModel`` (hidden 32), ``modules.json``,
``1_Pooling/config.json`` and ``sentence_bert_config.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WORDS = "the quick brown fox jumps over lazy dog hello world how are you today".split()


def make_tiny_bert(
    folder: Path,
    *,
    pooling: dict[str, Any] | None = None,
    normalize: bool = True,
    max_seq_length: int | None = 8,
    modules: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """``pooling``: the Pooling module's config (default: mean, the legacy flags);
    ``modules``: extra module types after Pooling (a ``Dense`` lmops must refuse)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(str(folder))
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
        architectures=["BertModel"],
    )
    BertModel(cfg).save_pretrained(str(folder))
    listed: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    for kind in [*(modules or []), *(["Normalize"] if normalize else [])]:
        i = len(listed)
        listed.append(
            {
                "idx": i,
                "name": str(i),
                "path": f"{i}_{kind}",
                "type": f"sentence_transformers.models.{kind}",
            }
        )
    (folder / "modules.json").write_text(json.dumps(listed))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    config = pooling or {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    if max_seq_length is not None:
        (folder / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
        )
    return folder
