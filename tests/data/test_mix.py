"""Dataset mixing: ratios met by documents and by tokens, up/down-sampling, determinism."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from lmops.core.errors import UserError
from lmops.data.document import Document
from lmops.data.mix import count_tokens, mix

EN = [
    "The quick brown fox jumps over the lazy dog.",
    "Language models learn from large amounts of text.",
    "Data cleaning removes duplicates and spam.",
    "We trained for three epochs.",
]
ZH = [
    "今天天气很好，我们去公园散步吧。",
    "大语言模型需要大量高质量的训练数据。",
    "分词器把文本切分成模型能够处理的单元。",
]
CODE = ["def add(a, b):\n    return a + b", "for i in range(10):\n    print(i)"]


def make(prefix: str, sentences: list[str], n: int) -> list[Document]:
    """``n`` documents of 1 to 6 sentences each, so lengths differ within a source."""
    return [
        Document(
            text=" ".join(sentences[(i + k) % len(sentences)] for k in range(1 + i % 6)),
            id=f"{prefix}-{i}",
            metadata={"lang": prefix, "scores": {"q": {"v": float(i)}}},
        )
        for i in range(n)
    ]


@pytest.fixture
def sources() -> dict[str, list[Document]]:
    # Different sizes and different document lengths (en short words, zh one token per char).
    return {"en": make("en", EN, 400), "zh": make("zh", ZH, 150), "code": make("code", CODE, 60)}


RATIOS = {"en": 0.5, "zh": 0.3, "code": 0.2}


def test_count_tokens_is_word_and_cjk_aware() -> None:
    assert count_tokens("hello world") == 2
    assert count_tokens("你好世界") == 4
    assert count_tokens("GPU 训练, fast!") == 5  # GPU, 训, 练, ",", "fast!"
    assert count_tokens("  \n ") == 0


def test_default_total_is_largest_mixture_without_repeats(
    sources: dict[str, list[Document]],
) -> None:
    docs, report = mix(sources, RATIOS, seed=1)
    out = list(docs)
    # code limits: 60 / 0.2 = 300 documents; en 150 of 400, zh 90 of 150, code all 60.
    assert report.total == 300 and report.total_rule == "largest without up-sampling"
    assert Counter(d.metadata["source"] for d in out) == {"en": 150, "zh": 90, "code": 60}
    assert report.sources["code"].taken_docs == report.sources["code"].available_docs == 60
    assert all(s.repeated_docs == 0 and s.passes == 1 for s in report.sources.values())
    assert len({d.id for d in out}) == len(out) == report.total_docs == 300
    for name, s in report.sources.items():
        assert s.realised_ratio_docs == pytest.approx(RATIOS[name], abs=0.01)
    assert report.max_ratio_error < 0.01


def test_ratios_are_relative_weights(sources: dict[str, list[Document]]) -> None:
    _, a = mix(sources, RATIOS, total=200)
    _, b = mix(sources, {"en": 5, "zh": 3, "code": 2}, total=200)
    assert (
        {n: s.taken_docs for n, s in a.sources.items()}
        == {n: s.taken_docs for n, s in b.sources.items()}
        == {"en": 100, "zh": 60, "code": 40}
    )


def test_by_tokens_meets_token_ratios(sources: dict[str, list[Document]]) -> None:
    docs, report = mix(sources, RATIOS, by="tokens", seed=3)
    out = list(docs)
    tokens: Counter[str] = Counter()
    for d in out:
        tokens[d.metadata["source"]] += count_tokens(d.text)
    total = sum(tokens.values())
    assert total == report.total_tokens
    for name, ratio in RATIOS.items():
        assert tokens[name] / total == pytest.approx(ratio, abs=0.01)
        assert report.sources[name].realised_ratio_tokens == pytest.approx(ratio, abs=0.01)
    # Nothing repeated by default, and the scarcest source (by tokens) is used up.
    assert all(s.repeated_docs == 0 for s in report.sources.values())
    assert max(s.epochs for s in report.sources.values()) == pytest.approx(1.0, abs=0.01)


def test_by_tokens_with_upsampling(sources: dict[str, list[Document]]) -> None:
    available = sum(count_tokens(d.text) for d in sources["code"])
    docs, report = mix(sources, RATIOS, by="tokens", total=10 * available, seed=0)
    out = list(docs)
    assert abs(report.total_tokens - 10 * available) / (10 * available) < 0.01
    for name, ratio in RATIOS.items():
        assert report.sources[name].realised_ratio_tokens == pytest.approx(ratio, abs=0.01)
    code = report.sources["code"]
    assert code.epochs == pytest.approx(2.0, abs=0.02) and code.passes in (2, 3)
    assert len({d.id for d in out}) == len(out)


def test_upsampling_repeats_with_fresh_order_and_unique_ids(
    sources: dict[str, list[Document]],
) -> None:
    docs, report = mix(sources, RATIOS, total=1000, seed=7)
    out = list(docs)
    code = [d for d in out if d.metadata["source"] == "code"]
    # 200 code documents from 60: 3 full passes + 20 of a 4th.
    assert len(code) == 200
    s = report.sources["code"]
    assert (s.taken_docs, s.unique_docs, s.repeated_docs, s.passes) == (200, 60, 140, 4)
    assert s.epochs == pytest.approx(200 / 60)
    ids = [d.id for d in out]
    assert len(set(ids)) == len(ids) == 1000
    # Each full pass has every document exactly once, with the repeat in its id.
    passes = [[d for d in code if d.metadata.get("repeat", 0) == r] for r in range(4)]
    assert [len(p) for p in passes] == [60, 60, 60, 20]
    assert sorted(d.id for d in passes[0]) == sorted(f"code-{i}" for i in range(60))
    assert sorted(d.id for d in passes[1]) == sorted(f"code-{i}#r1" for i in range(60))
    assert all(d.metadata["repeat_of"] == d.id.split("#")[0] for d in passes[2])
    # ... in a different shuffled order each time.
    order = [[d.id.split("#")[0] for d in p] for p in passes[:3]]
    assert order[0] != order[1] != order[2]
    # Copies do not share metadata with each other or with the input.
    passes[1][0].metadata["scores"]["q"]["v"] = -1.0
    original = next(d for d in sources["code"] if d.id == passes[1][0].metadata["repeat_of"])
    assert original.metadata["scores"]["q"]["v"] != -1.0
    assert "source" not in original.metadata
    for name, ratio in RATIOS.items():
        assert report.sources[name].realised_ratio_docs == pytest.approx(ratio, abs=0.01)


def test_sources_are_interleaved(sources: dict[str, list[Document]]) -> None:
    docs, _ = mix(sources, RATIOS, total=300, seed=0)
    first = [d.metadata["source"] for d in list(docs)[:30]]
    assert set(first) == {"en", "zh", "code"}


def test_deterministic_for_a_seed(sources: dict[str, list[Document]]) -> None:
    a = [d.id for d in mix(sources, RATIOS, total=500, seed=11)[0]]
    b = [d.id for d in mix(sources, RATIOS, total=500, seed=11)[0]]
    c = [d.id for d in mix(sources, RATIOS, total=500, seed=12)[0]]
    assert a == b
    assert a != c


def test_callable_sources_match_lists(sources: dict[str, list[Document]]) -> None:
    def reader(name: str) -> Iterator[Document]:
        yield from sources[name]

    lazy = {n: (lambda n=n: reader(n)) for n in sources}
    a = [(d.id, d.text) for d in mix(sources, RATIOS, total=400, seed=5)[0]]
    b = [(d.id, d.text) for d in mix(lazy, RATIOS, total=400, seed=5)[0]]
    assert a == b


def test_zero_ratio_source_contributes_nothing(sources: dict[str, list[Document]]) -> None:
    docs, report = mix(sources, {"en": 1, "zh": 1, "code": 0})
    out = list(docs)
    assert {d.metadata["source"] for d in out} == {"en", "zh"}
    assert report.total == 300  # zh limits: 150 / 0.5
    assert report.sources["code"].taken_docs == 0 and report.sources["code"].passes == 0
    assert report.to_dict()["sources"]["code"]["available_docs"] == 60


def test_bad_inputs_are_user_errors(sources: dict[str, list[Document]]) -> None:
    with pytest.raises(UserError, match=r"missing \['code'\], unknown \['web'\]"):
        mix(sources, {"en": 1, "zh": 1, "web": 1})
    with pytest.raises(UserError, match="ratio of source 'en' must be a finite number >= 0"):
        mix(sources, {"en": -1, "zh": 1, "code": 1})
    with pytest.raises(UserError, match="all ratios are 0"):
        mix(sources, {"en": 0, "zh": 0, "code": 0})
    with pytest.raises(UserError, match="source 'empty' has no documents but ratio 1"):
        mix({"en": sources["en"], "empty": []}, {"en": 1, "empty": 1})
    with pytest.raises(UserError, match="unknown mix unit"):
        mix(sources, RATIOS, by="bytes")  # type: ignore[arg-type]
    calls = iter([sources["en"], sources["en"][:10]])
    with pytest.raises(UserError, match="gave 400 documents on the first read and 10"):
        mix({"en": lambda: next(calls)}, {"en": 1})
