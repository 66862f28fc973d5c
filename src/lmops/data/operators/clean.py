"""Cleaning operators: rewrite text, never drop a document.

Each is a :class:`~lmops.data.ops.Mapper`; a recipe usually runs them in this order::

    fix_mojibake -> clean_html -> clean_unicode -> normalize_variants -> zh_convert
    -> regex_replace / strip_urls_emails -> clean_whitespace

(mojibake first, since HTML entities and NFKC would otherwise act on garbled text;
whitespace last, since every other step can leave runs of spaces or blank lines behind).
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmops.core.errors import UserError
from lmops.data.document import Document
from lmops.data.ops import Mapper, OpParams, register
from lmops.data.pii import find_emails

__all__ = [
    "CleanHtml",
    "CleanUnicode",
    "CleanWhitespace",
    "FixMojibake",
    "NormalizeVariants",
    "RegexReplace",
    "RegexRule",
    "StripUrlsEmails",
    "VariantTable",
    "ZhConvert",
    "clean_unicode",
    "find_urls",
    "html_to_text",
    "load_variant_table",
    "parse_variant_table",
]


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


# ========================================================================= clean_whitespace
_HSPACE = re.compile(r"[^\S\n]+")  # any whitespace but a newline


@register("clean_whitespace")
class CleanWhitespace(Mapper):
    """Collapse spaces, strip lines, limit blank lines, strip the document.

    Every line break becomes ``\\n``; inside a line each run of spaces, tabs or other
    Unicode spaces (no-break, ideographic U+3000, thin, …) becomes one ASCII space; each
    line is stripped at both ends (with ``keep_indentation`` its leading whitespace is kept
    as it was, for code); more than ``max_blank_lines`` consecutive blank lines shrink to
    that many; blank lines at the start and end go. No space is ever inserted, so Chinese
    text stays as written.
    """

    class Params(OpParams):
        max_blank_lines: int = Field(1, ge=0)
        keep_indentation: bool = False

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self.p = cast(CleanWhitespace.Params, self.params)
        n = self.p.max_blank_lines
        self._blank_run = re.compile("\n{" + str(n + 2) + ",}")
        self._blank_keep = "\n" * (n + 1)

    def apply(self, doc: Document) -> Document:
        lines = doc.text.splitlines()
        if self.p.keep_indentation:
            out = []
            for line in lines:
                body = line.lstrip()
                indent = line[: len(line) - len(body)]
                body = _HSPACE.sub(" ", body).rstrip()
                out.append(indent + body if body else "")
        else:
            out = [_HSPACE.sub(" ", line).strip() for line in lines]
        text = "\n".join(out)
        text = self._blank_run.sub(self._blank_keep, text)
        doc.text = text.strip("\n") if self.p.keep_indentation else text.strip()
        return doc


# ============================================================================== clean_html
# Tags that start a new line, and (below) those that also leave a blank line around them.
_LINE_TAGS = frozenset(
    {
        "address", "article", "aside", "body", "caption", "dd", "details", "dialog", "div",
        "dt", "fieldset", "figcaption", "figure", "footer", "form", "head", "header",
        "hgroup", "html", "legend", "li", "main", "nav", "option", "section", "summary",
        "title", "tr",
    }
)  # fmt: skip
_PARAGRAPH_TAGS = frozenset(
    {"blockquote", "dl", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "ol", "p", "pre", "table", "ul"}
)
_CELL_TAGS = frozenset({"td", "th"})
_TAG_LIKE = re.compile(r"<[A-Za-z!/?]")
_HTML_WS = re.compile(r"[ \t\n\r\f]+")


class _TextExtractor(HTMLParser):
    """Collects text; breaks are recorded as a pending newline count and written lazily,
    so ``</div><div>`` gives one newline, not two, and nothing trails the last text."""

    def __init__(self, drop: frozenset[str], collapse: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.drop = drop
        self.collapse = collapse
        self.parts: list[str] = []
        self.pending = 0  # newlines owed before the next text: 0, 1 or 2
        self.cell = False  # a table cell started since the last text
        self.dropping = 0  # depth inside dropped elements (script, style, …)
        self.pre = 0  # depth inside <pre>
        # <pre> text is parked here and stands in the output as "\0<index>\0", so the final
        # whitespace clean-up cannot touch it.
        self.pre_texts: list[str] = []

    def _break(self, n: int) -> None:
        self.pending = max(self.pending, n)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.drop:
            self.dropping += 1
        elif tag == "br":
            self.pending = min(self.pending + 1, 2)
        elif tag in _PARAGRAPH_TAGS:
            self._break(2)
            if tag == "pre":
                self.pre += 1
        elif tag in _LINE_TAGS:
            self._break(1)
        elif tag in _CELL_TAGS:
            self.cell = True

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/>, <hr/>, <img/>: a start with no content; never enters a dropped element.
        if tag not in self.drop:
            self.handle_starttag(tag, attrs)
            if tag == "pre":
                self.pre -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.drop:
            self.dropping = max(self.dropping - 1, 0)
        elif tag in _PARAGRAPH_TAGS:
            self._break(2)
            if tag == "pre":
                self.pre = max(self.pre - 1, 0)
        elif tag in _LINE_TAGS:
            self._break(1)

    def handle_data(self, data: str) -> None:
        if self.dropping:
            return
        # &nbsp; is markup spacing, not a special character; NUL is reserved for the <pre>
        # placeholders.
        data = data.replace("\xa0", " ").replace("\0", "")
        if self.collapse and not self.pre:
            data = _HTML_WS.sub(" ", data)
            if data == " " and (self.pending or not self.parts):
                return  # indentation between block tags
        if not data:
            return
        if self.pending:
            self.parts.append("\n" * self.pending)
            self.pending = 0
            self.cell = False
        elif self.cell:
            self.parts.append("\t")
            self.cell = False
        if self.pre:
            self.pre_texts.append(data)
            data = f"\0{len(self.pre_texts) - 1}\0"
        self.parts.append(data)


_PRE_PLACEHOLDER = re.compile("\0([0-9]+)\0")
_SPACE_AROUND_NEWLINE = re.compile(r"[ \t]*\n[ \t]*")
_BLANK_LINES = re.compile(r"\n{3,}")


def html_to_text(
    markup: str,
    drop: frozenset[str] = frozenset({"script", "style", "noscript", "template", "svg"}),
    collapse_whitespace: bool = True,
) -> str:
    """The text of an HTML document or fragment; see :class:`CleanHtml`."""
    if not _TAG_LIKE.search(markup):
        return html.unescape(markup) if "&" in markup else markup
    parser = _TextExtractor(drop, collapse_whitespace)
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    if collapse_whitespace:
        text = re.sub(" {2,}", " ", text)
    text = _BLANK_LINES.sub("\n\n", text).strip()
    if parser.pre_texts:
        pre = parser.pre_texts
        text = _PRE_PLACEHOLDER.sub(lambda m: pre[int(m.group(1))], text)
    return text


@register("clean_html")
class CleanHtml(Mapper):
    """Turn HTML into plain text.

    Tags are removed; the content of ``drop_content`` elements (script, style, noscript,
    template, svg by default) and comments are dropped; entities are unescaped (``&amp;``
    -> ``&``, ``&#x4e2d;`` -> ``中``, ``&nbsp;`` -> a plain space). Block elements start
    a new line (div, li, tr, title, …) and paragraph-level ones (p, h1-h6, ul, ol, table,
    pre, blockquote, hr) are set off by a blank line; ``<br>`` is a line break and table
    cells are separated by a tab. With ``collapse_whitespace`` (default) whitespace in
    the markup is treated as a browser does — any run, newlines included, is one space —
    except inside ``<pre>``; turn it off for mostly-plain text with a few tags in it.
    A document with no tag at all only has its entities unescaped.
    """

    class Params(OpParams):
        drop_content: tuple[str, ...] = ("script", "style", "noscript", "template", "svg")
        collapse_whitespace: bool = True

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self.p = cast(CleanHtml.Params, self.params)
        self._drop = frozenset(t.lower() for t in self.p.drop_content)

    def apply(self, doc: Document) -> Document:
        doc.text = html_to_text(doc.text, self._drop, self.p.collapse_whitespace)
        return doc


# ============================================================================ fix_mojibake
# UTF-8 read as Latin-1 or Windows-1252 always contains the reading of a UTF-8 lead byte,
# 0xC2-0xF4, which both code pages map to U+00C2-U+00F4 (Â … ô). Text without one of them
# cannot carry that mojibake, and skipping ftfy there saves ~0.5 ms per 1000 CJK chars.
_MOJIBAKE_HINT = re.compile("[\u00c2-\u00f4]")


@register("fix_mojibake")
class FixMojibake(Mapper):
    """Repair UTF-8 text that was decoded as Latin-1 or Windows-1252.

    ``"cafÃ©"`` -> ``"café"``, ``"ä¸­æ–‡"`` -> ``"中文"``, ``"doesnÃ¢â‚¬â„¢t"`` ->
    ``"doesn’t"``. Uses ftfy's ``fix_encoding`` (only its encoding fixes: quotes, widths
    and line breaks are left alone), which repairs a garbled stretch inside otherwise
    correct text and leaves text alone unless the repair is clearly more plausible
    (``"SÃO PAULO"`` stays). Other mix-ups (GBK, Windows-1251) are not attempted.
    """

    class Params(OpParams):
        pass

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self._fix = _ftfy_fix_encoding()

    def apply(self, doc: Document) -> Document:
        if _MOJIBAKE_HINT.search(doc.text):
            doc.text = self._fix(doc.text)
        return doc


def _ftfy_fix_encoding() -> Callable[[str], str]:
    try:
        import ftfy
    except ImportError:  # pragma: no cover - ftfy is a dependency
        raise UserError("fix_mojibake needs the ftfy package: pip install ftfy") from None
    return cast(Callable[[str], str], ftfy.fix_encoding)


# ============================================================================== zh_convert
ZhDirection = Literal[
    "t2s", "s2t", "tw2s", "tw2sp", "hk2s", "s2tw", "s2twp", "s2hk", "t2tw", "t2hk", "tw2t", "hk2t"
]


@cache
def _opencc(direction: str) -> Callable[[str], str]:
    # One converter per process and direction (loading the dictionaries takes ~10 ms); kept
    # out of the operator so operators stay picklable for process pools.
    try:
        import opencc
    except ImportError:  # pragma: no cover - opencc is a dependency
        raise UserError("zh_convert needs the opencc package: pip install opencc") from None
    return cast(Callable[[str], str], opencc.OpenCC(direction).convert)


_SURROGATES = re.compile("([\ud800-\udfff]+)")


@register("zh_convert")
class ZhConvert(Mapper):
    """Convert between traditional and simplified Chinese with OpenCC (offline dictionaries).

    ``direction`` is an OpenCC configuration: ``t2s`` (default; traditional -> simplified,
    phrase-aware: 頭髮 -> 头发, 乾燥 -> 干燥, 皇后 stays), ``s2t``, and the regional ones
    (``tw2s``, ``tw2sp`` which also converts Taiwan vocabulary: 軟體 -> 软件, ``hk2s``,
    ``s2tw``, ``s2twp``, ``s2hk``, ``t2tw``, ``t2hk``, ``tw2t``, ``hk2t``). Text that is not
    Chinese passes through unchanged.
    """

    class Params(OpParams):
        direction: ZhDirection = "t2s"

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self.p = cast(ZhConvert.Params, self.params)
        _opencc(self.p.direction)  # fail at build time, not on the first document

    def apply(self, doc: Document) -> Document:
        convert = _opencc(self.p.direction)
        text = doc.text
        if _SURROGATES.search(text):
            # OpenCC takes UTF-8, which cannot carry lone surrogates: convert around them.
            doc.text = "".join(
                part if i % 2 else convert(part) for i, part in enumerate(_SURROGATES.split(text))
            )
        else:
            doc.text = convert(text)
        return doc


# ====================================================================== normalize_variants
_SCOPES = ("any", "latin", "after_han")
_EMPTY = "<empty>"


@dataclass(frozen=True)
class VariantTable:
    """Variant -> standard mappings by scope (see ``resources/variants.tsv``)."""

    anywhere: dict[str, str]
    latin: dict[str, str]
    after_han: dict[str, str]

    def merged(self, other: VariantTable) -> VariantTable:
        """This table with ``other``'s entries added; ``other`` wins on the same source."""

        def merge(
            a: dict[str, str], b: dict[str, str], others: list[dict[str, str]]
        ) -> dict[str, str]:
            out = {k: v for k, v in a.items() if not any(k in o for o in others)}
            out.update(b)
            return out

        return VariantTable(
            merge(self.anywhere, other.anywhere, [other.latin, other.after_han]),
            merge(self.latin, other.latin, [other.anywhere, other.after_han]),
            merge(self.after_han, other.after_han, [other.anywhere, other.latin]),
        )


