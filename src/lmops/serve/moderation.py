"""The gateway's moderation classifier: a bilingual harmful-vs-benign model beside the term lists.

Term lists (``resources/<category>.txt``) carry exact policy terms; they miss paraphrases,
role-play framing and most obfuscations. This model is their default complement
(``GuardrailConfig.classifier = "builtin"``), trained on a bilingual data set shipped in
``resources/moderation/`` (``benchmarks/build_moderation_set.py`` builds it and the model;
``lmops guard train`` retrains on your own rows).

Text -> features
    :func:`lmops.serve.guardrails.normalize_text` (NFKC, lower case, zero-width characters
    dropped, traditional -> simplified Chinese, separators between Chinese characters
    removed), then :func:`deobfuscate`: Latin diacritics (pinyin tone marks) stripped,
    Cyrillic/Greek look-alikes folded to Latin, single letters spaced or dotted out
    ("b o m b", "b.o.m.b") joined, pinyin tone numbers ("zha4 dan4") dropped, leet digits
    and symbols inside words (``b0mb``, ``k1ll``, ``$ex``) read as letters; real numbers
    ("10mg", "python3", "3d", "2024") are left alone. Two kinds of features of that text:

    * *n-grams* (exact wording, Chinese characters, obfuscated spellings): word unigrams and
      bigrams (words as in :data:`lmops.data.ngram_lm.WORD_RE`: each Chinese character is a
      word) and character 2-, 3- and 4-grams of the text padded with a space, digits as
      ``0``, hashed into ``2**bits`` buckets (a polynomial rolling hash, then
      multiply-shift); each distinct bucket is valued ``n ** -power`` (``n`` of them).
    * *meaning* (words the training rows never used): the direction of the sum of the
      static embeddings of the text's words (:class:`Featurizer`: a table distilled from
      all-MiniLM-L6-v2 with Model2Vec at build time, ``benchmarks/distill_moderation_
      embeddings.py``, 64 dimensions, float16). Words it has no row for are read through a
      gloss table (``gloss.tsv``: Chinese words, their pinyin and out-of-vocabulary English
      words -> English), built from the training rows only.

Model
    Head 0 scores harmful vs benign: ``logit = b + sum(w[ngram]) * n**-power +
    v . relu(W u + c)``, ``u`` the unit embedding direction (zero without one), trained
    jointly (:func:`fit_moderation`: class-weighted log loss, sparse Adagrad for the n-gram
    weights as in :func:`lmops.data.classifier.fit_logistic`, Adam for the small dense
    layer). With categories in the training rows, one head per category (that category vs
    the other harmful rows, n-grams only, :func:`~lmops.data.classifier.fit_logistic`)
    names the category of a harmful text. ``model(text)`` returns ``{category:
    P(harmful)}`` for the best category, so a harmful text is counted once.

Several messages
    A request's messages are scored one by one and together: :meth:`ModerationModel.stats`
    of each message (kept by the caller) add up to the stats of all of them
    (:meth:`TextStats.add`), so the joined text costs no second pass (n-grams that would
    cross a message boundary are not counted).

Threshold
    Chosen when training, by a stated rule, on the training rows only (the held-out split
    is never looked at): out-of-fold scores from folds by template family *and* idea (a
    fold's model never saw the templates or the ideas of the rows it scores, as on the
    held-out split), and the lowest threshold whose out-of-fold false-positive rate on
    benign rows is at most ``max_fp`` (2 %: two thirds of the 3 % the issue allows on
    look-alikes), which gives the highest out-of-fold recall under that cap. The training
    report keeps the rule's threshold and recall at other caps (``cv_curve``). It is
    stored in the file and used unless ``GuardrailConfig.classifier_threshold`` is set
    (the shipped model: 0.5 % cap -> higher threshold, fewer false positives on ordinary
    text; 3 % -> more recall).

File
    One ``.npz`` (read with ``allow_pickle=False``): a JSON header (format, bits, power,
    feature recipe and the digest of the static table it was trained with, categories,
    threshold, training report), the n-gram weights (``float16``, one row per head),
    biases and the dense layer.
"""

from __future__ import annotations

import gzip
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
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lmops.core.errors import UserError
from lmops.core.jsonl import json_objects
from lmops.data.classifier import fit_logistic
from lmops.data.ngram_lm import WORD_RE, word_id, write_atomic

__all__ = [
    "DEFAULT_BITS",
    "Featurizer",
    "LabeledText",
    "ModerationModel",
    "TextStats",
    "TrainReport",
    "builtin_data_path",
    "builtin_model",
    "builtin_model_path",
    "deobfuscate",
    "evaluate",
    "features",
    "fit_moderation",
    "read_labeled",
    "train_moderation_classifier",
]

