"""Train tokenizers from a stream of texts and save them as Hugging Face tokenizer folders.

Three kinds, one output layout::

    out_dir/
      tokenizer.json            the tokenizer (``tokenizers.Tokenizer.from_file`` loads it)
      tokenizer_config.json     bos/eos/pad/unk, model_max_length, chat_template, class name
      special_tokens_map.json   the same special tokens, for older loaders
      tokenizer.model           (SentencePiece kinds only) the raw SentencePiece model

so ``transformers.AutoTokenizer.from_pretrained(out_dir)`` loads it as a
``PreTrainedTokenizerFast`` and ``apply_chat_template`` works out of the box.

- ``"bpe"``: byte-level BPE (GPT-2 style) trained with Hugging Face ``tokenizers``. Every
  byte is in the base alphabet, so any text, Chinese, emoji or control characters
  included, round-trips exactly: ``decode(encode(t)) == t``. NFC normalisation is opt-in
  (``nfc=True``); with it on, only NFC text round-trips byte for byte.
- ``"sentencepiece_bpe"`` / ``"sentencepiece_unigram"``: trained with the
  ``sentencepiece`` package (identity normalisation, no dummy prefix, byte fallback, so
  text round-trips exactly too) and converted to an equivalent ``tokenizer.json``
  (``▁`` metaspace pre-tokenizer, byte-fallback decoder; it encodes the training sentences
  to the same ids as SentencePiece), so the rest of lmops only ever deals with
  ``tokenizers.Tokenizer``. As with every SentencePiece model, a literal ``▁`` (U+2581)
  decodes as a space and a literal ``<0x41>`` may decode as ``A``; all other text
  round-trips exactly.

Special tokens come first in the vocabulary (ids ``0..n-1`` for ``"bpe"``; after
``<unk>`` for the SentencePiece kinds) and are matched whole in input text.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers as hf_trainers

from lmops.core.errors import UserError

__all__ = [
    "CHATML_TEMPLATE",
    "DEFAULT_SPECIAL_TOKENS",
    "TokenizerInfo",
    "TokenizerKind",
    "load_tokenizer",
    "read_tokenizer_config",
    "tokenizer_digest",
    "train_tokenizer",
]

TokenizerKind = Literal["bpe", "sentencepiece_bpe", "sentencepiece_unigram"]
KINDS: tuple[str, ...] = ("bpe", "sentencepiece_bpe", "sentencepiece_unigram")

DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|pad|>",
    "<|im_start|>",
    "<|im_end|>",
)

# ChatML, as Qwen and others use it: every turn is
# "<|im_start|>{role}\n{content}<|im_end|>\n"; the generation prompt opens an assistant turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_SP_UNK = "<unk>"
# SentencePiece skips training sentences longer than this many bytes; we cut texts into
# lines and long lines into chunks below it so no training text is silently dropped.
_SP_MAX_SENTENCE_BYTES = 8192
_SP_CHUNK_CHARS = 2000
# A byte-level tokenizer needs all 256 bytes in its vocabulary before it can learn anything.
_BYTES = 256


@dataclass(frozen=True, slots=True)
class TokenizerInfo:
    """What :func:`train_tokenizer` produced."""

    path: Path
    kind: str
    vocab_size: int  # actual size, added special tokens included; <= requested_vocab_size
    requested_vocab_size: int
    special_tokens: dict[str, int]  # token -> id
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    num_texts: int  # texts read from the input stream
    digest: str  # sha256 of tokenizer.json

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def train_tokenizer(
    texts: Iterable[str],
    out_dir: Path | str,
    *,
    kind: TokenizerKind = "bpe",
    vocab_size: int = 8000,
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
    chat_template: str | None = CHATML_TEMPLATE,
    min_frequency: int = 2,
    bos_token: str | None = "<|endoftext|>",
    eos_token: str | None = "<|endoftext|>",
    pad_token: str | None = "<|pad|>",
    model_max_length: int = 4096,
    nfc: bool = False,
) -> TokenizerInfo:
    """Train a ``kind`` tokenizer on ``texts`` and save it as a Hugging Face folder.

    ``texts`` is consumed once, as a stream (``"bpe"`` never holds the corpus; SentencePiece
    keeps its own in-memory sentence sample). The vocabulary has at most ``vocab_size``
    entries, special tokens included; the actual size is in the result. ``bos_token``,
    ``eos_token`` and ``pad_token`` must be among ``special_tokens`` (or ``None``).
    ``min_frequency`` applies to ``"bpe"`` merges only. Raises :class:`UserError` for an
    unknown kind, a vocabulary too small to hold the bytes and special tokens, or special
    tokens the chat template needs but that are missing.
    """
    if kind not in KINDS:
        raise UserError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    specials = list(dict.fromkeys(special_tokens))  # de-duplicate, keep order
    for role, token in (
        ("bos_token", bos_token),
        ("eos_token", eos_token),
        ("pad_token", pad_token),
    ):
        if token is not None and token not in specials:
            raise UserError(
                f"{role} {token!r} is not in special_tokens; add it or pass {role}=None"
            )
    if chat_template == CHATML_TEMPLATE:
        missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in specials]
        if missing:
            raise UserError(
                f"the default ChatML chat_template needs special tokens {missing}; "
                "add them to special_tokens or pass chat_template=None"
            )
    # Byte-level BPE: 256 bytes + specials; SentencePiece: 256 byte pieces + <unk> + specials.
    floor = _BYTES + len(specials) + (0 if kind == "bpe" else 1)
    if vocab_size <= floor:
        raise UserError(
            f"vocab_size {vocab_size} is too small for kind {kind!r}: the {_BYTES} bytes and "
            f"{len(specials)} special tokens alone take {floor}; ask for more than {floor}"
        )
    if min_frequency < 1:
        raise UserError(f"min_frequency must be >= 1, got {min_frequency}")

    stream = iter(texts)
    first = next(stream, None)
    if first is None:
        raise UserError("no training texts: the text stream was empty")
    counted = _Counted(itertools.chain([first], stream))
    sp_model: bytes | None = None
    if kind == "bpe":
        tok = _train_bytelevel_bpe(counted, vocab_size, specials, min_frequency, nfc)
    else:
        sp_model = _train_sentencepiece(
            counted, vocab_size, specials, "bpe" if kind == "sentencepiece_bpe" else "unigram"
        )
        tok = _sentencepiece_to_hf(sp_model, kind, specials, nfc)
    actual = tok.get_vocab_size(with_added_tokens=True)
    # Guards the contract; both trainers keep the limit (SentencePiece: hard_vocab_limit=False
    # lets it stop *below* vocab_size when the corpus is small).
    assert actual <= vocab_size, (actual, vocab_size)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unk = _SP_UNK if kind != "bpe" else None
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "lmops_tokenizer_kind": kind,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "pad_token": pad_token,
        "unk_token": unk,
        "additional_special_tokens": [
            t for t in specials if t not in (bos_token, eos_token, pad_token)
        ],
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "chat_template": chat_template,
    }
    special_map = {
        k: v
        for k, v in config.items()
        if k in ("bos_token", "eos_token", "pad_token", "unk_token", "additional_special_tokens")
        and v is not None
    }
    tok_json = tok.to_str(pretty=True).encode("utf-8")
    _write_atomic(out / "tokenizer_config.json", _json_bytes(config))
    _write_atomic(out / "special_tokens_map.json", _json_bytes(special_map))
    if sp_model is not None:
        _write_atomic(out / "tokenizer.model", sp_model)
    else:
        # A SentencePiece model left from an earlier run would not match tokenizer.json.
        (out / "tokenizer.model").unlink(missing_ok=True)
    # Last: a folder with a tokenizer.json is complete.
    _write_atomic(out / "tokenizer.json", tok_json)
    return TokenizerInfo(
        path=out,
        kind=kind,
        vocab_size=actual,
        requested_vocab_size=vocab_size,
        special_tokens={t: _token_id(tok, t) for t in specials},
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        num_texts=counted.n,
        digest=hashlib.sha256(tok_json).hexdigest(),
    )


def load_tokenizer(path: Path | str) -> Tokenizer:
    """Load the ``tokenizer.json`` of a tokenizer folder (or the file itself)."""
    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise UserError(f"no tokenizer.json at {p}; train one with train_tokenizer() first")
    return Tokenizer.from_file(str(file))


def read_tokenizer_config(path: Path | str) -> dict[str, Any]:
    """The folder's ``tokenizer_config.json`` as a dict (empty when the file is absent)."""
    file = Path(path) / "tokenizer_config.json"
    if not file.is_file():
        return {}
    data: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    return data


