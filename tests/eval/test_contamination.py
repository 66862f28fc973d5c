"""Contamination checks with planted leaks (found) and clean items (not flagged)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lmops.core.errors import UserError
from lmops.eval import contamination
from lmops.eval.contamination import NgramIndex, contamination_report, tokenize

# Test items: two English word problems, one Chinese question, one short question.
Q_EN_1 = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?"
)
Q_EN_2 = (
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
    "babysitting. How much did she earn?"
)
Q_ZH = "小明有 5 个苹果，他又买了 3 个苹果，然后把其中 2 个送给了同学。请问小明现在有几个苹果？"
Q_SHORT = "What is the capital of France?"

# Clean items: same topics and some shared phrases, but no 13-token run in common.
CLEAN = [
    "Natalia bought pens for 30 of her classmates in June. How many pens did she buy in total?",
    "Tom earns $15 an hour for mowing lawns. How much does he earn in 3 hours of work?",
    "小红有 8 本书，她借给朋友 2 本。请问小红还剩几本书？",
    "What is the capital of Germany?",
    "",
]

# Training documents. The leaks are pasted into longer text with their case, punctuation and
# spacing changed; the rest is ordinary text that shares words with the items.
TRAIN = [
    "Welcome to our forum! Today's puzzle: NATALIA SOLD CLIPS TO 48 OF HER FRIENDS IN APRIL "
    "and then she sold half as many clips in may -- how many clips did natalia sell "
    "altogether in april and may??? Post your answers below.",
    "Homework help thread.\n\nweng earns 12 an hour for babysitting;\nyesterday she just did 50 "
    "minutes of babysitting... how much did she earn\n\nThanks in advance",
    "数学练习题：小明有5个苹果，他又买了3个苹果；然后把其中2个送给了同学！请问小明现在有几个苹果。答案是6个。",
    "What is the capital of France?",
    "Paris is the capital of France and its largest city. Berlin is the capital of Germany.",
    "Natalia likes to sell things to her friends, and clips are popular in April.",
    "Babysitting pays well: many teenagers earn money for babysitting in the evenings.",
    "小明和小红都喜欢吃苹果，他们经常一起去买书。",
]


@pytest.fixture(scope="module")
def index() -> NgramIndex:
    return NgramIndex.build(TRAIN)


def test_planted_leaks_are_all_found(index: NgramIndex) -> None:
    for item in (Q_EN_1, Q_EN_2, Q_ZH, Q_SHORT):
        result = index.check(item)
        assert result.contaminated, item
        assert result.overlap_ratio == 1.0, item
        assert result.matched_ngrams


def test_clean_items_are_not_flagged(index: NgramIndex) -> None:
    for item in CLEAN:
        result = index.check(item)
        assert not result.contaminated, (item, result.matched_ngrams)
        assert result.overlap_ratio == 0.0


def test_matched_ngrams_are_reported_normalised(index: NgramIndex) -> None:
    result = index.check(Q_EN_2)
    assert (
        result.matched_ngrams[0]
        == "weng earns 12 an hour for babysitting yesterday she just did 50 minutes"
    )
    zh = index.check(Q_ZH).matched_ngrams[0]
    assert zh == "小 明 有 5 个 苹 果 他 又 买 了 3 个"


def test_partial_overlap_ratio() -> None:
    # The item's first 15 tokens are in the training data, its last 15 are not.
    first = (
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
    )
    second = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron"
    index = NgramIndex.build([f"intro {first} outro"])
    result = index.check(f"{first} {second}")
    # 30 tokens -> 18 13-grams, of which the first 3 lie inside `first`.
    assert result.overlap_ratio == pytest.approx(3 / 18)
    assert result.contaminated
    assert not index.check(f"{first} {second}", min_ratio=0.5).contaminated
    with pytest.raises(UserError, match="min_ratio"):
        index.check("x", min_ratio=2)


def test_twelve_shared_tokens_are_not_enough() -> None:
    shared = "the quick brown fox jumps over the lazy dog near the river"  # 12 tokens
    index = NgramIndex.build([f"yesterday {shared} bank"])
    assert not index.check(f"today {shared} side").contaminated
    assert index.check(f"yesterday {shared} side").contaminated  # 13 in a row


def test_short_item_rule() -> None:
    # Fewer than n tokens: the whole item is one n-gram. It is found as a whole short record
    # (the index fixture) but not inside a longer document, unless n is lowered.
    long_doc = ["Trivia night! What is the capital of France? Everyone knew it."]
    assert not NgramIndex.build(long_doc).check(Q_SHORT).contaminated
    assert NgramIndex.build(long_doc, n=6).check(Q_SHORT).contaminated
    assert NgramIndex.build(["what is the CAPITAL of france"]).check(Q_SHORT).contaminated


def test_char_tokenizer_and_unknown_tokenizer() -> None:
    assert tokenize("今天，天气 Very good!", "char") == list("今天天气verygood")
    index = NgramIndex.build(["《今天天气很好，我们去公园散步吧》"], n=8, tokenizer="char")
    assert index.check("今天天气很好。我们去公园").contaminated
    assert not index.check("明天天气不好，我们在家").contaminated
    with pytest.raises(UserError, match="unknown contamination tokenizer 'bpe'"):
        NgramIndex.build([], tokenizer="bpe")
    with pytest.raises(UserError, match="n must be at least 1"):
        NgramIndex.build([], n=0)


def test_hashes_are_stable_and_8_bytes_each(index: NgramIndex) -> None:
    # Pinned values: the same in every process and on every platform (never Python's hash()).
    tokens = tokenize("the quick brown fox jumps")
    hashes = contamination._ngram_hashes(contamination._token_hashes(tokens, {}), 3)
    assert [int(h) for h in hashes] == [
        5804461650041136279,
        13040468919666705677,
        7974352066346138694,
    ]
    assert index.hashes.dtype == np.uint64
    assert index.nbytes == 8 * len(index)
    assert np.all(np.diff(index.hashes.astype(np.float64)) >= 0)  # sorted
    assert index.documents == len(TRAIN)


def test_build_streams_and_merges_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contamination, "_FLUSH_AT", 5)  # force many merges

    def docs() -> Iterator[str]:
        yield from TRAIN
        yield from TRAIN  # duplicates collapse

    streamed = NgramIndex.build(docs())
    assert np.array_equal(streamed.hashes, NgramIndex.build(TRAIN).hashes)
    assert streamed.documents == 2 * len(TRAIN)


def test_save_and_load(index: NgramIndex, tmp_path: Path) -> None:
    path = index.save(tmp_path / "idx" / "train.npz")
    loaded = NgramIndex.load(path)
    assert (loaded.n, loaded.tokenizer, loaded.documents) == (13, "word", len(TRAIN))
    assert np.array_equal(loaded.hashes, index.hashes)
    assert loaded.check(Q_EN_1).contaminated
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    with pytest.raises(UserError, match="does not exist"):
        NgramIndex.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not an index")
    with pytest.raises(UserError, match="cannot be read"):
        NgramIndex.load(tmp_path / "junk.npz")


def test_contamination_report(index: NgramIndex) -> None:
    items = [Q_EN_1, *CLEAN[:3], Q_ZH]
    report = contamination_report(items, index)
    assert report.flags == [True, False, False, False, True]
    assert report.contaminated_fraction == pytest.approx(2 / 5)
    assert report.overlap_ratios[0] == 1.0
    d = report.to_dict()
    assert (d["contaminated"], d["items"], d["n"]) == (2, 5, 13)
    with pytest.raises(UserError, match="no items"):
        contamination_report([], index)
