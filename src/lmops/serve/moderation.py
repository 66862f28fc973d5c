"""The gateway's moderation classifier: a bilingual harmful-vs-benign model beside the term lists.

Term lists (``resources/<category>.txt``) carry exact policy terms; they miss paraphrases,
role-play framing and most obfuscations. This model is their default complement
(``GuardrailConfig.classifier = "builtin"``): hashed word and character n-grams, logistic
regression trained with :func:`lmops.data.classifier.fit_logistic` (the data stage's
trainer), on a bilingual data set shipped in ``resources/moderation/`` and rebuilt by
``benchmarks/build_moderation_set.py``. Retrain on your own rows with ``lmops guard train``.

Text -> features
    :func:`lmops.serve.guardrails.normalize_text` (NFKC, lower case, zero-width characters
    dropped, traditional -> simplified Chinese, separators between Chinese characters
    removed), then :func:`deobfuscate`: Latin diacritics (pinyin tone marks) stripped,
    Cyrillic/Greek look-alikes folded to Latin, single letters spaced or dotted out
    ("b o m b", "b.o.m.b") joined, pinyin tone numbers ("zha4 dan4") dropped, leet digits
    and symbols inside words (``b0mb``, ``k1ll``, ``$ex``) read as letters; real numbers
    ("10mg", "python3", "3d", "2024") are left alone. Digits then become ``0`` and
    whitespace runs one space. Features are word unigrams and bigrams (words as in
    :data:`lmops.data.ngram_lm.WORD_RE`: each Chinese character is a word) and character
    2-, 3- and 4-grams of the text padded with a space, hashed into ``2**bits`` buckets
    (a polynomial rolling hash, then multiply-shift); each occurrence is valued
    ``1 / sqrt(number of n-grams)``. No sorting or counting: a message costs a handful of
    numpy calls (``benchmarks/guard_bench.py --parts moderation``).

Model
    Head 0 scores harmful vs benign; with categories in the training rows, one head per
    category (that category vs the other harmful rows) names the category of a harmful
    text. ``model(text)`` returns ``{category: P(harmful)}`` for the best category, so a
    harmful text is counted once, in its most likely category.

Threshold
    Chosen when training from out-of-fold scores (``folds`` folds, rows grouped by their
    ``group`` field so that paraphrases of one template never sit on both sides): the
    highest threshold that keeps ``target_recall`` of the harmful rows. It is stored in the
    file and used unless ``GuardrailConfig.classifier_threshold`` is set.

File
    One ``.npz`` (read with ``allow_pickle=False``): a JSON header (format, bits, feature
    recipe, categories, threshold, training report) and the weights (``float16``, one row
    per head) and biases.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lmops.core.errors import UserError
from lmops.core.jsonl import json_objects
from lmops.data.classifier import fit_logistic
from lmops.data.ngram_lm import WORD_RE, word_id, write_atomic

__all__ = [
    "DEFAULT_BITS",
    "LabeledText",
    "ModerationModel",
    "TrainReport",
    "builtin_data_path",
    "builtin_model",
    "builtin_model_path",
    "deobfuscate",
    "evaluate",
    "features",
    "read_labeled",
    "train_moderation_classifier",
]

FORMAT = "lmops-moderation-classifier"
FORMAT_VERSION = 1
FEATURES = "normalize_text,deobfuscate1,digits0;word1-2;char2-4;poly-mulshift;count/sqrt(n)"
DEFAULT_BITS = 18
HARMFUL = "harmful"  # the category of a harmful verdict from a model without category heads

Features = tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]


# ============================================================================ de-obfuscation
def _fold_table() -> dict[int, str]:
    """Latin letters with diacritics -> the bare letter; Cyrillic and Greek look-alikes ->
    the Latin letter they pass for (lower case: the text is lower-cased before)."""
    table: dict[int, str] = {}
    for cp in [*range(0xC0, 0x250), *range(0x1E00, 0x1F00)]:
        base = unicodedata.normalize("NFKD", chr(cp))[:1]
        if chr(cp).isalpha() and base.isascii() and base.isalpha():
            table[cp] = base.lower()
    table.update({ord("ø"): "o", ord("ł"): "l", ord("đ"): "d", ord("ı"): "i", ord("ɑ"): "a"})
    table.update({ord("ɡ"): "g", ord("ȷ"): "j"})
    # Unicode's confusables.txt has thousands of entries; these are the lower-case
    # Cyrillic and Greek letters that pass for Latin ones in ordinary fonts.
    cyrillic = "аaвbеeёeгrіiїiјjкkмmнhоoпnрpсcтtуyхxѕsԁdһhԛqԝwӏlьbъbѵv"
    greek = "αaβbγyδdεeζzηnιiκkμuνvοoρpσoςsτtυuχxωwϲcϳjάaέeίiόoύuώw"
    for pairs in (cyrillic, greek):
        table.update({ord(pairs[i]): pairs[i + 1] for i in range(0, len(pairs), 2)})
    return table


_FOLD = _fold_table()
_FOLD_ANY = re.compile("[" + "".join(map(chr, sorted(_FOLD))) + "]")
# Single characters spaced or dotted out: "b o m b", "b.o.m.b", "b * o * m * b" (at least 3).
_CH = "a-z0-9@$"
_SEP = r"[ .\-_*·|/+~,:;'\"`^]"
_SPACED = re.compile(rf"(?<![{_CH}])[{_CH}](?:{_SEP}{{1,3}}[{_CH}](?![{_CH}])){{2,}}")
# Pinyin with tone numbers: a whole word of syllables each followed by 1-5 ("zha4dan4").
_SYLLABLE = r"(?:zh|ch|sh|[bpmfdtnlgkhjqxrzcsyw])?[aeiouv]{1,3}(?:ng|n|r)?"
_PINYIN_NUM = re.compile(rf"\b(?:{_SYLLABLE}[1-5])+\b", re.ASCII)
_TONE_DIGIT = re.compile("[1-5]")
# Leet: a word mixing letters with digits or @$!| ("b0mb", "k1ll", "$ex", "h3r0in").
_LEETISH = "0-9@$!|"
_LEET_HINT = re.compile(rf"[a-z][{_LEETISH}]|[0-9@$][a-z]")
_LEET_WORD = re.compile(rf"[a-z{_LEETISH}]*(?:[a-z][{_LEETISH}]|[0-9@$][a-z])[a-z{_LEETISH}]*")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                       "$": "s", "!": "i", "|": "l"})  # fmt: skip
# A number with a unit or an ordinal is a number: "10mg", "2nd", "3d", "1080p", "5th".
_UNIT = re.compile(
    r"(?:st|nd|rd|th|[a-z]|kg|mg|mcg|ml|mm|cm|km|gb|mb|kb|tb|hz|khz|mhz|ghz|px|am|pm|kw|kwh"
    r"|fps|min|hr|hrs|ms|lbs?|oz|ft|mph|yo|yrs?|ch|bit|k[mb]ps)s?"
)


def _join_spaced(m: re.Match[str]) -> str:
    s = m.group()
    chars = [c for c in s if c.isalnum() or c in "@$"]
    if sum(c.isalpha() for c in chars) < 2:  # "1 2 3", "v 1.2"
        return s
    if chars[0] in "ai" and s[1] == " " and len(chars) >= 4:  # "a b o m b": the article stays
        return chars[0] + " " + "".join(chars[1:])
    return "".join(chars)


def _unleet(m: re.Match[str]) -> str:
    word = m.group()
    lead = len(word) - len(word.lstrip("0123456789@$!|"))
    trail = len(word) - len(word.rstrip("0123456789@$!|"))
    head, mid, tail = word[:lead], word[lead : len(word) - trail], word[len(word) - trail :]
    if head.isdigit() and not tail and _UNIT.fullmatch(mid):
        return word  # a number: "10mg", "3d"
    head = head.translate(_LEET) if head.strip("!|") == head else head
    mid = mid.replace("11", "ll").translate(_LEET)
    # Trailing digits are usually a version or a count ("python3", "win10"); "ki11" is not.
    tail = "ll" if tail == "11" else tail
    return head + mid + tail


def deobfuscate(normalized: str) -> str:
    """Undo the spellings that hide words from a classifier, on :func:`normalize_text`'s
    output (lower case). Each step runs only where its characters occur; ordinary text
    comes back unchanged."""
    t = normalized
    if not t.isascii() and _FOLD_ANY.search(t) is not None:
        t = t.translate(_FOLD)
    if _SPACED.search(t) is not None:
        t = _SPACED.sub(_join_spaced, t)
    if _LEET_HINT.search(t) is not None:
        t = _PINYIN_NUM.sub(lambda m: _TONE_DIGIT.sub("", m.group()), t)
        t = _LEET_WORD.sub(_unleet, t)
    return t


# ============================================================================ features
_DIGITS0 = str.maketrans("123456789", "000000000")
_P = np.uint64(0x9E3779B97F4A7C15)  # the golden-ratio multiplier of the rolling hash
_SALT = np.uint64(0x2545F4914F6CDD1D)  # starts the character n-grams apart from the words
_A = np.uint64(0xD6E8FEB86659FD93)  # multiply-shift hashing into buckets (odd)


def features(text: str, bits: int = DEFAULT_BITS) -> Features:
    """(bucket indices, values) of already de-obfuscated ``text``: one index per n-gram
    occurrence (repeats included), each valued ``1 / sqrt(number of n-grams)``, so that the
    score is ``sum(w[idx]) / sqrt(n)`` with no sorting or counting. Empty text: none."""
    t = " ".join(text.translate(_DIGITS0).split())
    if not t:
        return np.zeros(0, dtype=np.intp), np.zeros(0)
    words = WORD_RE.findall(t)
    w1 = np.array([word_id(w) for w in words], dtype=np.uint64)
    c = np.frombuffer(f" {t} ".encode("utf-32-le", "surrogatepass"), dtype="<u4")
    c = c.astype(np.uint64)
    # Polynomial n-gram hashes, each extending the one before it.
    c2 = (c[:-1] + _SALT) * _P + c[1:]
    c3 = c2[:-1] * _P + c[2:]
    c4 = c3[:-1] * _P + c[3:]
    w2 = w1[:-1] * _P + w1[1:]
    buckets = (np.concatenate((w1, w2, c2, c3, c4)) * _A) >> np.uint64(64 - bits)
    return buckets.astype(np.intp), np.full(buckets.size, 1.0 / math.sqrt(buckets.size))


def _text_features(text: str, bits: int) -> Features:
    from lmops.serve.guardrails import normalize_text  # guardrails imports this module

    return features(deobfuscate(normalize_text(text)), bits)


# ============================================================================ model
@dataclass
class ModerationModel:
    """A trained moderation classifier; ``model(text)`` is ``{category: P(harmful)}``."""

    weights: npt.NDArray[np.float32]  # (1 + len(categories), 2**bits)
    biases: npt.NDArray[np.float64]  # (1 + len(categories),)
    categories: tuple[str, ...]
    threshold: float
    bits: int = DEFAULT_BITS
    meta: dict[str, Any] = field(default_factory=dict)

    def __call__(self, text: str) -> dict[str, float]:
        from lmops.serve.guardrails import normalize_text

        return self.score_normalized(normalize_text(text))

    def score_normalized(self, normalized: str) -> dict[str, float]:
        """:meth:`__call__` on ``normalize_text(text)``, for callers that have it."""
        idx, val = features(deobfuscate(normalized), self.bits)
        if not idx.size:
            return {}
        z = float(self.weights[0, idx].sum()) * float(val[0]) + float(self.biases[0])
        p = 0.5 * (1.0 + math.tanh(0.5 * z))  # the logistic function, without overflow
        if not self.categories:
            return {HARMFUL: p}
        if p < 0.5 * self.threshold:  # clearly benign (nearly all traffic): skip the heads
            return {self.categories[0]: p}
        heads = self.weights[1:, idx].sum(axis=1) * float(val[0]) + self.biases[1:]
        return {self.categories[int(np.argmax(heads))]: p}

    def prob(self, text: str) -> float:
        """P(harmful) of ``text``."""
        return max(self(text).values(), default=0.0)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one ``.npz`` file (via a temp file and a rename)."""
        target = Path(path)
        header = {"format": FORMAT, "version": FORMAT_VERSION, "bits": self.bits,
                  "features": FEATURES, "categories": list(self.categories),
                  "threshold": self.threshold, "meta": self.meta}  # fmt: skip
        arrays: dict[str, npt.NDArray[Any]] = {
            "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            "weights": self.weights.astype(np.float16),
            "biases": np.asarray(self.biases, dtype=np.float64),
        }
        write_atomic(target, lambda fh: np.savez_compressed(fh, allow_pickle=False, **arrays))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModerationModel:
        """Read a model written by :meth:`save`; :class:`UserError` if it is not one."""
        p = Path(path)
        if not p.is_file():
            raise UserError(
                f"{p}: no such moderation classifier; train one with `lmops guard train`"
            )
        try:
            with np.load(p, allow_pickle=False) as z:
                head = json.loads(z["header"].tobytes()) if "header" in z.files else {}
                if head.get("format") != FORMAT:
                    raise UserError(
                        f"{p}: not an lmops moderation classifier; train one with "
                        "`lmops guard train`"
                    )
                if head.get("version") != FORMAT_VERSION or head.get("features") != FEATURES:
                    raise UserError(
                        f"{p}: moderation classifier format {head.get('version')} "
                        f"({head.get('features')}), this lmops reads {FORMAT_VERSION} "
                        f"({FEATURES}); retrain it with `lmops guard train`"
                    )
                weights = z["weights"].astype(np.float32)
                biases = z["biases"].astype(np.float64)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{p}: not a readable moderation classifier ({e})") from None
        bits, cats = int(head["bits"]), tuple(head["categories"])
        if weights.shape != (1 + len(cats), 1 << bits) or biases.shape != (1 + len(cats),):
            raise UserError(f"{p}: damaged moderation classifier (weights do not match header)")
        return cls(weights, biases, cats, float(head["threshold"]), bits, dict(head["meta"]))