def tokenizer_digest(path: Path | str) -> str:
    """sha256 of the folder's ``tokenizer.json``: the identity of the token id mapping."""
    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise UserError(f"no tokenizer.json at {p}; train one with train_tokenizer() first")
    return hashlib.sha256(file.read_bytes()).hexdigest()


# -- byte-level BPE --------------------------------------------------------------------------------
def _train_bytelevel_bpe(
    texts: Iterable[str], vocab_size: int, specials: list[str], min_frequency: int, nfc: bool
) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    # GPT-2's regex split, without a prefix space, so decode(encode(t)) == t exactly.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = hf_trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter(texts), trainer=trainer)
    return tok


# -- SentencePiece ---------------------------------------------------------------------------------
def _train_sentencepiece(
    texts: Iterable[str], vocab_size: int, specials: list[str], model_type: str
) -> bytes:
    try:
        import sentencepiece as spm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise UserError(
            "the sentencepiece kinds need the 'sentencepiece' package: pip install sentencepiece"
        ) from e
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sp_sentences(texts),
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            # Exact round trip: no NFKC, no dummy "▁" prefix, keep runs of spaces, and bytes
            # for every character that did not make it into the vocabulary.
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            byte_fallback=True,
            character_coverage=0.9995,
            split_digits=True,
            max_sentence_length=_SP_MAX_SENTENCE_BYTES,
            # Our own special tokens replace SentencePiece's <s>, </s> and <pad>.
            unk_id=0,
            unk_piece=_SP_UNK,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            user_defined_symbols=specials,
            # Stop below vocab_size instead of failing when a small corpus has fewer pieces.
            hard_vocab_limit=False,
            # SentencePiece keeps its sentences in memory; sample at most this many.
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=max(1, min(8, os.cpu_count() or 1)),
            minloglevel=2,
        )
    except RuntimeError as e:
        raise UserError(f"sentencepiece training failed: {e}") from e
    return model.getvalue()


