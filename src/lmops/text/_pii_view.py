"""The normalised views PII detection reads (see :mod:`lmops.text.pii`'s docstring): look-alike
characters folded one for one, invisible ones dropped, spelled-out e-mails ("at", "[dot]")
rewritten and obfuscated digit groups joined, each view keeping, per character, the span of
the original characters it stands for so findings map back to the original text."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")


# --------------------------------------------------------------------------- normalisation
# See the module docstring. A view is the normalised text and, per character, the start and
# end of the original characters it stands for (None: the text itself).
@dataclass(frozen=True, slots=True)
class _View:
    text: str
    starts: list[int] | None = None
    ends: list[int] | None = None

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of ``text[start:end]`` (``end > start``)."""
        if self.starts is None or self.ends is None:
            return start, end
        return self.starts[start], self.ends[end - 1]


def _edit(view: _View, edits: list[tuple[int, int, str]]) -> _View:
    """``view`` with ``view.text[s:e]`` replaced by ``rep`` for each ``(s, e, rep)``
    (sorted, not overlapping); a replacement stands for the whole span it replaced."""
    text = view.text
    parts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for s, e, rep in edits:
        parts.append(text[pos:s])
        starts.extend(range(pos, s))
        ends.extend(range(pos + 1, s + 1))
        if rep:
            parts.append(rep)
            starts.extend([s] * len(rep))
            ends.extend([e] * len(rep))
        elif ends and ends[-1] == s:
            ends[-1] = e  # a dropped character goes with the one before it
        pos = e
    parts.append(text[pos:])
    starts.extend(range(pos, len(text)))
    ends.extend(range(pos + 1, len(text) + 1))
    if view.starts is not None and view.ends is not None:  # compose with the view below
        outer_s, outer_e = view.starts, view.ends
        starts = [outer_s[i] for i in starts]
        ends = [outer_e[i - 1] for i in ends]
    return _View("".join(parts), starts, ends)


# One for one (offsets stay valid): full-width ASCII (U+FF01-FF5E) as ASCII, the Unicode
# spaces (category Zs) as " ", and the decimal digits of other scripts (category Nd, listed
# by the code point of their zero, as of Unicode 14) as ASCII digits.
_DIGIT_ZEROS_BMP = (
    0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66,
    0xDE6, 0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80,
    0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50,
    0xABF0,
)  # fmt: skip
_DIGIT_ZEROS_ASTRAL = (
    0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0,
    0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60,
    0x16AC0, 0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0,
    0x1E950, 0x1FBF0,
)  # fmt: skip
_SPACE_CPS = (0xA0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000)
_FOLD = (
    {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
    | dict.fromkeys(_SPACE_CPS, 0x20)
    | {z + d: 0x30 + d for z in _DIGIT_ZEROS_BMP + _DIGIT_ZEROS_ASTRAL for d in range(10)}
)
# Invisible (dropped): format characters (Cf, as of Unicode 14), the combining grapheme
# joiner, variation selectors and the combining keycap ("1\ufe0f\u20e3").
_INVISIBLE_RANGES = (
    (0xAD, 0xAD), (0x34F, 0x34F), (0x600, 0x605), (0x61C, 0x61C), (0x6DD, 0x6DD),
    (0x70F, 0x70F), (0x890, 0x891), (0x8E2, 0x8E2), (0x180E, 0x180E), (0x200B, 0x200F),
    (0x202A, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F), (0x20E3, 0x20E3),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD),
    (0x110CD, 0x110CD), (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001), (0xE0020, 0xE007F),
)  # fmt: skip
_INVISIBLE = frozenset(cp for a, b in _INVISIBLE_RANGES for cp in range(a, b + 1))


def _class(ranges: Iterable[tuple[int, int]]) -> str:
    return "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in ranges)


def _digit_ranges(zeros: Iterable[int]) -> list[tuple[int, int]]:
    return [(z, z + 9) for z in zeros]


# The characters the view changes, found in one scan (a single class scans about twice as
# fast as two alternatives); those outside the BMP only in text that has some.
_CHANGED_BMP = _class(
    [(0xFF01, 0xFF5E), *((cp, cp) for cp in _SPACE_CPS), *_digit_ranges(_DIGIT_ZEROS_BMP)]
    + [r for r in _INVISIBLE_RANGES if r[1] <= 0xFFFF]
)
_CHANGED = re.compile(f"[{_CHANGED_BMP}]+")
_CHANGED_ASTRAL = re.compile(
    f"[{_CHANGED_BMP}{_class(_digit_ranges(_DIGIT_ZEROS_ASTRAL))}"
    f"{_class(r for r in _INVISIBLE_RANGES if r[0] > 0xFFFF)}]+"
)
_FOLD_OR_DROP: dict[int, int | None] = {**_FOLD, **dict.fromkeys(_INVISIBLE)}


def _fold_or_drop(m: re.Match[str]) -> str:
    return m.group().translate(_FOLD_OR_DROP)


def _fold(m: re.Match[str]) -> str:
    return m.group().translate(_FOLD)


