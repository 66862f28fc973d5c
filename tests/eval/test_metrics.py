"""Metric values against hand-computed numbers (and sacrebleu / rouge_score when installed)."""

from __future__ import annotations

import math
import random

import pytest

from lmops.core.errors import UserError
from lmops.eval.metrics import (
    METRICS,
    acc,
    acc_norm,
    aggregate,
    bleu,
    bleu_aggregate,
    bleu_tokenize,
    bootstrap_ci,
    exact_match,
    f1,
    get_metric,
    mean,
    mean_stderr,
    paired_bootstrap_pvalue,
    paired_comparison,
    paired_permutation_pvalue,
    rouge_l,
    sample_stddev,
    split_cjk,
    word_tokens,
)

# lm-eval's gsm8k.yaml exact_match settings.
GSM8K_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")


# --- tokenisation ----------------------------------------------------------------------


def test_split_cjk_and_word_tokens() -> None:
    assert split_cjk("答案42元") == ["答", "案", "42", "元"]
    assert split_cjk("hello") == ["hello"]
    assert word_tokens("Hello, World! 今天天气很好。") == [
        "hello",
        "world",
        "今",
        "天",
        "天",
        "气",
        "很",
        "好",
    ]
    assert word_tokens("ＧＰＴ－４ snake_case") == ["gpt", "4", "snake", "case"]


# --- exact match -----------------------------------------------------------------------


def test_exact_match_defaults_compare_strings_as_they_are() -> None:
    assert exact_match("Paris", "Paris") == 1.0
    assert exact_match("paris", "Paris") == 0.0
    assert exact_match(" Paris", "Paris") == 0.0  # lm-eval does not strip


def test_exact_match_options() -> None:
    assert exact_match("paris", "Paris", ignore_case=True) == 1.0
    assert exact_match("Paris!", "Paris", ignore_punctuation=True) == 1.0
    assert exact_match("Paris!", "Paris") == 0.0
    assert exact_match("the answer: 7", "7", regexes_to_ignore=[r"^.*: "]) == 1.0
    assert exact_match("Rome", ["Paris", "Rome"]) == 1.0


def test_exact_match_with_lm_eval_gsm8k_settings() -> None:
    target = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1234"
    assert exact_match("1,234.", target, ignore_case=True, regexes_to_ignore=GSM8K_IGNORE) == 1.0
    assert exact_match("$1234", target, ignore_case=True, regexes_to_ignore=GSM8K_IGNORE) == 1.0
    assert exact_match("1235", target, ignore_case=True, regexes_to_ignore=GSM8K_IGNORE) == 0.0


def test_exact_match_rejects_bad_regex_and_empty_refs() -> None:
    with pytest.raises(UserError, match="invalid pattern"):
        exact_match("a", "a", regexes_to_ignore=["("])
    with pytest.raises(UserError, match="empty"):
        exact_match("a", [])


# --- F1 ------------------------------------------------------------------------------


def test_f1_squad_normalisation() -> None:
    # "cat sat on mat" vs "cat sat on hat": 3 of 4 tokens in common each way.
    assert f1("The cat sat on the mat.", "a cat sat on a hat") == pytest.approx(0.75)
    # P = 1/2, R = 1 -> 2/3
    assert f1("Barack Obama", "Obama") == pytest.approx(2 / 3)
    assert f1("Obama", "obama!") == 1.0
    assert f1("Paris", "London") == 0.0


def test_f1_empty_answers_follow_squad_v2() -> None:
    assert f1("", "") == 1.0
    assert f1("the", "a") == 1.0  # both empty once articles are dropped
    assert f1("", "Paris") == 0.0


def test_f1_chinese_is_scored_by_character() -> None:
    # 北京大学 vs 北京: 2 common characters, P = 2/4, R = 2/2 -> 2/3
    assert f1("北京大学", "北京") == pytest.approx(2 / 3)
    # 答案是北京 (punctuation dropped): P = 2/5, R = 1 -> 0.8 / 1.4
    assert f1("答案是：北京。", "北京") == pytest.approx(0.8 / 1.4)
    # "GPT-4 模型" -> gpt4 模 型; P = 1/3, R = 1 -> 0.5
    assert f1("GPT-4 模型", "gpt4") == pytest.approx(0.5)


def test_f1_takes_the_best_reference() -> None:
    assert f1("Barack Obama", ["Michelle", "Obama", "Barack Obama"]) == 1.0


# --- ROUGE-L -------------------------------------------------------------------------


def test_rouge_l_hand_computed() -> None:
    # LCS "the cat on the mat" = 5 of 6 both ways.
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # LCS "b d" = 2: P = 2/4, R = 2/3, F = 2PR/(P+R) = 4/7
    assert rouge_l("a b c d", "b d e") == pytest.approx(4 / 7)
    # 今天天气 in common: P = R = 4/6
    assert rouge_l("今天天气很好", "今天天气不错") == pytest.approx(4 / 6)
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("x y", "z") == 0.0
    assert rouge_l("a b c d", ["b d e", "a b c d"]) == 1.0


