"""Pinyin read back into Chinese characters, for the moderation classifier.

Pinyin hides Chinese from a model that learned Chinese characters: "zha dan" is 炸弹,
"zhadan" too. :func:`to_hanzi` replaces each run of pinyin in a de-obfuscated text with the
likeliest Chinese words, as a pinyin input method would, so that the characters' n-grams
and the words' embeddings read it as they read the characters:

1. each word of letters is split into pinyin syllables ("kuangpian" -> kuang pian; the
   fewest syllables, so "xian" stays one; a, o and e start a syllable only at the start of
   a word, as the apostrophe of "xi'an" marks them); a word that does not split is no
   pinyin and ends a run;
2. a run is consecutive pinyin words (blanks, apostrophes or hyphens between them) of two
   syllables or more, with at least one word that is not also an English word (``man``,
   ``china``, ``bake``, ``banana`` read as pinyin: a run of only those is English and
   stays; the English words are the static table's and SCOWL's, 3,400 of them read as
   pinyin);
3. its syllables are cut into the index's words by a dynamic programme that maximises the
   sum of the words' log-probabilities (a syllable no word covers stays in letters).

The index (``resources/moderation/pinyin.tsv.gz``, built by
``benchmarks/build_moderation_pinyin.py`` from jieba's dictionary with pypinyin) holds the
most frequent word for each toneless pinyin. Homophones resolve to the most frequent word
(``wei xin`` -> 威信, not 微信); the n-gram weights still see the right characters more
often than not, and the pinyin rows of the training set were read the same way.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from functools import cache
from importlib import resources
from typing import NamedTuple

_LETTERS = re.compile(r"[a-z]+")
# Letters words separated by blanks, apostrophes ("xi'an") or hyphens: a candidate run.
_RUN = re.compile(r"[a-z]+(?:[ '\-]+[a-z]+)*")
_MAX_SYLLABLE = 6  # "zhuang", "chuang", "shuang"
_MAX_WORD = 5  # syllables per word of the index looked up
_UNKNOWN = -30.0  # the log-probability of a syllable left in letters
_CJK_GAP = re.compile(r"(?<=[\u3400-\u9fff])\s+(?=[\u3400-\u9fff])")


class PinyinIndex(NamedTuple):
    words: dict[str, tuple[str, float]]  # "zha dan" -> ("炸弹", log p)
    syllables: frozenset[str]
    english: frozenset[str]  # English words that read as pinyin


def split_syllables(word: str, syllables: frozenset[str] | set[str]) -> list[str] | None:
    """``word`` as pinyin syllables, the fewest that cover it (None: it is not pinyin).
    As pinyin is written, a syllable that starts with a, o or e starts the word: inside a
    word it follows an apostrophe ("xi'an"), so "openai" or "cetacea" is no pinyin."""
    if len(word) > 8 * _MAX_SYLLABLE:
        return None
    n = len(word)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for i in range(n):
        row = best[i]
        if row is None:
            continue
        for j in range(min(n, i + _MAX_SYLLABLE), i, -1):
            s = word[i:j]
            if s in syllables and (i == 0 or s[0] not in "aoe"):
                cand = best[j]
                if cand is None or len(cand) > len(row) + 1:
                    best[j] = [*row, s]
    return best[n]


@cache
def pinyin_index() -> PinyinIndex:
    path = resources.files("lmops.security").joinpath("resources/moderation/pinyin.tsv.gz")
    words: dict[str, tuple[str, float]] = {}
    english: set[str] = set()
    with gzip.open(str(path), "rt", encoding="utf-8") as fh:
        for line in fh:
            key, _, rest = line.rstrip("\n").partition("\t")
            if key == "!en":
                english.add(rest)
            elif rest:
                word, _, logp = rest.partition("\t")
                words[key] = (word, float(logp))
    syllables = frozenset(k for k in words if " " not in k)
    return PinyinIndex(words, syllables, frozenset(english))


@cache
def digest() -> str:
    """sha256 of the pinyin index (part of the static tables' digest a model is tied to)."""
    path = resources.files("lmops.security").joinpath("resources/moderation/pinyin.tsv.gz")
    return hashlib.sha256(path.read_bytes()).hexdigest()


_SPLITS: dict[str, list[str] | None] = {}  # split_syllables of the index, by word
_FOREIGN: dict[str, bool] = {}  # word -> it reads as pinyin and is no English word


def _split(word: str, syllables: frozenset[str]) -> list[str] | None:
    try:
        return _SPLITS[word]
    except KeyError:
        if len(_SPLITS) >= 1 << 16:
            _SPLITS.clear()
        split = _SPLITS[word] = split_syllables(word, syllables)
        return split


def _convert(sylls: list[str], words: dict[str, tuple[str, float]]) -> str:
    n = len(sylls)
    score = [0.0] + [float("-inf")] * n
    back: list[tuple[int, str]] = [(0, "")] * (n + 1)
    for i in range(n):
        if score[i] == float("-inf"):
            continue
        for j in range(i + 1, min(n, i + _MAX_WORD) + 1):
            hit = words.get(" ".join(sylls[i:j]))
            if hit is None:
                if j == i + 1:  # left in letters
                    s = score[i] + _UNKNOWN
                    if s > score[j]:
                        score[j], back[j] = s, (i, f" {sylls[i]} ")
                continue
            s = score[i] + hit[1]
            if s > score[j]:
                score[j], back[j] = s, (i, hit[0])
    out: list[str] = []
    j = n
    while j > 0:
        i, text = back[j]
        out.append(text)
        j = i
    return "".join(reversed(out))


def to_hanzi(text: str) -> str:
    """``text`` (de-obfuscated: lower case, no tone marks) with its pinyin runs replaced by
    Chinese words; text without pinyin comes back unchanged (the same object)."""
    index = pinyin_index()
    syllables, english = index.syllables, index.english
    # Cheap gate: some word that splits into syllables and is no English word (known
    # words answered from a cache, in C).
    words = _LETTERS.findall(text)
    flags = list(map(_FOREIGN.get, words))
    if None in flags:
        if len(_FOREIGN) >= 1 << 16:
            _FOREIGN.clear()
        for w in words:
            if w not in _FOREIGN:
                _FOREIGN[w] = w not in english and _split(w, syllables) is not None
        flags = list(map(_FOREIGN.get, words))
    if not any(flags):
        return text
    parts: list[str] = []
    last = 0
    for m in _RUN.finditer(text):
        sylls: list[str] = []
        runs: list[tuple[int, int, list[str]]] = []  # (start, end, syllables) of pinyin words
        for w in _LETTERS.finditer(m.group()):
            split = _split(w.group(), syllables)
            if split is None:
                runs.append((-1, -1, []))
            else:
                runs.append((m.start() + w.start(), m.start() + w.end(), split))
        # consecutive pinyin words, each group converted if not all English
        group: list[tuple[int, int, list[str]]] = []
        for item in [*runs, (-1, -1, [])]:
            if item[0] >= 0:
                group.append(item)
                continue
            if (
                group
                and sum(len(ss) for _, _, ss in group) >= 2
                and any(text[a:b] not in english for a, b, _ in group)
            ):
                sylls = [s for _, _, ss in group for s in ss]
                parts.append(text[last : group[0][0]])
                parts.append(_convert(sylls, index.words).strip())
                last = group[-1][1]
            group = []
    if not parts:
        return text
    parts.append(text[last:])
    return _CJK_GAP.sub("", "".join(parts))