@cache
def _load_cached(path: str, mtime_ns: int, size: int) -> ModerationModel:
    return ModerationModel.load(path)


def load_model(path: str | os.PathLike[str]) -> ModerationModel:
    """:meth:`ModerationModel.load`, shared between callers while the file is unchanged."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        return ModerationModel.load(p)  # raises the one-line error
    return _load_cached(str(p), st.st_mtime_ns, st.st_size)


def builtin_model_path() -> Path:
    return Path(str(resources.files("lmops.serve").joinpath("resources/moderation/model.npz")))


def builtin_data_path() -> Path:
    return Path(str(resources.files("lmops.serve").joinpath("resources/moderation/data.jsonl")))


def builtin_model() -> ModerationModel:
    """The shipped model (trained on the ``train`` rows of the shipped data set)."""
    return load_model(builtin_model_path())


# ============================================================================ data
_CATEGORY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_LABELS = {"harmful": True, "benign": False, "1": True, "0": False, "true": True, "false": False}


@dataclass(frozen=True, slots=True)
class LabeledText:
    """One training or evaluation row. ``group``: rows sharing it are paraphrases of one
    template and stay on one side of a split; ``split``: ``"test"`` rows are never trained
    on; ``info``: the row's other fields (language, obfuscation, ...), for reports."""

    text: str
    harmful: bool
    category: str | None = None
    group: str | None = None
    split: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


