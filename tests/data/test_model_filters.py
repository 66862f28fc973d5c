"""Model-based filters on literal Chinese and English documents: the n-gram reference LM
(checked against a direct dictionary implementation of interpolated modified Kneser-Ney),
the perplexity filter with n-gram and Hugging Face models, the quality classifier."""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmops.core.errors import UserError
from lmops.data.classifier import (
    QualityClassifier,
    features,
    train_quality_classifier,
)
from lmops.data.document import Document
from lmops.data.ngram_lm import NgramLM, is_ngram_file, mix64, train_reference_lm
from lmops.data.operators.model_filters import PerplexityFilter, QualityClassifierFilter
from lmops.data.ops import build_op


def ppl_filter(**params: Any) -> PerplexityFilter:
    """``perplexity_filter`` built the way a recipe builds it (parameters validated)."""
    op = build_op("perplexity_filter", **params)
    assert isinstance(op, PerplexityFilter)
    return op


def quality_filter(**params: Any) -> QualityClassifierFilter:
    op = build_op("quality_classifier", **params)
    assert isinstance(op, QualityClassifierFilter)
    return op


EN = [
    "The river flows slowly through the old town, and the children walk along its banks "
    "after school. In the summer the water is warm, and families have picnics under the "
    "tall trees that grow beside the bridge.",
    "Scientists have studied the behaviour of bees for many years. A worker bee visits "
    "hundreds of flowers in a single day, and the colony shares the information about "
    "where the best flowers can be found.",
    "The library opens at nine in the morning and closes at six in the evening. Students "
    "come to read, to write their essays and to borrow books for the weekend.",
    "Rain fell over the mountains during the night, and in the morning the paths were "
    "covered with mud. The travellers waited until the sun came out before they started "
    "the long walk to the village.",
    "Good bread needs only flour, water, salt and yeast, but it also needs time. The dough "
    "is left to rise for several hours, and the baker shapes the loaves before they go "
    "into the hot oven.",
    "The city council met on Monday to discuss the new bus routes. Many residents asked "
    "for more buses in the evening, and the council agreed to study the plan.",
    "A healthy diet includes fruit and vegetables, whole grains and enough water. Regular "
    "exercise and a good night of sleep are just as important for the body and the mind.",
    "The museum has a large collection of paintings from the last three centuries. Each "
    "room tells the story of a period, and the guides explain how the artists worked.",
]
EN_HELD_OUT = (
    "In the evening the families walk along the river to the old bridge, and the children "
    "read their books under the trees until the sun goes down."
)

ZH = [
    "今天天气很好，我们一家人去公园散步。公园里有很多花，孩子们在草地上跑来跑去，非常开心。",
    "科学家们研究蜜蜂的行为已经很多年了。一只工蜂一天要访问几百朵花，蜂群会分享哪里有最好的花。",
    "图书馆早上九点开门，晚上六点关门。学生们来这里读书、写文章，周末还可以借书回家。",
    "昨天夜里山上下了一场大雨，早上的小路上都是泥。旅行的人们等到太阳出来以后，才开始走向村子。",
    "做好面包只需要面粉、水、盐和酵母，但是也需要时间。面团要发酵几个小时，然后面包师把它放进烤箱。",
    "市政府星期一开会讨论新的公交线路。很多居民希望晚上有更多的公交车，政府同意研究这个计划。",
    "健康的饮食包括水果、蔬菜、全谷物和足够的水。经常锻炼和充足的睡眠对身体和心理都很重要。",
    "博物馆收藏了很多过去三百年的绘画作品。每个展厅讲述一个时期的故事，讲解员会介绍画家的创作。",
]
ZH_HELD_OUT = "周末我们一家人去图书馆读书，孩子们在公园的草地上跑来跑去，大家都非常开心。"


def shuffled(text: str, seed: int = 0) -> str:
    chars = list(text)
    random.Random(seed).shuffle(chars)
    return "".join(chars)


@pytest.fixture(scope="module")
def lm() -> NgramLM:
    return NgramLM.train(EN + ZH, order=4)


@pytest.fixture(scope="module")
def lm_file(tmp_path_factory: pytest.TempPathFactory, lm: NgramLM) -> Path:
    return lm.save(tmp_path_factory.mktemp("lm") / "ref.ngram")


