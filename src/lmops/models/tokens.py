"""The tokenizer side of the engine: request defaults from ``generation_config.json``,
message text, the tokenizer's control tokens, stop strings, and fast incremental decoding
(byte-level BPE pieces back to bytes)."""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmops.models.types import TokenLogprob

__all__ = [
    "GENERIC_CONTROL",
    "UNICODE_TO_BYTE",
    "Pieces",
    "control_pattern",
    "earliest_stop",
    "generation_defaults",
    "is_byte_level",
    "longest_token_chars",
    "text_decoder",
    "text_of",
]


# Sampling fields of generation_config.json that requests take as defaults, as vLLM's
# --generation-config auto does (the others have no meaning for this engine).
_GENERATION_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_new_tokens": "max_tokens",
}


def generation_defaults(model_path: Path) -> dict[str, float | int]:
    """The request defaults a model's ``generation_config.json`` asks for: ``temperature``,
    ``top_p`` and ``max_tokens`` (from ``max_new_tokens``), only those the file sets."""
    try:
        raw = json.loads((Path(model_path) / "generation_config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    out: dict[str, float | int] = {}
    for key, name in _GENERATION_FIELDS.items():
        value = raw.get(key) if isinstance(raw, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    if "temperature" in out and not 0 <= float(out["temperature"]) <= 2:
        out.pop("temperature")
    if "top_p" in out and not 0 < float(out["top_p"]) <= 1:
        out.pop("top_p")
    if "max_tokens" in out and int(out["max_tokens"]) < 1:
        out.pop("max_tokens")
    return out


def text_of(content: Any) -> str:
    """The text of a message's content (a string, or a list of ``text`` parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


# Control tokens of the common chat templates (ChatML, Llama 3, Mistral, Gemma), for text
# read without the model's tokenizer: ``control_tokens: refuse`` in front of an upstream,
# ``lmops data validate``'s count of rows that quote a chat template.
GENERIC_CONTROL = re.compile(
    r"<\|(?:im_start|im_end|endoftext|eot_id|start_header_id|end_header_id|begin_of_text|"
    r"end_of_text|system|user|assistant|end)\|>|\[/?INST\]|<start_of_turn>|<end_of_turn>"
)


def control_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """A regex finding any of the tokenizer's special (added) tokens in text."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            specials.add(str(tok.content))
    specials = {t for t in specials if t}
    if not specials:
        return None
    return re.compile("|".join(map(re.escape, sorted(specials, key=len, reverse=True))))


def longest_token_chars(tokenizer: Any) -> int:
    """Characters of the longest vocabulary entry's text (at least 1)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # a tokenizer without a vocabulary listing
        return 64
    return max(1, max((len(t) for t in vocab), default=1))


def earliest_stop(text: str, stops: list[str], start: int) -> int:
    """Where the first occurrence of any of ``stops`` in ``text[start:]`` begins, or -1."""
    at = -1
    for stop in stops:
        i = text.find(stop, start, len(text) if at == -1 else at + len(stop) - 1) if stop else -1
        if i != -1:
            at = i
    return at


def text_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """``ids -> tokenizer.decode(ids, skip_special_tokens=True)``. For a fast tokenizer
    that adds nothing to its backend's decoding, the backend (Rust) is called directly,
    skipping the Python wrapping around it, which costs more than decoding a few ids."""
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    cls = type(tokenizer)
    # the wrapper cleans up spaces around punctuation when this is set, except for BPE
    cleanup = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)) and not (
        type(getattr(backend, "model", None)).__name__ == "BPE"
        and not getattr(
            tokenizer,
            "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output",
            False,
        )
    )
    if (
        backend is not None
        and not cleanup
        and cls.decode is PreTrainedTokenizerBase.decode
        and getattr(cls, "_decode", None) is getattr(PreTrainedTokenizerFast, "_decode", ())
    ):
        decode = backend.decode
        return lambda ids: str(decode(ids, skip_special_tokens=True))
    return lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True))


def _byte_table() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character map: bytes that print
    (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves, the others for
    ``chr(256 + n)`` in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


UNICODE_TO_BYTE = _byte_table()


def is_byte_level(tokenizer: Any) -> bool:
    """True for tokenizers whose pieces are byte-level BPE strings (GPT-2, Qwen, Llama 3)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return type(decoder).__name__ == "ByteLevel"


class Pieces:
    """Each token's own text and exact UTF-8 bytes (cached per id), and the logprob
    entries built from them: a sampled token's, and a whole prompt's."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}
        self._byte_level = is_byte_level(tokenizer)
        self._special = set(tokenizer.all_special_ids)

    def piece(self, tok: int) -> tuple[str, list[int]]:
        """A token's text and its exact bytes (a byte-level or byte-fallback token that
        holds part of a character has a replacement character for text)."""
        hit = self._cache.get(tok)
        if hit is not None:
            return hit
        text = str(self.tokenizer.decode([tok], skip_special_tokens=False))
        raw = text.encode("utf-8")
        piece = self.tokenizer.convert_ids_to_tokens(tok)
        if isinstance(piece, str) and tok not in self._special:
            if self._byte_level and all(c in UNICODE_TO_BYTE for c in piece):
                raw = bytes(UNICODE_TO_BYTE[c] for c in piece)
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                raw = bytes([int(piece[3:5], 16)])  # sentencepiece byte fallback
        hit = (text, list(raw))
        self._cache[tok] = hit
        return hit

    def entry(
        self, tok: int, logprob: float, top: list[tuple[int, float]], start: int, end: int
    ) -> TokenLogprob:
        """The logprob entry of token ``tok`` spanning characters ``start:end``, with its
        ``top`` alternatives (id, logprob)."""
        text, raw = self.piece(tok)
        alternatives = []
        for i, lp in top:
            t, b = self.piece(i)
            alternatives.append(TokenLogprob(t, lp, b))
        return TokenLogprob(text, logprob, raw, alternatives, start, end)

    def prompt_logprobs(self, ids: Sequence[int], logits: Any, k: int) -> list[TokenLogprob]:
        """Each prompt token's logprob given the tokens before it (``logits``: the prompt's
        (T, vocab) logits), with ``k`` alternatives; the first token has none (NaN).
        Offsets count the characters of the prompt's decoded text."""
        import torch

        ids = list(ids)
        logprobs = torch.log_softmax(logits[:-1].float(), -1)  # position i predicts i + 1
        chosen = logprobs.gather(1, torch.tensor(ids[1:], device=logits.device)[:, None])
        values: list[float] = [math.nan, *chosen[:, 0].tolist()]
        tops: list[list[tuple[int, float]]] = [[]]
        if k > 0:
            lp, idx = torch.topk(logprobs, min(k, logprobs.shape[-1]))
            tops += [
                list(zip(i, v, strict=True)) for i, v in zip(idx.tolist(), lp.tolist(), strict=True)
            ]
        else:
            tops += [[] for _ in ids[1:]]
        out: list[TokenLogprob] = []
        # a token ends where the characters of the prompt's bytes so far end, undecodable
        # bytes ignored: what decoding the bytes up to it gives, without decoding them again
        # at every token (an incomplete character is held until its last byte comes)
        chars = codecs.getincrementaldecoder("utf-8")("ignore")
        start = 0
        for tok, value, top in zip(ids, values, tops, strict=True):
            end = start + len(chars.decode(bytes(self.piece(tok)[1])))
            out.append(self.entry(tok, value, top, start, end))
            start = end
        return out
