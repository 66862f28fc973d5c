"""A model folder's tokenizer as GGUF ``tokenizer.ggml.*`` metadata, the way llama.cpp's
``convert_hf_to_gguf.py`` writes it, for the two vocabulary families small causal LMs use:

- **byte-level BPE** (GPT-2 style: SmolLM2, Llama 3, Qwen2): ``tokenizer.ggml.model =
  gpt2``, ``pre`` naming the regex that splits text before BPE (``gpt-2``, ``smollm``,
  ``llama-bpe``, ``qwen2``), tokens in byte-level spelling, and the merges;
- **SentencePiece BPE** (Llama 2, TinyLlama, Mistral v0.x: ``▁`` for spaces, ``<0x..>``
  byte-fallback tokens): ``tokenizer.ggml.model = llama``, tokens as spelled, one score per
  token and token types (normal, unknown, control, user-defined, unused, byte). llama.cpp
  tokenizes these by repeatedly merging the adjacent pair whose joined piece scores highest,
  and transformers' GGUF reader rebuilds its merges from the same scores, so the score is
  the piece's merge rank (``-rank`` of the first merge in ``tokenizer.json`` that makes it):
  the order ``tokenizer.json`` merges in. It is read from ``tokenizer.json`` rather than a
  ``tokenizer.model`` because that is what lmops tokenizes with, and what
  ``save_pretrained`` writes.

Both carry bos/eos/unk/pad ids, ``add_bos`` (whether the tokenizer puts BOS first) and the
chat template. Anything else (Unigram vocabularies, pre-tokenizers llama.cpp has no name
for) is a one-line :class:`UserError`: llama.cpp would tokenize differently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError

__all__ = ["add_tokenizer", "tokenizer_fields"]

# Qwen2's split (transformers' qwen2 tokenizer, llama.cpp's "qwen2" pre-tokenizer): Llama 3's
# regex with digits one by one (\p{N}) instead of in groups of up to three (\p{N}{1,3}).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = _QWEN2_SPLIT.replace(r"\p{N}|", r"\p{N}{1,3}|")


def _pre_tokenizer_name(tokenizer_json: dict[str, Any], where: Path) -> str:
    """llama.cpp's name for the pre-tokenizer in ``tokenizer.json`` (which regex splits the
    text before BPE): ``gpt-2`` (ByteLevel's own regex; llama.cpp refuses the spelling
    ``gpt2`` as an unknown pre-tokenizer), ``smollm`` (single digits, then ByteLevel),
    ``llama-bpe`` (Llama 3's split), ``qwen2`` (Qwen2's). Anything else is refused, since
    llama.cpp would tokenize differently."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [p.get("type") for p in parts]
    byte_level = parts[-1] if types and types[-1] == "ByteLevel" else None
    if byte_level is not None and types == ["ByteLevel"] and byte_level.get("use_regex", True):
        return "gpt-2"
    if (
        byte_level is not None
        and types == ["Digits", "ByteLevel"]
        and parts[0].get("individual_digits")
        and byte_level.get("use_regex", True)
    ):
        return "smollm"
    if types == ["Split", "ByteLevel"]:
        pattern = (parts[0].get("pattern") or {}).get("Regex", "")
        if pattern == _QWEN2_SPLIT:
            return "qwen2"
        if pattern == _LLAMA3_SPLIT:  # exactly: GPT-4o's split shares its pieces, not its cuts
            return "llama-bpe"
    raise UserError(
        f"{where}: pre-tokenizer {types} has no llama.cpp equivalent this exporter knows "
        "(gpt-2, smollm, llama-bpe, qwen2); export a model with one of these tokenizers"
    )


def _is_sentencepiece(tj: dict[str, Any]) -> bool:
    """A SentencePiece vocabulary as transformers writes it: ``▁`` stands for a space,
    either through a Metaspace pre-tokenizer (transformers 4.4x+) or through a normalizer
    that replaces spaces (Llama 2's original ``tokenizer.json``)."""
    parts = [tj.get("pre_tokenizer"), tj.get("normalizer"), tj.get("decoder")]
    blob = json.dumps(parts, ensure_ascii=False)
    return "Metaspace" in blob or "\u2581" in blob


def _add_space_prefix(tj: dict[str, Any]) -> bool:
    """Whether the tokenizer puts ``▁`` before the text (SentencePiece's dummy prefix)."""
    pre = tj.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for p in parts:
        if p.get("type") == "Metaspace":
            scheme = p.get("prepend_scheme", "always" if p.get("add_prefix_space", True) else "")
            return scheme in ("first", "always")
    norm = tj.get("normalizer") or {}
    steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    return any(s.get("type") == "Prepend" and s.get("prepend") == "\u2581" for s in steps)


def _check_ids(tj_path: Path, ids: list[int], vocab_size: int) -> None:
    top = max(ids)
    if top >= vocab_size:
        # llama.cpp takes n_vocab from the token list and refuses a token_embd of other rows
        raise UserError(
            f"{tj_path}: token id {top} is past the model's vocab_size {vocab_size} "
            "(config.json); resize the embeddings (model.resize_token_embeddings) first"
        )


def _special_id(from_tokenizer: int | None, folder: Path, key: str) -> int | None:
    """A special token's id: the tokenizer's, else the model config's (Qwen2.5's tokenizer
    names no bos token; without an id llama.cpp takes token 11 for bos and eos)."""
    if from_tokenizer is not None:
        return from_tokenizer
    for name in ("config.json", "generation_config.json"):
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, list):  # Llama 3.1's several eos ids: the first is the tokenizer's
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    return None