# ------------------------------------------------------------------- n-gram LM: behaviour
@pytest.mark.parametrize("text", [EN_HELD_OUT, ZH_HELD_OUT], ids=["en", "zh"])
def test_in_domain_text_beats_garbled_text(lm: NgramLM, text: str) -> None:
    ppl = lm.perplexity(text)
    assert ppl < lm.perplexity(shuffled(text)) / 3
    reversed_text = text[::-1]
    assert ppl < lm.perplexity(reversed_text) / 2
    # A language the model never saw is the most surprising of all.
    assert ppl < lm.perplexity("Всё смешалось в доме Облонских, жена узнала обо всём.") / 10


def test_digits_and_spaces_are_normalised(lm: NgramLM) -> None:
    assert lm.perplexity("The bus leaves at 9:45.") == lm.perplexity("The  bus leaves at 1:23.")
    assert lm.nll_many(["", "  \n\t "]) == [(0.0, 0), (0.0, 0)]
    assert math.isnan(lm.perplexity(""))


def test_save_load_round_trip_gives_identical_scores(lm: NgramLM, lm_file: Path) -> None:
    texts = [EN_HELD_OUT, ZH_HELD_OUT, shuffled(EN_HELD_OUT), "x"]
    loaded = NgramLM.load(lm_file)
    assert loaded.nll_many(texts) == lm.nll_many(texts)
    assert is_ngram_file(lm_file)
    with np.load(lm_file, allow_pickle=False) as z:  # a plain npz: no pickled objects
        assert json.loads(z["header"].tobytes())["format"] == "lmops-ngram"


def test_word_unit(tmp_path: Path) -> None:
    model = NgramLM.train(EN + ZH, order=3, unit="word")
    assert model.perplexity(EN_HELD_OUT) < model.perplexity(shuffled(EN_HELD_OUT)) / 2
    # Word ids are stable hashes: a reloaded model scores the same.
    reloaded = NgramLM.load(model.save(tmp_path / "w.ngram"))
    assert reloaded.nll_many([EN_HELD_OUT, ZH_HELD_OUT]) == model.nll_many(
        [EN_HELD_OUT, ZH_HELD_OUT]
    )


def test_mix64_is_splitmix64() -> None:
    # SplitMix64 seeded with 0: its first output is the finaliser applied to the
    # golden-ratio increment (Vigna's reference implementation, prng.di.unimi.it).
    out = mix64(np.array([0x9E3779B97F4A7C15], dtype=np.uint64))
    assert int(out[0]) == 0xE220A8397B1DCDAF


# ------------------------------------------------- n-gram LM: against a direct reference
def reference_kn(train: list[list[str]], order: int) -> tuple[float, Callable[[list[str]], float]]:
    """Interpolated modified Kneser-Ney written directly from Chen & Goodman (1998) with
    string n-grams and dicts; sentences are padded with order-1 <s> and end with </s>."""
    bos = "<s>"
    counts: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order + 1)]
    for sent in train:
        seq = [bos] * (order - 1) + sent + ["</s>"]
        for i in range(order - 1, len(seq)):
            for n in range(1, order + 1):
                counts[n][tuple(seq[i - n + 1 : i + 1])] += 1
    adjusted: list[dict[tuple[str, ...], int]] = [{} for _ in range(order + 1)]
    adjusted[order] = dict(counts[order])
    for n in range(order - 1, 0, -1):
        left = Counter(g[1:] for g in counts[n + 1])
        adjusted[n] = {g: (c if g[0] == bos else left[g]) for g, c in counts[n].items()}
    discount: list[tuple[float, float, float]] = [(0, 0, 0)]
    for n in range(1, order + 1):
        cc = Counter(adjusted[n].values())
        n1, n2, n3, n4 = cc[1], cc[2], cc[3], cc[4]
        y = n1 / (n1 + 2 * n2)
        d = (0.0, 0.0, 0.0)
        if min(n1, n2, n3, n4) > 0:
            d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        if not all(0 < dk < k for k, dk in enumerate(d, start=1)):
            d = (min(max(y, 0.1), 0.9),) * 3
        discount.append(d)

    def disc(n: int, c: int) -> float:
        return discount[n][min(c, 3) - 1]

    ctx_total: list[dict[tuple[str, ...], float]] = [defaultdict(float) for _ in range(order + 1)]
    ctx_disc: list[dict[tuple[str, ...], float]] = [defaultdict(float) for _ in range(order + 1)]
    for n in range(1, order + 1):
        for g, c in adjusted[n].items():
            ctx_total[n][g[:-1]] += c
            ctx_disc[n][g[:-1]] += disc(n, c)
    vocab = len(adjusted[1]) + 1

    def prob(gram: tuple[str, ...]) -> float:
        n = len(gram)
        if n == 0:
            return 1 / vocab
        h = gram[:-1]
        if h not in ctx_total[n]:
            return prob(gram[1:])
        c = adjusted[n].get(gram, 0)
        own = (c - disc(n, c)) / ctx_total[n][h] if c else 0.0
        return own + ctx_disc[n][h] / ctx_total[n][h] * prob(gram[1:])

    def perplexity(sent: list[str]) -> float:
        seq = [bos] * (order - 1) + sent + ["</s>"]
        logs = [
            math.log(prob(tuple(seq[i - order + 1 : i + 1]))) for i in range(order - 1, len(seq))
        ]
        return math.exp(-sum(logs) / len(logs))

    # The distribution after a seen context sums to one over the vocabulary + unknown.
    context = tuple(([bos] * (order - 1) + train[0])[1:order])
    total = sum(prob((*context, w[0])) for w in adjusted[1]) + prob((*context, "<unk>"))
    return total, perplexity