def _unhook_absl_stream() -> None:
    """rouge_score imports absl, whose logging handler keeps the stream that was sys.stderr
    at import: pytest's capture. A later logging.config.dictConfig (uvicorn's, in any test
    that starts a server) closes every handler, and absl's closes its stream unless it is
    the process's own stderr; that closed pytest's capture and crashed the session."""
    import sys

    absl_logging = sys.modules.get("absl.logging")
    if absl_logging is not None:
        absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


def test_rouge_l_matches_rouge_score_on_english() -> None:
    rouge_scorer = pytest.importorskip(
        "rouge_score.rouge_scorer", reason="pip install rouge-score to compare with it"
    )
    _unhook_absl_stream()
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rng = random.Random(0)
    words = "the cat sat on a mat dog don't 12 3.5 co-op , .".split()
    for _ in range(200):
        p = " ".join(rng.choices(words, k=rng.randint(0, 12)))
        r = " ".join(rng.choices(words, k=rng.randint(0, 12)))
        assert rouge_l(p, r) == pytest.approx(scorer.score(r, p)["rougeL"].fmeasure)


# --- BLEU ----------------------------------------------------------------------------


def test_bleu_13a_tokenisation() -> None:
    assert bleu_tokenize("Hello, world! It costs $1,000.50 - isn't it?") == [
        "Hello",
        ",",
        "world",
        "!",
        "It",
        "costs",
        "$",
        "1,000.50",
        "-",
        "isn't",
        "it",
        "?",
    ]
    assert bleu_tokenize("我们去北京。", "zh") == ["我", "们", "去", "北", "京", "。"]
    with pytest.raises(UserError, match="unknown tokenize"):
        bleu_tokenize("x", "moses")


def test_bleu_hand_computed() -> None:
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # Precisions 4/5, 3/4, 2/3, 1/2 (product 0.2); c = 5 < r = 6 so BP = exp(1 - 6/5).
    assert bleu(["a b c d e"], ["a b c d f g"]) == pytest.approx(100 * math.exp(-0.2) * 0.2**0.25)
    # 3/4, 1/3, then no 3- or 4-gram match: exp smoothing gives 1/(2*2) and 1/(4*1).
    assert bleu(["a b c d"], ["a b x d"]) == pytest.approx(100 * (0.75 / 3 / 4 / 4) ** 0.25)
    # Too short to have any 3-gram: BLEU-4 is 0, as in sacrebleu.
    assert bleu(["the cat"], ["the cat sat on the mat"]) == 0.0
    assert bleu(["x y z w"], ["a b c d"]) == 0.0


def test_bleu_is_corpus_level_and_uses_the_closest_reference() -> None:
    # Corpus statistics are summed, not averaged per sentence.
    preds, refs = ["a b c d e", "a b c d"], ["a b c d f g", "a b x d"]
    per_sentence = (bleu(preds[:1], refs[:1]) + bleu(preds[1:], refs[1:])) / 2
    assert bleu(preds, refs) != pytest.approx(per_sentence)
    # Two references: the one of the same length sets r, so there is no brevity penalty.
    assert bleu(["a b c d e"], [["a b c d e f g h", "a b c d e"]]) == pytest.approx(100.0)
    items = [METRICS["bleu"].item_fn(p, r) for p, r in zip(preds, refs, strict=True)]
    assert aggregate("bleu", items) == pytest.approx(bleu(preds, refs))
    with pytest.raises(UserError, match="2 predictions but 1 references"):
        bleu(preds, refs[:1])


def test_bleu_matches_sacrebleu() -> None:
    sacrebleu = pytest.importorskip("sacrebleu", reason="pip install sacrebleu to compare")
    rng = random.Random(0)
    words = "the cat sat on a mat , . dog 12 3.5 - ( ) \" & 'q' don't 1,000 co-op".split()
    for _ in range(100):
        n = rng.randint(1, 6)
        preds = [" ".join(rng.choices(words, k=rng.randint(0, 14))) for _ in range(n)]
        refs = [" ".join(rng.choices(words, k=rng.randint(1, 14))) for _ in range(n)]
        expected = sacrebleu.corpus_bleu(preds, [refs]).score
        assert bleu(preds, refs) == pytest.approx(expected, abs=1e-9)
    zh = ["我们今天去北京大学。", "今天天气很好，你好吗？"]
    zh_refs = ["我们明天去北京。", "今天天气不错，你好吗？"]
    expected = sacrebleu.corpus_bleu(zh, [zh_refs], tokenize="zh").score
    assert bleu(zh, zh_refs, tokenize="zh") == pytest.approx(expected)


# --- multiple choice -----------------------------------------------------------------


