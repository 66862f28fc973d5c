"""The validators of PII findings (see :mod:`lmops.text.pii`): check characters (resident ID
MOD 11-2, Luhn), plausible birth dates, card prefixes, IP ranges, e-mail shapes. Each
``_valid_*`` takes a regex match and returns the finding's span, or None to reject it."""

from __future__ import annotations

import datetime as _dt
import ipaddress
import re

from lmops.text._pii_view import _LOCAL_CHARS


def _whole(m: re.Match[str]) -> tuple[int, int]:
    return m.span()


def _group_v(m: re.Match[str]) -> tuple[int, int]:
    return m.span("v")


def _digits(s: str) -> str:
    return "".join(c for c in s if "0" <= c <= "9")


# --------------------------------------------------------------------------- ID cards
# First two digits: province-level division (GB/T 2260); 71 Taiwan, 81 HK, 82 Macau, 83 the
# residence permits of Taiwan residents, 91 foreigners' permanent residence cards.
_PROVINCES = frozenset(
    {
        11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
        50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83, 91,
    }
)  # fmt: skip
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"  # ISO 7064 MOD 11-2: check character for sum % 11


def _birth_date_ok(year: int, month: int, day: int) -> bool:
    try:
        born = _dt.date(year, month, day)
    except ValueError:
        return False
    return _dt.date(1900, 1, 1) <= born <= _dt.date.today()


def id18_checksum_ok(number: str) -> bool:
    """True when the 18th character is the ISO 7064 MOD 11-2 check of the first 17."""
    total = sum(int(c) * w for c, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


def _valid_id18(m: re.Match[str]) -> tuple[int, int] | None:
    number = _digits(m.group("a") + m.group("b")) + m.group("c")
    if int(number[:2]) not in _PROVINCES:
        return None
    if not _birth_date_ok(int(number[6:10]), int(number[10:12]), int(number[12:14])):
        return None
    return m.span() if id18_checksum_ok(number) else None


def _valid_id15(m: re.Match[str]) -> tuple[int, int] | None:
    number = _digits(m.group())
    if int(number[:2]) not in _PROVINCES:
        return None
    year = 1900 + int(number[6:8])  # the legacy form predates 2000 births
    return m.span() if _birth_date_ok(year, int(number[8:10]), int(number[10:12])) else None


# --------------------------------------------------------------------------- bank cards
def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check over a string of digits."""
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_ok(digits: str) -> bool:
    n = len(digits)
    if not 13 <= n <= 19:
        return False
    # Short lengths belong to a few schemes only: 13 Visa (4), 14 Diners (3), 15 Amex
    # (34/37) or UnionPay (62). This keeps EAN-13 barcodes (690-699 on Chinese goods) and
    # ISBN-13 (978/979) out; 16-19 digits are ordinary card numbers of every scheme.
    if n == 13 and digits[0] != "4":
        return False
    if n == 14 and digits[0] != "3":
        return False
    if n == 15 and digits[:2] not in ("34", "37", "62"):
        return False
    return luhn_ok(digits)


def _valid_card(m: re.Match[str]) -> tuple[int, int] | None:
    digits = _digits(m.group())
    if _card_ok(digits):
        return m.span()
    # A grouped number may have picked up a short unrelated group after it
    # ("4111 1111 1111 1111 2024"): retry without that trailing group.
    tail = m.groupdict().get("tail")
    if tail and _card_ok(digits[: -len(_digits(tail))]):
        return m.start(), m.start("tail")
    return None


# --------------------------------------------------------------------------- phones
def _valid_e164(m: re.Match[str]) -> tuple[int, int] | None:
    # E.164 allows at most 15 digits with the country code; fewer than 8 is not a number
    # anyone can dial. A "(0)" trunk prefix ("+44 (0)20 …") is not counted.
    text = m.group().replace("(0)", "")
    n = len(_digits(text))
    return m.span() if 8 <= n <= 15 else None


# --------------------------------------------------------------------------- IP
def _valid_ipv4(m: re.Match[str]) -> tuple[int, int] | None:
    try:
        ipaddress.IPv4Address(m.group())
    except ValueError:
        return None
    return m.span()


def _valid_ipv6(m: re.Match[str]) -> tuple[int, int] | None:
    s = m.group()
    start, end = m.span()
    if s.endswith(":") and not s.endswith("::"):
        s, end = s[:-1], end - 1  # "fe80::1:" at the end of a clause
    # Without a digit it is far more likely C++ ("a::b") than an address.
    if s.count(":") < 2 or not any(c.isdigit() for c in s):
        return None
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return None
    return start, end


# --------------------------------------------------------------------------- e-mail


def _valid_email(m: re.Match[str]) -> tuple[int, int] | None:
    # The regex starts at "@" (fast to find); the local part is read backwards from there,
    # at most 64 characters (RFC 5321). A longer run is an encoded blob, not an address.
    text, at = m.string, m.start()
    i = at
    while i > 0 and text[i - 1] in _LOCAL_CHARS and at - i <= 64:
        i -= 1
    if at - i > 64:
        return None
    while i < at and text[i] in ".-":  # a local part does not start with a dot or dash
        i += 1
    return (i, m.end()) if i < at else None


# --------------------------------------------------------------------------- others
def _valid_keyword_passport(m: re.Match[str]) -> tuple[int, int] | None:
    # Passport numbers mix a few letters with mostly digits; "passport holders" is no number.
    return m.span("v") if sum(c.isdigit() for c in m.group("v")) >= 4 else None


def _valid_sk_key(m: re.Match[str]) -> tuple[int, int] | None:
    body = m.group()[3:]
    # Real keys have a long random segment with digits; prose like
    # "sk-learn-compatible-estimators" has neither.
    has_digit = any(c.isdigit() for c in body)
    long_segment = any(len(seg) >= 16 for seg in body.split("-"))
    return m.span() if has_digit and long_segment else None


def _valid_bearer(m: re.Match[str]) -> tuple[int, int] | None:
    return m.span("v") if any(c.isdigit() for c in m.group("v")) else None