def tokenizer_fields(folder: Path, vocab_size: int) -> dict[str, Any]:
    """The ``tokenizer.ggml.*`` values of the tokenizer in ``folder``, for a model whose
    embedding has ``vocab_size`` rows (the token list is that long: rows past the
    vocabulary become unused ``[PADn]`` tokens, as llama.cpp's converter writes them)."""
    import gguf

    from lmops.models.loading import load_tokenizer

    tj_path = folder / "tokenizer.json"
    if not tj_path.is_file():
        raise UserError(
            f"{folder} has no tokenizer.json; GGUF export needs a fast (tokenizers) BPE "
            "tokenizer: save one with tokenizer.save_pretrained(folder)"
        )
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    decoder = tj.get("decoder") or {}
    sentencepiece = _is_sentencepiece(tj)
    if model.get("type") != "BPE" or not (sentencepiece or decoder.get("type") == "ByteLevel"):
        raise UserError(
            f"{tj_path}: a {model.get('type')} tokenizer with a {decoder.get('type')} decoder; "
            "GGUF export writes byte-level BPE (GPT-2 style) and SentencePiece BPE (▁ for "
            "spaces) vocabularies only (llama.cpp merges SentencePiece pieces by score, so a "
            "Unigram vocabulary would tokenize differently there)"
        )
    if sentencepiece and not (
        model.get("byte_fallback")
        and all(f"<0x{b:02X}>" in (model.get("vocab") or {}) for b in range(256))
    ):
        # llama.cpp turns a piece it cannot spell into bytes, and dies on a vocabulary
        # without them ("héllo 今" ended the process in byte_to_token)
        raise UserError(
            f"{tj_path}: a SentencePiece vocabulary without byte fallback (all 256 <0xNN> "
            "tokens); llama.cpp needs them: export a model trained with byte_fallback"
        )
    pre = "default" if sentencepiece else _pre_tokenizer_name(tj, tj_path)
    raw_merges = model.get("merges") or []
    merges = [m if isinstance(m, str) else " ".join(m) for m in raw_merges]
    tok = load_tokenizer(folder)
    vocab: dict[str, int] = model.get("vocab") or {}
    added = {t["id"]: t for t in tj.get("added_tokens") or []}
    _check_ids(tj_path, [*vocab.values(), *added, len(tok) - 1], vocab_size)
    # a piece's score: minus the rank of the first merge that makes it (SentencePiece's own
    # scores are in that order too); pieces no merge makes come after every merged one
    rank: dict[str, int] = {}
    for r, m in enumerate(merges):
        rank.setdefault(m.replace(" ", ""), r)
    by_id = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    scores: list[float] = []
    for i in range(vocab_size):
        if i in added:
            text = added[i]["content"]
            if added[i].get("special"):
                unknown = sentencepiece and i == tok.unk_token_id  # gpt2 vocabs reuse <|endoftext|>
                kind = gguf.TokenType.UNKNOWN if unknown else gguf.TokenType.CONTROL
            else:
                kind = gguf.TokenType.USER_DEFINED
            score = 0.0 if kind != gguf.TokenType.USER_DEFINED else -1000.0
        elif i in by_id:
            text = by_id[i]
            is_byte = sentencepiece and len(text) == 6 and text.startswith("<0x")
            kind = gguf.TokenType.BYTE if is_byte else gguf.TokenType.NORMAL
            if sentencepiece and i == tok.unk_token_id:  # <unk> kept in the BPE vocab
                kind = gguf.TokenType.UNKNOWN
            score = (
                0.0 if kind != gguf.TokenType.NORMAL else -float(rank.get(text, len(merges) + i))
            )
        else:  # embedding rows past the vocabulary (padded vocab): never produced
            text, kind, score = f"[PAD{i}]", gguf.TokenType.UNUSED, -10000.0
        tokens.append(text)
        types.append(int(kind))
        scores.append(score)
    probe = tok("a")["input_ids"]
    return {
        "model": "llama" if sentencepiece else "gpt2",
        "pre": pre,
        "tokens": tokens,
        "types": types,
        "scores": scores if sentencepiece else None,
        "merges": None if sentencepiece else merges,
        "add_space_prefix": _add_space_prefix(tj) if sentencepiece else None,
        "bos": _special_id(tok.bos_token_id, folder, "bos_token_id"),
        "eos": _special_id(tok.eos_token_id, folder, "eos_token_id"),
        "unk": tok.unk_token_id,
        "pad": tok.pad_token_id,
        "add_bos": bool(probe) and tok.bos_token_id is not None and probe[0] == tok.bos_token_id,
        "chat_template": tok.chat_template if isinstance(tok.chat_template, str) else None,
    }


def add_tokenizer(w: Any, fields: dict[str, Any]) -> None:
    """Write :func:`tokenizer_fields`'s values with GGUF writer ``w``."""
    w.add_tokenizer_model(fields["model"])
    w.add_tokenizer_pre(fields["pre"])
    w.add_token_list(fields["tokens"])
    if fields["scores"] is not None:
        w.add_token_scores(fields["scores"])
    w.add_token_types(fields["types"])
    if fields["merges"] is not None:
        w.add_token_merges(fields["merges"])
    if fields["add_space_prefix"] is not None:
        w.add_add_space_prefix(fields["add_space_prefix"])
    for key, add in (
        ("bos", w.add_bos_token_id),
        ("eos", w.add_eos_token_id),
        ("unk", w.add_unk_token_id),
        ("pad", w.add_pad_token_id),
    ):
        if fields[key] is not None:
            add(int(fields[key]))
    w.add_add_bos_token(fields["add_bos"])
    w.add_add_eos_token(False)
    if fields["chat_template"]:
        w.add_chat_template(fields["chat_template"])