def _sp_sentences(texts: Iterable[str]) -> Iterator[str]:
    # SentencePiece trains on lines; a document is many lines, and an over-long line would be
    # skipped, so it is cut into chunks.
    for text in texts:
        for line in text.split("\n"):
            for i in range(0, len(line), _SP_CHUNK_CHARS):
                chunk = line[i : i + _SP_CHUNK_CHARS]
                if chunk.strip():
                    yield chunk


def _sentencepiece_to_hf(model: bytes, kind: str, specials: list[str], nfc: bool) -> Tokenizer:
    """The SentencePiece model as a ``tokenizers.Tokenizer`` with the same ids."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    special = [sp.is_byte(i) or sp.is_unknown(i) or sp.is_control(i) for i in range(n)]
    unk_id = sp.unk_id()
    if kind == "sentencepiece_unigram":
        # SentencePiece's unknown-character penalty is (lowest normal score - 10); giving the
        # byte and <unk> pieces that lowest score keeps ``tokenizers``' penalty the same.
        floor = min(sp.get_score(i) for i in range(n) if not special[i])
        vocab = [(p, floor if special[i] else sp.get_score(i)) for i, p in enumerate(pieces)]
        tok = Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=True))
    else:
        ids = {p: i for i, p in enumerate(pieces)}
        normal = {p for i, p in enumerate(pieces) if not special[i] and p not in specials}
        # SentencePiece BPE stores no merges, only pieces ranked by score (= -id): a piece is
        # the merge of any two pieces that spell it, ranked by the merged piece's id.
        ranked: list[tuple[int, int, int, str, str]] = []
        for p in normal:
            for cut in range(1, len(p)):
                left, right = p[:cut], p[cut:]
                if left in normal and right in normal:
                    ranked.append((ids[p], ids[left], ids[right], left, right))
        ranked.sort()
        merges = [(left, right) for *_, left, right in ranked]
        tok = Tokenizer(
            models.BPE(ids, merges, unk_token=_SP_UNK, fuse_unk=True, byte_fallback=True)
        )
    if nfc:
        tok.normalizer = normalizers.NFC()
    # " " -> "▁" and split before each "▁", as SentencePiece's whitespace splitting does.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="never", split=True
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens(specials)
    return tok


# -- helpers ---------------------------------------------------------------------------------------
class _Counted:
    """Wraps the text stream to count it, and rejects non-strings with a clear message."""

    def __init__(self, texts: Iterable[str]) -> None:
        self._texts = texts
        self.n = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            if not isinstance(text, str):
                raise UserError(
                    f"training text #{self.n + 1} has type {type(text).__name__}; expected a str"
                )
            self.n += 1
            yield text


def _token_id(tok: Tokenizer, token: str) -> int:
    i = tok.token_to_id(token)
    assert i is not None, token
    return int(i)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
