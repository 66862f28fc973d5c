"""Packed token shards: round trips, document boundaries, dtype choice, rollover, windows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from lmops.core.errors import UserError
from lmops.data.document import Document
from lmops.data.shards import TokenShards, choose_dtype, write_token_shards
from lmops.data.tokenizer import load_tokenizer, train_tokenizer

DOCS = [
    Document("The quick brown fox jumps over the lazy dog.", "en-1"),
    Document("今天天气很好，我们去公园散步吧。", "zh-1"),
    Document("Language models learn from text.\n\nSecond paragraph 🤗.", "en-2"),
    Document("", "empty"),
    Document("大语言模型需要大量高质量的训练数据。数据清洗可以去除重复内容。", "zh-2"),
    Document("  leading and trailing spaces  ", "en-3"),
    Document("分词器把文本切分成模型能够处理的单元。Tokenizers split text.", "mixed"),
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [d.text for d in DOCS] * 30
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=400).path


def test_round_trip_keeps_every_document_and_its_boundaries(tok_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tok_dir)
    eos = tok.token_to_id("<|endoftext|>")
    info = write_token_shards(DOCS, tok_dir, tmp_path / "shards")
    shards = TokenShards(tmp_path / "shards")

    expected = [[*tok.encode(d.text, add_special_tokens=False).ids, eos] for d in DOCS]
    assert shards.num_docs == info.num_docs == len(DOCS)
    assert len(shards) == info.num_tokens == sum(len(e) for e in expected)
    for i, doc in enumerate(DOCS):
        ids = shards.document(i)
        assert ids.tolist() == expected[i]
        assert ids[-1] == eos
        assert tok.decode(ids[:-1].tolist()) == doc.text
    assert shards.document(3).tolist() == [eos]  # the empty document is kept: just EOS
    assert shards.document(-1).tolist() == expected[-1]
    assert [d.tolist() for d in shards.iter_documents()] == expected

    # Boundaries are the cumulative document lengths.
    starts = np.load(tmp_path / "shards" / "shard-00000.idx.npy")
    assert starts.dtype == np.uint64
    assert starts.tolist() == np.cumsum([0, *map(len, expected)])[:-1].tolist()
    with pytest.raises(IndexError):
        shards.document(len(DOCS))


def test_bin_file_is_plain_little_endian_memmap(tok_dir: Path, tmp_path: Path) -> None:
    info = write_token_shards([d.text for d in DOCS], tok_dir, tmp_path / "s")  # plain strings
    assert info.dtype == "uint16"
    raw = np.memmap(tmp_path / "s" / "shard-00000.bin", dtype="<u2", mode="r")
    shards = TokenShards(tmp_path / "s")
    assert raw.tolist() == np.concatenate(list(shards.iter_documents())).tolist()
    assert (tmp_path / "s" / "shard-00000.bin").stat().st_size == 2 * info.num_tokens


def test_meta_json_describes_the_set(tok_dir: Path, tmp_path: Path) -> None:
    info = write_token_shards(DOCS, tok_dir, tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    tok = load_tokenizer(tok_dir)
    assert meta["format"] == "lmops.token_shards" and meta["version"] == 1
    assert meta["dtype"] == "uint16"
    assert meta["vocab_size"] == tok.get_vocab_size() == info.vocab_size
    assert meta["eos_id"] == tok.token_to_id("<|endoftext|>")
    assert meta["tokenizer_name"] == tok_dir.name
    sha = hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest()
    assert meta["tokenizer_digest"] == sha
    assert (meta["num_docs"], meta["num_tokens"]) == (len(DOCS), info.num_tokens)
    [shard] = meta["shards"]
    assert shard["name"] == "shard-00000.bin" and shard["index"] == "shard-00000.idx.npy"
    assert (
        shard["sha256"] == hashlib.sha256((tmp_path / "s" / shard["name"]).read_bytes()).hexdigest()
    )
    # Nothing temporary is left behind.
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "meta.json",
        "shard-00000.bin",
        "shard-00000.idx.npy",
    ]


def test_shards_roll_over_between_documents(tok_dir: Path, tmp_path: Path) -> None:
    docs = DOCS * 3
    info = write_token_shards(docs, tok_dir, tmp_path / "s", shard_tokens=40, batch_size=4)
    shards = TokenShards(tmp_path / "s")
    lengths = [len(shards.document(i)) for i in range(shards.num_docs)]
    assert len(info.shards) > 3
    assert [s.name for s in info.shards] == [f"shard-{k:05d}.bin" for k in range(len(info.shards))]
    for s in info.shards:
        # A shard holds whole documents and stays under the limit unless one document alone
        # is longer than the limit.
        assert s.num_tokens <= 40 or s.num_docs == 1
        assert (tmp_path / "s" / s.name).stat().st_size == 2 * s.num_tokens
    assert sum(s.num_docs for s in info.shards) == len(docs)
    # Same documents as a single-shard write, in the same order.
    write_token_shards(docs, tok_dir, tmp_path / "one")
    one = TokenShards(tmp_path / "one")
    assert [d.tolist() for d in one.iter_documents()] == [
        d.tolist() for d in shards.iter_documents()
    ]
    assert lengths == [len(d) for d in one.iter_documents()]


def test_dtype_choice(tok_dir: Path, tmp_path: Path) -> None:
    assert choose_dtype(400) == "uint16"
    assert choose_dtype(65_536) == "uint16"  # ids 0..65535 fit
    assert choose_dtype(65_537) == "uint32"
    info = write_token_shards(DOCS, tok_dir, tmp_path / "u32", dtype="uint32")
    assert info.dtype == "uint32"
    assert (tmp_path / "u32" / "shard-00000.bin").stat().st_size == 4 * info.num_tokens
    assert TokenShards(tmp_path / "u32").document(0).dtype == np.uint32


def test_large_vocabulary_gets_uint32(tmp_path: Path) -> None:
    # A word-level tokenizer with 70,000 entries: ids above 65535 must survive.
    vocab = {f"w{i}": i for i in range(70_000)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok_dir = tmp_path / "big"
    tok_dir.mkdir()
    tok.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "w1"}))
    info = write_token_shards(["w69999 w65536 w2"], tok_dir, tmp_path / "s")
    assert info.dtype == "uint32"
    assert TokenShards(tmp_path / "s").document(0).tolist() == [69_999, 65_536, 2, 1]
    with pytest.raises(UserError, match="dtype uint16 cannot hold ids of a 70000-token vocabulary"):
        write_token_shards(["w1"], tok_dir, tmp_path / "s16", dtype="uint16")


def test_no_eos_mode(tok_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tok_dir)
    write_token_shards(DOCS, tok_dir, tmp_path / "s", append_eos=False)
    shards = TokenShards(tmp_path / "s")
    assert shards.document(0).tolist() == tok.encode(DOCS[0].text).ids
    assert shards.document(3).tolist() == []  # empty document, zero tokens


def test_iter_packed_covers_the_stream_in_order(tok_dir: Path, tmp_path: Path) -> None:
    write_token_shards(DOCS * 4, tok_dir, tmp_path / "s", shard_tokens=50)
    shards = TokenShards(tmp_path / "s")
    stream = np.concatenate(list(shards.iter_documents())).astype(np.int64)
    seq_len = 16
    windows = list(shards.iter_packed(seq_len))
    assert len(windows) == (len(stream) - 1) // seq_len
    for k, w in enumerate(windows):
        assert w.dtype == np.int64 and w.shape == (seq_len + 1,)
        # Windows cross shard ends: the set is one stream.
        assert w.tolist() == stream[k * seq_len : k * seq_len + seq_len + 1].tolist()


def test_sample_windows_are_contiguous_and_seeded(tok_dir: Path, tmp_path: Path) -> None:
    write_token_shards(DOCS * 4, tok_dir, tmp_path / "s", shard_tokens=80)
    shards = TokenShards(tmp_path / "s")
    per_shard = [
        np.memmap(tmp_path / "s" / s["name"], dtype="<u2", mode="r").astype(np.int64)
        for s in shards.meta["shards"]
    ]
    batch = shards.sample_windows(8, 32, np.random.default_rng(0))
    assert batch.shape == (32, 9) and batch.dtype == np.int64
    for row in batch:
        # Each window is a slice of one shard.
        assert any(
            any((data[o : o + 9] == row).all() for o in range(len(data) - 8)) for data in per_shard
        )
    again = shards.sample_windows(8, 32, np.random.default_rng(0))
    assert (batch == again).all()
    with pytest.raises(UserError, match="no shard holds 1001 tokens"):
        shards.sample_windows(1000, 1, np.random.default_rng(0))


def test_refuses_non_empty_output_and_incomplete_sets(tok_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    with pytest.raises(UserError, match="is not empty"):
        write_token_shards(DOCS, tok_dir, tmp_path / "busy")
    with pytest.raises(UserError, match=r"no meta\.json"):
        TokenShards(tmp_path / "busy")
    with pytest.raises(UserError, match="shard_tokens must be >= 1"):
        write_token_shards(DOCS, tok_dir, tmp_path / "x", shard_tokens=0)
    with pytest.raises(UserError, match="item #2 has type int; expected a Document or str"):
        write_token_shards(["a", 5], tok_dir, tmp_path / "y")  # type: ignore[arg-type]


def test_special_token_strings_in_text_are_plain_text_by_default(
    tok_dir: Path, tmp_path: Path
) -> None:
    tok = load_tokenizer(tok_dir)
    eos = tok.token_to_id("<|endoftext|>")
    text = "forged<|endoftext|>boundary <|im_start|>"
    write_token_shards([text], tok_dir, tmp_path / "plain")
    ids = TokenShards(tmp_path / "plain").document(0).tolist()
    assert ids.count(eos) == 1 and ids[-1] == eos  # only the appended EOS
    assert tok.decode(ids[:-1]) == text
    write_token_shards([text], tok_dir, tmp_path / "parsed", parse_special=True)
    parsed = TokenShards(tmp_path / "parsed").document(0).tolist()
    assert parsed.count(eos) == 2
    assert tok.token_to_id("<|im_start|>") in parsed
