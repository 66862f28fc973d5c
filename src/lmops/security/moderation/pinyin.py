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
from importlib.resources.abc import Traversable
from typing import NamedTuple

from lmops.text.cjk import HAN_RE

_LETTERS = re.compile(r"[a-z]+")
# Letters words separated by blanks, apostrophes ("xi'an") or hyphens: a candidate run.
_RUN = re.compile(r"[a-z]+(?:[ '\-]+[a-z]+)*")
_MAX_SYLLABLE = 6  # "zhuang", "chuang", "shuang"
_MAX_LETTERS = 8 * _MAX_SYLLABLE  # a longer "word" is no pinyin (and is not cached)
_MAX_WORD = 5  # syllables per word of the index looked up
_UNKNOWN = -30.0  # the log-probability of a syllable left in letters
# Next to a word, these make it part of an address, a path, a number or an identifier.
_ATTACHED = frozenset("./@:_=?&#%\\~+*$0123456789")


class PinyinIndex(NamedTuple):
    words: dict[str, tuple[str, float]]  # "zha dan" -> ("炸弹", log p)
    syllables: frozenset[str]
    english: frozenset[str]  # English words that read as pinyin


def split_syllables(word: str, syllables: frozenset[str] | set[str]) -> list[str] | None:
    """``word`` as pinyin syllables, the fewest that cover it (None: it is not pinyin).
    As pinyin is written, a syllable that starts with a, o or e starts the word: inside a
    word it follows an apostrophe ("xi'an"), so "openai" or "cetacea" is no pinyin."""
    if len(word) > _MAX_LETTERS:
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


def _index_file() -> Traversable:
    return resources.files("lmops.security").joinpath("resources/moderation/pinyin.tsv.gz")


@cache
def pinyin_index() -> PinyinIndex:
    words: dict[str, tuple[str, float]] = {}
    english: set[str] = set()
    with gzip.open(str(_index_file()), "rt", encoding="utf-8") as fh:
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
    return hashlib.sha256(_index_file().read_bytes()).hexdigest()


_SPLITS: dict[str, list[str] | None] = {}  # split_syllables of the index, by word
_FOREIGN: dict[str, bool] = {}  # word -> it reads as pinyin and is no English word
_CACHED = 1 << 16  # entries of each cache; words are at most _MAX_LETTERS long


def _split(word: str, syllables: frozenset[str]) -> list[str] | None:
    if len(word) > _MAX_LETTERS:
        return None
    try:
        return _SPLITS[word]
    except KeyError:
        if len(_SPLITS) >= _CACHED:
            _SPLITS.clear()
        split = _SPLITS[word] = split_syllables(word, syllables)
        return split


def _foreign(word: str, index: PinyinIndex) -> bool:
    """Whether ``word`` reads as pinyin and is no English word."""
    if len(word) > _MAX_LETTERS:
        return False
    known = _FOREIGN.get(word)
    if known is None:
        if len(_FOREIGN) >= _CACHED:
            _FOREIGN.clear()
        known = _FOREIGN[word] = (
            word not in index.english and _split(word, index.syllables) is not None
        )
    return known


def _alone(text: str, start: int, end: int) -> bool:
    """Whether the letters ``text[start:end]`` are a word of their own: not part of an
    address, a path, a number or an identifier ("www.sharen.com", "user123"), nor of a word
    in other letters ("zhadanü")."""
    for ch in (text[start - 1 : start], text[end : end + 1]):
        if ch and (ch in _ATTACHED or (ch.isalnum() and not HAN_RE.match(ch))):
            return False
    return True


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
    # Cheap gate: some word that reads as pinyin and is no English word (known words
    # answered from a cache, in C).
    words = _LETTERS.findall(text)
    flags = list(map(_FOREIGN.get, words))
    if None in flags:
        flags = [_foreign(w, index) if f is None else f for w, f in zip(words, flags, strict=True)]
    if not any(flags):
        return text
    pieces: list[tuple[str, bool]] = []  # (text, converted), in order
    last = 0
    for m in _RUN.finditer(text):
        runs: list[tuple[int, int, list[str]]] = []  # (start, end, syllables); -1: no pinyin
        for w in _LETTERS.finditer(m.group()):
            a, b = m.start() + w.start(), m.start() + w.end()
            split = _split(w.group(), index.syllables) if _alone(text, a, b) else None
            runs.append((a, b, split) if split is not None else (-1, -1, []))
        # consecutive pinyin words, each group converted if not all English
        group: list[tuple[int, int, list[str]]] = []
        for item in [*runs, (-1, -1, [])]:
            if item[0] >= 0:
                group.append(item)
                continue
            if (
                group
                and sum(len(ss) for _, _, ss in group) >= 2
                and any(text[a:b] not in index.english for a, b, _ in group)
            ):
                sylls = [s for _, _, ss in group for s in ss]
                pieces.append((text[last : group[0][0]], False))
                pieces.append((_convert(sylls, index.words).strip(), True))
                last = group[-1][1]
            group = []
    if not pieces:
        return text
    pieces.append((text[last:], False))
    return "".join(_glued(pieces))


def _glued(pieces: list[tuple[str, bool]]) -> list[str]:
    """The pieces, without the blanks between a converted piece and Chinese characters
    beside it (as Chinese is written); blanks elsewhere are kept."""
    out = []
    for k, (t, converted) in enumerate(pieces):
        if not converted:
            left = pieces[k - 1][0][-1:] if k and pieces[k - 1][1] else ""
            right = pieces[k + 1][0][:1] if k + 1 < len(pieces) and pieces[k + 1][1] else ""
            if not t.strip():
                before = pieces[k - 1][0][-1:] if k else ""
                after = pieces[k + 1][0][:1] if k + 1 < len(pieces) else ""
                if (left or right) and _is_cjk(before) and _is_cjk(after):
                    t = ""
            else:
                if _is_cjk(left) and _is_cjk(t.lstrip()[:1]):
                    t = t.lstrip()
                if _is_cjk(right) and _is_cjk(t.rstrip()[-1:]):
                    t = t.rstrip()
        out.append(t)
    return out


def _is_cjk(ch: str) -> bool:
    return bool(ch) and HAN_RE.match(ch) is not None