@pytest.mark.parametrize("order", [2, 3, 5])
def test_matches_direct_kneser_ney_char(order: int) -> None:
    model = NgramLM.train(EN + ZH, order=order)
    total, ref = reference_kn([list(t) for t in EN + ZH], order)
    assert total == pytest.approx(1.0)
    for text in (EN_HELD_OUT, ZH_HELD_OUT, shuffled(ZH_HELD_OUT), "完全没见过的句子ж"):
        assert model.perplexity(text) == pytest.approx(ref(list(text)), rel=1e-5)


def test_matches_direct_kneser_ney_word() -> None:
    sents = [t.lower().replace(",", " ,").replace(".", " .").split() for t in EN]
    model = NgramLM.train(EN, order=3, unit="word")
    _, ref = reference_kn(sents, 3)
    held = EN_HELD_OUT.lower().replace(",", " ,").replace(".", " .").split()
    assert model.perplexity(EN_HELD_OUT) == pytest.approx(ref(held), rel=1e-5)


# -------------------------------------------------------------- train_reference_lm + auto
def corpus(n: int, seed: int = 0) -> list[str]:
    """n short documents, each three sentences drawn from the literal paragraphs."""
    rng = random.Random(seed)
    en = [s.strip() + "." for t in EN for s in t.split(".") if s.strip()]
    zh = [s + "。" for t in ZH for s in t.split("。") if s]
    pool = en + zh
    return [" ".join(rng.sample(pool, 3)) for _ in range(n)]


def test_train_reference_lm_from_files_calibrates_auto_bound(tmp_path: Path) -> None:
    data = tmp_path / "wiki.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(1000)))
    model = train_reference_lm([data], tmp_path / "ref", order=3)
    path = tmp_path / "ref.ngram"
    assert path.is_file()
    assert model.meta["docs"] == 980  # every 50th of 1,000 documents held out
    cal = model.meta["calibration"]
    assert cal["docs"] == 20
    q = cal["log_perplexity_quantiles"]
    op = ppl_filter(model=str(path))
    assert op.upper_bound() == pytest.approx(math.exp(q["0.75"] + 3 * (q["0.75"] - q["0.25"])))
    docs = [
        Document(corpus(1, seed=7)[0], "in-domain"),
        Document(shuffled(" ".join(EN)), "garbled"),
        Document(shuffled(" ".join(ZH)), "garbled-zh"),
    ]
    kept = list(op(docs))
    assert [d.id for d in kept] == ["in-domain"]
    assert docs[1].metadata["drop_reason"] == "perplexity_filter:perplexity_too_high"
    assert docs[2].metadata["drop_reason"] == "perplexity_filter:perplexity_too_high"