FORMAT = "lmops-moderation-classifier"
FORMAT_VERSION = 2
FEATURES = (
    "normalize_text,deobfuscate2,digits0;word1-2;char2-4;poly-mulshift;distinct;n**-power;static"
)
DEFAULT_BITS = 18
DEFAULT_POWER = 0.5
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
# Cheap gate for _SPACED: a lone character, a separator, another lone character.
_SPACED_HINT = re.compile(rf"(?<![{_CH}])[{_CH}]{_SEP}{{1,3}}[{_CH}](?![{_CH}])")
# Pinyin with tone numbers: a whole word of syllables each followed by 1-5 ("zha4dan4").
_SYLLABLE = r"(?:zh|ch|sh|[bpmfdtnlgkhjqxrzcsyw])?[aeiouv]{1,3}(?:ng|n|r)?"
_PINYIN_NUM = re.compile(rf"\b(?:{_SYLLABLE}[1-5])+\b", re.ASCII)
# Cheap gate for _PINYIN_NUM: two tone-numbered syllables in a row ("zha4dan4", "zha4 dan4";
# not "co2" or "mp3").
# (Each gate starts with its rare characters, a digit or a leet symbol, so that the regex
# engine skips ahead to them instead of trying every letter of ordinary text.)
_PINYIN_HINT = re.compile(r"[1-5] ?[bcdfghjklmnpqrstwxyz]{0,2}[aeiouv]{1,3}(?:ng|n|r)?[1-5]")
_TONE_DIGIT = re.compile("[1-5]")
# Leet: a word mixing letters with digits or @$!| ("b0mb", "k1ll", "$ex", "h3r0in"). The
# gate wants a leet character before a letter, so that "co2", "mp3", "wow!" and "2024" do
# not start the (slower) rewrite.
_LEETISH = "0-9@$!|"
_LEET_HINT = re.compile(rf"[{_LEETISH}]+[a-z]")
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
    output (lower case). Each step runs only where its characters occur (a cheap search
    gates each rewrite); ordinary text comes back unchanged."""
    t = normalized
    if not t.isascii() and _FOLD_ANY.search(t) is not None:
        t = t.translate(_FOLD)
    if _SPACED_HINT.search(t) is not None:
        t = _SPACED.sub(_join_spaced, t)
    if _PINYIN_HINT.search(t) is not None:
        t = _PINYIN_NUM.sub(lambda m: _TONE_DIGIT.sub("", m.group()), t)
    if _LEET_HINT.search(t) is not None:
        t = _LEET_WORD.sub(_unleet, t)
    return t


# ============================================================================ static embeddings
def _resource(name: str) -> Path:
    return Path(str(resources.files("lmops.serve").joinpath(f"resources/moderation/{name}")))


def _trie_regex(keys: Iterable[str], *, words: bool) -> re.Pattern[str] | None:
    """One regular expression matching any of ``keys``, longest first, as a trie (shared
    prefixes are tried once); ``words``: only at word boundaries (for Latin keys)."""
    trie: dict[str, Any] = {}
    for k in keys:
        node = trie
        for ch in k:
            node = node.setdefault(ch, {})
        node[""] = {}
    if not trie:
        return None

    def body(node: dict[str, Any]) -> str:
        alts = [re.escape(ch) + body(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        group = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{group})?" if "" in node else group

    pattern = body(trie)
    return re.compile(rf"\b{pattern}\b" if words else pattern)


_ENGLISH_WORD = re.compile(r"[a-z]+\Z")


class Featurizer:
    """Words -> rows of the static embedding table (``embeddings.npz``), through the gloss
    table (``gloss.tsv``) for words the table has no row for. Loaded once per process.

    ``digest`` (sha256 of both files) is stored in models trained with it: a model is
    only read with the table it was trained with.
    """

    def __init__(self, embeddings: Path, gloss: Path) -> None:
        h = hashlib.sha256()
        try:
            h.update(embeddings.read_bytes())
            gloss_text = gloss.read_text(encoding="utf-8")
            h.update(gloss_text.encode())
            with np.load(embeddings, allow_pickle=False) as z:
                words = z["words"].tobytes().decode().split("\n")
                vectors = z["vectors"].astype(np.float32)
        except (OSError, ValueError, KeyError) as e:  # pragma: no cover - shipped files
            raise UserError(f"{embeddings}: moderation embeddings unreadable ({e})") from None
        self.digest = h.hexdigest()
        self.vectors = vectors  # (rows, dims) float32
        self.dims = vectors.shape[1]
        # word -> row numbers; a glossed word has the rows of its gloss's words.
        self.rows: dict[str, tuple[int, ...]] = {w: (i,) for i, w in enumerate(words)}
        self._single = {w: i for i, w in enumerate(words)}  # the common case, looked up in C
        latin: list[str] = []
        cjk: list[str] = []
        for line in gloss_text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            key, _, gloss_words = line.partition("\t")
            ids = tuple(self.rows[w][0] for w in gloss_words.split() if w in self.rows)
            if not ids or key in self.rows:
                continue
            self.rows[key] = ids
            if not key.isascii():
                cjk.append(key)
            elif not _ENGLISH_WORD.match(key):  # "zha dan": several words
                latin.append(key)
        self._cjk = _trie_regex(cjk, words=False)
        self._phrases = _trie_regex(latin, words=True)
        # Words of the phrases that are no English word ("zha" of "zha dan"): the phrase
        # pass runs only where one of them occurs.
        self._syllables = {w for k in latin for w in k.split() if w not in self._single}

    def ids(self, words: Sequence[str], text: str) -> list[int]:
        """Rows for ``text`` (de-obfuscated) whose words (``WORD_RE``) are ``words``."""
        rows = self.rows
        found = list(map(self._single.get, words))
        out = [i for i in found if i is not None]
        phrase = False
        if len(out) < len(found):  # glossed words, unknown words, punctuation, digits
            syllables = self._syllables
            for w, i in zip(words, found, strict=True):
                if i is None:
                    r = rows.get(w)
                    if r is not None:
                        out.extend(r)
                    elif w in syllables:
                        phrase = True
        if self._cjk is not None and not text.isascii():
            for k in self._cjk.findall(text):
                out.extend(rows[k])
        # Spaced pinyin ("zha dan") or another glossed phrase of several words.
        if phrase and self._phrases is not None:
            for k in self._phrases.findall(text):
                out.extend(rows[k])
        return out


@cache
def builtin_featurizer() -> Featurizer:
    return Featurizer(_resource("embeddings.npz"), _resource("gloss.tsv"))


# ============================================================================ features
_DIGITS0 = str.maketrans("123456789", "000000000")
_P = np.uint64(0x9E3779B97F4A7C15)  # the golden-ratio multiplier of the rolling hash
_SALT = np.uint64(0x2545F4914F6CDD1D)  # starts the character n-grams apart from the words
_A = np.uint64(0xD6E8FEB86659FD93)  # multiply-shift hashing into buckets (odd)


_WORD_IDS: dict[str, int] = {}  # word_id's values, looked up without a Python call


def _word_ids(words: Sequence[str]) -> list[int]:
    ids = list(map(_WORD_IDS.get, words))
    if None in ids:
        if len(_WORD_IDS) >= 1 << 18:
            _WORD_IDS.clear()
        for k, (w, i) in enumerate(zip(words, ids, strict=True)):
            if i is None:
                ids[k] = _WORD_IDS[w] = word_id(w)
    return ids  # type: ignore[return-value]


def _ngrams(t: str, words: Sequence[str], bits: int) -> npt.NDArray[np.intp]:
    """The distinct buckets of the n-grams of ``t`` (digits already ``0``, spaces single).
    Distinct, so that a repeated n-gram ("xxxxxxxx...", a pasted log) counts once and an
    odd repetitive text cannot push the score without bound."""
    w1 = np.array(_word_ids(words), dtype=np.uint64)
    c = np.frombuffer(f" {t} ".encode("utf-32-le", "surrogatepass"), dtype="<u4")
    c = c.astype(np.uint64)
    # Polynomial n-gram hashes, each extending the one before it.
    c2 = (c[:-1] + _SALT) * _P + c[1:]
    c3 = c2[:-1] * _P + c[2:]
    c4 = c3[:-1] * _P + c[3:]
    w2 = w1[:-1] * _P + w1[1:]
    buckets = (np.concatenate((w1, w2, c2, c3, c4)) * _A) >> np.uint64(64 - bits)
    buckets.sort()  # then drop repeats (np.unique is several times slower)
    keep = np.empty(buckets.size, dtype=bool)
    keep[:1] = True
    np.not_equal(buckets[1:], buckets[:-1], out=keep[1:])
    return buckets[keep].astype(np.intp)


def _clean(text: str) -> str:
    return " ".join(text.translate(_DIGITS0).split())


def features(text: str, bits: int = DEFAULT_BITS, power: float = DEFAULT_POWER) -> Features:
    """(bucket indices, values) of already de-obfuscated ``text``: its distinct n-gram
    buckets, each valued ``n ** -power`` (``n`` of them), so that the n-gram part of a
    score is ``sum(w[idx]) * n ** -power``. Empty text: none."""
    t = _clean(text)
    if not t:
        return np.zeros(0, dtype=np.intp), np.zeros(0)
    idx = _ngrams(t, WORD_RE.findall(t), bits)
    return idx, np.full(idx.size, float(idx.size) ** -power)


class TextStats(NamedTuple):
    """What the model reads of a text: the n-gram sum of head 0, the number of n-grams, the
    sum of the text's static embedding rows (with its projection by the mean layer beside
    it), the max-pooled word projections, and the number of words with a row. Stats of
    several texts add (the pooled part: max)."""

    ngram_sum: float
    ngrams: int
    embedding: npt.NDArray[np.float32] | None
    pooled: npt.NDArray[np.float32] | None
    words: int

    def add(self, other: TextStats) -> TextStats:
        if other.words == 0:
            emb, pooled = self.embedding, self.pooled
        elif self.words == 0:
            emb, pooled = other.embedding, other.pooled
        else:
            emb = self.embedding + other.embedding  # type: ignore[operator]
            pooled = np.maximum(self.pooled, other.pooled)  # type: ignore[arg-type]
        return TextStats(self.ngram_sum + other.ngram_sum, self.ngrams + other.ngrams, emb,
                         pooled, self.words + other.words)  # fmt: skip


EMPTY_STATS = TextStats(0.0, 0, None, None, 0)


def _normalize(text: str) -> str:
    from lmops.serve.guardrails import normalize_text  # guardrails imports this module

    return normalize_text(text)


# ============================================================================ model
def _sigmoid(z: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * z))  # the logistic function, without overflow


@dataclass
class ModerationModel:
    """A trained moderation classifier; ``model(text)`` is ``{category: P(harmful)}``."""

    weights: npt.NDArray[np.float32]  # (1 + len(categories), 2**bits) n-gram weights
    biases: npt.NDArray[np.float64]  # (1 + len(categories),)
    dense_in: npt.NDArray[np.float32]  # (hidden, dims): W of v . relu(W u + c)
    dense_bias: npt.NDArray[np.float32]  # (hidden,): c
    dense_out: npt.NDArray[np.float32]  # (hidden,): v
    pool_in: npt.NDArray[np.float32]  # (hidden, dims): Q of q . max(0, max_t Q e_t)
    pool_out: npt.NDArray[np.float32]  # (hidden,): q
    categories: tuple[str, ...]
    threshold: float
    bits: int = DEFAULT_BITS
    power: float = DEFAULT_POWER
    meta: dict[str, Any] = field(default_factory=dict)
    featurizer: Featurizer = field(default_factory=builtin_featurizer, repr=False)

    def __post_init__(self) -> None:
        self._w0 = np.ascontiguousarray(self.weights[0])
        self._b0 = float(self.biases[0])
        # Each word's row, its projection by the mean layer and by the pooled layer, side
        # by side: a text costs one gather, one sum and one max (no matrix product).
        v = self.featurizer.vectors
        self._dims, self._hidden = v.shape[1], self.dense_in.shape[0]
        self._table = np.ascontiguousarray(
            np.hstack([v, v @ self.dense_in.T, v @ self.pool_in.T]), dtype=np.float32
        )

    def __call__(self, text: str) -> dict[str, float]:
        return self.score_normalized(_normalize(text))

    # ------------------------------------------------------------------ scoring
    def stats(self, deobfuscated: str) -> TextStats:
        """:class:`TextStats` of a :func:`deobfuscate`-d text."""
        t = _clean(deobfuscated)
        if not t:
            return EMPTY_STATS
        words = WORD_RE.findall(t)
        idx = _ngrams(t, words, self.bits)
        ids = self.featurizer.ids(words, t)
        if not ids:
            return TextStats(float(self._w0[idx].sum()), int(idx.size), None, None, 0)
        rows = self._table[ids]  # (words, dims + 2 * hidden)
        split = self._dims + self._hidden
        pooled = rows[:, split:].max(axis=0)
        np.maximum(pooled, 0.0, out=pooled)
        return TextStats(float(self._w0[idx].sum()), int(idx.size), rows[:, :split].sum(axis=0),
                         pooled, len(ids))  # fmt: skip

    def logit(self, s: TextStats) -> float:
        """Head 0's logit of ``s``."""
        z = self._b0
        if s.ngrams:
            z += s.ngram_sum * s.ngrams**-self.power
        if s.embedding is not None and s.pooled is not None:
            # embedding = [sum of rows, dense_in @ that sum]: dense_in @ unit = the second
            # half over the norm of the first.
            e = s.embedding
            norm = math.sqrt(float(e[: self._dims] @ e[: self._dims]))
            if norm > 0:
                h = e[self._dims :] * (1.0 / norm) + self.dense_bias
                z += float(np.maximum(h, 0.0, out=h) @ self.dense_out)
            z += float(s.pooled @ self.pool_out)
        return z

    def prob_stats(self, s: TextStats) -> float:
        """P(harmful) of a text with stats ``s`` (0 for an empty one)."""
        return _sigmoid(self.logit(s)) if s.ngrams or s.words else 0.0

    def category(self, deobfuscated: str) -> str:
        """The most likely category of a (harmful) text."""
        if not self.categories:
            return HARMFUL
        idx, val = features(deobfuscated, self.bits, self.power)
        heads = self.weights[1:, idx].sum(axis=1) * (float(val[0]) if val.size else 0.0)
        return self.categories[int(np.argmax(heads + self.biases[1:]))]

    def score_deobfuscated(self, deobfuscated: str) -> dict[str, float]:
        """:meth:`__call__` on ``deobfuscate(normalize_text(text))``."""
        s = self.stats(deobfuscated)
        if not s.ngrams:
            return {}
        return self.verdict(s, deobfuscated)

    def verdict(self, s: TextStats, deobfuscated: str | None) -> dict[str, float]:
        """``{category: P(harmful)}`` of a text with stats ``s``; the category heads read
        ``deobfuscated`` and run only for a likely harmful text (nearly all traffic is
        clearly benign)."""
        p = self.prob_stats(s)
        if not self.categories:
            return {HARMFUL: p}
        if p < 0.5 * self.threshold or deobfuscated is None:
            return {self.categories[0] if p < 0.5 * self.threshold else HARMFUL: p}
        return {self.category(deobfuscated): p}

    def score_normalized(self, normalized: str) -> dict[str, float]:
        """:meth:`__call__` on ``normalize_text(text)``, for callers that have it."""
        return self.score_deobfuscated(deobfuscate(normalized))

    def prob(self, text: str) -> float:
        """P(harmful) of ``text``."""
        return self.prob_stats(self.stats(deobfuscate(_normalize(text))))

    # ------------------------------------------------------------------ file
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one ``.npz`` file (via a temp file and a rename)."""
        target = Path(path)
        header = {"format": FORMAT, "version": FORMAT_VERSION, "bits": self.bits,
                  "power": self.power, "features": FEATURES,
                  "static": self.featurizer.digest, "categories": list(self.categories),
                  "threshold": self.threshold, "meta": self.meta}  # fmt: skip
        arrays: dict[str, npt.NDArray[Any]] = {
            "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            "weights": self.weights.astype(np.float16),
            "biases": np.asarray(self.biases, dtype=np.float64),
            "dense_in": self.dense_in.astype(np.float32),
            "dense_bias": self.dense_bias.astype(np.float32),
            "dense_out": self.dense_out.astype(np.float32),
            "pool_in": self.pool_in.astype(np.float32),
            "pool_out": self.pool_out.astype(np.float32),
        }
        write_atomic(target, lambda fh: np.savez_compressed(fh, allow_pickle=False, **arrays))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModerationModel:
        """Read a model written by :meth:`save`; :class:`UserError` if it is not one."""
        p = Path(path)
        retrain = "retrain it with `lmops guard train`"
        if not p.is_file():
            raise UserError(
                f"{p}: no such moderation classifier; train one with `lmops guard train`"
            )
        featurizer = builtin_featurizer()
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
                        f"({FEATURES}); {retrain}"
                    )
                if head.get("static") != featurizer.digest:
                    raise UserError(
                        f"{p}: trained with other static embeddings than this lmops ships; "
                        f"{retrain}"
                    )
                arrays = {k: z[k] for k in ("weights", "biases", "dense_in", "dense_bias",
                                            "dense_out", "pool_in", "pool_out")}  # fmt: skip
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{p}: not a readable moderation classifier ({e})") from None
        bits, cats = int(head["bits"]), tuple(head["categories"])
        w, b = arrays["weights"].astype(np.float32), arrays["biases"].astype(np.float64)
        d_in = arrays["dense_in"].astype(np.float32)
        hidden = d_in.shape[0]
        if (
            w.shape != (1 + len(cats), 1 << bits)
            or b.shape != (1 + len(cats),)
            or d_in.shape != (hidden, featurizer.dims)
            or arrays["dense_bias"].shape != (hidden,)
            or arrays["dense_out"].shape != (hidden,)
            or arrays["pool_in"].shape != (hidden, featurizer.dims)
            or arrays["pool_out"].shape != (hidden,)
        ):
            raise UserError(f"{p}: damaged moderation classifier (weights do not match header)")
        f32 = {k: arrays[k].astype(np.float32) for k in ("dense_bias", "dense_out", "pool_in",
                                                          "pool_out")}  # fmt: skip
        return cls(w, b, d_in, f32["dense_bias"], f32["dense_out"], f32["pool_in"],
                   f32["pool_out"], cats, float(head["threshold"]), bits,
                   float(head["power"]), dict(head["meta"]), featurizer)  # fmt: skip


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
    return _resource("model.npz")


def builtin_data_path() -> Path:
    return _resource("data.jsonl.gz")


def builtin_model() -> ModerationModel:
    """The shipped model (trained on the ``train`` rows of the shipped data set)."""
    return load_model(builtin_model_path())


# ============================================================================ data
_CATEGORY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_LABELS = {"harmful": True, "benign": False, "1": True, "0": False, "true": True, "false": False}


@dataclass(frozen=True, slots=True)
class LabeledText:
    """One training or evaluation row. ``group``: rows sharing it are wordings of one idea
    and stay on one side of a fold; ``split``: ``"test"`` rows are never trained on;
    ``info``: the row's other fields (language, obfuscation, ...), for reports."""

    text: str
    harmful: bool
    category: str | None = None
    group: str | None = None
    split: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


