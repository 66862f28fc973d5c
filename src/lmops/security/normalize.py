"""The one text normalisation of the guard: text and terms are compared in this form."""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from functools import cache
from typing import cast

from lmops.text.cjk import HAN, HAN_RE

log = logging.getLogger(__name__)


# ============================================================================ normalisation
_CJK = HAN
# Invisible characters used to split words past filters: zero-width space/joiners, word
# joiner and friends, BOM, soft hyphen, Mongolian vowel separator, combining grapheme joiner.
_INVISIBLE = dict.fromkeys(
    [*range(0x200B, 0x2010), *range(0x2060, 0x2065), 0xFEFF, 0x00AD, 0x180E, 0x034F]
)
_QUOTES = {0x2018: "'", 0x2019: "'", 0x02BC: "'", 0x201C: '"', 0x201D: '"'}
_DROP = str.maketrans({**_INVISIBLE, **_QUOTES})
# Finds what _DROP would change: translating a non-ASCII string is slower than searching it.
_DROP_ANY = re.compile("[" + "".join(map(chr, sorted({**_INVISIBLE, **_QUOTES}))) + "]")
# Runs of whitespace but newlines -> " ", and " \n   " -> "\n". Written to match only what
# they change (not a lone " " or "\n"), which spares the rebuilding of unchanged text.
_HSPACE = re.compile(r" [^\S\n]+|[^\S\n ][^\S\n]*")
_NEWLINES = re.compile(r" \n\s*|\n\s+")
# What _CJK_GAP drops between Chinese characters, as it is found in normalised text (its
# only blanks are " " and line breaks); in the regex, any blank.
GAP_CHARS = " \n*_.-·・~|/\\+#^="
_GAP = "[\\s" + re.escape(GAP_CHARS.lstrip(" \n")) + "]"
# Spaces and ASCII separators between two Chinese characters ("自 杀", "自*杀", "自-杀").
# The lookbehind comes after the first separator, so that the regex engine skips straight
# to separators instead of trying every position.
_CJK_GAP = re.compile(rf"{_GAP}(?<=[{_CJK}]{_GAP}){_GAP}*(?=[{_CJK}])")
# "self-harm", "al_qaeda" -> "self harm", "al qaeda".
_LATIN_JOIN = re.compile(r"(?<=[a-z])[-_](?=[a-z])")
_SURROGATES = re.compile("[\ud800-\udfff]")
_HAN = HAN_RE  # what may need traditional -> simplified
# Whitespace that _HSPACE changes, with "  ": anything but a lone space (most text has none).
_ODD_SPACE = re.compile(r"[^\S\n ]")
# Full-width ASCII and the ideographic space, mapped to their NFKD forms (one character with
# no combining class each), so NFKC(text) == NFKC(text folded): Chinese text is then
# usually NFKC already, and the full normalisation (~50x slower) is skipped.
_WIDE_RUN = re.compile("[\uff01-\uff5e\u3000]+")
_FOLD = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def join_normalized(text: str) -> str:
    """The steps of :func:`normalize_text` that reach across a line break, on normalised
    texts joined with line breaks: blanks around a break folded into it, a break between
    Chinese characters dropped. ``join_normalized("\\n".join(map(normalize_text, texts)))``
    is ``normalize_text("\\n".join(texts))``."""
    if "\n" in text:
        text = _NEWLINES.sub("\n", text)
    if _HAN.search(text) is not None:
        text = _CJK_GAP.sub("", text)
    return text


def flat(normalized: str) -> str:
    """Normalised text with its line breaks as blanks (terms are matched across them)."""
    return normalized.replace("\n", " ") if "\n" in normalized else normalized


def _nfkc(text: str) -> str:
    """``unicodedata.normalize("NFKC", text)``, cheaply for text that is (almost) NFKC."""
    if unicodedata.is_normalized("NFKC", text):  # a quick check, far cheaper than NFKC
        return text
    text = _WIDE_RUN.sub(lambda m: m.group().translate(_FOLD), text)
    if unicodedata.is_normalized("NFKC", text):
        return text
    return unicodedata.normalize("NFKC", text)


@cache
def _t2s() -> Callable[[str], str] | None:
    try:
        import opencc
    except ImportError:  # pragma: no cover - opencc is a dependency
        log.warning("opencc is not installed: traditional Chinese is matched as written")
        return None
    return cast(Callable[[str], str], opencc.OpenCC("t2s").convert)


def normalize_text(text: str) -> str:
    """The form that moderation terms and injection rules are matched against.

    Lossy and for matching only: offsets do not map back to ``text``.
    """
    # Each step runs only where it can change something: on ASCII text NFKC, _DROP, OpenCC
    # and _CJK_GAP never do, and the substitutions are skipped when their characters are
    # missing (most text has single spaces only, and no "-" or "_").
    if text.isascii():  # O(1) in CPython
        t = text.lower()
        han = False
    else:
        t = _nfkc(text)
        if _DROP_ANY.search(t) is not None:
            t = t.translate(_DROP)
        t = t.lower()
        han = _HAN.search(t) is not None  # without it there is no Chinese for OpenCC/_CJK_GAP
        convert = _t2s()
        if convert is not None and han:
            # OpenCC takes UTF-8, which cannot carry lone surrogates.
            convert_in = _SURROGATES.sub("\ufffd", t)
            t = convert(convert_in)
    # isprintable(): no whitespace but " " (the others are "Separator" or "Other"), in C.
    if "  " in t or (not t.isprintable() and _ODD_SPACE.search(t) is not None):
        t = _HSPACE.sub(" ", t)
    if "\n" in t:
        t = _NEWLINES.sub("\n", t)
    if han:
        t = _CJK_GAP.sub("", t)
    if "-" in t or "_" in t:
        t = _LATIN_JOIN.sub(" ", t)
    return t
