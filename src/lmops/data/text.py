"""Text utilities shared by the data-stage operators.

Word splitting comes in two flavours, chosen per document by :func:`resolve_lang`:

- ``"en"``: :func:`en_words`, a pure-Python re-implementation of the rules of spaCy's
  blank English tokenizer (whitespace split, then prefix / suffix / infix splitting,
  URL matching and the English exception table: ``don't`` -> ``do`` ``n't``,
  ``Mr.`` stays whole, ``hello,`` -> ``hello`` ``,``), in :mod:`lmops.data._en_tokenizer`.
  datatrove's Gopher, C4 and FineWeb filters count words with that tokenizer, so using
  the same rules is what makes our keep/drop decisions agree with theirs;
- ``"zh"``: :func:`zh_words`, jieba segmentation (loaded lazily, logging silenced) of
  the Han and kana runs, so a Chinese document has words to count at all, and the
  English rules between them, so URLs, numbers and code in Chinese text are the same
  tokens as in English text.

Also here: the punctuation and sentence-terminal character sets those filters use,
CJK detection, the stop word lists, sentence counting and the n-gram statistics of the
Gopher repetition rules. The only state is memo caches (bounded), so everything is safe
to call from worker processes and threads.
"""

from __future__ import annotations

import logging
import math
import re
import string
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from itertools import accumulate, compress
from typing import Any, Literal

from lmops.data._en_tokenizer import _CHUNKS, _Memo, en_words
from lmops.text.cjk import NO_SPACE

__all__ = [
    "CJK_AUTO_RATIO",
    "CJK_RE",
    "GOPHER_STOP_WORDS",
    "PUNCTUATION",
    "TERMINAL_PUNCTUATION",
    "ZH_CHARS_PER_WORD",
    "Lang",
    "cjk_ratio",
    "count_sentences",
    "dup_ngram_chars",
    "en_words",
    "find_duplicates",
    "resolve_lang",
    "token_stats",
    "top_ngram",
    "words",
    "zh_ngram_size",
    "zh_size",
    "zh_stop_words",
    "zh_units",
    "zh_words",
]

Lang = Literal["auto", "en", "zh"]
"""``auto`` picks ``zh`` when :func:`cjk_ratio` is at least :data:`CJK_AUTO_RATIO`."""

CJK_AUTO_RATIO = 0.3
"""Share of CJK characters (of non-space characters) from which ``auto`` means ``zh``."""

ZH_CHARS_PER_WORD = 1.5
"""Han characters per English word of the same content. Measured on the 1,130 parallel
Alpaca pairs of ``benchmarks/gopher_cjk_bench.py``: 1.50 (148 Han characters per 98 English
words), within the translators' usual 1.5-1.8. Where a Chinese rule borrows an English
per-word threshold, it counts text in English-word equivalents at this rate."""

GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
"""The eight English stop words of Gopher's "at least two stop words" rule."""

# --- character sets ----------------------------------------------------------------------