def read_labeled(path: str | os.PathLike[str]) -> list[LabeledText]:
    """Rows of a JSONL file (``.gz`` read as gzip): ``{"text": str, "label": "harmful" |
    "benign" (or 1/0, true/false), "category": str (optional), "group": str, "split": str
    (optional)}``. A bad row raises :class:`UserError` naming ``file:line`` and the field."""
    p = Path(path)
    try:
        raw = p.read_bytes()
        data = (gzip.decompress(raw) if p.suffix == ".gz" else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
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
class _Encoded(NamedTuple):
    """Training features of every row: n-gram buckets and word rows (CSR-like), unit
    embedding directions."""

    idx: npt.NDArray[np.intp]  # all rows' buckets, concatenated
    start: npt.NDArray[np.intp]  # row i's buckets: idx[start[i]:start[i + 1]]
    scale: npt.NDArray[np.float64]  # n ** -power of each row
    unit: npt.NDArray[np.float32]  # (rows, dims): embedding direction, zero without one
    tok: npt.NDArray[np.intp]  # all rows' embedding rows, concatenated
    tok_start: npt.NDArray[np.intp]
    vectors: npt.NDArray[np.float32]  # the static table

    def take(self, rows: npt.NDArray[np.intp]) -> tuple[Any, Any, Any]:
        """(buckets, value, row number within ``rows``) of the n-grams of ``rows``."""
        pos, row = _spans(self.start, rows)
        return self.idx[pos], self.scale[rows][row], row

    def words(self, rows: npt.NDArray[np.intp]) -> tuple[Any, Any]:
        """(embedding rows, row number within ``rows``) of the words of ``rows``."""
        pos, row = _spans(self.tok_start, rows)
        return self.tok[pos], row


def _spans(start: npt.NDArray[np.intp], rows: npt.NDArray[np.intp]) -> tuple[Any, Any]:
    lo, hi = start[rows], start[rows + 1]
    counts = hi - lo
    pos = np.repeat(hi - np.cumsum(counts), counts) + np.arange(int(counts.sum()))
    return pos, np.repeat(np.arange(len(rows)), counts)


def _encode(texts: Sequence[str], bits: int, power: float, fz: Featurizer) -> _Encoded:
    parts, starts, scales, units = [], [0], [], np.zeros((len(texts), fz.dims), np.float32)
    toks: list[list[int]] = []
    tok_starts = [0]
    for i, text in enumerate(texts):
        t = _clean(deobfuscate(_normalize(text)))
        words = WORD_RE.findall(t)
        idx = _ngrams(t, words, bits) if t else np.zeros(0, dtype=np.intp)
        parts.append(idx)
        starts.append(starts[-1] + idx.size)
        scales.append(float(idx.size) ** -power if idx.size else 0.0)
        ids = fz.ids(words, t)
        toks.append(ids)
        tok_starts.append(tok_starts[-1] + len(ids))
        if ids:
            e = fz.vectors[ids].sum(axis=0)
            n = float(np.sqrt(e @ e))
            if n > 0:
                units[i] = e / n
    flat = np.fromiter((i for ids in toks for i in ids), dtype=np.intp, count=tok_starts[-1])
    return _Encoded(np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp),
                    np.array(starts), np.array(scales), units, flat, np.array(tok_starts),
                    fz.vectors)  # fmt: skip


