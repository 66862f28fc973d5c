"""Per-item metrics, their aggregations, and the statistics that go with them.

Definitions follow lm-evaluation-harness where it has one, so that our numbers can sit next
to published ones:

- ``exact_match`` is the Hugging Face ``evaluate`` exact match that lm-eval uses: strip each
  ``regexes_to_ignore`` (in order), then optionally lowercase and drop ASCII punctuation, and
  compare the strings as they are (no whitespace stripping).
- ``f1`` is SQuAD token F1 (lowercase, drop punctuation, drop ``a/an/the``, collapse
  whitespace), with two extensions: Unicode punctuation (``，。！``) is dropped too, and every
  CJK character is its own token, so Chinese answers get partial credit.
- ``rouge_l`` is the LCS F-measure (beta = 1) of ``rouge_score``; its tokeniser keeps only
  ``[a-z0-9]`` runs, ours keeps any letter/digit run and splits CJK into characters.
- ``bleu`` is corpus BLEU-4 as ``sacrebleu.corpus_bleu`` computes it by default (``13a``
  tokenisation, ``exp`` smoothing, closest reference length); ``tokenize="zh"`` splits CJK
  characters first, like sacrebleu's ``zh``. It is implemented here (no dependency) and the
  tests compare it with sacrebleu where that is installed.
- ``acc`` / ``acc_norm`` pick the choice with the highest log-likelihood, raw or divided by
  the choice's length in characters (lm-eval divides by ``len(choice)``, not by tokens).
- ``mean_stderr`` is lm-eval's: the sample standard deviation (n - 1) over sqrt(n).

``METRICS`` maps a metric name to ``Metric(item_fn, aggregate_fn, higher_is_better)``.
``item_fn`` scores one item (corpus-level metrics such as BLEU return the item unchanged and
do all their work in ``aggregate_fn``, as lm-eval's passthrough metrics do).
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from lmops.core.errors import UserError, name_hint
from lmops.eval.tools import tool_args_match, tool_args_valid, tool_name
from lmops.text.cjk import NO_SPACE

__all__ = [
    "METRICS",
    "Metric",
    "PairedComparison",
    "acc",
    "acc_norm",
    "aggregate",
    "bleu",
    "bleu_aggregate",
    "bleu_item",
    "bleu_tokenize",
    "bootstrap_ci",
    "exact_match",
    "f1",
    "get_metric",
    "mean",
    "mean_stderr",
    "metric_problem",
    "paired_bootstrap_pvalue",
    "paired_comparison",
    "paired_permutation_pvalue",
    "rouge_l",
    "sample_stddev",
    "split_cjk",
    "word_tokens",
]

# Han ideographs (with extensions and compatibility blocks) and Japanese kana: scripts written
# without spaces, where one character is the natural unit of overlap.
CJK_RANGES = NO_SPACE  # kana and Han (lmops.text.cjk)
_CJK_OR_RUN = re.compile(f"[{CJK_RANGES}]|[^{CJK_RANGES}]+")
# One CJK character, or a run of letters/digits that are not CJK (underscore is not a letter).
_WORD = re.compile(f"[{CJK_RANGES}]|[^\\W_{CJK_RANGES}]+")
_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def split_cjk(token: str) -> list[str]:
    """Split one whitespace-free token so that each CJK character stands alone.

    ``"答案42元"`` -> ``["答", "案", "42", "元"]``; ``"hello"`` -> ``["hello"]``.
    """
    return _CJK_OR_RUN.findall(token)


def word_tokens(text: str, *, lowercase: bool = True) -> list[str]:
    """Letter/digit runs and single CJK characters; punctuation and spaces are dropped.

    The tokeniser shared by ``rouge_l`` and the contamination index. Text is NFKC-normalised
    first, so full-width ``ＡＢＣ１２３`` reads as ``abc123``.
    """
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    return _WORD.findall(text)


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def _squad_normalize(text: str) -> str:
    # The SQuAD order: lower, remove punctuation, remove articles, fix whitespace.
    text = text.lower()
    text = "".join(ch for ch in text if not _is_punct(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _squad_tokens(text: str) -> list[str]:
    return [piece for tok in _squad_normalize(text).split() for piece in split_cjk(tok)]


def _refs(ref: str | Sequence[str], what: str) -> list[str]:
    refs = [ref] if isinstance(ref, str) else list(ref)
    if not refs:
        raise UserError(f"{what}: the list of references is empty; give at least one")
    return refs


# ---------------------------------------------------------------------------------------
# Per-item metrics on text
# ---------------------------------------------------------------------------------------


def exact_match(
    pred: str,
    ref: str | Sequence[str],
    *,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    regexes_to_ignore: Sequence[str] = (),
    numeric: bool = False,
) -> float:
    """1.0 if ``pred`` equals ``ref`` (or any of several refs) after the chosen rewrites.

    Rewrites, in lm-eval's order: delete every match of each regex in ``regexes_to_ignore``,
    lowercase if ``ignore_case``, delete ASCII punctuation if ``ignore_punctuation``.

    ``numeric``: compare as numbers (``extract.numbers_equal``: ``1,234`` = ``1234.0`` =
    ``$1,234``) with each reference's final answer, the number after its ``####`` when it
    has one (GSM8K's answer line), else the whole reference; an empty prediction never
    matches.
    """
    if numeric:
        from lmops.eval.extract import gsm8k_target, numbers_equal

        golds = [gsm8k_target(r) if "####" in r else r for r in _refs(ref, "exact_match")]
        return 1.0 if pred and any(numbers_equal(pred, g) for g in golds) else 0.0
    try:
        compiled = [re.compile(p) for p in regexes_to_ignore]
    except re.error as e:
        raise UserError(f"exact_match: regexes_to_ignore has an invalid pattern: {e}") from e

    def rewrite(s: str) -> str:
        for rx in compiled:
            s = rx.sub("", s)
        if ignore_case:
            s = s.lower()
        if ignore_punctuation:
            s = "".join(ch for ch in s if ch not in _ASCII_PUNCT)
        return s

    p = rewrite(pred)
    return 1.0 if any(p == rewrite(r) for r in _refs(ref, "exact_match")) else 0.0


def _f1_one(pred: str, ref: str) -> float:
    p, r = _squad_tokens(pred), _squad_tokens(ref)
    if not p or not r:
        # SQuAD v2: an empty answer scores 1 against an empty reference, else 0.
        return float(p == r)
    same = sum((Counter(p) & Counter(r)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


def f1(pred: str, ref: str | Sequence[str]) -> float:
    """SQuAD token F1, the best over the references; CJK characters are single tokens."""
    return max(_f1_one(pred, r) for r in _refs(ref, "f1"))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)  # one row of the DP table: O(len(b)) memory
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_l_one(pred: str, ref: str) -> float:
    p, r = word_tokens(pred), word_tokens(ref)
    if not p or not r:
        return 0.0
    lcs = _lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(pred: str, ref: str | Sequence[str]) -> float:
    """ROUGE-L F-measure (LCS of tokens, beta = 1), the best over the references."""
    return max(_rouge_l_one(pred, r) for r in _refs(ref, "rouge_l"))


# ---------------------------------------------------------------------------------------
# BLEU
# ---------------------------------------------------------------------------------------

# mteval-v13a's language-dependent rules, as sacrebleu applies them after padding with spaces.
_13A_SYMBOLS = re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])")
_13A_PERIOD_COMMA_AFTER_NONDIGIT = re.compile(r"([^0-9])([\.,])")
_13A_PERIOD_COMMA_BEFORE_NONDIGIT = re.compile(r"([\.,])([^0-9])")
_13A_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
# sacrebleu's ``zh`` tokenizer also isolates CJK punctuation and full-width forms.
_ZH_CHAR = re.compile(f"([{CJK_RANGES}\u3000-\u303f\uff00-\uffef\u2e80-\u2fdf])")
BLEU_TOKENIZERS = ("13a", "zh", "none")


def _tokenize_13a(line: str) -> str:
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        for entity, ch in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
            line = line.replace(entity, ch)
    line = f" {line} "
    line = _13A_SYMBOLS.sub(r" \1 ", line)
    line = _13A_PERIOD_COMMA_AFTER_NONDIGIT.sub(r"\1 \2 ", line)
    line = _13A_PERIOD_COMMA_BEFORE_NONDIGIT.sub(r" \1 \2", line)
    line = _13A_DASH_AFTER_DIGIT.sub(r"\1 \2 ", line)
    return " ".join(line.split())


def bleu_tokenize(text: str, tokenize: str = "13a") -> list[str]:
    """Tokens as BLEU sees them: ``13a`` (WMT), ``zh`` (CJK characters, then 13a), ``none``."""
    if tokenize == "13a":
        return _tokenize_13a(text).split()
    if tokenize == "zh":
        return _tokenize_13a(_ZH_CHAR.sub(r" \1 ", text.strip())).split()
    if tokenize == "none":
        return text.split()
    raise UserError(
        f"bleu: unknown tokenize {tokenize!r}; choose one of {', '.join(BLEU_TOKENIZERS)}"
    )


def _ngrams(tokens: Sequence[str], max_n: int) -> Counter[tuple[str, ...]]:
    out: Counter[tuple[str, ...]] = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            out[tuple(tokens[i : i + n])] += 1
    return out


def bleu(
    preds: Sequence[str],
    refs: Sequence[str | Sequence[str]],
    *,
    tokenize: str = "13a",
    lowercase: bool = False,
    max_n: int = 4,
) -> float:
    """Corpus BLEU on a 0-100 scale, as ``sacrebleu.corpus_bleu(preds, refs)`` by default.

    ``refs[i]`` is the reference (or list of references) for ``preds[i]``. Clipped n-gram
    counts and lengths are summed over the corpus; the reference length of a segment is the
    one closest to the hypothesis (the shorter on a tie); orders with no match get the
    ``exp`` smoothing of mteval (1 / 2^k of a count); brevity penalty exp(1 - r/c) when c < r.
    """
    if len(preds) != len(refs):
        raise UserError(f"bleu: {len(preds)} predictions but {len(refs)} references")
    correct = [0] * max_n
    total = [0] * max_n
    sys_len = ref_len = 0
    for pred, ref in zip(preds, refs, strict=True):
        ref_list = _refs(ref, "bleu")
        if lowercase:
            pred, ref_list = pred.lower(), [r.lower() for r in ref_list]
        hyp = bleu_tokenize(pred, tokenize)
        ref_counts: Counter[tuple[str, ...]] = Counter()
        ref_lens = []
        for r in ref_list:
            r_tokens = bleu_tokenize(r, tokenize)
            ref_lens.append(len(r_tokens))
            for gram, count in _ngrams(r_tokens, max_n).items():
                ref_counts[gram] = max(ref_counts[gram], count)
        sys_len += len(hyp)
        ref_len += min(ref_lens, key=lambda n: (abs(n - len(hyp)), n))
        for gram, count in _ngrams(hyp, max_n).items():
            total[len(gram) - 1] += count
            correct[len(gram) - 1] += min(count, ref_counts.get(gram, 0))
    if not any(correct):
        return 0.0
    log_sum = 0.0
    smooth = 1.0
    for c, t in zip(correct, total, strict=True):
        if t == 0:
            return 0.0  # no n-grams of this order at all: sacrebleu's log(0)
        if c == 0:
            smooth *= 2
            precision = 100.0 / (smooth * t)
        else:
            precision = 100.0 * c / t
        log_sum += math.log(precision)
    bp = 1.0 if sys_len >= ref_len else (math.exp(1 - ref_len / sys_len) if sys_len else 0.0)
    return bp * math.exp(log_sum / max_n)


def bleu_item(pred: str, ref: str | Sequence[str]) -> tuple[str, str | Sequence[str]]:
    """The per-item half of corpus BLEU: keeps ``(pred, ref)`` for ``bleu_aggregate``."""
    return (pred, ref)


def bleu_aggregate(items: Sequence[tuple[str, str | Sequence[str]]]) -> float:
    """Corpus BLEU over ``(pred, ref)`` items, as lm-eval's ``bleu`` aggregation."""
    return bleu([p for p, _ in items], [r for _, r in items])


# ---------------------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------------------


def _is_gold(pred: int, gold: int | Sequence[int]) -> bool:
    return pred in gold if isinstance(gold, Sequence) else pred == gold


def acc(loglikelihoods: Sequence[float], gold: int | Sequence[int]) -> float:
    """1.0 if the highest log-likelihood choice (the first on a tie) is gold (or among golds)."""
    if not loglikelihoods:
        raise UserError("acc: no choices were scored; give one log-likelihood per choice")
    return 1.0 if _is_gold(int(np.argmax(loglikelihoods)), gold) else 0.0


def acc_norm(
    loglikelihoods: Sequence[float], gold: int | Sequence[int], choices: Sequence[str]
) -> float:
    """``acc`` after dividing each log-likelihood by its choice's length in characters."""
    if len(loglikelihoods) != len(choices) or not choices:
        raise UserError(
            f"acc_norm: {len(loglikelihoods)} log-likelihoods for {len(choices)} choices; "
            "give one per choice"
        )
    lengths = np.array([float(len(c)) for c in choices])
    if (lengths == 0).any():
        raise UserError("acc_norm: a choice is the empty string; it has no length to divide by")
    return 1.0 if _is_gold(int(np.argmax(np.asarray(loglikelihoods) / lengths)), gold) else 0.0


# ---------------------------------------------------------------------------------------
# Aggregation and uncertainty
# ---------------------------------------------------------------------------------------


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; an empty list is a user error, not NaN."""
    if len(values) == 0:
        raise UserError("mean: no values to aggregate")
    return float(sum(values)) / len(values)


def sample_stddev(values: Sequence[float]) -> float:
    """Standard deviation with Bessel's correction (divides by n - 1)."""
    if len(values) < 2:
        raise UserError(f"sample_stddev: needs at least 2 values, got {len(values)}")
    mu = mean(values)
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (len(values) - 1))


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean as lm-eval reports it: sample_stddev / sqrt(n)."""
    return sample_stddev(values) / math.sqrt(len(values))


def _check_resamples(n: int, alpha: float | None = None) -> None:
    if n < 1:
        raise UserError(f"bootstrap: n must be at least 1, got {n}")
    if alpha is not None and not 0 < alpha < 1:
        raise UserError(f"bootstrap: alpha must be between 0 and 1, got {alpha}")


def bootstrap_ci(
    values: Sequence[Any],
    stat: Callable[[Sequence[Any]], float] = mean,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval ``(low, high)`` at level ``1 - alpha``.

    ``values`` are items (numbers for ``mean``; for BLEU, the ``(pred, ref)`` pairs with
    ``stat=bleu_aggregate``). Resampling is by item, seeded, so reruns agree.
    """
    _check_resamples(n, alpha)
    if len(values) == 0:
        raise UserError("bootstrap_ci: no values to resample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n, len(values)))
    if stat is mean:
        stats = np.asarray(values, dtype=float)[idx].mean(axis=1)
    else:
        stats = np.array([stat([values[i] for i in row]) for row in idx])
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _paired_diffs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    if len(a) != len(b):
        raise UserError(f"paired test: {len(a)} scores for A but {len(b)} for B; pair by item")
    if len(a) == 0:
        raise UserError("paired test: no items to compare")
    return np.asarray(a, dtype=float) - np.asarray(b, dtype=float)


def paired_bootstrap_pvalue(
    a: Sequence[float], b: Sequence[float], n: int = 1000, seed: int = 0
) -> float:
    """Two-sided p-value that mean(a) and mean(b) differ, by paired bootstrap over items.

    Items are resampled together (a[i] with b[i]); the resampled differences are centred on
    the observed one to simulate the null, and p = (1 + #{|d* - d| >= |d|}) / (1 + n).
    """
    _check_resamples(n)
    d = _paired_diffs(a, b)
    observed = d.mean()
    if observed == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    resampled = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    extreme = np.abs(resampled - observed) >= abs(observed) - 1e-12
    return float((1 + extreme.sum()) / (1 + n))


def paired_permutation_pvalue(
    a: Sequence[float], b: Sequence[float], n: int = 10000, seed: int = 0
) -> float:
    """Two-sided p-value of a paired sign-flip permutation test on mean(a) - mean(b).

    Under the null the two models are exchangeable on each item, so each difference's sign is
    a coin flip. When 2^m <= n (m = items whose scores differ) every flip pattern is
    enumerated and the p-value is exact; otherwise n random patterns give
    p = (1 + #{|mean| >= |observed|}) / (1 + n).
    """
    _check_resamples(n)
    d = _paired_diffs(a, b)
    nz = d[d != 0]
    observed = abs(nz.sum())
    if len(nz) == 0:
        return 1.0
    tol = 1e-9 * max(1.0, observed)
    m = len(nz)
    if m <= 16 and 2**m <= n:  # at most 65,536 x 16 signs
        # Row k of `signs` is the binary expansion of k mapped to +1/-1: all 2^m patterns.
        bits = (np.arange(2**m)[:, None] >> np.arange(m)) & 1
        sums = np.abs(((1 - 2 * bits) * nz).sum(axis=1))
        return float((sums >= observed - tol).mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n, m))
    sums = np.abs((signs * nz).sum(axis=1))
    return float((1 + (sums >= observed - tol).sum()) / (1 + n))


