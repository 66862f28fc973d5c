"""The tokenizer side of the engine: request defaults from ``generation_config.json``,
message text, the tokenizer's control tokens, stop strings, and fast incremental decoding
(byte-level BPE pieces back to bytes)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "UNICODE_TO_BYTE",
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
