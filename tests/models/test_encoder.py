"""Embeddings from a folder, pooled as the folder says (lmops.models.encoder), against a
reference computed here by hand: a tiny BERT run by transformers on the ids a WordPiece
tokenizer gives with its special tokens, then the pooling its sentence-transformers config
names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.models.encoder import Encoder, InputTooLong, model_kind, read_pooling
from tests.models.tiny_bert import WORDS, make_tiny_bert

CLS, SEP = 2, 3


def ids_of(text: str) -> list[int]:
    """What BERT reads: [CLS], the words, [SEP] (the vocabulary starts with 5 specials)."""
    return [CLS, *(5 + WORDS.index(w) for w in text.split()), SEP]


def hidden(folder: Path, ids: list[int]) -> Any:
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).last_hidden_state[0]  # (tokens, dim)


def unit(v: Any) -> Any:
    return v / v.norm()


def test_cls_and_sep_are_read_and_the_mean_is_normalised(tmp_path: Path) -> None:
    import torch

    folder = make_tiny_bert(tmp_path / "bert", max_seq_length=None)
    texts = ["the quick brown fox", "hello world", "how are you today the lazy dog"]
    enc = Encoder(folder, device="cpu")
    vectors, tokens = enc.embed(texts)
    assert tokens == sum(len(ids_of(t)) for t in texts)  # [CLS] and [SEP] counted
    for text, v in zip(texts, vectors, strict=True):
        want = unit(hidden(folder, ids_of(text)).mean(0))  # padding of the batch left out
        assert torch.tensor(v) == pytest.approx(want, abs=1e-5)
    # without its special tokens the vector is another one (what the gateway used to send)
    bare = unit(hidden(folder, ids_of(texts[0])[1:-1]).mean(0))
    assert float(torch.tensor(vectors[0]) @ bare) < 0.999


def test_max_seq_length_cuts_the_text_and_keeps_sep(tmp_path: Path) -> None:
    import torch

    folder = make_tiny_bert(tmp_path / "bert", max_seq_length=8)
    text = "the quick brown fox jumps over lazy dog hello world"
    encoder = Encoder(folder, device="cpu")
    with pytest.raises(InputTooLong) as e:  # refused whole unless the caller asks for a cut
        encoder.embed(["hello", text])
    assert (e.value.index, e.value.tokens, e.value.limit) == (1, len(ids_of(text)), 8)
    vectors, tokens = encoder.embed([text], truncate=True)
    cut = [CLS, *ids_of(text)[1:7], SEP]  # 8 tokens, as sentence-transformers cuts
    assert tokens == 8
    assert torch.tensor(vectors[0]) == pytest.approx(unit(hidden(folder, cut).mean(0)), abs=1e-5)


@pytest.mark.parametrize(
    ("config", "normalize", "expected"),
    [
        ({"pooling_mode": "cls"}, False, lambda h: h[0]),
        ({"pooling_mode": "lasttoken"}, True, lambda h: unit(h[-1])),
        (
            {"pooling_mode_max_tokens": True, "pooling_mode_cls_token": True},
            False,
            lambda h: __import__("torch").cat([h[0], h.max(0).values]),  # legacy order: cls, max
        ),
        (
            {"pooling_mode_mean_sqrt_len_tokens": True},
            False,
            lambda h: h.sum(0) / len(h) ** 0.5,
        ),
        (
            {"pooling_mode": "weightedmean"},
            False,
            lambda h: (
                (h * __import__("torch").arange(1, len(h) + 1).unsqueeze(1)).sum(0)
                / sum(range(1, len(h) + 1))
            ),
        ),
    ],
)
def test_the_pooling_the_config_names(
    tmp_path: Path, config: dict[str, Any], normalize: bool, expected: Any
) -> None:
    import torch

    folder = make_tiny_bert(tmp_path / "bert", pooling=config, normalize=normalize)
    texts = ["hello world", "the quick brown fox jumps"]  # different lengths: one is padded
    vectors, _ = Encoder(folder, device="cpu").embed(texts)
    for text, v in zip(texts, vectors, strict=True):
        want = expected(hidden(folder, ids_of(text)))
        assert torch.tensor(v) == pytest.approx(want, abs=1e-5)


def test_kinds_and_refusals(tmp_path: Path) -> None:
    import json

    from tests.train.tiny import make_model, make_tokenizer

    bert = make_tiny_bert(tmp_path / "bert")
    assert model_kind(bert) == ("encoder", "BertModel")
    assert read_pooling(bert).describe().startswith("mean pooling, normalised, up to 8 tokens")
    llama = make_model(tmp_path / "llama", make_tokenizer(tmp_path / "tok"))
    assert model_kind(llama) == ("decoder", "LlamaForCausalLM")
    assert read_pooling(llama).source == "default"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert model_kind(bare)[0] == "encoder"
    (bare / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert model_kind(bare)[0] == "decoder"
    dense = make_tiny_bert(tmp_path / "dense", modules=["Dense"])
    with pytest.raises(UserError, match="module 'Dense' is not one lmops runs"):
        read_pooling(dense)


def test_the_same_vectors_as_sentence_transformers(tmp_path: Path) -> None:
    st = pytest.importorskip(
        "sentence_transformers", reason="pip install sentence-transformers to compare with it"
    )
    import numpy as np

    folder = make_tiny_bert(tmp_path / "bert")
    texts = ["the quick brown fox jumps over lazy dog hello", "hello world"]
    ours, _ = Encoder(folder, device="cpu").embed(texts)
    theirs = st.SentenceTransformer(str(folder), device="cpu").encode(texts)
    assert np.asarray(ours) == pytest.approx(theirs, abs=1e-5)


def test_roberta_like_models_take_two_positions_fewer() -> None:
    """RoBERTa numbers positions from pad_token_id + 1: an input as long as
    max_position_embeddings would index past its table (a 500 at the gateway)."""
    import torch
    from transformers import BertConfig, RobertaConfig, RobertaModel

    from lmops.models.encoder import _max_context

    cfg = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=18, pad_token_id=1)  # fmt: skip
    limit = _max_context(cfg)
    assert limit == 16
    RobertaModel(cfg).eval()(input_ids=torch.full((1, limit), 5))  # the longest it takes
    assert _max_context(BertConfig(max_position_embeddings=512)) == 512


def test_a_long_text_is_cut_as_the_tokenizer_cuts_it_without_its_shared_state(
    tmp_path: Path,
) -> None:
    """The text's end is cut and the closing special token kept, exactly as
    ``truncation=True`` cuts; done without that flag, which sets state on the shared fast
    tokenizer: a call from another thread in between (generation, ``/tokenize``) reset it,
    a text came out whole and its batch was a 500. Here a thread tokenizes long texts
    without truncation throughout, and every cut text still has ``cut`` tokens."""
    import threading

    from transformers import AutoTokenizer

    from lmops.models.encoder import embedding_tokens, encode_for_embedding

    folder = make_tiny_bert(tmp_path / "enc", max_seq_length=8)
    tok = AutoTokenizer.from_pretrained(str(folder))
    pooling = read_pooling(folder)
    cut = embedding_tokens(pooling, 64)
    assert cut == 8
    long = " ".join(WORDS * 40)
    want = tok(long, add_special_tokens=True, truncation=True, max_length=cut)["input_ids"]
    assert encode_for_embedding(tok, long, pooling, cut) == want == ids_of(" ".join(WORDS[:6]))
    assert encode_for_embedding(tok, "hello world", pooling, cut) == ids_of("hello world")
    stop = threading.Event()

    def untruncated() -> None:
        while not stop.is_set():
            tok(long, add_special_tokens=True)

    other = threading.Thread(target=untruncated)
    other.start()
    try:
        lengths = {len(encode_for_embedding(tok, long, pooling, cut)) for _ in range(300)}
    finally:
        stop.set()
        other.join()
    assert lengths == {cut}
