"""A trainable document quality classifier: hashed n-gram features, logistic regression.

The fastText-style quality classifiers of DCLM and FineWeb-Edu, reduced to numpy: you
give examples of text you want (``good``) and text you do not (``bad``), and the
classifier learns which word and character n-grams tell them apart.

Features
    The text is lower-cased, ASCII digits become ``0``, whitespace runs become one space
    (a newline where the run held one). Features are word unigrams and bigrams (words as
    in :data:`lmops.text.words.WORD_RE`: letter/digit runs, single CJK characters,
    single symbols) plus character 2-, 3- and 4-grams, which carry Chinese, where there
    are no spaces. Each n-gram is hashed with a stable 64-bit hash (never Python's salted
    ``hash``) into ``2**bits`` buckets (``bits`` = 18); a bucket's value is
    ``log(1 + count)`` and the vector is scaled to unit length, so long and short
    documents are comparable.

Model
    Logistic regression with L2 regularisation, trained by mini-batch Adagrad over a
    shuffled order drawn from ``seed``; classes are weighted to count equally, so the
    default threshold 0.5 means "as likely good as bad" whatever the class sizes. Training
    is deterministic for a seed.

File
    One ``.npz`` file (read with ``allow_pickle=False``): a JSON header, the weights
    (``float32``, one per bucket) and the bias.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lmops.core.atomic import write_atomic
from lmops.core.errors import UserError
from lmops.data.ngram_lm import ngram_hashes, normalize_lines
from lmops.text.logistic import Features, fit_adagrad, sigmoid, sparse_batch
from lmops.text.words import WORD_RE, word_id

__all__ = [
    "FEATURE_BITS",
    "ClassifierReport",
    "QualityClassifier",
    "features",
    "train_quality_classifier",
]

FEATURE_BITS = 18
FORMAT = "lmops-quality-classifier"
FORMAT_VERSION = 1
FEATURES = "lower,digits0;word1-2;char2-4;log1p;l2"  # recorded in the file; checked on load


def features(text: str, bits: int = FEATURE_BITS) -> Features:
    """(bucket indices, values) of ``text``'s sparse feature vector; indices are sorted
    and distinct, values are ``log1p(count)`` scaled to unit L2 norm. Empty text has
    no features."""
    norm = "\n".join(normalize_lines(text.lower()))
    if not norm:
        return np.zeros(0, dtype=np.intp), np.zeros(0)
    words = np.array([word_id(w) for w in WORD_RE.findall(norm)], dtype=np.uint64)
    codes = np.frombuffer(norm.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint64)
    # Independent hash families (seeds) for words and characters; n-grams shorter than
    # the document are skipped (their hashes are placeholders).
    w1, w2 = ngram_hashes(words, 2, seed=1)
    c = ngram_hashes(codes, 4, seed=2)
    hashes = np.concatenate((w1, w2[1:], c[1][1:], c[2][2:], c[3][3:]))
    buckets, counts = np.unique(hashes >> np.uint64(64 - bits), return_counts=True)
    values = np.log1p(counts)
    return buckets.astype(np.intp), values / math.sqrt(float(values @ values))


@dataclass
class QualityClassifier:
    """A trained classifier: ``prob(text)`` is the probability that ``text`` is good."""

    weights: npt.NDArray[np.float32]
    bias: float
    bits: int = FEATURE_BITS
    meta: dict[str, Any] = field(default_factory=dict)

    def logit(self, feats: Features) -> float:
        idx, val = feats
        return float(self.weights[idx].astype(np.float64) @ val) + self.bias

    def prob(self, text: str) -> float:
        """Probability (0-1) that ``text`` is like the ``good`` training examples."""
        return float(sigmoid(np.array(self.logit(features(text, self.bits)))))

    def probs(self, texts: Iterable[str]) -> npt.NDArray[np.float64]:
        return np.array([self.prob(t) for t in texts])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to ``path`` (one ``.npz`` file, via a temp file and a rename)."""
        target = Path(path)
        header = {"format": FORMAT, "version": FORMAT_VERSION, "bits": self.bits,
                  "features": FEATURES, "meta": self.meta}  # fmt: skip
        arrays: dict[str, npt.NDArray[Any]] = {
            "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            "weights": self.weights.astype(np.float32),
            "bias": np.array([self.bias]),
        }
        write_atomic(target, lambda fh: np.savez_compressed(fh, allow_pickle=False, **arrays))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QualityClassifier:
        """Read a classifier written by :meth:`save`; :class:`UserError` if it is not one."""
        p = Path(path)
        if not p.is_file():
            raise UserError(
                f"{p}: no such classifier file; train one with train_quality_classifier"
            )
        try:
            with np.load(p, allow_pickle=False) as z:
                head = json.loads(z["header"].tobytes()) if "header" in z.files else {}
                if head.get("format") != FORMAT:
                    raise UserError(f"{p}: not an lmops quality classifier")
                if head.get("version") != FORMAT_VERSION or head.get("features") != FEATURES:
                    raise UserError(
                        f"{p}: classifier format {head.get('version')} ({head.get('features')}),"
                        f" this lmops reads {FORMAT_VERSION} ({FEATURES}); retrain it"
                    )
                weights, bias = z["weights"], float(z["bias"][0])
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{p}: not a readable lmops quality classifier ({e})") from None
        bits = int(head["bits"])
        if weights.shape != (1 << bits,):
            raise UserError(f"{p}: damaged classifier (weights do not match 2**{bits} buckets)")
        return cls(weights=weights, bias=bias, bits=bits, meta=dict(head.get("meta", {})))


