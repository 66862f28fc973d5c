"""The validators of PII findings (see :mod:`lmops.text.pii`): check characters (resident ID
MOD 11-2, Luhn, IBAN MOD 97-10), plausible birth dates, card prefixes, the SSA's and NANP's
number rules, IP ranges, e-mail shapes. Each ``_valid_*`` takes a regex match and returns
the finding's span, or None to reject it."""

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


# A phone keyword right before a number ("Tel: ", "call me at ", '"phone": "', "电话："):
# what makes three groups with spaces between them a phone number and not a list of sizes
# ("--sizes 256 512 1024", "dims: 768 768 3072"). Searched only in the few characters before
# a match, so no blank run here is longer than that.
_PHONE_BEFORE = re.compile(
    r"(?:(?<![A-Za-z])(?:(?i:tel|telephone|phone|ph|call|cell|mobile|mob|fax|sms|whatsapp|dial)"
    r"(?:[ \t_]{0,3}(?i:number|num\.?|no\.?|#))?"
    r"|(?i:call|reach|text|ring|contact)[ \t]{1,3}(?i:me|us)(?:[ \t]{1,3}(?i:at|on))?)"
    r"|电话|手机|座机|传真|热线|致电|拨打|联系)"
    r"(?:号码|号)?[\"'.]?[ \t]{0,3}(?:[:#：=]|(?i:is))?[ \t]{0,3}[\"']?$",
    re.ASCII,
)
_SPACED_GROUP_BEFORE = re.compile("[0-9] $")
_SPACED_GROUP_AFTER = re.compile(" [0-9]{2}")


def _phone_keyword_before(text: str, start: int) -> bool:
    return _PHONE_BEFORE.search(text, max(0, start - 32), start) is not None


def _valid_nanp(m: re.Match[str]) -> tuple[int, int] | None:
    # North American Numbering Plan: NPA (area code) and NXX (exchange) start with 2-9 (the
    # regex), and neither is an N11 service code (211, 411, 911...), which no number has.
    digits = _digits(m.group())
    if len(digits) == 11:
        digits = digits[1:]  # the country code 1
    if digits[1:3] == "11" or digits[4:6] == "11":
        return None
    groups = m.groupdict()
    if " " in (groups.get("s1"), groups.get("s2")):
        # Spaced groups: a phone only with a "1" or "(415)" before them (the regex) or after
        # a phone keyword; and never some groups of a longer spaced run ("2 345 678 9012",
        # "256 512 1024 2048").
        text, (start, end) = m.string, m.span()
        if groups.get("s2") == " " and not _phone_keyword_before(text, start):
            return None
        if _SPACED_GROUP_BEFORE.match(text, max(0, start - 2), start) is not None:
            return None
        if _SPACED_GROUP_AFTER.match(text, end) is not None:
            return None
    return m.span()


# --------------------------------------------------------------------------- SSN
def ssn_ok(number: str) -> bool:
    """Whether 9 digits can be a US Social Security number: the SSA never issues area 000,
    666 or 900-999 (900-999 are ITINs), group 00 or serial 0000."""
    area, group, serial = number[:3], number[3:5], number[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _valid_ssn(m: re.Match[str]) -> tuple[int, int] | None:
    span = m.span("v") if m.re.groupindex.get("v") else m.span()
    return span if ssn_ok(_digits(m.string[span[0] : span[1]])) else None


# --------------------------------------------------------------------------- IBAN
# Length of the IBAN of each country that issues them (SWIFT's IBAN registry; the country
# code, 2 check digits and the national account number, BBAN). Every country and length is
# checked against the registry's release 101 as python-stdnum ships it
# (tests/data/test_iban_registry.py).
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def iban_ok(iban: str) -> bool:
    """The ISO 13616 check of an IBAN without spaces: its country's length, and MOD 97-10
    (ISO 7064) over the number with its first four characters moved to the end and every
    letter read as 10-35 equal to 1."""
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum() or not iban.isascii():
        return False
    return int("".join(str(int(c, 36)) for c in iban[4:] + iban[:4])) % 97 == 1


def _valid_iban(m: re.Match[str]) -> tuple[int, int] | None:
    # The regex may run on into a word after the number ("BE68 5390 0754 7034 EUR"): the
    # IBAN is as long as its country says, and must end where a group does.
    text = m.group()
    n = _IBAN_LENGTHS.get(text[:2])
    if n is None:
        return None
    end, chars = 0, 0
    while end < len(text) and chars < n:
        chars += text[end] != " "
        end += 1
    if chars < n or text[end : end + 1] not in ("", " "):
        return None
    iban = text[:end].replace(" ", "")
    # Every BBAN holds an account number: six digits at least ("AB12 CDEF GHIJ..." is not).
    if sum(c.isdigit() for c in iban[4:]) < 6 or not iban_ok(iban):
        return None
    return m.start(), m.start() + end


# --------------------------------------------------------------------------- IP
# A dotted quad right after a version or section word is a version or a section number
# ("version 1.2.3.4", "v 10.0.0.1", "版本 2.1.0.3", "section 3.2.1.4", "§ 4.1.2.1");
# "v1.2.3.4" is no address to begin with (a letter before the digit).
_VERSION_BEFORE = re.compile(
    r"(?:(?<![A-Za-z])(?i:version|ver\.?|v|release|rel\.?|section|sec\.|chapter)|§|版本号?)"
    r"[ \t:=：]*$",
    re.ASCII,
)


def _valid_ipv4(m: re.Match[str]) -> tuple[int, int] | None:
    try:
        ip = ipaddress.IPv4Address(m.group())
    except ValueError:
        return None
    # Nobody's address: 0.0.0.0, the loopback 127.0.0.0/8 and the broadcast address, in
    # every piece of server code and config ("listen on 0.0.0.0:8000"). Private ranges
    # (10/8, 192.168/16, ...) stay PII: they map a company's own network.
    if ip.is_unspecified or ip.is_loopback or int(ip) == 0xFFFFFFFF:
        return None
    start = m.start()
    if _VERSION_BEFORE.search(m.string, max(0, start - 10), start) is not None:
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
        ip = ipaddress.IPv6Address(s)
    except ValueError:
        return None
    if ip.is_unspecified or ip.is_loopback:  # "::" and "::1", as 0.0.0.0 and 127.0.0.1
        return None
    if not any(c in "abcdefABCDEF" for c in s):
        # Decimal digits only: a Python slice ("x[1::2]", "b[10::3]", "s[2::]") or a time
        # with a typo ("10:30::45") rather than an address, when every group is one or two
        # digits, or when two groups at most stand in brackets ("a[100::200]"; a bracketed
        # address, "[2001:db8::1]:80", has a letter or more groups).
        groups = [g for g in s.split(":") if g]
        bracketed = m.string[start - 1 : start] == "[" and m.string[end : end + 1] == "]"
        if all(len(g) <= 2 for g in groups) or (bracketed and len(groups) <= 2):
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
