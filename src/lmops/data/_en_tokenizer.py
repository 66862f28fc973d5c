"""English words as spaCy's blank English tokenizer makes them, in pure Python.

datatrove's Gopher, C4 and FineWeb filters count words with that tokenizer, so following
its rules (whitespace split, then prefix / suffix / infix splitting, URL matching and the
English exception table: ``don't`` -> ``do`` ``n't``, ``Mr.`` stays whole, ``hello,`` ->
``hello`` ``,``) is what makes our keep/drop decisions agree with theirs. Tokenising a
whitespace chunk is memoised, so a document costs one ``str.split`` plus one dict look-up
per chunk. The public entry point is :func:`lmops.data.text.en_words`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from itertools import chain
from typing import Any

from lmops.text.cjk import HAN_BMP

_DIGITS = frozenset("0123456789")

_PUNCT_AFFIX = "…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪"
_QUOTES = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉〈〉⟦⟧"
_CURRENCY_1 = "$£€¥฿₽﷼₴₠₡₢₣₤₥₦₧₨₩₪₫₭₮₯₰₱₲₳₵₶₷₸₹₺₻₼₾₿"
_PREFIX_1 = frozenset("§%=—–" + _PUNCT_AFFIX + _QUOTES + _CURRENCY_1)
_SUFFIX_1 = frozenset(_PUNCT_AFFIX + _QUOTES + "—–")
_UNITS = frozenset(
    (
        "km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg "
        "t lb oz m/s km/h kmh mph hPa Pa mbar mb MB kb KB gb GB tb TB T G M K % км км² км³ "
        "м м² м³ дм дм² дм³ см см² см³ мм мм² мм³ нм кг г мг м/с км/ч кПа Па мбар Кб КБ "
        "кб Мб МБ мб Гб ГБ гб Тб ТБ"
    ).split()
)
_AFTER_NUMBER = _UNITS | frozenset(_CURRENCY_1) | {"US$", "C$", "A$", "+"}
# Characters after which a final "." is split off (besides lower-case letters).
_DOT_AFTER = frozenset("0123456789%²-+|(?:" + _PUNCT_AFFIX + _QUOTES)
_HYPHENS = ("-", "–", "—", "--", "---", "——", "~")


@lru_cache(maxsize=4096)
def _is_icon(ch: str) -> bool:
    # "Symbol, other": dingbats, emoji, degree sign -- split off like punctuation.
    return unicodedata.category(ch) == "So"


# Blocks spaCy counts as (uncased) letters although Unicode does not: CJK punctuation,
# radicals, strokes and enclosed forms.
_CJK_EXTRA_ALPHA = re.compile(
    "[\u2e80-\u2fff\u3000-\u303f\u31c0-\u31ef\u3200-\u33ff\ufe30-\ufe4f\U0001f200-\U0001f2ff]"
)


def _alpha(ch: str) -> bool:
    if ch.isalpha():
        return ch not in "ªµº"  # Latin-1 letters outside spaCy's Latin ranges
    return ch > "\u2e7f" and _CJK_EXTRA_ALPHA.match(ch) is not None


def _lower(ch: str) -> bool:
    # Lower-case or uncased (CJK, kana, Hebrew...) letter.
    return _alpha(ch) and not ch.isupper()


def _upper(ch: str) -> bool:
    return _alpha(ch) and not ch.islower()


# The affix functions below read ``s[lo:hi]`` through indices rather than slices, so
# peeling 50,000 "!" off a chunk stays linear in its length.


def _prefix_len(s: str, lo: int, hi: int) -> int:
    """Length of the prefix to split off ``s[lo:hi]`` (non-empty), 0 if none."""
    c = s[lo]
    if c in _PREFIX_1:
        return 1
    if c == "+":
        return 0 if lo + 1 < hi and s[lo + 1] in _DIGITS else 1
    if c == ".":
        run = _DOTS.match(s, lo, hi)
        return run.end() - lo if run else 0
    if s.startswith("US$", lo, hi):
        return 3
    if s.startswith(("C$", "A$"), lo, hi):
        return 2
    return 1 if _is_icon(c) else 0


_DOTS = re.compile(r"\.\.+")


def _suffix_len(s: str, lo: int, hi: int) -> int:
    """Length of the suffix to split off ``s[lo:hi]``, 0 if none; looks no further
    left than ``lo``.
    """
    if hi - lo >= 2 and s[hi - 1] == "." and s[hi - 2] == ".":
        i = hi - 2
        while i > lo and s[i - 1] == ".":
            i -= 1
        return hi - i
    # The longest suffix wins (the leftmost match of a $-anchored search); no
    # alternative other than a run of dots is longer than 4 characters.
    for i in range(max(lo, hi - 4), hi):
        tail = s[i:hi]
        prev = s[i - 1] if i > lo else ""
        if len(tail) == 1:
            if tail in _SUFFIX_1 or _is_icon(tail):
                return 1
            if tail == ".":
                if prev in _DOT_AFTER or (prev and _lower(prev)):
                    return 1
                if i - lo >= 2 and _upper(s[i - 2]) and _upper(prev):
                    return 1
                if i - lo >= 2 and s[i - 2] == "°" and prev in "FfCcKk":
                    return 1
                continue
        elif tail == "……" or tail in ("'s", "'S", "’s", "’S"):
            return hi - i
        if prev in _DIGITS and tail in _AFTER_NUMBER:
            return hi - i
    return 0


# Characters an infix can start with; anything else is skipped without a look. Non-ASCII
# characters are candidates because symbols ("So") split wherever they are.
_INFIX_START = re.compile(r"[.…+\-*^,–—~:<>=/]|[^\x00-\x7f]")


def _infixes(s: str) -> list[tuple[int, int]]:
    """(start, end) of the infix separators in ``s`` (hyphens between letters, ...)."""
    spans: list[tuple[int, int]] = []
    n = len(s)
    pos = 0  # matches do not overlap: candidates before the last match's end are skipped
    for m in _INFIX_START.finditer(s):
        i = m.start()
        if i < pos:
            continue
        c = s[i]
        end = 0
        nxt = s[i + 1] if i + 1 < n else ""
        if c == ".":
            dots = _DOTS.match(s, i)
            if dots:
                end = dots.end()
            elif (
                i
                and nxt
                and (_lower(s[i - 1]) or s[i - 1] in _QUOTES)
                and (_upper(nxt) or nxt in _QUOTES)
            ):  # "end.Start": a full stop between a lower- and an upper-case letter
                end = i + 1
        elif c == "…" or _is_icon(c):
            end = i + 1
        elif i:
            p = s[i - 1]
            if nxt and (
                (c in "+-*^" and p in _DIGITS and (nxt in _DIGITS or nxt == "-"))  # "2-3"
                or (c == "," and _alpha(p) and _alpha(nxt))  # "this,that"
            ):
                end = i + 1
            elif p in _DIGITS or _alpha(p):
                if c in "-–—~":
                    for h in _HYPHENS:
                        k = i + len(h)
                        if s.startswith(h, i) and k < n and _alpha(s[k]):
                            end = k
                            break
                elif c in ":<>=/" and nxt and _alpha(nxt):
                    end = i + 1
        if end:
            spans.append((i, end))
            pos = end
    return spans


# Characters a top-level domain may use: lower-case Latin, Greek and Cyrillic letters,
# and the uncased scripts (Hebrew, Arabic, Indic, Ethiopic, Hangul, kana, Han).
_TLD_LOWER = "".join(
    c
    for c in map(chr, (*range(0x530), *range(0x1E00, 0x2000)))
    if c.isalpha() and c.islower() and c not in "ªµº"
)
_TLD_UNCASED = (
    "\u0591-\u05f4\ufb1d-\ufb4f\u0620-\u064a\u066e-\u06d5\u06e5-\u06ff\u0750-\u077f"
    "\u08a0-\u08bd\ufb50-\ufbb1\ufbd3-\ufd3d\ufd50-\ufdc7\ufdf0-\ufdfb\ufe70-\ufefc"
    "\u0900-\u097f\u0980-\u09ff\u0b80-\u0bff\u0c00-\u0c7f\u0c80-\u0cff\u0d80-\u0dff"
    "\u1200-\u137f\u1100-\u11ff\uac00-\ud7af\u2e80-\u2fff\u3000-\u30ff\u31c0-\u31ef"
    "\u3200-\u33ff" + HAN_BMP + "\ufe30-\ufe4f"
)
_HOST = "[A-Za-z0-9\u00a1-\uffff]"
_URL_TAIL = (
    # dotted IPv4 outside the private and link-local ranges, or host names with a TLD
    r"(?!(?:10|127)(?:\.\d{1,3}){3})(?!(?:169\.254|192\.168)(?:\.\d{1,3}){2})"
    r"(?!172\.(?:1[6-9]|2\d|3[0-1])(?:\.\d{1,3}){2})"
    r"(?:(?:[1-9]\d?|1\d\d|2[01]\d|22[0-3])(?:\.(?:1?\d{1,2}|2[0-4]\d|25[0-5])){2}"
    r"\.(?:[1-9]\d?|1\d\d|2[0-4]\d|25[0-4])"
    rf"|(?:(?:{_HOST}[A-Za-z0-9\u00a1-\uffff_-]{{0,62}})?{_HOST}\.)+"
    f"[{re.escape(_TLD_LOWER)}{_TLD_UNCASED}]{{2,63}})"
    r"(?::\d{2,5})?(?:[/?#]\S*)?$"
)
_URL = re.compile(r"^(?:[\w+\-.]{2,}://)?" + _URL_TAIL)
_URL_USER = re.compile(r"^(?:[\w+\-.]{2,}://)?(?:\S+(?::\S*)?@)?" + _URL_TAIL)


def _is_url(s: str) -> bool:
    if "." not in s:  # both host forms need a dot; skip the regex for plain words
        return False
    return (_URL_USER if "@" in s else _URL).match(s) is not None


def _english_exceptions() -> dict[str, tuple[str, ...]]:
    """Whitespace chunks with a fixed tokenisation: contractions, abbreviations, faces."""
    exc: dict[str, tuple[str, ...]] = {}

    def add(*parts: str) -> None:
        exc["".join(parts)] = parts

    def cased(word: str) -> tuple[str, str]:
        return (word, "I") if word == "i" else (word, word.title())

    wh = ("who", "what", "when", "where", "why", "how", "there", "that", "this", "these",
          "those")  # fmt: skip
    for w in cased("i"):
        for rest in (("'m",), ("m",), ("'m", "a"), ("m", "a")):
            add(w, *rest)
    for base in ("i", "you", "he", "she", "it", "we", "they", *wh):
        for w in cased(base):
            for aux in ("ll", "d"):
                add(w, "'" + aux)
                add(w, aux)
                add(w, "'" + aux, "'ve")
                add(w, aux, "ve")
    pronoun_tails: dict[str, tuple[str, ...]] = {
        "i": ("ve",), "you": ("ve", "re"), "we": ("ve", "re"), "they": ("ve", "re"),
        "he": ("s",), "she": ("s",), "it": ("s",),
    }  # fmt: skip
    for base in wh:
        # "'s" (is/has) after singular and question words, "'re"/"'ve" after plural ones.
        pronoun_tails[base] = (
            ("s",) if base in ("that", "this")
            else ("re", "ve") if base in ("these", "those")
            else ("s", "re", "ve")
        )  # fmt: skip
    for base, tails in pronoun_tails.items():
        for w in cased(base):
            for tail in tails:
                add(w, "'" + tail)
                add(w, tail)
    for verb in ("ca", "could", "do", "does", "did", "had", "may", "might", "must", "need",
                 "ought", "sha", "should", "wo", "would"):  # fmt: skip
        for w in cased(verb):
            add(w, "n't")
            add(w, "nt")
            add(w, "n't", "'ve")
            add(w, "nt", "ve")
    for verb in ("could", "might", "must", "should", "would"):
        for w in cased(verb):
            add(w, "'ve")
            add(w, "ve")
    for verb in ("ai", "are", "is", "was", "were", "have", "has", "dare"):
        for w in cased(verb):
            add(w, "n't")
            add(w, "nt")
    for word in ("doin", "goin", "nothin", "nuthin", "havin", "lovin", "somethin", "ol"):
        for w in cased(word):
            add(w)
            add(w + "'")
    for w in ("em", "ll", "nuff"):
        add(w)
        add("'" + w)
    for w in cased("cannot"):
        add(w[:3], "not")
    for w in cased("gonna"):
        add(w[:3], "na")
    for w in cased("gotta"):
        add(w[:3], "ta")
    for w in cased("let"):
        add(w, "'s")
    for w in cased("how"):
        add(w, "'d", "'y")
    for w in cased("not"):
        add(w, "'ve")
        add(w, "ve")
    for pair in (("y'", "all"), ("y", "all"), ("c'm", "on"), ("C'm", "on")):
        add(*pair)
    for hour in range(1, 13):
        for period in ("a.m.", "am", "p.m.", "pm"):
            add(str(hour), period)
    for u in "cfkCFK":
        add("°", u, ".")
    whole = (
        "'cause 'Cause 'cos 'Cos 'coz 'Coz 'cuz 'Cuz 'bout ma'am Ma'am o'clock O'clock 's 'S "
        "'re 'd ' '' ‘S ‘s and/or w/o C++ <space> \\n \\t \\\") — "
        # abbreviations that keep their period
        "a.m. p.m. e.g. E.g. E.G. i.e. I.e. I.E. co. Co. Corp. Inc. Ltd. Bros. Adm. Dr. Gen. "
        "Gov. Jr. Md. Messrs. Mo. Mont. Mr. Mrs. Ms. Mt. Ph.D. Prof. Rep. Rev. Sen. St. vs. "
        "v.s. D.C. Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec. Ak. Ala. "
        "Ariz. Ark. Calif. Colo. Conn. Del. Fla. Ga. Ia. Id. Ill. Ind. Kan. Kans. Ky. La. "
        "Mass. Mich. Minn. Miss. N.C. N.D. N.H. N.J. N.M. N.Y. Neb. Nebr. Nev. Okla. Ore. "
        "Pa. S.C. Tenn. Va. Wash. Wis. "
        # emoticons
        ":) :-) :)) :-)) :))) :-))) (: (-: =) (= :] :-] [: [-: [= =] :o) (o: :} :-} 8) "
        "8-) (-8 ;) ;-) (; (-; :( :-( :(( :-(( :((( :-((( ): )-: =( >:( :') :'-) :'( :'-( "
        ":/ :-/ =/ =| :| :-| ]= =[ :1 :P :-P :p :-p :O :-O :o :-o :0 :-0 :() >:o :* :-* "
        ":3 :-3 =3 :> :-> :X :-X :x :-x :D :-D ;D ;-D =D xD XD xDD XDD 8D 8-D ^_^ ^__^ "
        "^___^ >.< >.> <.< ._. ;_; -_- -__- v.v V.V v_v V_V o_o o_O O_o O_O 0_o o_0 0_0 "
        "o.O O.o O.O o.o 0.0 o.0 0.o @_@ <3 <33 <333 </3 (^_^) (-_-) (._.) (>_<) (*_*) "
        "(¬_¬) ಠ_ಠ ಠ︵ಠ (ಠ_ಠ) ¯\\(ツ)/¯ (╯°□°）╯︵┻━┻ ><(((*>"
    )
    for w in whole.split():
        add(w)
    for ch in "abcdefghijklmnopqrstuvwxyzäöü":
        add(ch + ".")
    # Real words that the rules above would wrongly split ("ill" is not "i" + "ll").
    for w in ("ill", "its", "hell", "shell", "shed", "were", "well", "whore"):
        for v in cased(w):
            exc.pop(v, None)
    # Every rule also holds with the typographic apostrophe.
    for key, parts in list(exc.items()):
        if "'" in key:
            exc[key.replace("'", "’")] = tuple(p.replace("'", "’") for p in parts)
    return exc


_EXCEPTIONS = _english_exceptions()
_LONGEST_EXCEPTION = max(map(len, _EXCEPTIONS))


def _split_affixes(chunk: str, exceptions: dict[str, tuple[str, ...]]) -> list[str]:
    """Tokens of one whitespace-free chunk by spaCy's affix algorithm: strip prefixes
    and suffixes until none is left or an exception is reached, then split infixes.
    """
    special = exceptions.get(chunk)
    if special is not None:
        return list(special)

    def is_exception(a: int, b: int) -> bool:
        return 0 < b - a <= _LONGEST_EXCEPTION and chunk[a:b] in exceptions

    prefixes: list[str] = []
    suffixes: list[str] = []
    lo, hi = 0, len(chunk)  # what is left is chunk[lo:hi]
    last = -1
    while lo < hi and hi - lo != last:
        if is_exception(lo, hi):
            break
        last = hi - lo
        pre = _prefix_len(chunk, lo, hi)
        if pre and is_exception(lo + pre, hi):
            prefixes.append(chunk[lo : lo + pre])
            lo += pre
            break
        suf = _suffix_len(chunk, lo + pre, hi)
        if suf and is_exception(lo, hi - suf):
            suffixes.append(chunk[hi - suf : hi])
            hi -= suf
            break
        if pre and suf and pre + suf > hi - lo:
            suf = 0  # they overlap: only the prefix goes
        if pre:
            prefixes.append(chunk[lo : lo + pre])
            lo += pre
        if suf:
            suffixes.append(chunk[hi - suf : hi])
            hi -= suf
    out = prefixes
    if lo < hi:
        s = chunk[lo:hi]
        special = exceptions.get(s)
        if special is not None:
            out.extend(special)
        elif _is_url(s):
            out.append(s)
        else:
            start = 0
            for a, b in _infixes(s):
                if a == 0:  # an infix at the very start never splits
                    continue
                if a != start:
                    out.append(s[start:a])
                out.append(s[a:b])
                start = b
            if start < len(s):
                out.append(s[start:])
    out.extend(reversed(suffixes))
    return out


def _exception_patterns() -> dict[tuple[str, ...], str]:
    # How each exception would be split if it were not an exception ("Dr." -> "Dr" ".").
    patterns = {}
    for key in _EXCEPTIONS:
        plain = tuple(_split_affixes(key, {}))
        if len(plain) > 1:
            patterns[plain] = key
    return patterns


_PATTERNS = _exception_patterns()
_PATTERN_HEADS = frozenset(p[0] for p in _PATTERNS)
_LONGEST_PATTERN = max(map(len, _PATTERNS))


def _tokenize_chunk(chunk: str) -> tuple[str, ...]:
    """Tokens of one whitespace-free chunk, as spaCy's English tokenizer makes them."""
    tokens = _split_affixes(chunk, _EXCEPTIONS)
    if len(tokens) < 2:
        return tuple(tokens)
    # spaCy's second pass: token runs that spell an exception once split ("T.Smith" ->
    # "T", "." ...; "):" -> ")" ":") are put back to the exception's own tokens. Longer
    # runs win, then earlier ones; a run touching an already claimed token is dropped.
    found = []
    for i in range(len(tokens) - 1):
        if tokens[i] not in _PATTERN_HEADS:
            continue
        for j in range(i + 2, min(len(tokens), i + _LONGEST_PATTERN) + 1):
            key = _PATTERNS.get(tuple(tokens[i:j]))
            if key is not None:
                found.append((i, j, key))
    if not found:
        return tuple(tokens)
    found.sort(key=lambda m: (m[0] - m[1], m[0]))
    claimed: set[int] = set()
    kept = []
    for i, j, key in found:
        if i not in claimed and j - 1 not in claimed:
            kept.append((i, j, key))
        claimed.update(range(i, j))
    out: list[str] = []
    pos = 0
    for i, j, key in sorted(kept):
        out.extend(tokens[pos:i])
        out.extend(_EXCEPTIONS[key])
        pos = j
    out.extend(tokens[pos:])
    return tuple(out)


class _Memo(dict[str, Any]):
    """A dict that computes missing values with ``fn`` and forgets all when full.

    Looked up with ``map(memo.__getitem__, keys)`` so hits never leave C code.
    """

    def __init__(self, fn: Callable[[str], Any], limit: int = 1 << 18) -> None:
        super().__init__()
        self._fn = fn
        self._limit = limit

    def __missing__(self, key: str) -> Any:
        if len(self) >= self._limit:
            self.clear()
        value = self[key] = self._fn(key)
        return value


_CHUNKS = _Memo(_tokenize_chunk)


def en_words(text: str) -> tuple[str, ...]:
    """English tokens of ``text``, punctuation tokens included (as spaCy's tokenizer).

    >>> en_words("I don't know... it's $5, e-mail me.")
    ('I', 'do', "n't", 'know', '...', 'it', "'s", '$', '5', ',', 'e', '-', 'mail', 'me', '.')
    """
    return tuple(chain.from_iterable(map(_CHUNKS.__getitem__, text.split())))