@dataclass(frozen=True)
class ClassifierReport:
    """What :func:`train_quality_classifier` did; accuracies are at threshold 0.5."""

    path: str
    good: int
    bad: int
    train_docs: int
    valid_docs: int
    train_accuracy: float
    valid_accuracy: float
    valid_log_loss: float
    epochs: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    order = rng.permutation(n).tolist()
    n_valid = min(n - 1, max(1, round(n * fraction)))
    return order[n_valid:], order[:n_valid]


def _logits(w: npt.NDArray[Any], b: float, feats: Sequence[Features]) -> npt.NDArray[np.float64]:
    if not feats:
        return np.zeros(0)
    idx, val, row = sparse_batch(feats, range(len(feats)))
    z = np.bincount(row, weights=w[idx] * val, minlength=len(feats)).astype(np.float64)
    return z + b


def _metrics(
    w: npt.NDArray[Any], b: float, feats: Sequence[Features], y: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """(accuracy, mean log loss) at threshold 0.5."""
    if not feats:
        return math.nan, math.nan
    z = _logits(w, b, feats)
    acc = float(np.mean((z > 0) == (y > 0.5)))
    # log(1 + exp(-z)) for positives, log(1 + exp(z)) for negatives, computed stably.
    loss = float(np.mean(np.logaddexp(0.0, np.where(y > 0.5, -z, z))))
    return acc, loss


def train_quality_classifier(
    good: Iterable[str],
    bad: Iterable[str],
    out_file: str | os.PathLike[str],
    *,
    epochs: int = 10,
    seed: int = 0,
    valid_fraction: float = 0.1,
    learning_rate: float = 0.5,
    l2: float = 1e-6,
    batch_size: int = 32,
    bits: int = FEATURE_BITS,
) -> ClassifierReport:
    """Train a good-vs-bad classifier, save it to ``out_file`` and report its accuracy.

    ``valid_fraction`` (10 %) of each class, drawn with ``seed``, is held out and only
    scored: ``valid_accuracy`` is measured on documents the model never saw, and the
    saved model is the one measured. Needs at least two examples of each class.
    ``l2`` is the L2 penalty per example; ``learning_rate`` is Adagrad's step size.
    """
    if epochs < 1 or batch_size < 1 or not 0 < valid_fraction < 1 or not 8 <= bits <= 26:
        raise UserError(
            "train_quality_classifier: need epochs >= 1, batch_size >= 1, "
            "0 < valid_fraction < 1 and 8 <= bits <= 26"
        )
    pos = [features(t, bits) for t in good]
    neg = [features(t, bits) for t in bad]
    if len(pos) < 2 or len(neg) < 2:
        raise UserError(
            f"train_quality_classifier: got {len(pos)} good and {len(neg)} bad examples; "
            "give at least 2 of each (hundreds for a useful model)"
        )
    rng = np.random.default_rng(seed)
    pos_train, pos_valid = _split(len(pos), valid_fraction, rng)
    neg_train, neg_valid = _split(len(neg), valid_fraction, rng)
    train = [pos[i] for i in pos_train] + [neg[i] for i in neg_train]
    y = np.array([1.0] * len(pos_train) + [0.0] * len(neg_train))
    valid = [pos[i] for i in pos_valid] + [neg[i] for i in neg_valid]
    y_valid = np.array([1.0] * len(pos_valid) + [0.0] * len(neg_valid))
    w, b = fit_adagrad(train, y, rng, epochs, learning_rate, l2, batch_size, bits)

    train_acc, _ = _metrics(w, b, train, y)
    valid_acc, valid_loss = _metrics(w, b, valid, y_valid)
    target = Path(out_file)
    report = ClassifierReport(
        path=str(target),
        good=len(pos),
        bad=len(neg),
        train_docs=len(train),
        valid_docs=len(valid),
        train_accuracy=train_acc,
        valid_accuracy=valid_acc,
        valid_log_loss=valid_loss,
        epochs=epochs,
        seed=seed,
    )
    meta = {k: v for k, v in report.to_dict().items() if k != "path"}
    QualityClassifier(w.astype(np.float32), b, bits, meta).save(target)
    return report
