"""Moderation features: de-obfuscation, the static word embeddings and hashed n-grams."""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from lmops.core.errors import UserError
from lmops.security.moderation.pinyin import digest as pinyin_digest
from lmops.security.moderation.pinyin import to_hanzi
from lmops.security.normalize import normalize_text
from lmops.text.cjk import HAN
from lmops.text.words import WORD_RE, word_id

FORMAT = "lmops-moderation-classifier"
FORMAT_VERSION = 2
FEATURES = (
    "normalize_text,deobfuscate2,pinyin1,digits0;word1-2;char2-4;poly-mulshift;distinct;"
    "n**-power;static"
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
# not start the (slower) rewrite, or a word ending in "11" ("ki11", "a11": the one ending
# the rewrite changes), so that whether a word is read does not depend on other words.
_LEETISH = "0-9@$!|"
_LEET_HINT = re.compile(rf"[{_LEETISH}]+[a-z]|(?<=[a-z])11(?![a-z{_LEETISH}])")
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
    return Path(str(resources.files("lmops.security").joinpath(f"resources/moderation/{name}")))


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
_CJK_RUN = re.compile(f"[{HAN}]+")
_MAX_CJK = 8  # longer Chinese words (names of institutions, idioms) are read by character


class Featurizer:
    """Words -> rows of the static embedding table (``embeddings.npz``), through the gloss
    table (``gloss.tsv``) for words the table has no row for. Loaded once per process.

    Chinese text is cut into the table's and the gloss table's Chinese words by forward
    maximum matching (at each place the longest word that starts there, down to single
    characters); where both tables have a Chinese word, the gloss, written for this task,
    wins over the distilled row.

    ``digest`` (sha256 of both files and of the pinyin index) is stored in models trained
    with it: a model is only read with the tables it was trained with.
    """

    def __init__(self, embeddings: Path, gloss: Path) -> None:
        h = hashlib.sha256()
        try:
            h.update(embeddings.read_bytes())
            gloss_text = gloss.read_text(encoding="utf-8")
            h.update(gloss_text.encode())
            h.update(pinyin_digest().encode())
            with np.load(embeddings, allow_pickle=False) as z:
                words = z["words"].tobytes().decode().split("\n")
                vectors = z["vectors"].astype(np.float32)
        except (OSError, ValueError, KeyError) as e:  # pragma: no cover - shipped files
            raise UserError(f"{embeddings}: moderation embeddings unreadable ({e})") from None
        self.digest = h.hexdigest()
        self.vectors = vectors  # (rows, dims) float32
        self.dims = vectors.shape[1]
        # word -> row numbers; a glossed word has the rows of its gloss's words. Chinese
        # words apart (self._cjk), found by _words_of.
        self._single: dict[str, int] = {}  # the common case, looked up in C
        self._cjk: dict[str, tuple[int, ...]] = {}
        for i, w in enumerate(words):
            if _CJK_RUN.fullmatch(w):
                self._cjk[w] = (i,)
            else:
                self._single[w] = i
        self.rows: dict[str, tuple[int, ...]] = {w: (i,) for w, i in self._single.items()}
        latin: list[str] = []
        mixed: list[str] = []  # Chinese with Latin letters or digits: "00岁少女", "sql语句"
        for line in gloss_text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            key, _, gloss_words = line.partition("\t")
            ids = tuple(self._single[w] for w in gloss_words.split() if w in self._single)
            if not ids:
                continue
            if _CJK_RUN.fullmatch(key):
                self._cjk[key] = ids
            elif key not in self.rows:
                self.rows[key] = ids
                if not key.isascii():
                    mixed.append(key)
                elif not _ENGLISH_WORD.match(key):  # "zha dan": several words
                    latin.append(key)
        sizes: dict[str, set[int]] = {}
        for w in self._cjk:
            if 1 < len(w) <= _MAX_CJK:
                sizes.setdefault(w[:2], set()).add(len(w))
        # first two characters -> the lengths of the words of 2+ characters they start,
        # longest first (by two characters: few words share them, so few lengths are tried)
        self._sizes = {pair: sorted(n, reverse=True) for pair, n in sizes.items()}
        self._phrases = _trie_regex(latin, words=True)
        self._mixed = _trie_regex(mixed, words=False)
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
        if self._cjk and not text.isascii():
            for run in _CJK_RUN.findall(text):
                out.extend(self._words_of(run))
            if self._mixed is not None:
                for k in self._mixed.findall(text):
                    out.extend(rows[k])
        # Spaced pinyin ("zha dan") or another glossed phrase of several words.
        if phrase and self._phrases is not None:
            for k in self._phrases.findall(text):
                out.extend(rows[k])
        return out

    def _words_of(self, run: str) -> list[int]:
        """Rows of the Chinese words in ``run`` (Chinese characters), by forward maximum
        matching; a character that starts no word is skipped."""
        get, sizes = self._cjk.get, self._sizes.get
        out: list[int] = []
        i, n = 0, len(run)
        while i < n:
            # (a slice past the end is shorter: a word then, it is also one of the sizes)
            for size in sizes(run[i : i + 2], ()):
                r = get(run[i : i + size])
                if r is not None:
                    out.extend(r)
                    i += size
                    break
            else:
                r = get(run[i])
                if r is not None:
                    out.extend(r)
                i += 1
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


_LAST = threading.local()  # per thread: bucket -> the last place it was written (_ngrams)
_LAST_MAX_BITS = 20  # wider tables (4 MB+ a thread) drop repeats by sorting instead


def _ngrams(
    t: str, words: Sequence[str], bits: int, *, ordered: bool = True
) -> npt.NDArray[np.intp]:
    """The distinct buckets of the n-grams of ``t`` (digits already ``0``, spaces single).
    Distinct, so that a repeated n-gram ("xxxxxxxx...", a pasted log) counts once and an
    odd repetitive text cannot push the score without bound. ``ordered``: in increasing
    order (training's); otherwise in an order fixed by the text, half the cost (scoring's:
    only their sum counts)."""
    w1 = np.array(_word_ids(words), dtype=np.uint64)
    c = np.frombuffer(f" {t} ".encode("utf-32-le", "surrogatepass"), dtype="<u4")
    c = c.astype(np.uint64)
    # Polynomial n-gram hashes, each extending the one before it, written in place:
    # [words, word pairs, character 2-, 3- and 4-grams].
    nw, n = w1.size, c.size  # n >= 2 (the spaces around t)
    n2, n3, n4 = n - 1, max(n - 2, 0), max(n - 3, 0)
    h = np.empty(nw + max(nw - 1, 0) + n2 + n3 + n4, dtype=np.uint64)
    h[:nw] = w1
    w2 = h[nw : nw + max(nw - 1, 0)]
    np.multiply(w1[:-1], _P, out=w2)
    w2 += w1[1:]
    at = nw + w2.size
    c2 = h[at : at + n2]
    np.add(c[:-1], _SALT, out=c2)
    c2 *= _P
    c2 += c[1:]
    c3 = h[at + n2 : at + n2 + n3]
    np.multiply(c2[:-1], _P, out=c3)
    c3 += c[2:]
    c4 = h[at + n2 + n3 :]
    np.multiply(c3[:-1], _P, out=c4)
    c4 += c[3:]
    h *= _A
    h >>= np.uint64(64 - bits)
    if ordered or bits > _LAST_MAX_BITS:
        buckets = h.astype(np.uint32) if bits <= 32 else h
        buckets.sort()  # then drop repeats (np.unique is several times slower)
        keep = np.empty(buckets.size, dtype=bool)
        keep[:1] = True
        np.not_equal(buckets[1:], buckets[:-1], out=keep[1:])
        return buckets[keep].astype(np.intp)
    # Without sorting: each bucket's slot takes the place of one of its occurrences (which
    # one, numpy leaves open), and the occurrence whose place it holds is the one kept.
    idx = h.astype(np.intp)
    last = getattr(_LAST, "table", None)
    if last is None or last.size < 1 << bits:
        last = _LAST.table = np.empty(1 << bits, dtype=np.int32)
    place = np.arange(idx.size, dtype=np.int32)
    last[idx] = place
    return idx[last[idx] == place]


def _clean(text: str) -> str:
    """A de-obfuscated text as the model reads it: pinyin read back into Chinese
    (:func:`~lmops.security.moderation.pinyin.to_hanzi`), digits as ``0``, blanks single."""
    return " ".join(to_hanzi(text).translate(_DIGITS0).split())


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
    return normalize_text(text)