@dataclass(frozen=True)
class PairedComparison:
    """Model A against model B on the same items: what ``lmops eval compare`` reports."""

    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean_a - mean_b
    ci_low: float  # bootstrap interval of the difference
    ci_high: float
    p_value: float  # paired permutation test, two-sided
    alpha: float

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean_a": self.mean_a,
            "mean_b": self.mean_b,
            "diff": self.diff,
            "ci": [self.ci_low, self.ci_high],
            "p_value": self.p_value,
            "alpha": self.alpha,
            "significant": self.significant,
        }


def paired_comparison(
    a: Sequence[float],
    b: Sequence[float],
    *,
    alpha: float = 0.05,
    n: int = 10000,
    seed: int = 0,
) -> PairedComparison:
    """Means, the bootstrap CI of their difference and a permutation p-value, in one object."""
    d = _paired_diffs(a, b)
    low, high = bootstrap_ci(list(d), n=min(n, 2000), alpha=alpha, seed=seed)
    return PairedComparison(
        n=len(d),
        mean_a=mean(a),
        mean_b=mean(b),
        diff=float(d.mean()),
        ci_low=low,
        ci_high=high,
        p_value=paired_permutation_pvalue(a, b, n=n, seed=seed),
        alpha=alpha,
    )


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------