def parse_variant_table(text: str, source: str) -> VariantTable:
    """Parse the TSV format of ``resources/variants.tsv``; errors name ``source:line``."""
    tables: dict[str, dict[str, str]] = {s: {} for s in _SCOPES}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) not in (2, 3) or not fields[0]:
            raise UserError(
                f"{source}:{lineno}: expected SOURCE<TAB>TARGET[<TAB>SCOPE], got {line!r}"
            )
        src, dst = fields[0], fields[1]
        scope = fields[2].strip() if len(fields) == 3 and fields[2].strip() else "any"
        if scope not in _SCOPES:
            raise UserError(
                f"{source}:{lineno}: unknown scope {scope!r}; use one of: {', '.join(_SCOPES)}"
            )
        if scope != "any" and len(src) != 1:
            raise UserError(f"{source}:{lineno}: scope {scope!r} maps single characters only")
        tables[scope][src] = "" if dst == _EMPTY else dst
    return VariantTable(tables["any"], tables["latin"], tables["after_han"])


def _derived_mappings() -> dict[str, str]:
    """Styled letters and compatibility ideographs, from the Unicode decompositions.

    Only whole blocks whose members are pure look-alikes: full-width letters and digits
    (not full-width punctuation, which Chinese text uses on purpose), circled and squared
    Latin letters, mathematical alphanumerics, letter-like symbols with a ``<font>``
    decomposition, circled ideographs, Kangxi radicals and CJK compatibility ideographs.
    Circled digits (①) and parenthesised forms (⑴ ㈠) are enumerators and stay.
    """
    ranges = [
        (0xFF10, 0xFF19),  # full-width digits
        (0xFF21, 0xFF3A),  # full-width A-Z
        (0xFF41, 0xFF5A),  # full-width a-z
        (0x24B6, 0x24E9),  # circled Latin letters
        (0x2100, 0x214F),  # letter-like symbols (only <font> ones, below)
        (0x1D400, 0x1D7FF),  # mathematical alphanumeric symbols
        (0x1F130, 0x1F149),  # squared Latin capitals
        (0x3280, 0x32B0),  # circled ideographs (㊣ -> 正)
        (0x2E80, 0x2EF3),  # CJK radicals supplement (those with a decomposition)
        (0x2F00, 0x2FD5),  # Kangxi radicals
        (0xF900, 0xFAFF),  # CJK compatibility ideographs
        (0x2F800, 0x2FA1F),  # CJK compatibility ideographs supplement
    ]
    out: dict[str, str] = {}
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            decomposition = unicodedata.decomposition(ch)
            if not decomposition:
                continue
            if lo == 0x2100 and (not decomposition.startswith("<font>") or cp == 0x2139):
                continue  # ℹ (U+2139) is the information emoji
            target = unicodedata.normalize("NFKC", ch)
            if len(target) == 1 and target != ch:
                out[ch] = target
    # Negative circled and negative squared Latin capitals have no decomposition. The four
    # blood-type emoji (🅰 🅱 🅾 🅿) are left alone.
    for base in (0x1F150, 0x1F170):
        for i in range(26):
            if base + i not in (0x1F170, 0x1F171, 0x1F17E, 0x1F17F):
                out[chr(base + i)] = chr(ord("A") + i)
    return out