def test_too_few_documents_means_no_auto_bound(tmp_path: Path, lm_file: Path) -> None:
    model = train_reference_lm(EN + ZH, tmp_path / "small.ngram", order=3)
    assert "calibration" not in model.meta
    op = ppl_filter(model=str(tmp_path / "small.ngram"), min_perplexity=None)
    assert op.upper_bound() is None
    doc = Document(shuffled(EN_HELD_OUT), "garbled")
    assert list(op([doc])) == [doc]  # kept, but scored: a threshold can be set later
    assert doc.metadata["scores"]["perplexity_filter"]["perplexity"] > 10


# --------------------------------------------------------------- the perplexity filter
def test_filter_reasons_with_explicit_thresholds(lm: NgramLM, lm_file: Path) -> None:
    memorised = EN[2]  # a training document: the model predicts it almost perfectly
    low = lm.perplexity(memorised)
    held = min(lm.perplexity(EN_HELD_OUT), lm.perplexity(ZH_HELD_OUT))
    assert low < held
    op = ppl_filter(
        model=str(lm_file),
        min_perplexity=(low + held) / 2,
        max_perplexity=max(lm.perplexity(EN_HELD_OUT), lm.perplexity(ZH_HELD_OUT)) * 1.5,
    )
    docs = [
        Document(EN_HELD_OUT, "en"),
        Document(ZH_HELD_OUT, "zh"),
        Document(shuffled(EN_HELD_OUT), "en-garbled"),
        Document(shuffled(ZH_HELD_OUT), "zh-garbled"),
        Document(memorised, "memorised"),
        Document("", "empty"),
    ]
    kept = [d.id for d in op(docs)]
    assert kept == ["en", "zh", "empty"]
    reasons = {d.id: d.metadata.get("drop_reason") for d in docs}
    assert reasons["en-garbled"] == "perplexity_filter:perplexity_too_high"
    assert reasons["zh-garbled"] == "perplexity_filter:perplexity_too_high"
    assert reasons["memorised"] == "perplexity_filter:perplexity_too_low"
    assert op.dropped == Counter({"perplexity_too_high": 2, "perplexity_too_low": 1})
    scores = docs[0].metadata["scores"]["perplexity_filter"]
    assert scores["perplexity"] == pytest.approx(lm.perplexity(EN_HELD_OUT))
    assert scores["log_perplexity"] == pytest.approx(math.log(scores["perplexity"]))
    assert docs[5].metadata["scores"]["perplexity_filter"] == {"tokens": 0.0}
    # Re-deciding on stored scores needs no model: a looser bound keeps the garbled text.
    loose = ppl_filter(model=str(lm_file), max_perplexity=1e9)
    assert loose.decide(docs[2].metadata["scores"]["perplexity_filter"]) is None


def test_batches_do_not_change_scores(lm_file: Path) -> None:
    texts = [EN_HELD_OUT, ZH_HELD_OUT, shuffled(ZH_HELD_OUT), EN[0], "a"]
    one = ppl_filter(model=str(lm_file), max_perplexity=None, batch_size=1)
    many = ppl_filter(model=str(lm_file), max_perplexity=None, batch_size=3)
    a = [Document(t, str(i)) for i, t in enumerate(texts)]
    b = [Document(t, str(i)) for i, t in enumerate(texts)]
    list(one(a))
    list(many(b))
    assert [d.metadata for d in a] == [d.metadata for d in b]


def test_languages_route_documents(lm_file: Path) -> None:
    op = ppl_filter(model=str(lm_file), max_perplexity=5, languages=["zh"])
    en = Document(shuffled(EN_HELD_OUT), "en", {"lang": "en"})
    zh = Document(shuffled(ZH_HELD_OUT), "zh", {"lang": "zh"})
    assert list(op([en, zh])) == [en]
    assert "scores" not in en.metadata
    assert zh.metadata["drop_reason"] == "perplexity_filter:perplexity_too_high"
    assert op.counters["skipped_language"] == 1


