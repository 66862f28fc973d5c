"""Find and mask personal data and secrets in text.

Shared by the data stage (the ``pii_mask`` operator) and the serving guardrails, so it
depends on nothing but the standard library.

Types, in the priority order used when two findings overlap (the earlier type wins; within
one type the longer span wins, then the earlier one)::

    SECRET     API keys and tokens (AWS, Alibaba Cloud, GitHub, OpenAI-style ``sk-``,
               Slack, Google, JWT, ``Bearer <token>``), PEM private key blocks
    EMAIL      user@example.com
    ID_CARD    mainland China resident ID: 18 characters with the ISO 7064 MOD 11-2 check
               character and a real birth date, or the 15-digit legacy form
    IBAN       upper case, plain or in groups of four, of its country's length and passing
               the MOD 97-10 check ("DE89 3704 0044 0532 0130 00")
    SSN        US Social Security number ``123-45-6789``; spaced or plain only right after
               a keyword ("SSN 123 45 6789", '"ssn": "123456789"', "SSN No. 123456789");
               never area 000/666/9xx, group 00, serial 0000, nor the tail or head of a
               code ("SKU-123-45-6789", "123-45-6789-A")
    PASSPORT   China ``E12345678`` / ``G12345678`` / ``EA1234567``, or any passport number
               right after a keyword ("passport no.", "护照号")
    PHONE      China mobile (any common spelling, with or without +86), China landline with
               an area code, international E.164 numbers written with a leading ``+``,
               NANP (US, Canada) numbers with dashes, dots or ``(415)``, ``1`` before them or
               not, and with spaces only after ``1``, ``(415)`` or a phone keyword ("Tel:",
               "call me at", "电话"), never inside a longer spaced run ("--sizes 256 512
               1024" is no phone); not ten digits in a row (order numbers look the same)
    BANK_CARD  13-19 digits (spaces or dashes between groups allowed) passing the Luhn check,
               with a first digit and length that a card scheme uses
    IP         IPv4 and IPv6 addresses, validated by :mod:`ipaddress`, private ranges
               included; not 0.0.0.0, loopback (127.0.0.0/8, ::1), "::", 255.255.255.255,
               nor a dotted quad right after "version", "v", "版本" or "section" (not an address),
               nor a Python slice ("x[1::2]": decimal groups of one or two digits)

Numbers are only found as whole tokens: a digit run inside a longer run of digits, ASCII
letters or ``_`` never matches, while a CJK character right next to a number is fine
("电话13812345678" is found; the boundaries are ASCII character classes, never a Unicode
``\\b``, which does not fire between a CJK character and a digit). Numbers that fail their
check (an ID number with a wrong check character, a card number failing Luhn) are not PII.

Obfuscated spellings are found by detecting on a normalised view of the text, whose every
character remembers the span of the original it came from, so a finding is reported (and
masked) as the original span ("1 3 8 1 2 3 4 5 6 7 8" becomes one placeholder):

* one for one: full-width ASCII and the ideographic space as ASCII, every Unicode decimal
  digit as its ASCII digit ("１３８…", Arabic-Indic "١٣٨…", Devanagari "१३८…"), NBSP and
  the other Unicode spaces as " ";
* dropped: format characters (Unicode category Cf: zero-width space and joiners, soft
  hyphen, BOM, direction marks, ...), the combining grapheme joiner, variation selectors
  and the keycap mark;
* e-mail spellings: "@" with spaces around it, "[at]" "(at)" "{at}" "<at>" and their
  "dot" forms, and " at " ... " dot " in words (only with every dot spelled out and a
  common top-level domain, so "look at this dot product" stays prose) read as "@" and ".";
* digit groups joined, for the number types only (ID card, China mobile, bank card): three
  or more groups of digits separated by one repeated separator other than a single space or
  dash ("138.1234.5678", "138/1234/5678", "138 - 1234 - 5678"), by single separators
  of which one is a dot or slash ("138.1234-5678"), or single digits with any separators
  ("1 3 8 1 2 3 4 5 6 7 8"). A valid dotted IPv4 address and a number with
  thousands separators ("13.812.345.678") are not joined, and the checksums still apply,
  so version strings, dates, prices and order numbers stay what they are;
* passports also in lower case and with single spaces or dashes ("e 1234 5678").

Pure-ASCII text with no "@", "dot" or bracketed "at", and without three dotted, slashed or
single-digit groups, is scanned as it is (no view is built).

Overlaps are resolved across all types before the ``types`` selection is applied, so a
phone number that is the local part of an e-mail address is never reported as a phone.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import cast

from lmops.core.errors import UserError
from lmops.text._pii_checks import (
    _group_v,
    _valid_bearer,
    _valid_card,
    _valid_e164,
    _valid_email,
    _valid_iban,
    _valid_id15,
    _valid_id18,
    _valid_ipv4,
    _valid_ipv6,
    _valid_keyword_passport,
    _valid_nanp,
    _valid_sk_key,
    _valid_ssn,
    _whole,
    iban_ok,
    id18_checksum_ok,
    luhn_ok,
    ssn_ok,
)
from lmops.text._pii_gates import _Colons, _Needles, _Probe, _trie
from lmops.text._pii_view import _joined_view, _normalized

__all__ = [
    "DEFAULT_PLACEHOLDER",
    "PII_TYPES",
    "PiiSpan",
    "detect_pii",
    "find_emails",
    "iban_ok",
    "id18_checksum_ok",
    "luhn_ok",
    "mask_pii",
    "normalize_pii_types",
    "ssn_ok",
]

# Priority order: on overlap the type listed first wins.
PII_TYPES: tuple[str, ...] = (
    "SECRET",
    "EMAIL",
    "ID_CARD",
    "IBAN",
    "SSN",
    "PASSPORT",
    "PHONE",
    "BANK_CARD",
    "IP",
)
_PRIORITY = {t: i for i, t in enumerate(PII_TYPES)}


@dataclass(frozen=True, slots=True)
class PiiSpan:
    """One finding: ``text[start:end] == self.text``."""

    type: str
    start: int
    end: int
    text: str


def normalize_pii_types(types: Iterable[str] | None) -> frozenset[str] | None:
    """Canonical upper-case type names (``"id-card"`` -> ``"ID_CARD"``); ``None`` = all.

    Raises :class:`UserError` naming the unknown type and the known ones.
    """
    if types is None:
        return None
    if isinstance(types, str):
        types = [types]
    if isinstance(types, (list, tuple)):
        try:
            return _normalized_types(tuple(types))
        except TypeError:  # unhashable items: the uncached path reports them
            pass
    return _normalize_types(types)


@cache
def _normalized_types(types: tuple[str, ...]) -> frozenset[str]:
    # Callers pass the same few lists on every call (a deployment's config): validate once.
    return _normalize_types(types)


def _normalize_types(types: Iterable[str]) -> frozenset[str]:
    out = set()
    for t in types:
        canon = t.strip().upper().replace("-", "_")
        if canon not in _PRIORITY:
            known = ", ".join(PII_TYPES)
            raise UserError(f"unknown PII type {t!r}; use one of: {known}")
        out.add(canon)
    return frozenset(out)


# --------------------------------------------------------------------------- boundaries
# A number must not be glued to other digits, ASCII letters or "_" (it would be part of an
# identifier or a longer number). CJK characters are fine neighbours: every pattern is
# compiled with re.ASCII, so none of these classes contains them.
#
# The "nothing before" checks are lookbehinds written *after* the first character(s) of a
# pattern, ``(?<![...].{n})``: a pattern that starts with a literal or a character class
# lets the regex engine skip quickly to where a match can begin, while a leading lookbehind
# makes it try every position (about 10x slower on ordinary text).
_WORD = "0-9A-Za-z_"
_A = rf"(?![{_WORD}])"  # after a number
_NO_DASH_AFTER = r"(?!-[0-9])"  # "138-1234-5678-90" is one token, not a phone
_NO_CODE_AFTER = r"(?!-[0-9A-Za-z])"  # nor "123-45-6789-A" an SSN: the head of a code


def _free(n: int, cls: str = _WORD) -> str:
    """Lookbehind for after the first ``n`` matched chars: the char before those is not in ``cls``."""
    return rf"(?<![{cls}].{{{n}}})"


def _no_dash(n: int) -> str:
    """Lookbehind for after the first ``n`` chars: they do not follow "<digit>-" ("2024-1381…")
    or "<digit>." (the decimals of "3.614895050123902")."""
    return rf"(?<![0-9][-.].{{{n}}})"


def _no_code(n: int) -> str:
    """Like :func:`_no_dash`, a letter before the dash or dot too: the tail of a product or
    invoice code ("SKU-123-45-6789", "INV-415-555-0100") is no SSN or phone."""
    return rf"(?<![0-9A-Za-z][-.].{{{n}}})"


_Validator = Callable[[re.Match[str]], "tuple[int, int] | None"]


@dataclass(frozen=True, slots=True)
class _Detector:
    type: str
    pattern: re.Pattern[str]
    # Returns the span to report for a match (usually m.span()), or None to reject it.
    validate: _Validator
    # Cheap pre-check on the whole text; the regex only runs when it passes. None = no
    # check beyond ``digits``.
    gate: Callable[[str], bool] | None = None
    # Digits a text must have before this detector can report anything (regex and
    # validator together): 0 none, 1 an ASCII digit, 7 seven ASCII digits in a row, single
    # spaces or dashes between them allowed (every ID card, China phone and bank card
    # number, China passport number; see _DIGIT_RUN).
    digits: int = 7
    # Also run on the view with obfuscated digit groups joined (see _joined_view).
    joined: bool = False


def _c(pattern: str) -> re.Pattern[str]:
    # ASCII: [0-9]-only \d and \s, and (?i:) folds ASCII only; full-width text is folded
    # to ASCII before matching (see _FOLD).
    return re.compile(pattern, re.ASCII)


_KEY = "A-Za-z0-9_-"  # characters of base64url-ish tokens
_DIGITS8 = r"(?:[0-9]{4}[ -]?[0-9]{4}|[0-9](?:[ -][0-9]){7})"  # a passport's, maybe spaced
_HEX = "[0-9A-Fa-f]"
_MMDD = r"(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"  # day-of-month checked later
_CN_AREA = r"(?:10|2[0-9]|[3-9][0-9]{2})"  # area code after its leading 0: 010, 02x, 0xxx
_NXX = "[2-9][0-9]{2}"  # a NANP area code or exchange
_NANP_PARENS = rf"\({_NXX}\)[ -]?{_NXX}[ -]?[0-9]{{4}}"  # "(415) 555-0100"
# After a keyword ("SSN", "passport"): "no.", "number" or "#", then a separator, maybe in
# JSON or config form ('"ssn": "123456789"', "SSN = 123 45 6789"). Every blank run is
# bounded: two unbounded ones around an optional part made a long blank run quadratic
# ("SSN" + 100k spaces took 53 s).
_KEY_NUMBER = r"(?:[ \t_]{0,3}(?i:number|num\.?|no\.?|#))?"
_KEY_SEP = r"[\"']?[ \t]{0,3}(?:[:#：=-]|(?i:is)|为|是)?[ \t]{0,3}[\"']?"

# EMAIL: found from the "@"; _valid_email reads the local part backwards.
_EMAIL = _Detector(
    "EMAIL",
    _c(r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![A-Za-z0-9-])"),
    _valid_email,
    _Needles("@"),
    digits=0,
)

_DETECTORS: tuple[_Detector, ...] = (
    # ---- SECRET
    _Detector(
        "SECRET",
        _c(r"(?:AKIA|ASIA)" + _free(4, "A-Za-z0-9") + r"[A-Z0-9]{16}(?![A-Za-z0-9])"),
        _whole,
        _Needles("AKIA", "ASIA"),
        digits=0,
    ),
    _Detector(
        "SECRET",
        _c(
            r"(?i:aws_?secret(?:_?access)?_?key)[\"']?\s{0,8}[:=]\s{0,8}[\"']?"
            r"(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
        ),
        _group_v,
        _Needles("aws", ignore_case=True),
        digits=0,
    ),
    _Detector(
        "SECRET",
        _c(r"LTAI" + _free(4, "A-Za-z0-9") + r"[A-Za-z0-9]{12,20}(?![A-Za-z0-9])"),
        _whole,
        _Needles("LTAI"),
        digits=0,
    ),
    _Detector(
        "SECRET",
        _c(
            r"(?:gh[pousr]_" + _free(4) + r"[A-Za-z0-9]{36,251}"
            r"|github_pat_" + _free(11) + r"[A-Za-z0-9_]{22,244})(?![A-Za-z0-9_])"
        ),
        _whole,
        _Needles("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        digits=0,
    ),
    _Detector(
        "SECRET",
        _c(r"sk-" + _free(3, _KEY) + rf"[{_KEY}]{{20,200}}(?![{_KEY}])"),
        _valid_sk_key,
        _Needles("sk-"),
        digits=1,  # _valid_sk_key wants a digit
    ),
    _Detector(
        "SECRET",
        _c(r"xox[abposr]-" + _free(5, "A-Za-z0-9") + r"[A-Za-z0-9-]{10,250}(?![A-Za-z0-9-])"),
        _whole,
        _Needles("xox"),
        digits=0,
    ),
    _Detector(
        "SECRET",
        _c(r"AIza" + _free(4, _KEY) + rf"[{_KEY}]{{35}}(?![{_KEY}])"),
        _whole,
        _Needles("AIza"),
        digits=0,
    ),
    _Detector(  # JSON Web Token: header.payload.signature, both JSON parts start "eyJ" ('{"')
        "SECRET",
        _c(r"eyJ" + _free(3, _KEY) + rf"[{_KEY}]{{8,}}\.eyJ[{_KEY}]{{8,}}\.[{_KEY}]*(?![{_KEY}])"),
        _whole,
        _Needles("eyJ"),
        digits=0,
    ),
    _Detector(  # only the token is masked: "Authorization: Bearer <SECRET>"
        "SECRET",
        _c(
            r"[Bb]" + _free(1) + r"(?i:earer)[ \t]{1,8}"
            r"(?P<v>[A-Za-z0-9._~+/-]{16,}=*)(?![A-Za-z0-9._~+/=-])"
        ),
        _valid_bearer,
        _Needles("bearer", ignore_case=True),
        digits=1,  # _valid_bearer wants a digit
    ),
    # PEM private keys: BEGIN marker, then up to the matching END marker, or (a truncated
    # key) the base64 lines that follow. The body never contains "-----", so the scan stops
    # at the first END and cannot backtrack badly.
    _Detector(
        "SECRET",
        _c(
            r"-----BEGIN (?P<kind>[A-Z0-9 ]{0,40}?)PRIVATE KEY(?: BLOCK)?-----"
            r"(?:(?:(?!-----)[\s\S]){0,16384}?-----END (?P=kind)PRIVATE KEY(?: BLOCK)?-----"
            r"|(?:\r?\n[A-Za-z0-9+/=]+)*)"
        ),
        _whole,
        _Needles("PRIVATE KEY"),
        digits=0,
    ),
    _EMAIL,
    # ---- ID_CARD: 6-digit region, birth date YYYYMMDD, 3-digit sequence, check character;
    # written plain or split 6-8-4 by one consistent space or dash.
    _Detector(
        "ID_CARD",
        _c(
            r"(?P<a>[1-9]" + _free(1) + _no_dash(1) + r"[0-9]{5})(?P<s>[ -]?)"
            r"(?P<b>(?:18|19|20)[0-9]{2}"
            + _MMDD
            + r")(?P=s)(?P<c>[0-9]{3}[0-9Xx])"
            + _A
            + _NO_DASH_AFTER
        ),
        _valid_id18,
        joined=True,
    ),
    _Detector(  # legacy 15-digit form: 2-digit year, no check character
        "ID_CARD",
        _c(
            r"[1-9]"
            + _free(1)
            + _no_dash(1)
            + r"[0-9]{7}"
            + _MMDD
            + r"[0-9]{3}"
            + _A
            + _NO_DASH_AFTER
        ),
        _valid_id15,
        joined=True,
    ),
    # ---- IBAN: country code, 2 check digits, the BBAN; plain or in groups of four with
    # single spaces, upper case. Its country's length and the MOD 97-10 check (_valid_iban).
    _Detector(
        "IBAN",
        _c(
            r"[A-Z][A-Z]"  # not [A-Z]{2}: a first character class is a fast scan
            + _free(2, "A-Za-z0-9_")
            + r"[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9_])"
        ),
        _valid_iban,
    ),
    # ---- SSN (US Social Security number): area-group-serial, 3-2-4 with dashes; spaced or
    # plain only right after a keyword (only the number is masked). No area 000, 666 or
    # 900-999, group 00 or serial 0000: the SSA issues none (_valid_ssn).
    _Detector(
        "SSN",
        _c(
            r"[0-8]"
            + _free(1, _WORD + "+")
            + _no_code(1)
            + r"[0-9]{2}-[0-9]{2}-[0-9]{4}"
            + _A
            + _NO_CODE_AFTER
        ),
        _valid_ssn,
        _Probe(("-", "[0-9]{2}-[0-9]{4}")),
    ),
    _Detector(
        "SSN",
        _c(
            r"(?:[Ss](?<![A-Za-z].)(?:SN|sn|S#|s#|(?i:ocial\s{1,3}security))"
            + _KEY_NUMBER
            + r"|社会安全号码?|社安号)"
            + _KEY_SEP
            + r"(?P<v>[0-8][0-9]{2}(?P<s>[ -]?)[0-9]{2}(?P=s)[0-9]{4})"
            + _A
            + _NO_CODE_AFTER
        ),
        _valid_ssn,
        # case by case: cheaper than lower-casing every text
        _Needles("SSN", "ssn", "Ssn", "SS#", "ss#", "ocial", "OCIAL", "社会安全", "社安号"),
    ),
    # ---- PASSPORT
    # China: E + 8 digits (e-passport), E + letter (no I/O) + 7 digits once E-numbers ran
    # out, G + 8 digits (older ordinary passports).
    _Detector(
        "PASSPORT",
        _c(r"(?:E(?:[0-9]{8}|[A-HJ-NP-Z][0-9]{7})|G[0-9]{8})" + _free(9) + _A),
        _whole,
        _Needles("E", "G"),
    ),
    # ... also in lower case and written with single spaces or dashes ("e 1234 5678").
    _Detector(
        "PASSPORT",
        _c(
            r"(?:[Ee]"
            + _free(1)
            + r"[ -]?(?:[A-HJ-NP-Za-hj-np-z][ -]?(?:[0-9]{7}|[0-9]{3}[ -][0-9]{4}"
            r"|[0-9](?:[ -][0-9]){6})|"
            + _DIGITS8
            + r")|[Gg]"
            + _free(1)
            + r"[ -]?"
            + _DIGITS8
            + r")"
            + _A
            + r"(?![ -][0-9])"
        ),
        _whole,
    ),
    _Detector(  # any number right after a keyword; only the number is masked
        "PASSPORT",
        _c(
            r"(?:[Pp](?<![A-Za-z].)(?i:assport)"
            + _KEY_NUMBER
            + r"|护照(?:号码|号)?)"
            + _KEY_SEP
            + r"(?P<v>[A-Za-z0-9]{6,9})(?![A-Za-z0-9_])"
        ),
        _valid_keyword_passport,
        _Needles("passport", "护照", ignore_case=True),
        digits=1,  # 4 digits, not always in a row
    ),
    # ---- PHONE
    # China mobile 1[3-9]x xxxx xxxx, groups optionally split by single spaces or dashes.
    _Detector(
        "PHONE",
        _c(
            r"1[3-9]"
            + _free(2, _WORD + "+")
            + _no_dash(2)
            + r"[0-9](?:[ -]?[0-9]{4}){2}"
            + _A
            + _NO_DASH_AFTER
        ),
        _whole,
        joined=True,
    ),
    # ... and with a country prefix: +86, 0086, 86, (+86), (86). Same type, longer span, so
    # it wins over the bare number inside it.
    _Detector(
        "PHONE",
        _c(
            r"(?:\+86"
            + _free(3, _WORD + "+")
            + r"|0086"
            + _free(4, _WORD + "+")
            + r"|86"
            + _free(2, _WORD + "+")
            + r"|\(\+?86\))"
            r"[ -]?1[3-9][0-9](?:[ -]?[0-9]{4}){2}" + _A + _NO_DASH_AFTER
        ),
        _whole,
        _Needles("86"),
        joined=True,
    ),
    # China landline: area code (010, 02x, 0xxx) then a separator, or in parentheses, then a
    # 7-8 digit local number (optionally split 3/4 + 4). Without a separator an 11-12 digit
    # run starting with 0 is too often something else; nor is it three groups beside an
    # IBAN's group of four ("ES21 6934 0729 3941 9358", an IBAN with a typo). Any other
    # neighbour is fine: "010-12345678 9:00-18:00", "No. 3 021-87654321".
    _Detector(
        "PHONE",
        _c(
            r"(?:0" + _free(1) + _no_dash(1) + r"(?<![0-9A-Z]{4} .)" + _CN_AREA + r"[ -]"
            r"|\(0" + _CN_AREA + r"\)[ -]?)"
            r"[1-9][0-9]{2,3}[ -]?[0-9]{4}" + _A + _NO_DASH_AFTER + r"(?! [0-9A-Z]{4}(?!\S))"
        ),
        _whole,
    ),
    # International E.164 with a leading "+": one digit at a time with an optional single
    # separator, so the regex cannot split digits two ways and backtracking stays linear.
    _Detector(
        "PHONE",
        _c(
            r"\+" + _free(1, _WORD + "+") + r"[1-9][0-9]{0,2}(?:[ .-]?\([0-9]{1,4}\))?"
            r"(?:[ .-]?[0-9]){5,14}" + _A + r"(?![.-][0-9])"
        ),
        _valid_e164,
        _Needles("+"),
        digits=1,  # "+1 2 3 4 5 6": one digit at a time
    ),
    # US, Canada and the rest of NANP: NPA (area code) and NXX (exchange) start with 2-9:
    # "415-555-0100", "415 555 0100", "(415) 555-0100", with a "1" before them or not
    # (after "+1" the number is E.164's too). One separator throughout, but after "(415)".
    _Detector(
        "PHONE",
        _c(
            r"(?:1"
            + _free(1, _WORD + "+")
            + _no_code(1)
            + rf"(?:(?P<s1>[ -]){_NXX}(?P=s1){_NXX}(?P=s1)[0-9]{{4}}|[ -]?{_NANP_PARENS})"
            + rf"|{_NANP_PARENS}|[2-9]"
            + _free(1, _WORD + "+")
            + _no_code(1)
            + rf"[0-9]{{2}}(?P<s2>[ -]){_NXX}(?P=s2)[0-9]{{4}})"
            + _A
            + _NO_CODE_AFTER
        ),
        _valid_nanp,
        _Probe(("-", "[0-9]{4}"), (" ", "[0-9]{4}"), (")", "")),  # "-0100", " 0100", "(415)"
    ),
    # ... and with dots, "415.555.0100", "1.415.555.0100", "(415) 555.0100": never seven
    # digits in a row, so gated on ".dddd".
    _Detector(
        "PHONE",
        _c(
            r"(?:1"
            + _free(1, _WORD + "+.")
            + _no_code(1)
            + rf"\.{_NXX}\.|[2-9]"
            + _free(1, _WORD + "+.")
            + _no_code(1)
            + rf"[0-9]{{2}}\.|\({_NXX}\) ?){_NXX}\.[0-9]{{4}}"
            + _A
            + r"(?![.-][0-9]|-[A-Za-z])"
        ),
        _valid_nanp,
        _Probe((".", "[0-9]{4}")),
        digits=1,
    ),
    # ---- BANK_CARD: first digit 2-6 or 9 (Mastercard 2-series, Amex/JCB/Diners, Visa,
    # Mastercard, UnionPay/Discover, and the 9-prefixed domestic cards of Chinese banks).
    _Detector(
        "BANK_CARD",
        _c(r"[2-69]" + _free(1) + _no_dash(1) + r"[0-9]{12,18}" + _A + _NO_DASH_AFTER),
        _valid_card,
        joined=True,
    ),
    # Grouped 4-4-4(-4)(-tail) with one consistent separator, or Amex-style 4-6-5. Not the
    # middle of a longer grouped run: nothing like "<digit><sep>" before, no "<sep><digit>" after.
    _Detector(
        "BANK_CARD",
        _c(
            r"[2-69]" + _free(1) + r"(?<![0-9][ -].)"
            r"(?:[0-9]{3}(?P<s>[ -])[0-9]{4}(?:(?P=s)[0-9]{4}){1,2}(?P<tail>(?P=s)[0-9]{1,4})?"
            r"(?!(?P=s)[0-9])"
            r"|(?<=3)[47][0-9]{2}(?P<s2>[ -])[0-9]{6}(?P=s2)[0-9]{5})" + _A
        ),
        _valid_card,
    ),
    # ---- IP
    _Detector(
        "IP",
        _c(
            r"[0-9]"
            + _free(1, _WORD + ".")
            + r"[0-9]{0,2}\.(?:[0-9]{1,3}\.){2}[0-9]{1,3}"
            + _A
            + r"(?!\.[0-9])"
        ),
        _valid_ipv4,
        _Needles("."),
        digits=1,  # "1.2.3.4"
    ),
    _Detector(
        "IP",
        _c(
            rf"(?:{_HEX}"
            + _free(1, _WORD + ".")
            # a ":" before it only after a character no address has: a Chinese colon
            # ("地址：2a00::1") reads as ":" in the view
            + r"(?<![0-9A-Za-z_:.]:.)"
            + rf"{_HEX}{{0,3}}:|:"
            + _free(1, _WORD + ":.")
            + r":)"
            rf"(?:{_HEX}{{0,4}}:){{0,6}}(?:(?:[0-9]{{1,3}}\.){{3}}[0-9]{{1,3}}|{_HEX}{{1,4}})?"
            r"(?![0-9A-Za-z_:.])"
        ),
        _valid_ipv6,
        _Colons(),
        digits=1,  # _valid_ipv6 wants a digit: "fe80::1"
    ),
)

_HAS_DIGIT = re.compile(r"[0-9]")
# Seven digits in a row, single spaces or dashes between them allowed: what the detectors
# with ``digits=7`` all need ("138 1234 5678", "(010)1234 5678" has "1234 567").
_DIGIT_RUN = re.compile(r"[0-9](?:[ -]?[0-9]){6}")


def _cues(level: int) -> re.Pattern[str]:
    """Matches the lower-cased form of every text in which a detector needing at most
    ``level`` digits can report (the gates' words, lower-cased: case-insensitive needles
    are ASCII, and the detectors' patterns only match their ASCII letters)."""
    gates = [d.gate for d in _DETECTORS if d.digits <= level]
    if not all(isinstance(g, _Needles) for g in gates):
        raise TypeError("a detector that needs fewer than 7 digits needs a _Needles gate")
    return re.compile(_trie(w.lower() for g in gates for w in cast(_Needles, g).words))


# Texts without digits (most prose) or without seven in a row ("tok1 tok2", "v1.2", "in
# 2024") skip the per-detector loop with one scan when none of the gates that could still
# pass does.
_CUES = {0: _cues(0), 1: _cues(1)}


def _candidates(
    text: str, last: int = len(PII_TYPES) - 1, *, joined: bool = False, digit: bool | None = None
) -> list[tuple[int, int, int, str]]:
    """Every validated finding as ``(priority, start, end, type)``, overlaps included.

    Types of a priority after ``last`` are not looked for; with ``joined`` only the
    detectors that also read the digits-joined view run. ``digit``: whether ``text`` has
    an ASCII digit, where the caller knows.
    """
    digits = 0
    if digit if digit is not None else _HAS_DIGIT.search(text) is not None:
        digits = 7 if _DIGIT_RUN.search(text) is not None else 1
    if digits < 7 and (joined or _CUES[digits].search(text.lower()) is None):
        return []
    found: list[tuple[int, int, int, str]] = []
    for det in _DETECTORS:
        prio = _PRIORITY[det.type]
        if det.digits > digits or prio > last or (joined and not det.joined):
            continue
        if det.gate is not None and not det.gate(text):
            continue
        for m in det.pattern.finditer(text):
            span = det.validate(m)
            if span is not None and span[1] > span[0]:
                found.append((prio, span[0], span[1], det.type))
    return found


@cache
def _last_priority(wanted: frozenset[str] | None) -> int:
    # A type of lower priority than every wanted one cannot change the result (overlaps
    # are resolved in priority order), so it is not looked for: IP, by default.
    return len(PII_TYPES) - 1 if wanted is None else max(_PRIORITY[t] for t in wanted)


def detect_pii(text: str, types: Iterable[str] | None = None) -> list[PiiSpan]:
    """Find PII in ``text``: non-overlapping spans sorted by start.

    ``types`` restricts what is returned (case-insensitive names from :data:`PII_TYPES`);
    ``None`` returns every type. Overlaps are resolved among all types first. Findings are
    made on the normalised view of ``text`` and reported as the original spans (see the
    module docstring).
    """
    wanted = normalize_pii_types(types)
    if wanted is not None and not wanted:
        return []
    view = _normalized(text)
    last = _last_priority(wanted)
    digit = _HAS_DIGIT.search(view.text) is not None
    found = _candidates(view.text, last, digit=digit)
    joined = _joined_view(view) if digit else None
    if joined is not None:
        jview, runs = joined
        for prio, start, end, typ in _candidates(jview.text, last, joined=True):
            # Only what reads a joined run: elsewhere the view says the same.
            if any(start < r_end and r_start < end for r_start, r_end in runs):
                found.append((prio, *jview.span(start, end), typ))
    if not found:
        return []
    cards = [(f[1], f[2]) for f in found if f[3] == "BANK_CARD"]
    if cards:
        # Inside a grouped card number, a "phone" is some of its groups ("6266 0324 2562
        # 2698 639" holds the landline "0324 2562 2698"): the card wins.
        found = [
            f
            for f in found
            if f[3] != "PHONE"
            or not any(s <= f[1] and f[2] <= e and e - s > f[2] - f[1] for s, e in cards)
        ]
    # Higher priority first, then longer, then earlier: a deterministic greedy choice.
    found.sort(key=lambda f: (f[0], f[1] - f[2], f[1]))
    starts: list[int] = []  # accepted spans, kept sorted by start
    ends: list[int] = []
    kept: list[tuple[int, int, str]] = []
    for _, start, end, typ in found:
        i = bisect_left(starts, start)
        if i > 0 and ends[i - 1] > start:
            continue  # overlaps the accepted span before it
        if i < len(starts) and starts[i] < end:
            continue  # overlaps the accepted span after it
        starts.insert(i, start)
        ends.insert(i, end)
        kept.insert(i, (start, end, typ))
    out = []
    for start, end, typ in kept:
        if wanted is None or typ in wanted:
            start, end = view.span(start, end)
            out.append(PiiSpan(typ, start, end, text[start:end]))
    return out


def find_emails(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each e-mail address, found exactly as :func:`detect_pii` does."""
    view = _normalized(text)
    spans = (_EMAIL.validate(m) for m in _EMAIL.pattern.finditer(view.text))
    return [view.span(*s) for s in spans if s is not None]


DEFAULT_PLACEHOLDER = "<{type}>"  # what a mask looks like unless a placeholder is given


def mask_pii(
    text: str, types: Iterable[str] | None = None, placeholder: str = DEFAULT_PLACEHOLDER
) -> tuple[str, Counter[str]]:
    """Replace each finding of :func:`detect_pii` with ``placeholder.format(type=...)``.

    Returns the masked text and the number of replacements per type.
    """
    spans = detect_pii(text, types)
    counts: Counter[str] = Counter()
    if not spans:
        return text, counts
    parts: list[str] = []
    pos = 0
    for s in spans:
        parts.append(text[pos : s.start])
        parts.append(placeholder.format(type=s.type))
        counts[s.type] += 1
        pos = s.end
    parts.append(text[pos:])
    return "".join(parts), counts
