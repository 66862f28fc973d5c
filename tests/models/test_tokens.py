"""``Pieces.prompt_logprobs``: each prompt token's entry spans the characters that
decoding the prompt's bytes up to it adds (undecodable bytes ignored), on a long prompt
of random tokens of a byte-level vocabulary (characters split across tokens, bytes that
never make a character), computed in one pass over the bytes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lmops.models.tokens import Pieces
from tests.train.tiny import make_tokenizer


@pytest.fixture(scope="module")
def pieces(tmp_path_factory: pytest.TempPathFactory) -> Pieces:
    from transformers import AutoTokenizer

    folder = make_tokenizer(Path(tmp_path_factory.mktemp("tok")) / "tok")
    return Pieces(AutoTokenizer.from_pretrained(str(folder)))


def test_prompt_offsets_are_those_of_decoding_every_prefix_of_a_long_prompt(
    pieces: Pieces,
) -> None:
    import torch

    vocab = len(pieces.tokenizer)
    rng = random.Random(0)
    ids = [rng.randrange(vocab) for _ in range(4000)]
    raws = [bytes(pieces.piece(t)[1]) for t in ids]
    # the bytes of some tokens are part of a character, of others no character at all
    assert any(len(r.decode("utf-8", "ignore")) < len(r) for r in raws)
    logits = torch.randn(len(ids), vocab, generator=torch.Generator().manual_seed(0))
    got = pieces.prompt_logprobs(ids, logits, 2)
    ends, done = [], b""
    for raw in raws:  # the definition: characters of the bytes up to each token
        done += raw
        ends.append(len(done.decode("utf-8", "ignore")))
    assert [e.text_end for e in got] == ends
    assert [e.text_offset for e in got] == [0, *ends[:-1]]
    assert [bytes(e.bytes) for e in got] == raws
    lp = torch.log_softmax(logits[:-1], -1)
    want = lp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    assert [e.logprob for e in got[1:]] == pytest.approx(want, abs=1e-6)
    assert [len(e.top_logprobs) for e in got] == [0] + [2] * (len(ids) - 1)