# Unicode Sentence_Terminal characters, as (first, last) code point ranges. This is the
# set datatrove calls TERMINAL_PUNCTUATION (FineWeb's "line ends in punctuation" rule and
# part of the Gopher "symbol-only word" test); kept to the same members for parity.
_TERMINAL_RANGES = (
    (0x21, 0x21), (0x2E, 0x2E), (0x3F, 0x3F), (0x589, 0x589), (0x61D, 0x61F),
    (0x6D4, 0x6D4), (0x700, 0x702), (0x7F9, 0x7F9), (0x837, 0x837), (0x839, 0x839),
    (0x83D, 0x83E), (0x964, 0x965), (0x104A, 0x104B), (0x1362, 0x1362),
    (0x1367, 0x1368), (0x166E, 0x166E), (0x1735, 0x1736), (0x17D4, 0x17D6),
    (0x17D9, 0x17DA), (0x1803, 0x1803), (0x1809, 0x1809), (0x1944, 0x1945),
    (0x1AA8, 0x1AAB), (0x1B5A, 0x1B5B), (0x1B5E, 0x1B5F), (0x1B7D, 0x1B7E),
    (0x1C3B, 0x1C3C), (0x1C7E, 0x1C7F), (0x203C, 0x203D), (0x2047, 0x2049),
    (0x2E2E, 0x2E2E), (0x2E3C, 0x2E3C), (0x2E53, 0x2E54), (0x3002, 0x3002),
    (0xA4FF, 0xA4FF), (0xA60E, 0xA60F), (0xA6F3, 0xA6F3), (0xA6F7, 0xA6F7),
    (0xA876, 0xA877), (0xA8CE, 0xA8CF), (0xA92F, 0xA92F), (0xA9C8, 0xA9C9),
    (0xAA5D, 0xAA5F), (0xAAF0, 0xAAF1), (0xABEB, 0xABEB), (0xFE52, 0xFE52),
    (0xFE56, 0xFE57), (0xFF01, 0xFF01), (0xFF0E, 0xFF0E), (0xFF1F, 0xFF1F),
    (0xFF61, 0xFF61), (0x10A56, 0x10A57), (0x10F55, 0x10F59), (0x10F86, 0x10F89),
    (0x11047, 0x11048), (0x110BE, 0x110C1), (0x11141, 0x11143), (0x111C5, 0x111C6),
    (0x111CD, 0x111CD), (0x111DE, 0x111DF), (0x11238, 0x11239), (0x1123B, 0x1123C),
    (0x112A9, 0x112A9), (0x1144B, 0x1144C), (0x115C2, 0x115C3), (0x115C9, 0x115D7),
    (0x11641, 0x11642), (0x1173C, 0x1173E), (0x11944, 0x11944), (0x11946, 0x11946),
    (0x11A42, 0x11A43), (0x11A9B, 0x11A9C), (0x11C41, 0x11C42), (0x11EF7, 0x11EF8),
    (0x11F43, 0x11F44), (0x16A6E, 0x16A6F), (0x16AF5, 0x16AF5), (0x16B37, 0x16B38),
    (0x16B44, 0x16B44), (0x16E98, 0x16E98), (0x1BC9F, 0x1BC9F), (0x1DA88, 0x1DA88),
)  # fmt: skip
TERMINAL_PUNCTUATION = frozenset(
    chr(c) for first, last in _TERMINAL_RANGES for c in range(first, last + 1)
)
"""Sentence-terminal characters (``.``, ``!``, ``?``, ``。``, ``！``, ...)."""

# A token made only of these characters is a "symbol", not a word (Gopher's word count).
# ASCII punctuation, common CJK and typographic marks, C0/C1 control characters other
# than tab and newline, and every sentence terminal -- the same set as datatrove's.
_CONTROL = "".join(chr(c) for c in (*range(0, 9), *range(11, 32), *range(127, 160)))
PUNCTUATION = (
    frozenset(
        string.punctuation + "–—’“”„…∶━►、。〈〉《》「」【】！％（），．１：；？～«´»" + _CONTROL
    )
    | TERMINAL_PUNCTUATION
)
"""Characters that make a token a symbol rather than a word."""

# Han, kana, compatibility ideographs and the CJK extension planes. Hangul is left out on
# purpose: Korean separates words with spaces, so whitespace splitting already works.
CJK_RE = re.compile(f"[{NO_SPACE}]")


def cjk_ratio(text: str) -> float:
    """Share of CJK (Han and kana) characters among the non-whitespace characters."""
    if text.isascii():
        return 0.0
    n = _non_space(text)
    return len(CJK_RE.findall(text)) / n if n else 0.0


def _non_space(text: str) -> int:
    return sum(map(len, text.split()))


def resolve_lang(text: str, lang: Lang) -> Literal["en", "zh"]:
    """``en`` or ``zh`` for ``text``: ``lang`` itself unless it is ``auto``."""
    if lang != "auto":
        return lang
    if text.isascii():
        return "en"
    # Each CJK character costs 2 extra UTF-8 bytes, so too few extra bytes rules zh out
    # without scanning the text with a regex (most non-ASCII English is curly quotes).
    extra = len(text.encode("utf-8", "surrogatepass")) - len(text)
    if extra < 2 * CJK_AUTO_RATIO * _non_space(text):
        return "en"
    return "zh" if cjk_ratio(text) >= CJK_AUTO_RATIO else "en"


# --- Chinese -----------------------------------------------------------------------------

_jieba: Any = None


def _jieba_tokenizer() -> Any:
    global _jieba
    if _jieba is None:
        with warnings.catch_warnings():
            # jieba imports pkg_resources where available, which warns on import.
            warnings.simplefilter("ignore")
            import jieba

        jieba.setLogLevel(logging.WARNING)  # it logs the dictionary load at DEBUG
        tokenizer = jieba.Tokenizer()
        tokenizer.initialize()  # loads the bundled dictionary: no network
        _jieba = tokenizer
    return _jieba


