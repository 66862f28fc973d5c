"""Chinese script and variant normalisation: ``zh_convert`` (OpenCC) and
``normalize_variants`` (a variant table, built in and extendable, applied by scope)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal, cast

from lmops.core.errors import UserError
from lmops.data.document import Document
from lmops.data.operators.unicode import _class_of, _SplitPattern
from lmops.data.ops import Mapper, OpParams, register
from lmops.text.cjk import HAN

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


_HAN = HAN
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
