"""CJK character ranges, defined once for every stage (regex character-class bodies).

The bounds, by Unicode block (chosen so every use names what it means instead of
re-typing code points):

* :data:`HAN_BMP`: CJK Unified Ideographs Extension A (U+3400-U+4DBF), CJK Unified
  Ideographs (U+4E00-U+9FFF) and CJK Compatibility Ideographs (U+F900-U+FAFF).
* :data:`HAN_SUPPLEMENTARY`: U+20000-U+3134F, Extensions B to G (and the Compatibility
  Ideographs Supplement inside it); Extension H (U+31350-U+323AF) is left out because
  older Python ``unicodedata`` versions do not know it.
* :data:`HAN`: both; what "a Chinese character" means everywhere in lmops.
* :data:`KANA`: Hiragana and Katakana (U+3040-U+30FF).
* :data:`HANGUL`: Hangul syllables (U+AC00-U+D7AF). Korean separates words with spaces,
  so it is only in :data:`CJK_TOKEN`, never in :data:`NO_SPACE`.
* :data:`CJK_PUNCT`: CJK Symbols and Punctuation (U+3000-U+303F, the ideographic space
  included); :data:`FULLWIDTH`: Halfwidth and Fullwidth Forms (U+FF00-U+FFEF).
* :data:`NO_SPACE`: kana and Han, the CJK scripts written without spaces between words,
  where one character is the natural unit of a word.
* :data:`CJK_TOKEN`: what a tokenizer-free token estimate counts one token per character.
"""

from __future__ import annotations

import re

__all__ = [
    "CJK_PUNCT",
    "CJK_TOKEN",
    "FULLWIDTH",
    "HAN",
    "HANGUL",
    "HAN_BMP",
    "HAN_RE",
    "HAN_SUPPLEMENTARY",
    "KANA",
    "NO_SPACE",
    "count_han",
]

HAN_BMP = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
HAN_SUPPLEMENTARY = "\U00020000-\U0003134f"
HAN = HAN_BMP + HAN_SUPPLEMENTARY
KANA = "\u3040-\u30ff"
HANGUL = "\uac00-\ud7af"
CJK_PUNCT = "\u3000-\u303f"
FULLWIDTH = "\uff00-\uffef"
NO_SPACE = KANA + HAN
CJK_TOKEN = CJK_PUNCT + NO_SPACE + HANGUL + FULLWIDTH

HAN_RE = re.compile(f"[{HAN}]")


def count_han(text: str) -> int:
    """How many Han characters ``text`` holds."""
    return len(HAN_RE.findall(text))