def _has_astral(text: str) -> bool:
    """Whether ``text`` has a character outside the BMP (cheaper than a regex search)."""
    return len(text.encode("utf-16-le", "surrogatepass")) != 2 * len(text)


# E-mail spellings. An anchor ("@", "[at]", the word "at") is found first; the local part is
# read backwards from it and the domain matched after it, in _spelled_email_edits.
_AT_ANCHOR = re.compile(r"@|[\[({<](?i:at)[\])}>]", re.ASCII)
_AT_WORD_ANCHOR = re.compile(
    r"@|[\[({<](?i:at)[\])}>]|(?<![0-9A-Za-z_])(?i:at)(?![0-9A-Za-z_])", re.ASCII
)
_SPELLED_DOT = r"[ \t]{0,2}[\[({<](?i:dot)[\])}>][ \t]{0,2}|[ \t]{1,2}(?i:dot)[ \t]{1,2}"
_SPELLED_DOT_RE = re.compile(_SPELLED_DOT, re.ASCII)
_SPELLED_DOT_AT_END = re.compile(rf"(?:{_SPELLED_DOT})$", re.ASCII)  # (searched with endpos)
_SPELLED_DOMAIN = re.compile(
    rf"[A-Za-z0-9-]+(?:(?:{_SPELLED_DOT}|\.)[A-Za-z0-9-]+)*(?:{_SPELLED_DOT}|\.)"
    r"(?P<tld>[A-Za-z]{2,24})(?![A-Za-z0-9@-])",
    re.ASCII,
)
# Top-level domains accepted after a plain-word " at " (common ones; "look at this dot
# product" is prose).
_WORD_AT_TLDS = frozenset(
    """com net org edu gov mil int info biz name pro io co ai app dev me tv cc xyz top vip
    club online site shop store tech cloud email cn hk tw mo jp kr sg my th vn id in ph au nz
    uk ie de fr it es pt nl be ch at se no fi dk pl cz ru ua tr br mx ar cl ca us eu za""".split()
)


_BLANK = (" ", "\t")


def _spelled_email_edits(text: str) -> list[tuple[int, int, str]]:
    """Edits that rewrite spelled-out e-mail addresses in ``text`` to plain ones."""
    # Substring tests, cheaper than lower-casing or a regex: every spelling has an "@", a
    # "dot" or a bracketed "at" (lower or upper case; "Dot" too).
    if not (
        "@" in text
        or "dot" in text
        or "DOT" in text
        or "Dot" in text
        or "t]" in text
        or "t)" in text
        or "t}" in text
        or "t>" in text
        or "T]" in text
        or "T)" in text
        or "T}" in text
        or "T>" in text
    ):
        return []
    lower = text.lower()
    dotted = "dot" in lower  # a spelled-out dot somewhere
    if not (
        dotted
        or "@ " in text
        or " @" in text
        or "@\t" in text
        or "\t@" in text
        or "[at]" in lower
        or "(at)" in lower
        or "{at}" in lower
        or "<at>" in lower
    ):
        return []
    edits: list[tuple[int, int, str]] = []
    done = 0  # end of the last rewritten address
    for m in (_AT_WORD_ANCHOR if dotted else _AT_ANCHOR).finditer(text):
        s, e = m.span()
        if s < done:
            continue
        at = m.group()
        if (
            at == "@"
            and not dotted
            and text[s - 1 : s] not in _BLANK
            and text[e : e + 1] not in _BLANK
        ):
            continue  # a plain address: the e-mail detector reads it as it is
        word = at[0] not in "@[({<"
        left, right = s, e
        while left > 0 and s - left < 2 and text[left - 1] in " \t":
            left -= 1
        while right < len(text) and right - e < 2 and text[right] in " \t":
            right += 1
        if word and (left == s or right == e):
            continue  # " at " is a word between spaces
        i = left
        while i > 0 and text[i - 1] in _LOCAL_CHARS and left - i <= 64:
            i -= 1
        if left - i > 64:
            continue
        while i < left and text[i] in ".-":
            i += 1
        if i == left:
            continue  # no local part
        dm = _SPELLED_DOMAIN.match(text, right)
        if dm is None:
            continue
        dots = [d.span() for d in _SPELLED_DOT_RE.finditer(text, right, dm.end())]
        if word and (not dots or "." in dm.group() or dm.group("tld").lower() not in _WORD_AT_TLDS):
            continue  # " at " only with every dot spelled out, before a common domain
        edits.extend(_local_dots(text, i, done))
        if (left, right) != (s, e) or at != "@":
            edits.append((left, right, "@"))
        edits.extend((a, b, ".") for a, b in dots)
        done = dm.end()
    return edits


