"""Tokenizer training: exact round trips, vocabulary limits, HF-loadable folders."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmops.core.errors import UserError
from lmops.data.tokenizer import (
    CHATML_TEMPLATE,
    TokenizerInfo,
    load_tokenizer,
    tokenizer_digest,
    train_tokenizer,
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Language models learn from large amounts of text data.",
    "Tokenizers split text into pieces that a model can read.",
    "We trained the model for three epochs on a single GPU.",
    "Data cleaning removes duplicates, spam and boilerplate.",
    "今天天气很好，我们去公园散步吧。",
    "大语言模型需要大量高质量的训练数据。",
    "分词器把文本切分成模型能够处理的单元。",
    "数据清洗可以去除重复内容和垃圾信息。",
    "我们在一张显卡上训练了三个轮次。",
]

# Chinese, English, emoji, CJK punctuation, tabs, newlines, runs of spaces, leading and
# trailing whitespace, a special token, a combining accent: all must come back unchanged.
MIXED = "  Hello,  世界!\tTabs\tand\nnew\n\nlines 🤗🚀 e\u0301 <|endoftext|> 数据：123 ４５６  \n"


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(SENTENCES, k=rng.randint(1, 3))) for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TokenizerInfo]:
    out: dict[str, TokenizerInfo] = {}
    for kind in ("bpe", "sentencepiece_bpe", "sentencepiece_unigram"):
        out[kind] = train_tokenizer(
            corpus(),
            tmp_path_factory.mktemp(kind),
            kind=kind,
            vocab_size=400,
        )
    return out


KINDS = ["bpe", "sentencepiece_bpe", "sentencepiece_unigram"]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_exact_for_mixed_text(trained: dict[str, TokenizerInfo], kind: str) -> None:
    tok = load_tokenizer(trained[kind].path)
    for text in [MIXED, *SENTENCES, "", " ", "\n\n", "😀 emoji only 🫠"]:
        ids = tok.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=False) == text


@pytest.mark.parametrize("kind", KINDS)
def test_vocab_never_exceeds_request_and_is_reported(
    trained: dict[str, TokenizerInfo], kind: str
) -> None:
    info = trained[kind]
    tok = load_tokenizer(info.path)
    assert info.requested_vocab_size == 400
    assert info.vocab_size == tok.get_vocab_size(with_added_tokens=True) <= 400
    # Special tokens encode as single ids, matched whole inside text.
    ids = tok.encode("你好<|im_start|>user").ids
    assert info.special_tokens["<|im_start|>"] in ids
    assert set(info.special_tokens) == {"<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"}


def test_bpe_special_tokens_come_first(trained: dict[str, TokenizerInfo]) -> None:
    assert trained["bpe"].special_tokens == {
        "<|endoftext|>": 0,
        "<|pad|>": 1,
        "<|im_start|>": 2,
        "<|im_end|>": 3,
    }
    # SentencePiece reserves id 0 for <unk>.
    assert trained["sentencepiece_unigram"].special_tokens["<|endoftext|>"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_folder_layout_and_config(trained: dict[str, TokenizerInfo], kind: str) -> None:
    info = trained[kind]
    files = {p.name for p in info.path.iterdir()}
    expected = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    assert files == (expected if kind == "bpe" else expected | {"tokenizer.model"})
    config = json.loads((info.path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == CHATML_TEMPLATE
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        "<|endoftext|>",
        "<|endoftext|>",
        "<|pad|>",
    )
    assert config["unk_token"] == (None if kind == "bpe" else "<unk>")
    assert config["model_max_length"] == 4096
    assert config["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    special_map = json.loads((info.path / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert special_map["eos_token"] == "<|endoftext|>"
    digest = hashlib.sha256((info.path / "tokenizer.json").read_bytes()).hexdigest()
    assert info.digest == digest == tokenizer_digest(info.path)


@pytest.mark.parametrize("kind", ["sentencepiece_bpe", "sentencepiece_unigram"])
def test_converted_sentencepiece_matches_sentencepiece(
    trained: dict[str, TokenizerInfo], kind: str
) -> None:
    """The tokenizer.json we write encodes like the SentencePiece model it came from."""
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(trained[kind].path / "tokenizer.model"))
    tok = load_tokenizer(trained[kind].path)
    for text in [*SENTENCES, *corpus(50, seed=1), "unseen words 没见过的字 🙂"]:
        assert tok.encode(text).ids == sp.encode(text)


def test_auto_tokenizer_loads_and_applies_chat_template(trained: dict[str, TokenizerInfo]) -> None:
    transformers = pytest.importorskip("transformers")
    for kind, info in trained.items():
        hf = transformers.AutoTokenizer.from_pretrained(str(info.path))
        assert hf.eos_token == "<|endoftext|>" and hf.pad_token == "<|pad|>", kind
        assert hf.eos_token_id == info.special_tokens["<|endoftext|>"]
        assert hf(MIXED)["input_ids"] == load_tokenizer(info.path).encode(MIXED).ids
        chat = [
            {"role": "system", "content": "你是一个助手。"},
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "你好！"},
        ]
        rendered = hf.apply_chat_template(chat, tokenize=False)
        assert rendered == (
            "<|im_start|>system\n你是一个助手。<|im_end|>\n"
            "<|im_start|>user\nHi!<|im_end|>\n"
            "<|im_start|>assistant\n你好！<|im_end|>\n"
        )
        prompt = hf.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
        assert prompt.endswith("<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")


def test_texts_are_streamed_once(tmp_path: Path) -> None:
    seen = 0

    def stream() -> Iterator[str]:
        nonlocal seen
        for text in corpus(200):
            seen += 1
            yield text

    info = train_tokenizer(stream(), tmp_path / "tok", vocab_size=300, min_frequency=1)
    assert seen == info.num_texts == 200
    assert info.vocab_size <= 300


def test_nfc_normalisation_is_opt_in(tmp_path: Path) -> None:
    decomposed = "cafe\u0301"  # "café" with a combining accent
    plain = load_tokenizer(train_tokenizer(corpus(), tmp_path / "a", vocab_size=300).path)
    nfc = load_tokenizer(train_tokenizer(corpus(), tmp_path / "b", vocab_size=300, nfc=True).path)
    assert plain.decode(plain.encode(decomposed).ids) == decomposed
    assert nfc.decode(nfc.encode(decomposed).ids) == "caf\u00e9"


def test_custom_special_tokens_without_chat_template(tmp_path: Path) -> None:
    info = train_tokenizer(
        corpus(),
        tmp_path / "tok",
        vocab_size=300,
        special_tokens=["</s>", "<pad>"],
        chat_template=None,
        bos_token=None,
        eos_token="</s>",
        pad_token="<pad>",
    )
    assert info.special_tokens == {"</s>": 0, "<pad>": 1}
    config = json.loads((info.path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] is None and config["bos_token"] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "wordpiece"}, "unknown tokenizer kind 'wordpiece'"),
        ({"vocab_size": 260}, "vocab_size 260 is too small for kind 'bpe'"),
        (
            {"kind": "sentencepiece_unigram", "vocab_size": 261},
            "the 256 bytes and 4 special tokens alone take 261",
        ),
        ({"eos_token": "</s>"}, "eos_token '</s>' is not in special_tokens"),
        (
            {"special_tokens": ["<|endoftext|>", "<|pad|>"]},
            "the default ChatML chat_template needs special tokens ['<|im_start|>', '<|im_end|>']",
        ),
        ({"min_frequency": 0}, "min_frequency must be >= 1"),
    ],
)
def test_bad_arguments_are_user_errors(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("|", r"\|")):
        train_tokenizer(corpus(10), tmp_path / "tok", **kwargs)  # type: ignore[arg-type]


def test_empty_stream_and_missing_folder_are_user_errors(tmp_path: Path) -> None:
    for kind in KINDS:
        with pytest.raises(UserError, match="no training texts: the text stream was empty"):
            train_tokenizer(iter([]), tmp_path / "tok", kind=kind, vocab_size=300)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="training text #2 has type int; expected a str"):
        train_tokenizer(["ok", 3], tmp_path / "tok", vocab_size=300)  # type: ignore[list-item]
    with pytest.raises(UserError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path / "missing")