def test_bad_model_paths(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        ppl_filter(model=str(tmp_path / "missing.ngram"))
    with pytest.raises(UserError, match=r"without config\.json"):
        ppl_filter(model=str(tmp_path))
    junk = tmp_path / "junk.ngram"
    junk.write_text("not a model")
    op = ppl_filter(model=str(junk))
    with pytest.raises(UserError, match="not an lmops n-gram model"):
        list(op([Document("text", "1")]))
    with pytest.raises(UserError, match="empty corpus"):
        NgramLM.train(["", "   "])


# ----------------------------------------------------------------- the quality classifier
GOOD_EN = [
    "The committee will publish its report next week after reviewing the evidence.",
    "She studied chemistry at university and now works in a hospital laboratory.",
    "Our train arrived late, so we missed the first part of the concert.",
    "The farmers harvest the wheat in August when the weather is dry.",
    "He explained the rules of the game to the new players before the match.",
    "Most birds build their nests in spring and raise their young in early summer.",
]
GOOD_ZH = [
    "委员会将在审查证据之后于下周发布报告。",
    "她在大学学习化学，现在在一家医院的实验室工作。",
    "我们的火车晚点了，所以错过了音乐会的开头。",
    "农民们在八月天气干燥的时候收割小麦。",
    "比赛开始前，他向新球员解释了比赛规则。",
    "大多数鸟在春天筑巢，并在初夏养育幼鸟。",
]
SPAM_WORDS = ["casino", "bonus", "free", "viagra", "cheap", "click", "win", "crypto",
              "免费", "赚钱", "点击", "优惠", "代开发票", "彩票"]  # fmt: skip


def synthetic(n: int, seed: int) -> tuple[list[str], list[str]]:
    """n good documents (one to three well-formed sentences, English or Chinese) and n spam documents (repeated
    tokens, keyword stuffing, random characters), drawn with ``seed``."""
    rng = random.Random(seed)
    en = GOOD_EN + [s.strip() + "." for t in EN for s in t.split(".") if s.strip()]
    zh = GOOD_ZH + [s + "。" for t in ZH for s in t.split("。") if s]
    good = [" ".join(rng.sample(rng.choice((en, zh)), rng.randint(1, 3))) for _ in range(n)]
    bad = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            word = rng.choice(SPAM_WORDS)
            bad.append(" ".join([word] * rng.randint(10, 40)))
        elif kind == 1:
            bad.append(" ".join(rng.choice(SPAM_WORDS) for _ in range(rng.randint(15, 40))))
        else:
            alphabet = "abcdefghijklmnopqrstuvwxyz0123456789#$%&*@!的一是了我不人在他有这"
            bad.append("".join(rng.choice(alphabet) for _ in range(rng.randint(40, 200))))
    return good, bad


def test_classifier_separates_good_from_spam(tmp_path: Path) -> None:
    good, bad = synthetic(150, seed=1)
    report = train_quality_classifier(good, bad, tmp_path / "q.npz", epochs=5, seed=0)
    assert report.valid_docs == 30 and report.train_docs == 270
    assert report.valid_accuracy > 0.9
    model = QualityClassifier.load(tmp_path / "q.npz")
    assert model.meta["valid_accuracy"] == report.valid_accuracy
    # Unseen literal documents, Chinese and English.
    assert model.prob("The museum will open a new room for modern paintings next month.") > 0.5
    assert model.prob("博物馆下个月将开放一个新的现代绘画展厅。") > 0.5
    assert model.prob("free free free free free free free free free free free free") < 0.5
    assert model.prob("免费 赚钱 点击 优惠 免费 彩票 赚钱 点击 casino bonus win") < 0.5
    assert model.prob("x7#k q$9z 的@ 1p!m 了3 w&v 是 8*r") < 0.5


def test_classifier_is_deterministic(tmp_path: Path) -> None:
    good, bad = synthetic(30, seed=2)
    r1 = train_quality_classifier(good, bad, tmp_path / "a.npz", epochs=3, seed=5)
    r2 = train_quality_classifier(good, bad, tmp_path / "b.npz", epochs=3, seed=5)
    r3 = train_quality_classifier(good, bad, tmp_path / "c.npz", epochs=3, seed=6)
    a, b, c = (QualityClassifier.load(tmp_path / f"{x}.npz") for x in "abc")
    assert np.array_equal(a.weights, b.weights) and a.bias == b.bias
    assert {**r1.to_dict(), "path": ""} == {**r2.to_dict(), "path": ""}
    assert not np.array_equal(a.weights, c.weights)  # another seed, another split
    assert r3.seed == 6


def test_features_are_stable_and_cover_chinese() -> None:
    idx, val = features("Hello, 世界")
    assert np.all(np.diff(idx) > 0) and float(val @ val) == pytest.approx(1.0)
    # word 1-grams (hello , 世 界), 2-grams (3), char 2-4-grams of "hello, 世界" (8+7+6)
    assert idx.size <= 4 + 3 + 21
    assert features("HELLO,   世界 ")[0].tolist() == idx.tolist()  # case, spacing
    assert features("  ")[0].size == 0


def test_quality_classifier_operator(tmp_path: Path) -> None:
    good, bad = synthetic(90, seed=3)
    train_quality_classifier(good, bad, tmp_path / "q.npz", epochs=5, seed=0)
    op = quality_filter(model=str(tmp_path / "q.npz"))
    docs = [
        Document("The students finished their project before the holiday began.", "en"),
        Document("学生们在假期开始之前完成了他们的项目。", "zh"),
        Document("casino casino casino casino casino casino casino casino casino", "spam"),
        Document("点击 免费 赚钱 代开发票 彩票 优惠 点击 免费 赚钱 优惠", "spam-zh"),
    ]
    assert [d.id for d in op(docs)] == ["en", "zh"]
    assert docs[2].metadata["drop_reason"] == "quality_classifier:low_quality_score"
    assert docs[3].metadata["drop_reason"] == "quality_classifier:low_quality_score"
    prob = docs[0].metadata["scores"]["quality_classifier"]["quality_prob"]
    assert 0.5 < prob <= 1.0
    strict = quality_filter(model=str(tmp_path / "q.npz"), threshold=1.0)
    assert strict.decide({"quality_prob": prob}) == "low_quality_score"


def test_classifier_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="at least 2 of each"):
        train_quality_classifier(["good text"], ["bad", "bad bad"], tmp_path / "x.npz")
    with pytest.raises(UserError, match="does not exist"):
        quality_filter(model=str(tmp_path / "missing.npz"))
    (tmp_path / "other.npz").write_bytes(b"PK not really")
    with pytest.raises(UserError, match="not a readable lmops quality classifier"):
        QualityClassifier.load(tmp_path / "other.npz")