class Metric(NamedTuple):
    item_fn: Callable[..., Any]
    aggregate_fn: Callable[[Sequence[Any]], float]
    higher_is_better: bool


METRICS: dict[str, Metric] = {
    "exact_match": Metric(exact_match, mean, True),
    "f1": Metric(f1, mean, True),
    "rouge_l": Metric(rouge_l, mean, True),
    "bleu": Metric(bleu_item, bleu_aggregate, True),
    "acc": Metric(acc, mean, True),
    "acc_norm": Metric(acc_norm, mean, True),
    # tool use (eval/tools.py): the task's tools come as the metrics' ``tools`` option
    "tool_name": Metric(tool_name, mean, True),
    "tool_args_valid": Metric(tool_args_valid, mean, True),
    "tool_args_match": Metric(tool_args_match, mean, True),
}


def get_metric(name: str) -> Metric:
    """The registered metric called ``name``; a user error naming the known ones otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise UserError(_unknown(name)) from None


def _unknown(name: str) -> str:
    return f"unknown metric {name!r}; {name_hint(name, sorted(METRICS), 'known metrics')}"


def metric_problem(name: str, options: Iterable[str]) -> str | None:
    """What is wrong with a task file's metric entry (an unknown name, an option its item
    function does not take, as lm-eval passes the entry's other keys to it), or None."""
    import inspect

    if name not in METRICS:
        return _unknown(name)
    takes = inspect.signature(METRICS[name].item_fn).parameters
    unknown = [k for k in options if k not in takes or k in ("pred", "ref")]
    if not unknown:
        return None
    keyword = [n for n, p in takes.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return f"{name} has no option {unknown[0]!r}" + (
        f" (options: {', '.join(keyword)})" if keyword else " (it takes none)"
    )


def aggregate(name: str, items: Iterable[Any]) -> float:
    """Aggregate per-item results of metric ``name`` (e.g. mean, or corpus BLEU)."""
    return get_metric(name).aggregate_fn(list(items))
