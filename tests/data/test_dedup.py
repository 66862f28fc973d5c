"""Dedup operators and the MinHash engine, on literal English and Chinese documents."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from lmops.data.document import Document
from lmops.data.minhash import (
    MERSENNE_PRIME,
    LSHIndex,
    MinHasher,
    _permute,
    clusters,
    find_duplicate_pairs,
    jaccard,
    shingles,
    tokenize,
)
from lmops.data.operators.dedup import (
    C4SpanDedup,
    ExactDedup,
    IntraDocDedup,
    MinHashDedup,
    normalize_for_dedup,
    split_sentences,
)

EN_RIVER = (
    "The river town woke slowly on Saturday morning. Fishermen pulled their boats onto the "
    "gravel bank and sorted the night's catch into wooden crates, while the baker on the "
    "corner opened his shutters and set out loaves that were still warm from the oven. "
    "Children ran along the towpath toward the old stone bridge, where a brass band from the "
    "next valley was tuning up for the summer fair. By ten o'clock the square was full of "
    "stalls selling honey, wool, cheese and hand-carved spoons, and the smell of roasting "
    "chestnuts drifted over the water. Visitors who arrived on the early train wandered "
    "between the stalls, bought postcards of the mill, and stopped to watch an old woman "
    "weave baskets from willow cut on the island upstream."
)
# One word changed ("Saturday" -> "Sunday") in a 128-word document: true Jaccard 0.92.
EN_RIVER_EDITED = EN_RIVER.replace("Saturday", "Sunday")
EN_ENGINE = (
    "A diesel engine compresses air until it is hot enough to ignite the fuel that is "
    "sprayed into the cylinder, so it needs no spark plug. Because the compression ratio is "
    "high, the engine extracts more work from each litre of fuel than a petrol engine of the "
    "same size, which is why trucks, ships and generators use it. The price of that "
    "efficiency is weight: the block and the crankshaft must be strong enough to contain "
    "pressures of well over one hundred bar. Modern engines add turbochargers, common-rail "
    "injection and exhaust filters to meet emission rules, and their control units adjust "
    "the timing of every injection many times per second."
)
ZH_TEA = (
    "茶起源于中国，最早被当作药物使用，后来才成为日常饮品。唐代陆羽撰写了《茶经》，"
    "系统地记载了茶的种植、采摘、制作和饮用方法，被后人尊为茶圣。宋代流行点茶，"
    "人们把茶叶碾成细末，用沸水冲点，再用茶筅击拂出丰富的泡沫。明代以后，散茶逐渐取代团茶，"
    "冲泡的方式也变得简单，人们更注重茶叶本身的香气和滋味。今天，中国各地出产的绿茶、红茶、"
    "乌龙茶、白茶和普洱茶各具特色，茶文化也随着贸易传播到了世界各地。"
)
# One character changed (唐代 -> 汉代) in a 190-character document.
ZH_TEA_EDITED = ZH_TEA.replace("唐代", "汉代")
ZH_RAIL = (
    "高速铁路的建设需要克服许多技术难题。线路必须尽量平直，桥梁和隧道的比例因此很高；"
    "轨道采用无砟结构，以减少列车高速运行时的沉降和振动。列车本身采用流线型车头和轻量化车体，"
    "牵引系统把电能高效地转换为动力，制动时还能把动能回馈给电网。调度中心通过通信系统实时掌握"
    "每一列车的位置和速度，保证列车之间保持安全距离。"
)


def doc(text: str, id: str) -> Document:
    return Document(text=text, id=id)


def run(op: ExactDedup | MinHashDedup | C4SpanDedup, docs: list[Document]) -> list[Document]:
    return list(op(docs))


# ---------------------------------------------------------------------------- exact_dedup


def test_exact_dedup_drops_whitespace_case_and_punctuation_variants() -> None:
    docs = [
        doc("Hello, World!  This is   a test.", "a"),
        doc("hello world this is a test", "b"),
        doc("HELLO WORLD.\nThis is a test!", "c"),
        doc("Hello world, this is another test.", "d"),
    ]
    op = ExactDedup()
    kept = run(op, docs)
    assert [d.id for d in kept] == ["a", "d"]
    assert docs[1].metadata["duplicate_of"] == "a"
    assert docs[2].metadata["duplicate_of"] == "a"
    assert docs[1].metadata["drop_reason"] == "exact_dedup:exact_duplicate"
    assert op.dropped == {"exact_duplicate": 2}
    assert "duplicate_of" not in docs[0].metadata


def test_exact_dedup_chinese_full_width_and_punctuation() -> None:
    docs = [
        doc("ＬＬＭ 训练数据，需要去重！", "zh1"),
        doc("llm 训练数据,需要去重!", "zh2"),  # ASCII punctuation, half-width letters
        doc("LLM 训练数据需要去重。", "zh3"),
        doc("LLM 评测数据需要去重。", "zh4"),
    ]
    op = ExactDedup()
    assert [d.id for d in run(op, docs)] == ["zh1", "zh4"]
    assert docs[1].metadata["duplicate_of"] == "zh1"
    assert docs[2].metadata["duplicate_of"] == "zh1"
    assert normalize_for_dedup("ＬＬＭ 训练数据，需要去重！") == "llm 训练数据需要去重"


def test_exact_dedup_without_normalisation_is_byte_exact() -> None:
    docs = [doc("Hello world", "a"), doc("hello world", "b"), doc("Hello world", "c")]
    op = ExactDedup(ExactDedup.Params(normalize=False))
    assert [d.id for d in run(op, docs)] == ["a", "b"]
    assert docs[2].metadata["duplicate_of"] == "a"


def test_exact_dedup_keeps_first_in_given_order_regardless_of_shards() -> None:
    texts = [("x1", "Same text."), ("x2", "Other text."), ("x3", "same TEXT"), ("x4", "other text")]
    whole = [d.id for d in run(ExactDedup(), [doc(t, i) for i, t in texts])]
    # The executor feeds shards in order; where a shard boundary falls changes nothing.
    op = ExactDedup()
    shards = [[doc(t, i) for i, t in texts[:1]], [doc(t, i) for i, t in texts[1:]]]
    sharded = [d.id for d in op(d for shard in shards for d in shard)]
    assert whole == sharded == ["x1", "x2"]
    reverse = [d.id for d in run(ExactDedup(), [doc(t, i) for i, t in reversed(texts)])]
    assert reverse == ["x4", "x3"]  # documented: the first in the given order wins


# ------------------------------------------------------------------------ intra_doc_dedup


def test_intra_doc_dedup_lines_keeps_short_repeats() -> None:
    text = (
        "Subscribe to our newsletter today\n"
        "-----\n"
        "The first real paragraph of the article.\n"
        "\n"
        "Subscribe to our newsletter today\n"
        "-----\n"
        "\n"
        "The second real paragraph of the article.\n"
        "Subscribe to our newsletter today"
    )
    out = IntraDocDedup().apply(doc(text, "a"))
    assert out.text == (
        "Subscribe to our newsletter today\n"
        "-----\n"
        "The first real paragraph of the article.\n"
        "\n"
        "-----\n"
        "\n"
        "The second real paragraph of the article."
    )
    assert out.metadata["intra_doc_dedup"] == {"removed_lines": 2}


def test_intra_doc_dedup_paragraphs() -> None:
    text = (
        "欢迎访问本网站，点击这里注册会员。\n\n"
        "第一段正文：今天讨论数据清洗的基本方法。\n\n"
        "欢迎访问本网站，点击这里注册会员。\n\n"
        "第二段正文：去重可以显著提升训练效率。"
    )
    op = IntraDocDedup(IntraDocDedup.Params(unit="paragraph", min_chars=5))
    out = op.apply(doc(text, "zh"))
    assert out.text == (
        "欢迎访问本网站，点击这里注册会员。\n\n"
        "第一段正文：今天讨论数据清洗的基本方法。\n\n"
        "第二段正文：去重可以显著提升训练效率。"
    )
    assert out.metadata["intra_doc_dedup"] == {"removed_paragraphs": 1}


def test_intra_doc_dedup_sentences_english_and_chinese() -> None:
    en = "Click here to read more. Prices rose by 3.5 percent in May. Click here to read more. Thanks!"
    op = IntraDocDedup(IntraDocDedup.Params(unit="sentence"))
    out = op.apply(doc(en, "en"))
    assert out.text == "Click here to read more. Prices rose by 3.5 percent in May. Thanks!"
    assert out.metadata["intra_doc_dedup"] == {"removed_sentences": 1}

    zh = "本文介绍数据去重方法。去重能提升模型质量！本文介绍数据去重方法。你学会了吗？去重能提升模型质量！"
    op = IntraDocDedup(IntraDocDedup.Params(unit="sentence", min_chars=5))
    out = op.apply(doc(zh, "zh"))
    assert out.text == "本文介绍数据去重方法。去重能提升模型质量！你学会了吗？"
    assert out.metadata["intra_doc_dedup"] == {"removed_sentences": 2}


def test_intra_doc_dedup_no_repeats_leaves_text_untouched() -> None:
    text = "Line one is here.\nLine two is here.\n"
    out = IntraDocDedup().apply(doc(text, "a"))
    assert out.text == text
    assert out.metadata["intra_doc_dedup"] == {"removed_lines": 0}


def test_split_sentences_joins_back_and_respects_decimals() -> None:
    text = 'He said "Stop!" Then left. Pi is 3.14 and see example.com now?\n好的。再见！'
    pieces = split_sentences(text)
    assert "".join(pieces) == text
    assert pieces == [
        'He said "Stop!" ',
        "Then left. ",
        "Pi is 3.14 and see example.com now?\n",
        "好的。",
        "再见！",
    ]


# -------------------------------------------------------------------------- minhash_dedup


def test_minhash_dedup_drops_english_near_duplicate() -> None:
    truth = jaccard(shingles(EN_RIVER), shingles(EN_RIVER_EDITED))
    assert 0.9 < truth < 1.0
    docs = [doc(EN_RIVER, "river"), doc(EN_ENGINE, "engine"), doc(EN_RIVER_EDITED, "river2")]
    op = MinHashDedup()
    kept = run(op, docs)
    assert [d.id for d in kept] == ["river", "engine"]
    assert docs[2].metadata["duplicate_of"] == "river"
    assert docs[2].metadata["drop_reason"] == "minhash_dedup:minhash_duplicate"
    assert op.dropped == {"minhash_duplicate": 1}
    assert docs[2].metadata["scores"]["minhash_dedup"]["similarity"] >= 0.75


def test_minhash_dedup_drops_chinese_near_duplicate() -> None:
    # No spaces: shingles are 5-character windows.
    assert tokenize("茶起源于中国，最早")[:5] == ["茶", "起", "源", "于", "中"]
    truth = jaccard(shingles(ZH_TEA), shingles(ZH_TEA_EDITED))
    assert 0.9 < truth < 1.0
    docs = [
        doc(ZH_RAIL, "rail"),
        doc(ZH_TEA, "tea"),
        doc(ZH_TEA_EDITED, "tea2"),
        doc(EN_ENGINE, "en"),
    ]
    op = MinHashDedup()
    assert [d.id for d in run(op, docs)] == ["rail", "tea", "en"]
    assert docs[2].metadata["duplicate_of"] == "tea"


def test_minhash_dedup_keeps_unrelated_and_empty_documents() -> None:
    docs = [doc(EN_RIVER, "a"), doc(EN_ENGINE, "b"), doc(ZH_TEA, "c"), doc(ZH_RAIL, "d")]
    docs += [doc("", "e1"), doc("   ", "e2"), doc("!!!", "e3")]
    op = MinHashDedup()
    assert [d.id for d in run(op, docs)] == ["a", "b", "c", "d", "e1", "e2", "e3"]
    assert not op.dropped


def test_minhash_dedup_is_deterministic_and_independent_of_batching() -> None:
    def once(batch_size: int) -> list[tuple[str, str | None]]:
        docs = [
            doc(EN_RIVER, "r1"),
            doc(ZH_TEA, "t1"),
            doc(EN_RIVER_EDITED, "r2"),
            doc(ZH_TEA_EDITED, "t2"),
            doc(EN_RIVER_EDITED + " The end.", "r3"),
        ]
        op = MinHashDedup()
        op.batch_size = batch_size
        run(op, docs)
        return [(d.id, d.metadata.get("duplicate_of")) for d in docs]

    expected = [("r1", None), ("t1", None), ("r2", "r1"), ("t2", "t1"), ("r3", "r1")]
    assert once(256) == once(256) == once(1) == once(2) == expected


def test_minhash_threshold_verifies_candidates_by_signature_agreement() -> None:
    hasher = MinHasher()
    sigs = hasher.signatures([EN_RIVER, EN_RIVER_EDITED])
    agree = float(np.mean(sigs[0] == sigs[1]))
    assert 0.85 < agree < 1.0  # estimate of the true 0.92

    def kept(threshold: float | None) -> list[str]:
        op = MinHashDedup(MinHashDedup.Params(threshold=threshold))
        return [d.id for d in run(op, [doc(EN_RIVER, "a"), doc(EN_RIVER_EDITED, "b")])]

    assert kept(None) == ["a"]  # any band collision is a duplicate
    assert kept(agree - 0.01) == ["a"]
    assert kept(agree + 0.01) == ["a", "b"]


def test_minhash_without_threshold_follows_band_collisions() -> None:
    # Halfway-similar texts: with threshold None the verdict is exactly "a band collides".
    a = EN_RIVER
    b = " ".join(EN_RIVER.split()[:80] + EN_ENGINE.split()[:40])
    assert 0.4 < jaccard(shingles(a), shingles(b)) < 0.7
    hasher = MinHasher()
    ka, kb = (hasher.band_keys(s) for s in hasher.signatures([a, b]))
    collide = any(x == y for x, y in zip(ka, kb, strict=True))
    op = MinHashDedup(MinHashDedup.Params(threshold=None))
    assert len(run(op, [doc(a, "a"), doc(b, "b")])) == (1 if collide else 2)
    strict = MinHashDedup()
    assert len(run(strict, [doc(a, "a"), doc(b, "b")])) == 2


def test_minhash_recall_on_planted_pairs() -> None:
    rng = random.Random(7)
    vocab = [f"{c}{v}{k}" for c in "bdfgklmnprst" for v in "aeiou" for k in "lmnrst"]
    docs: list[Document] = []
    pairs: list[tuple[str, str]] = []
    for k in range(50):
        words = rng.choices(vocab, k=150)
        copy = list(words)
        for _ in range(rng.randint(1, 2)):  # 1-2 substituted words: Jaccard 0.87-0.97
            copy[rng.randrange(len(copy))] = rng.choice(vocab)
        assert jaccard(shingles(" ".join(words)), shingles(" ".join(copy))) >= 0.8
        docs += [doc(" ".join(words), f"p{k}"), doc(" ".join(copy), f"q{k}")]
        pairs.append((f"p{k}", f"q{k}"))
    docs += [doc(" ".join(rng.choices(vocab, k=150)), f"bg{k}") for k in range(50)]
    rng.shuffle(docs)
    op = MinHashDedup()
    kept = {d.id for d in run(op, docs)}
    rep = {d.id: d.id if d.id in kept else d.metadata["duplicate_of"] for d in docs}
    found = sum(rep[p] == rep[q] for p, q in pairs)
    assert found >= 48  # expected recall at Jaccard >= 0.87 is above 0.99
    assert all(d.startswith(("p", "q")) for d in rep if d not in kept)  # no unrelated drops
    assert len(kept) == 150 - found


def _edited(rng: random.Random, words: list[str], vocab: list[str], n: int) -> list[str]:
    copy = list(words)
    for pos in rng.sample(range(len(copy)), n):
        copy[pos] = rng.choice(vocab)
    return copy


def _copies_of_one_original() -> tuple[str, str, str]:
    """An original O and two edited copies A, B: each copy is a verified duplicate of O
    (estimated Jaccard >= 0.8, sharing a band), the copies are not (estimated < 0.74, below
    the default threshold 0.75)."""
    rng = random.Random(3)
    vocab = [f"{c}{v}{k}" for c in "bdfgklmnprst" for v in "aeiou" for k in "lmnrst"]
    hasher = MinHasher()
    while True:
        words = rng.choices(vocab, k=200)
        texts = [
            " ".join(w)
            for w in (words, _edited(rng, words, vocab, 3), _edited(rng, words, vocab, 3))
        ]
        o, a, b = hasher.signatures(texts)
        ko, ka, kb = (hasher.band_keys(s) for s in (o, a, b))
        if (
            np.mean(o == a) >= 0.8
            and np.mean(o == b) >= 0.8
            and np.mean(a == b) < 0.74
            and any(x == y for x, y in zip(ko, ka, strict=True))
            and any(x == y for x, y in zip(ko, kb, strict=True))
        ):
            return texts[0], texts[1], texts[2]


@pytest.mark.parametrize("order", ["abo", "aob", "oab", "bao", "boa", "oba"])
def test_minhash_clusters_collapse_transitively_whoever_comes_first(order: str) -> None:
    o, a, b = _copies_of_one_original()
    texts = {"o": o, "a": a, "b": b}
    docs = [doc(texts[k], k) for k in order] + [doc(EN_ENGINE, "other")]
    op = MinHashDedup()
    kept = [d.id for d in run(op, docs)]
    # One member per connected component, the first in the given order: a copy compared
    # with a first-seen copy alone (a, b: not duplicates of each other) is still dropped.
    assert kept == [order[0], "other"]
    assert all(d.metadata["duplicate_of"] == order[0] for d in docs[1:3])
    assert docs[0].metadata["scores"]["minhash_dedup"]["cluster_size"] == 3
    assert op.dropped == {"minhash_duplicate": 2}
    assert op.counters["clusters"] == 1 and op.counters["cluster_size_3-4"] == 1


def test_minhash_documents_waiting_on_disk_give_the_same_result() -> None:
    o, a, b = _copies_of_one_original()
    texts = [a, EN_RIVER, b, EN_ENGINE, o, EN_RIVER_EDITED, ZH_TEA, ZH_TEA_EDITED]

    def once(memory_chars: int) -> tuple[list[tuple[str, object]], object, object]:
        op = MinHashDedup()
        op.batch_size, op.memory_chars = 2, memory_chars
        kept = run(op, [doc(t, str(i)) for i, t in enumerate(texts)])
        return [(d.id, d.metadata.get("scores")) for d in kept], op.examples, op.counters

    assert once(0) == once(1 << 30)  # all on disk == all in memory
    assert [i for i, _ in once(0)[0]] == ["0", "1", "3", "6"]


def test_minhash_params_validate() -> None:
    assert MinHashDedup.name == "minhash_dedup"
    assert MinHashDedup.Params().model_dump() == {
        "ngram": 5,
        "num_bands": 14,
        "rows_per_band": 8,
        "seed": 1,
        "threshold": 0.75,
    }
    with pytest.raises(ValidationError):
        MinHashDedup.Params(threshold=1.5)
    with pytest.raises(ValidationError):
        MinHashDedup.Params(num_bands=0)
    with pytest.raises(ValidationError):
        MinHashDedup.Params(bands=3)  # type: ignore[call-arg]


# ------------------------------------------------------------------------- MinHash engine


def test_permutation_is_exact_mod_mersenne_prime() -> None:
    p = MERSENNE_PRIME
    a = np.array([1, 2, 2**32 - 1, 2**32, p - 1, p - 2], dtype=np.uint64)
    b = np.array([0, p - 1, 12345, p - 1, p - 1, 0], dtype=np.uint64)
    x = np.array([0, 1, 2, 2**31, 2**32 - 2, 2**32 - 1, 987654321], dtype=np.uint64)
    got = _permute(x[:, None], a & np.uint64(2**32 - 1), a >> np.uint64(32), b)
    want = [[(int(ai) * int(xi) + int(bi)) % p for ai, bi in zip(a, b, strict=True)] for xi in x]
    assert got.tolist() == want


def test_signatures_are_stable_across_processes() -> None:
    texts = [EN_RIVER, ZH_TEA, "short"]
    here = MinHasher().signatures(texts)
    code = (
        "import json, sys; from lmops.data.minhash import MinHasher; "
        "print(json.dumps(MinHasher().signatures(json.loads(sys.argv[1])).tolist()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(texts)], env=env, capture_output=True, check=True
    )
    assert json.loads(out.stdout) == here.tolist()
    assert here.dtype == np.uint32 and here.shape == (3, 112)


def test_engine_stages_match_the_operator() -> None:
    texts = [EN_RIVER, EN_ENGINE, EN_RIVER_EDITED, ZH_TEA, ZH_TEA_EDITED, ""]
    hasher = MinHasher()
    sigs = hasher.signatures(texts)
    assert hasher.band_keys(sigs[5]) == []  # empty text: never a candidate
    assert len(hasher.band_keys(sigs[0])) == 14
    assert all(len(k) == 8 for k in hasher.band_keys(sigs[0]))
    pairs = find_duplicate_pairs(sigs, hasher, threshold=0.77)
    assert pairs == [(0, 2), (3, 4)]
    assert clusters(pairs) == {2: 0, 4: 3}


def test_clusters_are_connected_components_kept_by_their_earliest_member() -> None:
    # 2 bridges 0 and 1 (0 and 1 are not duplicates of each other): one component.
    assert clusters([(1, 2), (0, 2)]) == {1: 0, 2: 0}
    # 4 bridges 0 and 1's component {1, 3} after 3 joined it: all of them go to 0.
    assert clusters([(1, 3), (0, 4), (1, 4), (2, 5), (5, 6)]) == {1: 0, 3: 0, 4: 0, 5: 2, 6: 2}


def test_lsh_index_without_threshold_keeps_one_member_per_bucket() -> None:
    hasher = MinHasher(num_bands=4, rows_per_band=2)
    index = LSHIndex(hasher, threshold=None)
    sig = hasher.signatures([EN_RIVER])[0]
    results = [index.add(sig) for _ in range(3)]
    assert [i for i, _ in results] == [0, 1, 2]
    assert [[m.index for m in ms] for _, ms in results] == [[], [0], [0]]
    assert index.find(2) == 0


# -------------------------------------------------------------------------- c4_span_dedup


def test_c4_span_dedup_removes_seen_spans_and_drops_emptied_docs() -> None:
    first = (
        "The museum opens at nine. Tickets cost ten euros. Children enter for free. "
        "The café closes at five."
    )
    second = (
        "Our trip was great. The museum opens at nine. Tickets cost ten euros. "
        "Children enter for free. We stayed all day."
    )
    third = "The museum opens at nine.  Tickets cost TEN euros. Children enter for free."
    fourth = "Tickets cost ten euros. Children enter for free. A short note."
    docs = [doc(first, "1"), doc(second, "2"), doc(third, "3"), doc(fourth, "4")]
    op = C4SpanDedup()
    kept = run(op, docs)
    assert [d.id for d in kept] == ["1", "2", "4"]
    assert kept[0].text == first
    assert kept[1].text == "Our trip was great. We stayed all day."
    assert kept[1].metadata["c4_span_dedup"] == {"removed_sentences": 3}
    assert docs[2].metadata["drop_reason"] == "c4_span_dedup:c4_span_duplicate"
    # dropped as it came, not emptied: the report's example and keep_dropped show its text
    assert docs[2].text == third and op.examples["c4_span_duplicate"][0]["text"] == third
    assert kept[2].text == fourth  # only two of its sentences were seen together
    assert op.dropped == {"c4_span_duplicate": 1}


def test_c4_span_dedup_chinese_and_repeats_inside_one_document() -> None:
    a = "第一句话。第二句话！第三句话？第一句话。第二句话！第三句话？"
    b = "开头不同。第一句话。第二句话！第三句话？结尾也不同。"
    op = C4SpanDedup()
    kept = run(op, [doc(a, "a"), doc(b, "b")])
    assert kept[0].text == a  # a span repeated inside one document is not removed here
    assert kept[1].text == "开头不同。结尾也不同。"
    assert kept[1].metadata["c4_span_dedup"] == {"removed_sentences": 3}