def test_acc_and_acc_norm() -> None:
    assert acc([-1.0, -0.5, -2.0], 1) == 1.0
    assert acc([-1.0, -0.5, -2.0], 0) == 0.0
    assert acc([-1.0, -0.5, -2.0], [0, 1]) == 1.0  # several gold answers
    assert acc([-1.0, -1.0], 0) == 1.0  # ties go to the first, like np.argmax
    # Raw: choice 0 wins (-4 > -6); per character: -4/2 = -2 < -6/6 = -1, choice 1 wins.
    lls, choices = [-4.0, -6.0], ["ab", "abcdef"]
    assert acc(lls, 1) == 0.0
    assert acc_norm(lls, 1, choices) == 1.0
    with pytest.raises(UserError, match="2 log-likelihoods for 3 choices"):
        acc_norm(lls, 1, ["a", "b", "c"])
    with pytest.raises(UserError, match="no choices"):
        acc([], 0)


# --- aggregation and uncertainty -----------------------------------------------------


def test_mean_and_stderr_match_lm_eval() -> None:
    values = [1.0, 0.0, 1.0, 1.0]
    assert mean(values) == 0.75
    # squared deviations 0.0625 * 3 + 0.5625 = 0.75; / (n - 1) = 0.25; sd 0.5; / sqrt(4)
    assert sample_stddev(values) == pytest.approx(0.5)
    assert mean_stderr(values) == pytest.approx(0.25)
    assert mean_stderr([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == pytest.approx(
        math.sqrt(32 / 7) / math.sqrt(8)
    )
    with pytest.raises(UserError, match="at least 2"):
        mean_stderr([1.0])
    with pytest.raises(UserError, match="no values"):
        mean([])


def test_bootstrap_ci() -> None:
    values = [float(i % 2) for i in range(200)]
    low, high = bootstrap_ci(values)
    assert low < 0.5 < high
    assert high - low == pytest.approx(2 * 1.96 * mean_stderr(values), rel=0.25)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci([0.7] * 10) == (pytest.approx(0.7), pytest.approx(0.7))
    # Any statistic over items, e.g. corpus BLEU over (pred, ref) pairs.
    items = [("a b c d e", "a b c d e"), ("a b c d", "a b x d"), ("x y z w", "a b c d")]
    low, high = bootstrap_ci(items, stat=bleu_aggregate, n=50)
    assert 0.0 <= low <= high <= 100.0 + 1e-9
    with pytest.raises(UserError, match="alpha"):
        bootstrap_ci(values, alpha=1.5)


def test_paired_permutation_exact_small_case() -> None:
    # Five items, A wins each by 1: only all-plus and all-minus of 2^5 sign patterns reach |5|.
    assert paired_permutation_pvalue([1] * 5, [0] * 5) == pytest.approx(2 / 32)
    assert paired_permutation_pvalue([1, 0, 1], [1, 0, 1]) == 1.0
    # Items with equal scores carry no information: same p as without them.
    assert paired_permutation_pvalue([1] * 5 + [0] * 7, [0] * 12) == pytest.approx(2 / 32)


def test_paired_tests_separate_real_from_null_differences() -> None:
    a = [1.0] * 90 + [0.0] * 10
    b = [1.0] * 50 + [0.0] * 50
    assert paired_permutation_pvalue(a, b) < 0.001
    assert paired_bootstrap_pvalue(a, b) < 0.01
    rng = random.Random(1)
    same = [float(rng.random() < 0.6) for _ in range(100)]
    shuffled = same[50:] + same[:50]
    assert paired_permutation_pvalue(same, shuffled) > 0.05
    assert paired_bootstrap_pvalue(same, same) == 1.0
    with pytest.raises(UserError, match="pair by item"):
        paired_permutation_pvalue([1.0], [1.0, 0.0])


def test_paired_comparison() -> None:
    a = [1.0] * 90 + [0.0] * 10
    b = [1.0] * 50 + [0.0] * 50
    result = paired_comparison(a, b)
    assert result.n == 100
    assert (result.mean_a, result.mean_b) == (0.9, 0.5)
    assert result.diff == pytest.approx(0.4)
    assert result.ci_low < 0.4 < result.ci_high
    assert result.significant
    assert result.to_dict()["significant"] is True
    assert not paired_comparison([1.0, 0.0, 1.0], [0.0, 1.0, 1.0]).significant


# --- registry ------------------------------------------------------------------------


def test_registry() -> None:
    assert set(METRICS) >= {"exact_match", "f1", "rouge_l", "bleu", "acc", "acc_norm"}
    assert all(m.higher_is_better for m in METRICS.values())
    em = get_metric("exact_match")
    scores = [em.item_fn(p, r) for p, r in [("a", "a"), ("b", "c")]]
    assert em.aggregate_fn(scores) == 0.5
    with pytest.raises(UserError, match="unknown metric 'bluert'"):
        get_metric("bluert")