# A run of Han and kana characters: what jieba segments.
_CJK_RUN = re.compile(f"([{NO_SPACE}]+)")
# The Chinese ellipsis and dash: one mark each, two characters wide.
_ZH_MARK = re.compile("(……|——)")


def zh_words(text: str) -> tuple[str, ...]:
    """Words of a Chinese or mixed text, punctuation tokens included.

    jieba (precise mode) segments each run of Han and kana characters; what lies between
    the runs -- Latin words, numbers, URLs, code, punctuation -- is tokenised by the
    English rules of :func:`en_words`, so ``https://example.com/a/b``, ``40,000`` and
    ``e.g.`` stay one token each, as in English text (jieba alone cuts them at every
    ``/``, ``,`` and ``.``, and a Chinese page quoting a URL looked like symbol soup).
    The Chinese ellipsis ``……`` and dash ``——`` are one token each, as English ``...``
    and ``--`` are. Whitespace is dropped.

    >>> zh_words("见 https://example.com/a 约40,000人。")
    ('见', 'https://example.com/a', '约', '40,000', '人', '。')
    """
    jieba = _jieba_tokenizer()
    out: list[str] = []
    for k, piece in enumerate(_CJK_RUN.split(text)):
        if k % 2:
            out += jieba.lcut(piece)
            continue
        for i, part in enumerate(_ZH_MARK.split(piece)):
            if i % 2:
                out.append(part)
            elif part:
                out += en_words(part)
    return tuple(out)


@lru_cache(maxsize=1)
def zh_stop_words() -> frozenset[str]:
    """Common Chinese function words (``的``, ``了``, ``是``...), from the bundled list."""
    ref = resources.files("lmops.data").joinpath("resources/zh_stopwords.txt")
    lines = ref.read_text(encoding="utf-8").splitlines()
    return frozenset(w for w in (line.strip() for line in lines) if w and w[0] != "#")


@lru_cache(maxsize=16)
def words(text: str, lang: Literal["en", "zh"]) -> tuple[str, ...]:
    """Words of ``text`` for ``lang`` (resolved first with :func:`resolve_lang`).

    Cached for the last few texts: the Gopher quality and repetition filters run one
    after the other on the same document and tokenise it once between them.
    """
    return zh_words(text) if lang == "zh" else en_words(text)


# --- word statistics ---------------------------------------------------------------------

_FIELD = 24  # bits per packed counter below


def _pack_token(token: str) -> int:
    non_symbol = not PUNCTUATION.issuperset(token)
    alpha = any(map(str.isalpha, token))
    return non_symbol | (alpha << _FIELD) | ((len(token) if non_symbol else 0) << 2 * _FIELD)


_TOKEN_STATS = _Memo(_pack_token)


def token_stats(tokens: Sequence[str]) -> tuple[int, int, int]:
    """(words with a non-punctuation character, words with a letter, characters of the
    former) -- the word counts of the Gopher quality rules, in one pass over ``tokens``.
    """
    if len(tokens) >= 1 << _FIELD:  # the packed counters would overflow into each other
        packed = [_TOKEN_STATS[t] for t in tokens]
        mask = (1 << _FIELD) - 1
        return (
            sum(p & mask for p in packed),
            sum((p >> _FIELD) & mask for p in packed),
            sum(p >> 2 * _FIELD for p in packed),
        )
    total = sum(map(_TOKEN_STATS.__getitem__, tokens))
    mask = (1 << _FIELD) - 1
    return total & mask, (total >> _FIELD) & mask, total >> 2 * _FIELD


def zh_size(tokens: Sequence[str]) -> tuple[float, float]:
    """(all, alphabetic) size of :func:`zh_words` tokens in English-word equivalents.

    A Han or kana token of ``k`` characters is ``k /`` :data:`ZH_CHARS_PER_WORD` words
    (all alphabetic); any other token -- a Latin word, a number, a punctuation mark -- is
    one, alphabetic when it has a letter, as in English. Chinese counted in jieba tokens
    instead looks less alphabetic than its English original: a jieba word holds more than
    an English word (经线, "the lines of longitude"), so the same commas and figures
    are a larger share of fewer tokens.
    """
    cjk = other = alpha = 0
    for token in tokens:
        if CJK_RE.match(token):
            cjk += len(token)
        else:
            other += 1
            alpha += any(map(str.isalpha, token))
    words = cjk / ZH_CHARS_PER_WORD
    return words + other, words + alpha