@cache
def _builtin_variant_table() -> VariantTable:
    path = resources.files("lmops.data").joinpath("resources/variants.tsv")
    table = parse_variant_table(path.read_text(encoding="utf-8"), "variants.tsv")
    derived = VariantTable(_derived_mappings(), {}, {})
    return derived.merged(table)  # the listed entries win over derived ones


def load_variant_table(extra: str | Path | None = None, builtin: bool = True) -> VariantTable:
    """The shipped table (unless ``builtin`` is false) with ``extra``'s entries on top."""
    table = _builtin_variant_table() if builtin else VariantTable({}, {}, {})
    if extra is not None:
        path = Path(extra)
        try:
            content = path.read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(
                f"cannot read variant mapping file {str(path)!r}: {e.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise UserError(f"variant mapping file {str(path)!r} is not UTF-8") from None
        table = table.merged(parse_variant_table(content, str(path)))
    return table


_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_BOPOMOFO = "\u3100-\u312f\u31a0-\u31bf"
# A run of letters of the scripts that look-alike spoofing mixes.
_LETTER_RUN = "A-Za-z\u00c0-\u024f\u0370-\u03ff\u0400-\u052f\u0531-\u058f"
_ASCII_LETTER = re.compile("[A-Za-z]")
_LATIN_LETTER = re.compile("[A-Za-z\u00c0-\u024f]")


def _char_class(chars: Iterable[str]) -> str:
    return _class_of(ord(c) for c in chars)


def _resolve_chains(mapping: dict[str, str]) -> dict[str, str]:
    """Follow ``a -> b -> c`` to ``a -> c`` so one pass is enough and the result is stable
    (⼺, the Kangxi radical, maps to 彡, which is itself deleted). Cycles are cut."""
    out = {}
    for key, value in mapping.items():
        seen = {key}
        while value in mapping and value not in seen:
            seen.add(value)
            value = mapping[value]
        out[key] = value
    return out


class _VariantNormalizer:
    """Applies a :class:`VariantTable`: compiled once, picklable (only regexes and dicts)."""

    def __init__(self, table: VariantTable) -> None:
        self.table = VariantTable(_resolve_chains(table.anywhere), table.latin, table.after_han)
        table = self.table
        # Phrases by first character, longest first. The scan looks for any character that
        # is a key or starts a phrase (a plain class: fast), then tries the phrases there.
        self.phrases: dict[str, list[str]] = {}
        for key in sorted((k for k in table.anywhere if len(k) > 1), key=lambda k: (-len(k), k)):
            self.phrases.setdefault(key[0], []).append(key)
        firsts = {ord(k[0]) for k in table.anywhere}
        self.anywhere = _SplitPattern.build("{cls}", firsts) if firsts else None
        # A whole word (run of letters) with at least one look-alike in it. Possessive
        # quantifiers and the lookbehind make this linear: a word without a look-alike is
        # read once and given up, never retried from inside.
        keys = _char_class(list(table.latin))
        self.latin_words = (
            re.compile(
                f"(?<![{_LETTER_RUN}])(?:(?!{keys})[{_LETTER_RUN}])*+{keys}[{_LETTER_RUN}]*+"
            )
            if table.latin
            else None
        )
        self.latin_keys = re.compile(keys) if table.latin else None
        self.after_han = (
            re.compile(f"(?<=[{_HAN}]){_char_class(list(table.after_han))}(?![{_BOPOMOFO}])")
            if table.after_han
            else None
        )

    def _replace_anywhere(self, text: str) -> str:
        assert self.anywhere is not None
        table = self.table.anywhere
        parts: list[str] = []
        pos = 0
        for m in self.anywhere.for_text(text).finditer(text):
            i = m.start()
            if i < pos:
                continue  # inside a phrase just replaced
            key = next((p for p in self.phrases.get(text[i], ()) if text.startswith(p, i)), None)
            if key is None:
                if text[i] not in table:
                    continue  # starts a phrase that is not here, and is no key itself
                key = text[i]
            parts.append(text[pos:i])
            parts.append(table[key])
            pos = i + len(key)
        if not parts:
            return text
        parts.append(text[pos:])
        return "".join(parts)

    def _latin_word(self, m: re.Match[str]) -> str:
        word = m.group()
        latin = self.table.latin
        if not _ASCII_LETTER.search(word):
            return word  # a Cyrillic/Greek word: not a spoof
        if any(c not in latin and not _LATIN_LETTER.match(c) for c in word):
            return word  # has a foreign letter with no look-alike: a genuinely mixed word
        return "".join(latin.get(c, c) for c in word)

    def __call__(self, text: str) -> str:
        if self.anywhere is not None:
            text = self._replace_anywhere(text)
        if (
            self.latin_words is not None
            and self.latin_keys is not None
            and self.latin_keys.search(text)  # most texts have no look-alike at all
        ):
            text = self.latin_words.sub(self._latin_word, text)
        if self.after_han is not None:
            after_han = self.table.after_han
            text = self.after_han.sub(lambda m: after_han[m.group()], text)
        return text


@cache
def _builtin_normalizer() -> _VariantNormalizer:
    return _VariantNormalizer(_builtin_variant_table())


@register("normalize_variants")
class NormalizeVariants(Mapper):
    """Normalise "火星文" and look-alike characters to the standard ones.

    Driven by a mapping table (``lmops/data/resources/variants.tsv``, format described in
    its header) plus mappings derived from Unicode: Martian-script characters (莪 -> 我,
    伱/妳 -> 你, 嘚 -> 的, 吥 -> 不, 緈 -> 幸, 餹 -> 糖, …) with real words protected
    (嘚瑟, 卟啉, 我哋), ornaments removed (彡), particles written in Bopomofo after a Han
    character (我ㄉ -> 我的), styled Latin (ｆｕｌｌ, ⓒⓘⓡⓒⓛⓔⓓ, 𝐛𝐨𝐥𝐝, 𝔣𝔯𝔞𝔨𝔱𝔲𝔯) to ASCII,
    circled ideographs (㊣ -> 正), Kangxi radicals (⼤ -> 大), and Cyrillic/Greek look-alikes
    inside Latin words (spoofed "Pаypal" -> "Paypal"; Russian and Greek text is untouched).
    Full-width punctuation and circled digits are left as they are.

    ``mapping_file`` adds entries from a file in the same format (they win over shipped
    ones); ``builtin: false`` uses only that file.
    """

    class Params(OpParams):
        mapping_file: str | None = None
        builtin: bool = True

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        p = cast(NormalizeVariants.Params, self.params)
        if p.mapping_file is None and p.builtin:
            self._normalize = _builtin_normalizer()
        else:
            self._normalize = _VariantNormalizer(load_variant_table(p.mapping_file, p.builtin))

    def apply(self, doc: Document) -> Document:
        doc.text = self._normalize(doc.text)
        return doc


# =========================================================================== regex_replace
_FLAG_LETTERS = {
    "a": re.ASCII,
    "i": re.IGNORECASE,
    "m": re.MULTILINE,
    "s": re.DOTALL,
    "x": re.VERBOSE,
}


class RegexRule(BaseModel):
    """One substitution: ``re.sub(pattern, replacement, text, flags=flags)``.

    ``flags`` is a string of Python's inline-flag letters: ``a`` ASCII, ``i`` ignore case,
    ``m`` multi-line, ``s`` dot matches newline, ``x`` verbose.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str
    replacement: str = ""
    flags: str = ""

    @field_validator("flags")
    @classmethod
    def _known_flags(cls, v: str) -> str:
        bad = sorted(set(v) - set(_FLAG_LETTERS))
        if bad:
            raise ValueError(f"unknown flag letters {''.join(bad)!r}; use any of 'aimsx'")
        return v


@register("regex_replace")
class RegexReplace(Mapper):
    """Apply regular-expression substitutions in order.

    ``rules`` is a list of ``{pattern, replacement, flags}`` (see :class:`RegexRule`);
    each rule sees the output of the previous one. The replacement may use ``\\1`` and
    ``\\g<name>``. Patterns and replacements are checked when the operator is built: a bad
    one is a :class:`~lmops.core.errors.UserError` naming the rule's index.
    """

    class Params(OpParams):
        rules: tuple[RegexRule, ...] = ()

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        p = cast(RegexReplace.Params, self.params)
        self._rules: list[tuple[re.Pattern[str], str]] = []
        for i, rule in enumerate(p.rules):
            flags = 0
            for letter in rule.flags:
                flags |= _FLAG_LETTERS[letter]
            try:
                compiled = re.compile(rule.pattern, flags)
            except (re.error, OverflowError) as e:
                raise UserError(
                    f"regex_replace: rule {i}: invalid pattern {rule.pattern!r}: {e}"
                ) from None
            try:
                # Substituting into "" parses the replacement template without a match.
                compiled.sub(rule.replacement, "")
            except (re.error, IndexError) as e:
                raise UserError(
                    f"regex_replace: rule {i}: invalid replacement {rule.replacement!r}: {e}"
                ) from None
            self._rules.append((compiled, rule.replacement))

    def apply(self, doc: Document) -> Document:
        text = doc.text
        for pattern, replacement in self._rules:
            text = pattern.sub(replacement, text)
        doc.text = text
        return doc


# ======================================================================= strip_urls_emails
# A URL: a scheme (or "www.") and the characters RFC 3986 allows; it ends at whitespace,
# at any non-ASCII character (so "访问https://a.cn/x获取" ends before 获) and at quotes or
# angle brackets. Trailing sentence punctuation and unbalanced closing brackets are given
# back by _url_end.
_URL = re.compile(
    r"(?:\b(?:https?|ftp)://|\bwww\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", re.ASCII
)
_TRAILING = ".,;:!?'\"*"


def _url_end(url: str) -> int:
    end = len(url)
    while end > 0:
        c = url[end - 1]
        if c in _TRAILING:
            end -= 1
        elif c in ")]" and url.count(c, 0, end) > url.count("(" if c == ")" else "[", 0, end):
            end -= 1  # "(see https://x.org/a)" — the bracket is the sentence's
        else:
            break
    return end


def find_urls(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each http(s)/ftp URL or ``www.`` address in ``text``."""
    spans = []
    for m in _URL.finditer(text):
        end = m.start() + _url_end(m.group())
        if end - m.start() > len("www."):
            spans.append((m.start(), end))
    return spans


@register("strip_urls_emails")
class StripUrlsEmails(Mapper):
    """Remove URLs and/or e-mail addresses, replacing each with ``replacement``.

    URLs are ``http://``, ``https://``, ``ftp://`` and ``www.`` addresses; a URL ends at
    whitespace or a non-ASCII character, and trailing punctuation (``.`` ``,`` ``)`` …)
    stays in the text unless it belongs to the URL (balanced brackets, as in Wikipedia
    links). E-mail addresses are found as :func:`lmops.data.pii.detect_pii` finds them.
    An address inside a URL goes with the URL. The default replacement is the empty string;
    run ``clean_whitespace`` afterwards for the spaces left behind.
    """

    class Params(OpParams):
        urls: bool = True
        emails: bool = True
        replacement: str = ""

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self.p = cast(StripUrlsEmails.Params, self.params)

    def apply(self, doc: Document) -> Document:
        text = doc.text
        spans: list[tuple[int, int]] = []
        if self.p.urls:
            spans.extend(find_urls(text))
        if self.p.emails:
            spans.extend(find_emails(text))
        if not spans:
            return doc
        spans.sort(key=lambda s: (s[0], -s[1]))
        parts: list[str] = []
        pos = 0
        for start, end in spans:
            if start < pos:
                continue  # inside the previous span (an address in a URL)
            parts.append(text[pos:start])
            parts.append(self.p.replacement)
            pos = end
        parts.append(text[pos:])
        doc.text = "".join(parts)
        return doc