class _Dense(NamedTuple):
    w: npt.NDArray[np.float64]  # n-gram weights (2**bits,)
    b: float
    d_in: npt.NDArray[np.float64]  # (hidden, dims)
    d_bias: npt.NDArray[np.float64]
    d_out: npt.NDArray[np.float64]
    p_in: npt.NDArray[np.float64]  # (hidden, dims)
    p_out: npt.NDArray[np.float64]


def _pool(
    p_in: npt.NDArray[np.float64], enc: _Encoded, batch: npt.NDArray[np.intp]
) -> tuple[Any, Any, Any, Any]:
    """(pooled (rows, hidden), word projections, word rows, row of each word): pooled is
    ``max(0, max over the row's words of p_in @ e)``."""
    tok, row = enc.words(batch)
    e = enc.vectors[tok].astype(np.float64)
    proj = e @ p_in.T
    pooled = np.zeros((len(batch), p_in.shape[0]))
    if tok.size:
        counts = enc.tok_start[batch + 1] - enc.tok_start[batch]
        some = counts > 0
        firsts = (np.cumsum(counts) - counts)[some]  # each row's words are contiguous
        pooled[some] = np.maximum(np.maximum.reduceat(proj, firsts, axis=0), 0.0)
    return pooled, proj, e, row


def _logits(m: _Dense, enc: _Encoded, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
    out = np.zeros(len(rows))
    for lo in range(0, len(rows), 4096):
        batch = rows[lo : lo + 4096]
        idx, val, row = enc.take(batch)
        z = np.bincount(row, weights=m.w[idx] * val, minlength=len(batch)) + m.b
        h = np.maximum(enc.unit[batch] @ m.d_in.T + m.d_bias, 0.0)
        pooled = _pool(m.p_in, enc, batch)[0]
        out[lo : lo + 4096] = z + h @ m.d_out + pooled @ m.p_out
    return out


def fit_moderation(
    enc: _Encoded,
    y: npt.NDArray[np.float64],
    rows: npt.NDArray[np.intp],
    *,
    bits: int,
    hidden: int = 64,
    epochs: int = 6,
    seed: int = 0,
    batch_size: int = 32,
    learning_rate: float = 0.5,
    dense_rate: float = 3e-3,
    l2: float = 1e-6,
    weight_decay: float = 1e-4,
    dropout: float = 0.0,
) -> _Dense:
    """Head 0 on the training ``rows`` of ``enc``: the n-gram weights by sparse Adagrad
    (as :func:`lmops.data.classifier.fit_logistic`, lazy L2), the dense layers (mean and
    max-pooled embeddings) by Adam with weight decay, jointly on the class-weighted log
    loss (each class weighs half). Deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    yr = y[rows]
    n_pos = float((yr > 0.5).sum())
    sample_weight = np.where(yr > 0.5, len(yr) / (2 * n_pos), len(yr) / (2 * (len(yr) - n_pos)))
    dims = enc.unit.shape[1]
    w = np.zeros(1 << bits)
    g2 = np.zeros(1 << bits)
    # He initialisation of the hidden layers; the outputs start at zero.
    scale = math.sqrt(2.0 / dims)
    dense = [rng.normal(0.0, scale, (hidden, dims)), np.zeros(hidden), np.zeros(hidden),
             np.zeros(1), rng.normal(0.0, scale, (hidden, dims)), np.zeros(hidden)]  # fmt: skip
    decay = (0, 2, 4, 5)  # weight decay on the matrices and output vectors, not biases
    mom = [np.zeros_like(p) for p in dense]
    vel = [np.zeros_like(p) for p in dense]
    beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0
    for _ in range(epochs):
        order = rng.permutation(len(rows))
        for start in range(0, len(order), batch_size):
            pick = order[start : start + batch_size]
            batch = rows[pick]
            idx, val, row = enc.take(batch)
            if dropout:  # n-gram dropout: no single phrase may carry a verdict alone
                val = val * ((rng.random(idx.size) >= dropout) / (1.0 - dropout))
            u = enc.unit[batch]
            pre = u @ dense[0].T + dense[1]
            h = np.maximum(pre, 0.0)
            pooled, proj, e, wrow = _pool(dense[4], enc, batch)
            z = np.bincount(row, weights=w[idx] * val, minlength=len(batch))
            z += h @ dense[2] + dense[3][0] + pooled @ dense[5]
            err = (0.5 * (1.0 + np.tanh(0.5 * z)) - yr[pick]) * sample_weight[pick] / len(batch)
            touched, inv = np.unique(idx, return_inverse=True)
            grad = np.bincount(inv, weights=err[row] * val) + l2 * w[touched]
            g2[touched] += grad * grad
            w[touched] -= learning_rate * grad / (np.sqrt(g2[touched]) + eps)
            dh = np.outer(err, dense[2]) * (pre > 0)
            # The max passes its gradient to the word that won it (none where 0 won).
            won = (proj == pooled[wrow]) & (proj > 0)
            dproj = won * (err[wrow, None] * dense[5])
            grads = [dh.T @ u, dh.sum(axis=0), h.T @ err, np.array([err.sum()]), dproj.T @ e,
                     pooled.T @ err]  # fmt: skip
            step += 1
            for k, (p, g) in enumerate(zip(dense, grads, strict=True)):
                if k in decay:
                    g = g + weight_decay * p
                mom[k] = beta1 * mom[k] + (1 - beta1) * g
                vel[k] = beta2 * vel[k] + (1 - beta2) * g * g
                p -= (
                    dense_rate
                    * (mom[k] / (1 - beta1**step))
                    / (np.sqrt(vel[k] / (1 - beta2**step)) + eps)
                )
    return _Dense(w, float(dense[3][0]), dense[0], dense[1], dense[2], dense[4], dense[5])


@dataclass(frozen=True)
class TrainReport:
    """What :func:`train_moderation_classifier` did. ``cv_*`` are out-of-fold figures at
    the chosen threshold (None without folds)."""

    path: str
    harmful: int
    benign: int
    categories: dict[str, int]
    threshold: float
    threshold_rule: str
    cv_recall: float | None
    cv_false_positive_rate: float | None
    # The rule at other caps: {"0.5%": {"threshold", "recall"}, "1%": ..., ...}.
    cv_curve: dict[str, dict[str, float]]
    folds: int
    fold_by: str
    bits: int
    power: float
    hidden: int
    epochs: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fold_of(row: LabeledText, i: int, folds: int, by: str) -> int:
    value = row.group if by == "group" else row.info.get(by)
    key = str(value if value is not None else f"row:{i}").encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little") % folds


def _threshold_at_fp(
    pos: npt.NDArray[np.float64], neg: npt.NDArray[np.float64], max_fp: float
) -> float:
    """The lowest threshold (so the highest recall) whose false-positive rate on ``neg``
    is at most ``max_fp``: just above the benign score that would make it exceed."""
    allowed = math.floor(max_fp * len(neg))  # benign rows that may score at or over it
    s = np.sort(neg)[::-1]
    if allowed >= len(s):
        return 0.01
    t = float(np.nextafter(s[allowed], 1.0))
    return min(max(t, 0.01), 0.99)


def train_moderation_classifier(
    rows: Iterable[LabeledText],
    output: str | os.PathLike[str],
    *,
    bits: int = DEFAULT_BITS,
    power: float = DEFAULT_POWER,
    hidden: int = 64,
    epochs: int = 6,
    seed: int = 0,
    folds: int = 4,
    max_fp: float = 0.02,
    threshold: float | None = None,
    fold_by: str = "family+group",
) -> TrainReport:
    """Train on ``rows`` (``split == "test"`` rows are left out), save to ``output``.

    ``threshold`` None: the rule of the module docstring; 0.5 with ``folds`` < 2. Folds
    follow ``fold_by``: fields joined by ``+`` (``group`` or an ``info`` field such as the
    template ``family``; a row without one is alone), each hashed to a fold; fold ``k``'s
    model is trained on the rows none of whose fields fall in ``k`` and scores the rows
    any of whose fields do (their logits averaged where several folds score a row), so
    that, as on the held-out split, a scored row's template or idea or both were never
    trained on. Category heads are trained when the harmful rows name two categories or
    more.
    """
    train = [r for r in rows if r.split != "test"]
    pos = sum(r.harmful for r in train)
    if pos < 2 or len(train) - pos < 2:
        raise UserError(
            f"moderation training: got {pos} harmful and {len(train) - pos} benign rows "
            "(split test left out); give at least 2 of each (hundreds for a useful model)"
        )
    if not 0 <= max_fp < 1 or (threshold is not None and not 0 < threshold < 1):
        raise UserError("moderation training: need 0 <= max_fp < 1 and 0 < threshold < 1")
    fz = builtin_featurizer()
    enc = _encode([r.text for r in train], bits, power, fz)
    y = np.array([1.0 if r.harmful else 0.0 for r in train])
    fit = {"bits": bits, "hidden": hidden, "epochs": epochs, "seed": seed}
    everything = np.arange(len(train))

    rule = "fixed"
    cv_recall = cv_fp = None
    curve: dict[str, dict[str, float]] = {}
    if folds >= 2:
        # (rows, keys): the fold of each row under each key of fold_by ("family+group").
        fold = np.array([[_fold_of(r, i, folds, key) for key in fold_by.split("+")]
                         for i, r in enumerate(train)])  # fmt: skip
        total, times = np.zeros(len(train)), np.zeros(len(train))
        for k in range(folds):
            in_k = (fold == k).any(axis=1)  # held out by one of its keys
            held, kept = everything[in_k], everything[~in_k]
            if not held.size or len(set(y[kept])) < 2:
                continue
            total[held] += _logits(fit_moderation(enc, y, kept, **fit), enc, held)
            times[held] += 1
        oof = np.where(times > 0, total / np.maximum(times, 1), np.nan)
        scored = ~np.isnan(oof)
        p = 0.5 * (1.0 + np.tanh(0.5 * oof[scored]))
        pos_s, neg_s = p[y[scored] > 0.5], p[y[scored] < 0.5]
        if pos_s.size and neg_s.size:
            for cap in (0.005, 0.01, 0.02, 0.03, 0.05):
                t_cap = _threshold_at_fp(pos_s, neg_s, cap)
                curve[f"{cap:.1%}"] = {"threshold": round(t_cap, 4),
                                       "recall": float(np.mean(pos_s >= t_cap))}  # fmt: skip
        if threshold is None and pos_s.size and neg_s.size:
            threshold = _threshold_at_fp(pos_s, neg_s, max_fp)
            rule = f"lowest with out-of-fold false positives <= {max_fp:g} (folds by {fold_by})"
        if threshold is not None and pos_s.size and neg_s.size:
            cv_recall = float(np.mean(pos_s >= threshold))
            cv_fp = float(np.mean(neg_s >= threshold))
    if threshold is None:
        threshold, rule = 0.5, "0.5 (no folds)"

    head = fit_moderation(enc, y, everything, **fit)
    by_cat = Counter(r.category for r in train if r.harmful and r.category)
    cats = tuple(sorted(by_cat)) if len(by_cat) >= 2 else ()
    heads, biases = [head.w], [head.b]
    harmful = [i for i, r in enumerate(train) if r.harmful and r.category in by_cat]
    for cat in cats:
        labels = [1.0 if train[i].category == cat else 0.0 for i in harmful]
        feats = []
        for i in harmful:
            lo, hi = enc.start[i], enc.start[i + 1]
            feats.append((enc.idx[lo:hi], np.full(hi - lo, enc.scale[i])))
        w, b = fit_logistic(feats, labels, epochs=epochs, seed=seed, bits=bits)
        heads.append(w)
        biases.append(b)
    report = TrainReport(
        path=str(output),
        harmful=pos,
        benign=len(train) - pos,
        categories=dict(sorted(by_cat.items())),
        threshold=round(threshold, 4),
        threshold_rule=rule,
        cv_recall=cv_recall,
        cv_false_positive_rate=cv_fp,
        cv_curve=curve,
        folds=folds if cv_recall is not None else 0,
        fold_by=fold_by,
        bits=bits,
        power=power,
        hidden=hidden,
        epochs=epochs,
        seed=seed,
    )
    meta = {k: v for k, v in report.to_dict().items() if k != "path"}
    model = ModerationModel(
        np.stack(heads).astype(np.float32), np.array(biases),
        head.d_in.astype(np.float32), head.d_bias.astype(np.float32),
        head.d_out.astype(np.float32), head.p_in.astype(np.float32),
        head.p_out.astype(np.float32), cats, report.threshold, bits, power, meta, fz,
    )  # fmt: skip
    model.save(output)
    return report


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