def read_labeled(path: str | os.PathLike[str]) -> list[LabeledText]:
    """Rows of a JSONL file: ``{"text": str, "label": "harmful" | "benign" (or 1/0,
    true/false), "category": str (optional), "group": str, "split": str (optional)}``.
    A bad row raises :class:`UserError` naming ``file:line`` and the field."""
    p = Path(path)
    try:
        data = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read it ({e})") from None
    rows = []
    for _, where, row in json_objects(data, str(p)):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: text: need a non-empty string")
        label = row.get("label")
        harmful = _LABELS.get(str(label).lower()) if isinstance(label, str | int | bool) else None
        if harmful is None:
            raise UserError(
                f"{where}: label: {label!r} is not one of harmful, benign (or 1, 0, true, false)"
            )
        category = row.get("category")
        if category is not None and (
            not isinstance(category, str) or not _CATEGORY.fullmatch(category)
        ):
            raise UserError(
                f"{where}: category: {category!r}; use lower-case letters, digits and '_'"
            )
        for name in ("group", "split"):
            if row.get(name) is not None and not isinstance(row[name], str):
                raise UserError(f"{where}: {name}: need a string")
        info = {k: v for k, v in row.items() if k not in ("text", "label", "category")}
        rows.append(
            LabeledText(
                text,
                harmful,
                category if harmful else None,
                row.get("group"),
                row.get("split"),
                info,
            )
        )
    if not rows:
        raise UserError(f"{p}: no rows; write one JSON object per line with text and label")
    return rows