def _local_dots(text: str, start: int, floor: int) -> list[tuple[int, int, str]]:
    """Edits for dots spelled out in a local part that starts at ``start`` ("john dot doe
    at ..."): each spelled dot right before it, with a word of local-part characters before
    that, joins the local part (at most 4), never reaching back before ``floor`` (the end
    of the address before it: edits stay in order and apart)."""
    edits: list[tuple[int, int, str]] = []
    for _ in range(4):
        d = _SPELLED_DOT_AT_END.search(text, max(floor, start - 9), start)
        if d is None:
            break
        k = d.start()
        while k > floor and text[k - 1] in _LOCAL_CHARS and d.start() - k <= 64:
            k -= 1
        while k < d.start() and text[k] in ".-":
            k += 1
        if k == d.start():
            break  # no word before the dot
        edits.append((d.start(), d.end(), "."))
        start = k
    return edits[::-1]


def _normalized(text: str) -> _View:
    """The view detection runs on (see the module docstring), without digit joining."""
    view = _View(text)
    if not text.isascii():  # isascii() is O(1) in CPython
        # Chinese text has a full-width comma or colon every few characters: translating
        # just the runs is about twice as fast as translating the whole string.
        changed = _CHANGED_ASTRAL if _has_astral(text) else _CHANGED
        folded = changed.sub(_fold_or_drop, text)
        if len(folded) == len(text):
            view = _View(folded)  # one for one: the offsets hold
        else:  # invisible characters: fold one for one, then drop them with a map
            view = _View(changed.sub(_fold, text))
            view = _edit(view, [(i, i + 1, "") for i, c in enumerate(text) if ord(c) in _INVISIBLE])
    edits = _spelled_email_edits(view.text)
    if edits:
        view = _edit(view, edits)
    return view


# Digit joining. A run: three or more groups of digits, 1-3 separator characters between
# groups, and an ID number's check "X" as a last group of its own.
# Where a joinable run may be (what _join_run accepts has one of these): a group of two or
# more digits, then a dot, a slash or a longer gap, then three digits; the same after a first
# space or dash; three single digits.
_JOIN_CUE = re.compile(
    r"[0-9]{2}(?:[./]|[ ./-]{2,3}|[ -][0-9]{3,4}[./])[0-9]{3}"
    r"|[0-9](?<![0-9]{2})[ ./-]{1,3}[0-9][ ./-]{1,3}[0-9](?![0-9])",
    re.ASCII,
)
_RUN = re.compile(
    r"(?<![0-9])[0-9]+(?:[ ./-]{1,3}[0-9]+){2,}(?:[ ./-]{1,3}[Xx](?![0-9A-Za-z_]))?", re.ASCII
)
_GROUP_GAP = re.compile(r"[ ./-]+", re.ASCII)
_MULTI_GAP = re.compile(r"[ ./-]{2}", re.ASCII)


def _join_run(run: str) -> bool:
    """Whether a digit run is an obfuscated number (see the module docstring)."""
    if "." not in run and "/" not in run and run[1].isdigit() and not _MULTI_GAP.search(run):
        return False  # single spaces or dashes between groups: read as they are
    groups = _GROUP_GAP.split(run)
    if groups[-1] in ("X", "x"):
        groups.pop()
    if all(len(g) == 1 for g in groups):
        return True  # spaced digits
    if len(groups[0]) < 2 or any(len(g) < 3 for g in groups[1:]):
        return False  # not grouped like a number: a date, a version, decimals, IP + more
    gaps = set(_GROUP_GAP.findall(run))
    if len(gaps) > 1:
        # Mixed: single separators, one of them a dot or slash, between groups of at most
        # four digits ("138.1234-5678"; not "20240513-881233.14").
        return (
            all(len(g) == 1 for g in gaps)
            and bool(gaps & {".", "/"})
            and all(len(g) <= 4 for g in groups)
        )
    gap = gaps.pop()
    if gap in (" ", "-"):
        return False  # the detectors read these themselves
    if gap == ".":
        if len(groups) == 4 and all(g == "0" or (g[0] != "0" and int(g) < 256) for g in groups):
            return False  # an IPv4 address
        if len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:]):
            return False  # thousands separators: 13.812.345.678
    return True


def _joined_view(view: _View) -> tuple[_View, list[tuple[int, int]]] | None:
    """``view`` with obfuscated digit runs joined, and where those runs are in it; None
    when there is none. The view's positions map to ``view.text``'s."""
    text = view.text
    # Every joined number has 11 digits or more (a China mobile): most text has fewer.
    if sum(map(text.count, "0123456789")) < 11 or _JOIN_CUE.search(text) is None:
        return None
    edits: list[tuple[int, int, str]] = []
    runs: list[tuple[int, int]] = []
    shift = 0
    for m in _RUN.finditer(text):
        run, start = m.group(), m.start()
        if run[-1] in "Xx" and sum(c.isdigit() for c in run) != 17:
            run = run[:-1].rstrip(" ./-")  # only an ID number (17 digits) ends with an X
        if not _join_run(run):
            continue
        gaps = [(start + g.start(), start + g.end(), "") for g in _GROUP_GAP.finditer(run)]
        edits += gaps
        removed = sum(e - s for s, e, _ in gaps)
        runs.append((start - shift, start + len(run) - shift - removed))
        shift += removed
    if not edits:
        return None
    return _edit(_View(text), edits), runs