def zh_units(tokens: Sequence[str]) -> list[str]:
    """What Chinese n-grams are made of: each Han or kana character of :func:`zh_words`
    tokens, and each other token that is not punctuation (a Latin word, a number).

    Characters, not jieba words, so a repeat is found whatever the segmentation (jieba
    cuts the same phrase differently in different contexts, and junk unpredictably). A
    punctuation token is appended to the unit before it (one at the very start is left
    out): it belongs to a repeated phrase's characters and identity, as an English
    punctuation token does, but takes no position of its own -- as one it would stand
    for two thirds of a word, and n-grams across sentence ends (``。这个``) would pass
    for phrases. An English rule about ``n`` words takes n-grams of :func:`zh_ngram_size`
    units.

    >>> zh_units(zh_words("运河，建于1914年。"))
    ['运', '河，', '建', '于', '1914', '年。']
    """
    units: list[str] = []
    for token in tokens:
        if CJK_RE.match(token):
            units += token
        elif not PUNCTUATION.issuperset(token):
            units.append(token)
        elif units:
            units[-1] += token
    return units


def zh_ngram_size(n: int) -> int:
    """Units (:func:`zh_units`) in a Chinese n-gram as long as ``n`` English words:
    ``n *`` :data:`ZH_CHARS_PER_WORD` rounded half up (2 -> 3, 3 -> 5, 4 -> 6 ... 10 -> 15).
    """
    return math.floor(n * ZH_CHARS_PER_WORD + 0.5)


def find_duplicates(items: Sequence[str]) -> tuple[int, int]:
    """(items equal to an earlier item, their total characters)."""
    if len(set(items)) == len(items):
        return 0, 0
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _grams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n)), strict=False))


def top_ngram(tokens: Sequence[str], n: int, sep: int = 1) -> tuple[int, int]:
    """(characters, count) of the most frequent word n-gram; its characters are its
    words joined by ``sep`` characters (a space; 0 for Chinese, written without them),
    times its count. Ties go to the n-gram seen first. (0, 0) when there are fewer than
    ``n`` tokens.
    """
    if len(tokens) < n:
        return 0, 0
    counts = Counter(_grams(tokens, n))
    best = max(counts.values())
    gram = tuple(tokens[:n])
    if best > 1:
        gram = next(g for g, c in counts.items() if c == best)
    return best * (sum(map(len, gram)) + (n - 1) * sep), best


def dup_ngram_chars(tokens: Sequence[str], n: int) -> int:
    """Characters in repeated word n-grams, counted the Gopher way.

    Scanning left to right, an n-gram equal to one seen before adds its characters
    (words concatenated without separator) and the scan jumps past it, so overlapping
    repeats are not double counted; otherwise the scan moves one word on.
    """
    grams = _grams(tokens, n)
    if len(set(grams)) == len(grams):  # the common case, and a set is cheaper to build
        return 0
    counts = Counter(grams)
    # Only n-grams that occur more than once can ever be found "seen before": walk just
    # those positions, keeping the skip rule, instead of every position.
    repeated = compress(range(len(grams)), map((1).__lt__, map(counts.__getitem__, grams)))
    offsets = list(accumulate(map(len, tokens), initial=0))
    seen: set[tuple[str, ...]] = set()
    chars = resume = 0
    for i in repeated:
        if i < resume:
            continue
        gram = grams[i]
        if gram in seen:
            chars += offsets[i + n] - offsets[i]
            resume = i + n
        else:
            seen.add(gram)
    return chars


# --- sentences ---------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _is_punct_token(token: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in token)


_SPACE_RUN = re.compile(r"(\s+)")


def count_sentences(text: str, lang: Literal["en", "zh"] = "en") -> int:
    """Number of sentences in ``text`` as spaCy's rule-based sentencizer splits it.

    A sentence ends at a token that is a sentence terminal (``.``, ``!``, ``?``, ``。``);
    the next token that is not punctuation starts a new one. Whitespace other than a
    single space counts as a token, as it does in spaCy.
    """
    tokens: list[str] = []
    for k, piece in enumerate(_SPACE_RUN.split(text.strip())):
        if k % 2:
            if piece != " ":
                tokens.append(piece[1:] if piece[0] == " " else piece)
        elif piece:
            tokens.extend(zh_words(piece) if lang == "zh" else _CHUNKS[piece])
    if not tokens:
        return 0
    count = 1
    seen_end = False
    for token in tokens:
        is_end = token in TERMINAL_PUNCTUATION
        if seen_end and not is_end and not _is_punct_token(token):
            count += 1
            seen_end = False
        elif is_end:
            seen_end = True
    return count