# ------------------------------------------------------- Hugging Face causal LM (tiny Llama)
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers", reason="pip install transformers to test HF scoring")
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(EN + ZH, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def test_hf_perplexity_matches_the_model_loss(tiny_llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = [EN_HELD_OUT, ZH_HELD_OUT, "short", EN[0] * 3]  # the last is truncated to 128
    op = ppl_filter(model=str(tiny_llama), device="cpu", batch_size=4,
                  max_perplexity=None, min_perplexity=None, max_length=128)  # fmt: skip
    docs = [Document(t, str(i)) for i, t in enumerate(texts)]
    assert list(op(docs)) == docs

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    for doc, text in zip(docs, texts, strict=True):
        ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]][:128]
        with torch.no_grad():
            loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss
        scores = doc.metadata["scores"]["perplexity_filter"]
        assert scores["tokens"] == len(ids) - 1
        assert scores["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-4)
    # A random model spreads its bets: perplexity near the vocabulary size.
    assert 100 < docs[0].metadata["scores"]["perplexity_filter"]["perplexity"] < 2000


def test_hf_filter_reasons(tiny_llama: Path) -> None:
    probe = ppl_filter(model=str(tiny_llama), device="cpu",
                     max_perplexity=None, min_perplexity=None)  # fmt: skip
    scores = probe.score(Document(EN_HELD_OUT, "x"))
    ppl = scores["perplexity"]
    high = ppl_filter(model=str(tiny_llama), device="cpu",
                    max_perplexity=ppl / 2)  # fmt: skip
    low = ppl_filter(model=str(tiny_llama), device="cpu",
                   min_perplexity=ppl * 2)  # fmt: skip
    auto = ppl_filter(model=str(tiny_llama), device="cpu")
    assert high.decide(scores) == "perplexity_too_high"
    assert low.decide(scores) == "perplexity_too_low"
    assert auto.upper_bound() is None and auto.decide(scores) is None  # no calibration for HF