# ============================================================================ training
@dataclass(frozen=True)
class TrainReport:
    """What :func:`train_moderation_classifier` did. ``cv_*`` are out-of-fold figures at
    the chosen threshold (None without folds)."""

    path: str
    harmful: int
    benign: int
    categories: dict[str, int]
    threshold: float
    cv_recall: float | None
    cv_false_positive_rate: float | None
    folds: int
    fold_by: str
    bits: int
    epochs: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fold_of(row: LabeledText, i: int, folds: int, by: str) -> int:
    value = row.group if by == "group" else row.info.get(by)
    key = str(value if value is not None else f"row:{i}").encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little") % folds


def train_moderation_classifier(
    rows: Iterable[LabeledText],
    output: str | os.PathLike[str],
    *,
    bits: int = DEFAULT_BITS,
    epochs: int = 8,
    seed: int = 0,
    folds: int = 4,
    target_recall: float = 0.97,
    threshold: float | None = None,
    fold_by: str = "group",
) -> TrainReport:
    """Train on ``rows`` (``split == "test"`` rows are left out), save to ``output``.

    ``threshold`` None: chosen from out-of-fold scores over ``folds`` folds, rows kept
    together by their ``fold_by`` field (``group``, or an ``info`` field such as the
    template ``family``; a row without it is its own group): the highest threshold that
    keeps ``target_recall`` of the harmful rows (0.5 with ``folds`` < 2).
    Category heads are trained when the harmful rows name two categories or more.
    """
    train = [r for r in rows if r.split != "test"]
    pos = sum(r.harmful for r in train)
    if pos < 2 or len(train) - pos < 2:
        raise UserError(
            f"moderation training: got {pos} harmful and {len(train) - pos} benign rows "
            "(split test left out); give at least 2 of each (hundreds for a useful model)"
        )
    if not 0 < target_recall <= 1 or (threshold is not None and not 0 < threshold < 1):
        raise UserError("moderation training: need 0 < target_recall <= 1 and 0 < threshold < 1")
    fit = {"epochs": epochs, "seed": seed, "bits": bits}
    feats = [features(deobfuscate(_normalize(r.text)), bits) for r in train]
    y = np.array([1.0 if r.harmful else 0.0 for r in train])

    cv_recall = cv_fp = None
    if folds >= 2:
        fold = np.array([_fold_of(r, i, folds, fold_by) for i, r in enumerate(train)])
        oof = np.zeros(len(train))
        for k in range(folds):
            held, kept = fold == k, fold != k
            if not held.any() or len(set(y[kept])) < 2:
                continue
            w, b = fit_logistic([f for f, m in zip(feats, kept, strict=True) if m], y[kept], **fit)
            oof[held] = [_prob(w, b, f) for f, m in zip(feats, held, strict=True) if m]
        if threshold is None:
            scores = np.sort(oof[y > 0.5])
            threshold = float(scores[math.floor((1 - target_recall) * len(scores))])
            threshold = min(max(threshold, 0.01), 0.99)
        cv_recall = float(np.mean(oof[y > 0.5] >= threshold))
        cv_fp = float(np.mean(oof[y < 0.5] >= threshold))
    elif threshold is None:
        threshold = 0.5

    w0, b0 = fit_logistic(feats, y, **fit)
    by_cat = Counter(r.category for r in train if r.harmful and r.category)
    cats = tuple(sorted(by_cat)) if len(by_cat) >= 2 else ()
    heads, biases = [w0], [b0]
    harmful = [i for i, r in enumerate(train) if r.harmful and r.category in by_cat]
    for cat in cats:
        labels = [1.0 if train[i].category == cat else 0.0 for i in harmful]
        w, b = fit_logistic([feats[i] for i in harmful], labels, **fit)
        heads.append(w)
        biases.append(b)
    report = TrainReport(
        path=str(output),
        harmful=pos,
        benign=len(train) - pos,
        categories=dict(sorted(by_cat.items())),
        threshold=round(threshold, 4),
        cv_recall=cv_recall,
        cv_false_positive_rate=cv_fp,
        folds=folds if cv_recall is not None else 0,
        fold_by=fold_by,
        bits=bits,
        epochs=epochs,
        seed=seed,
    )
    meta = {k: v for k, v in report.to_dict().items() if k != "path"}
    model = ModerationModel(
        np.stack(heads).astype(np.float32), np.array(biases), cats, report.threshold, bits, meta
    )
    model.save(output)
    return report


