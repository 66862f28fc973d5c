"""Unicode cleaning: ``clean_unicode`` (normal forms without the unstable characters,
invisible and control characters, line breaks) and the character-class tables it is built on.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Literal, cast

from lmops.data.document import Document
from lmops.data.ops import Mapper, OpParams, register

# ============================================================================ char classes
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _class_of(points: Iterable[int]) -> str:
    """A regex character class for the code points, consecutive ones joined into ranges."""
    pts = sorted(set(points))
    if not pts:
        return "(?!)"  # matches nothing
    parts: list[str] = []
    start = prev = pts[0]
    for cp in [*pts[1:], -1]:
        if cp == prev + 1:
            prev = cp
            continue
        parts.append(f"\\U{start:08x}" if start == prev else f"\\U{start:08x}-\\U{prev:08x}")
        start = prev = cp
    return "[" + "".join(parts) + "]"


@dataclass(frozen=True)
class _SplitPattern:
    """One pattern around a character class, compiled twice.

    ``re`` turns a class of BMP characters into a bitmap but tests astral members range by
    range, which makes a class with astral members several times slower on *every*
    character. Texts without an astral character (nearly all) get the BMP-only version.
    """

    bmp: re.Pattern[str]
    full: re.Pattern[str]

    @classmethod
    def build(cls, template: str, points: Iterable[int]) -> _SplitPattern:
        """``template`` has ``{cls}`` where the character class goes."""
        pts = set(points)
        return cls(
            re.compile(template.replace("{cls}", _class_of(p for p in pts if p < 0x10000))),
            re.compile(template.replace("{cls}", _class_of(pts))),
        )

    def for_text(self, text: str) -> re.Pattern[str]:
        return self.full if _ASTRAL.search(text) else self.bmp


# =========================================================================== clean_unicode
# Invisible characters that are not in a removable category: Hangul fillers (render as
# blank, a favourite for "empty" names), the blank Braille cell, the object replacement
# character.
_EXTRA_INVISIBLE = "\u115f\u1160\u3164\uffa0\u2800\ufffc"
_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # after "\r\n" -> "\n"
NormalForm = Literal["NFC", "NFD", "NFKC", "NFKD"]
# Planes 0-2 and 14 hold every character with a decomposition, a non-zero combining
# class or a format/control category.
_SCANNED = (range(0x30000), range(0xE0000, 0xE1000))


@cache
def _invisible_points() -> frozenset[int]:
    """Every Cc (but tab and newline), Cf and Cs code point, plus :data:`_EXTRA_INVISIBLE`.
    Built once per process (about 40 ms)."""
    points = {
        cp
        for rng in _SCANNED
        for cp in rng
        if unicodedata.category(chr(cp)) in ("Cc", "Cf", "Cs") and cp not in (0x09, 0x0A)
    }
    return frozenset(points | {ord(c) for c in _EXTRA_INVISIBLE})


@cache
def _invisible_pattern(keep: str) -> _SplitPattern:
    points = _invisible_points() - {ord(c) for c in keep}
    return _SplitPattern.build("{cls}+", points)


@dataclass(frozen=True)
class _Unstable:
    pattern: _SplitPattern  # runs of unstable characters
    # Unstable characters that can act on the character before them: combining marks,
    # second halves of compositions, and those normalising to a string starting with one.
    joins_back: frozenset[str]


@cache
def _unstable(form: NormalForm) -> _Unstable:
    """The characters that normalisation to ``form`` may change.

    A character is *unstable* if ``form`` maps it to something else, if it has a non-zero
    combining class (it may be reordered), or if it can be the second half of a canonical
    composition (it may merge into the character before, e.g. U+0301 or a Hangul vowel).
    Between two stable characters normalisation never acts, so normalising only the runs
    of unstable characters (with the character before a run when the run can join back
    onto it) gives exactly the result of normalising the whole text — several times faster
    on Chinese text, which needs NFKC only for its full-width punctuation. Built once per
    form (about 0.1 s).
    """
    changed: set[int] = set()
    joins: set[int] = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))  # Hangul V, T
    for rng in _SCANNED:
        for cp in rng:
            if 0xD800 <= cp <= 0xDFFF:
                continue
            ch = chr(cp)
            if unicodedata.combining(ch):
                joins.add(cp)
            elif unicodedata.normalize(form, ch) != ch:
                changed.add(cp)
            decomposition = unicodedata.decomposition(ch).split()
            if len(decomposition) == 2 and not decomposition[0].startswith("<"):
                joins.add(int(decomposition[1], 16))
    for cp in changed:
        mapped = unicodedata.normalize(form, chr(cp))
        if ord(mapped[0]) in joins or unicodedata.combining(mapped[0]):
            joins.add(cp)
    return _Unstable(
        _SplitPattern.build("{cls}+", changed | joins), frozenset(chr(cp) for cp in joins)
    )


@cache
def _normalize_char(form: NormalForm, ch: str) -> str:
    return unicodedata.normalize(form, ch)


def _normalize(form: NormalForm, text: str) -> str:
    if unicodedata.is_normalized(form, text):
        return text
    unstable = _unstable(form)
    parts: list[str] = []
    pos = 0
    for m in unstable.pattern.for_text(text).finditer(text):
        start, end = m.span()
        run = m.group()
        if run[0] in unstable.joins_back and start > pos:
            start -= 1  # normalise together with the (stable) character it may join
        parts.append(text[pos:start])
        if end - start == 1:
            parts.append(_normalize_char(form, run))  # the common case: "，" -> ","
        else:
            parts.append(unicodedata.normalize(form, text[start:end]))
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


@register("clean_unicode")
class CleanUnicode(Mapper):
    """Normalise Unicode and remove control and invisible characters.

    Line breaks of every kind (``\\r\\n``, ``\\r``, ``\\v``, ``\\f``, U+2028/2029, NEL) become
    ``\\n``. Then every control character except ``\\n`` and ``\\t`` is removed, as are all
    format characters (zero-width space/non-joiner/joiner, word joiner, BOM, soft hyphen,
    bidi embeddings/overrides/isolates, tag characters), lone surrogates, Hangul fillers,
    the blank Braille cell and U+FFFC. Characters listed in ``keep`` are spared (e.g.
    ``keep: "\\u200d"`` keeps emoji ZWJ sequences such as 👨‍👩‍👧 whole). Last the text is
    normalised to ``form`` (``None`` skips it). NFKC, the default, folds compatibility
    forms: full-width letters, digits and punctuation become ASCII (``Ａ１，`` -> ``A1,``),
    ``ﬁ`` -> ``fi``, no-break and ideographic spaces -> space; ``。`` and ``、`` stay.
    """

    class Params(OpParams):
        form: NormalForm | None = "NFKC"
        keep: str = ""

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self.p = cast(CleanUnicode.Params, self.params)

    def apply(self, doc: Document) -> Document:
        doc.text = clean_unicode(doc.text, self.p.form, self.p.keep)
        return doc


def clean_unicode(text: str, form: NormalForm | None = "NFKC", keep: str = "") -> str:
    """The transformation of :class:`CleanUnicode`, as a function."""
    text = _LINE_BREAKS.sub("\n", text.replace("\r\n", "\n"))
    text = _invisible_pattern(keep).for_text(text).sub("", text)
    if form is not None:
        text = _normalize(form, text)
    return text