def _normalize(text: str) -> str:
    from lmops.serve.guardrails import normalize_text

    return normalize_text(text)


def _prob(w: npt.NDArray[np.float64], b: float, f: Features) -> float:
    z = float(w[f[0]] @ f[1]) + b
    return 0.5 * (1.0 + math.tanh(0.5 * z))


# ============================================================================ evaluation
def evaluate(
    model: ModerationModel,
    rows: Iterable[LabeledText],
    *,
    threshold: float | None = None,
    by: Sequence[str] = (),
) -> dict[str, Any]:
    """Recall on harmful rows and false-positive rate on benign rows at ``threshold``
    (default: the model's), overall and per value of each ``info`` field in ``by``."""
    t = model.threshold if threshold is None else threshold

    def tally(pairs: list[tuple[LabeledText, bool]]) -> dict[str, Any]:
        pos = [hit for r, hit in pairs if r.harmful]
        neg = [hit for r, hit in pairs if not r.harmful]
        return {
            "harmful": len(pos),
            "benign": len(neg),
            "recall": sum(pos) / len(pos) if pos else None,
            "false_positive_rate": sum(neg) / len(neg) if neg else None,
        }

    pairs = [(r, model.prob(r.text) >= t) for r in rows]
    out: dict[str, Any] = {"threshold": t, **tally(pairs)}
    for name in by:
        groups: dict[str, list[tuple[LabeledText, bool]]] = {}
        for r, hit in pairs:
            groups.setdefault(str(r.info.get(name, "-")), []).append((r, hit))
        out[f"by_{name}"] = {k: tally(v) for k, v in sorted(groups.items())}
    return out
