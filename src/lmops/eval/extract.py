"""Answer extraction: turn a model's free-form generation into the string a metric compares.

lm-evaluation-harness runs a generation through a chain of filters (``regex`` then
``take_first``); ``regex_extract`` and ``take_first`` are those two. ``extract_number`` is
the GSM8K final-answer extractor, in three modes:

- ``strict``: only ``#### N`` (the dataset's own answer line; the first one, as lm-eval's
  ``strict-match`` takes the first match) counts.
- ``flexible``: ``#### N`` if present; else the last ``\\boxed{N}``; else the number right
  after the last "the answer is" / "Answer:" / "答案是" / "答：" phrase; else the last number in
  the text. lm-eval's ``flexible-extract`` is only that last step, which turns "The answer is
  42. Check: 42 x 2 = 84" into 84; the anchors fix that.
- ``last``: the last number in the text, lm-eval's ``flexible-extract`` rule.

What counts as a number: optional minus sign and currency symbol, digits with optional
thousands commas (``1,234``) and decimals (``1,234.50``), or a fraction ``3/4`` (kept as
written). Trailing units, percent signs and sentence periods are not part of it; a minus
glued to a preceding digit or letter (``5-3``) is an operator, not a sign; digits glued to a
letter or ``^`` (``cm2``, ``m^2``) are not numbers. Text is NFKC-normalised first, so full-width
digits (``４２``) and ``＄`` read as ASCII.

``normalize_number`` maps the forms a reference and a prediction may take to one string, so
``1234``, ``1,234``, ``1234.0``, ``$1,234`` and ``1234.00`` all become ``"1234"``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Literal

from lmops.core.errors import UserError

__all__ = [
    "INVALID",
    "ExtractMode",
    "extract_number",
    "gsm8k_match",
    "gsm8k_target",
    "majority_vote",
    "normalize_number",
    "numbers_equal",
    "regex_extract",
    "take_first",
]

INVALID = "[invalid]"
ExtractMode = Literal["strict", "flexible", "last"]

_CURRENCY = "$€£¥"
_NUMBER = re.compile(
    # Not in the middle of a word, a decimal, an exponent or another fraction.
    r"(?<![A-Za-z0-9_.^/])"
    rf"(?P<sign>[-−](?=[{_CURRENCY}]?\d))?"
    rf"(?:[{_CURRENCY}]\s?)?"
    r"(?P<sign2>[-−](?=\d))?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]\d)|\d+(?:\.\d+)?)"
    # A fraction, unless it is really a date such as 12/25/2023.
    r"(?:/(?P<den>\d+)(?![\d/]|\.\d))?"
)
_HASHES = re.compile(r"####\s*")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")
_ANCHOR = re.compile(
    r"answer[*_\s]*(?:is|was|:|=|would\s+be|will\s+be)[*_\s:：]*"
    r"|最终答案|答案|答[:：]",
    re.IGNORECASE,
)
_ANCHOR_SEGMENT_END = re.compile(r"\n|[.!?。！？;；](?:\s|$)")
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: 2*3=<<2*3=6>>6


def _prepare(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("\u2044", "/")  # ½ -> 1⁄2 -> 1/2
    return _CALCULATOR.sub("", text)


def _render(m: re.Match[str]) -> str:
    sign = "-" if (m.group("sign") or m.group("sign2")) else ""
    # A minus after a closing bracket is subtraction: "(2+3)-4". (After a digit or letter the
    # pattern's lookbehind already refuses it: "5-3" reads as 5 and 3.)
    if m.group("sign") and m.start() > 0 and m.string[m.start() - 1] in ")]}":
        sign = ""
    den = m.group("den")
    return f"{sign}{m.group('num')}" + (f"/{den}" if den else "")


def _numbers(text: str) -> list[str]:
    return [_render(m) for m in _NUMBER.finditer(text)]


def _strict(text: str) -> str | None:
    for m in _HASHES.finditer(text):
        num = _NUMBER.match(text, m.end())
        if num:
            return _render(num)
    return None


def _boxed_contents(text: str) -> list[str]:
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def _from_boxed(content: str) -> str | None:
    content = _LATEX_FRAC.sub(r"\1/\2", content)
    content = content.replace("{,}", ",").replace("\\,", "").replace("\\!", "")
    content = content.replace("\\$", "$").replace("\\%", "%").replace("\\", " ")
    found = _numbers(content)
    return found[-1] if found else None


def _after_anchor(text: str) -> str | None:
    for m in reversed(list(_ANCHOR.finditer(text))):
        rest = text[m.end() :]
        end = _ANCHOR_SEGMENT_END.search(rest)
        segment = rest[: end.start()] if end else rest
        found = _numbers(segment)
        if found:
            return found[0]
    return None


def extract_number(text: str, mode: ExtractMode = "flexible") -> str | None:
    """The final numeric answer in ``text``, as written (minus currency and units), or None.

    ``"The answer is $1,234.50."`` -> ``"1,234.50"``; ``"#### -12"`` -> ``"-12"``;
    ``"答案是 42 元"`` -> ``"42"``. Compare with ``numbers_equal`` or ``normalize_number``.
    """
    if mode not in ("strict", "flexible", "last"):
        raise UserError(f"extract_number: unknown mode {mode!r}; use strict, flexible or last")
    text = _prepare(text)
    if mode == "strict":
        return _strict(text)
    if mode == "flexible":
        found = _strict(text)
        if found is not None:
            return found
        for content in reversed(_boxed_contents(text)):
            found = _from_boxed(content)
            if found is not None:
                return found
        found = _after_anchor(text)
        if found is not None:
            return found
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_FRACTION = re.compile(r"([-+]?)(\d+)/(\d+)")


def normalize_number(s: str) -> str:
    """One canonical spelling of a number; text that is not a number comes back stripped.

    Removes thousands commas, currency symbols, a percent sign, spaces and a trailing period;
    writes decimals without trailing zeros (``"1234.50"`` -> ``"1234.5"``, ``"1234.00"`` ->
    ``"1234"``, ``"-0"`` -> ``"0"``); fractions stay fractions (``"3/4"``), only their leading
    zeros and sign are tidied.
    """
    t = unicodedata.normalize("NFKC", s).strip().replace("−", "-").replace("\u2044", "/")
    t = re.sub(rf"[\s,{_CURRENCY}%]", "", t).rstrip(".")
    frac = _FRACTION.fullmatch(t)
    if frac:
        sign = "-" if frac.group(1) == "-" else ""
        return f"{sign}{int(frac.group(2))}/{int(frac.group(3))}"
    if not _DECIMAL.fullmatch(t):
        return s.strip()
    try:
        d = Decimal(t)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        return s.strip()
    out = format(d.normalize(), "f")
    return "0" if out in ("-0", "0") else out


def _value(s: str) -> Fraction | None:
    t = normalize_number(s)
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: str | None, b: str | None) -> bool:
    """True when two answers are the same number (``"0.75"`` == ``"3/4"`` == ``"0.750"``).

    Falls back to comparing the normalised strings when either side is not a number; None
    (nothing extracted) is never equal to anything.
    """
    if a is None or b is None:
        return False
    va, vb = _value(a), _value(b)
    if va is not None and vb is not None:
        return va == vb
    return normalize_number(a) == normalize_number(b)


def gsm8k_target(answer_field: str) -> str:
    """The normalised final answer of a GSM8K ``answer`` field (the text after ``####``)."""
    if "####" not in answer_field:
        raise UserError(
            "gsm8k_target: the answer field has no '#### N' line; is this GSM8K's 'answer'?"
        )
    return normalize_number(answer_field.rsplit("####", 1)[1])


def gsm8k_match(response: str, answer_field: str, mode: ExtractMode = "flexible") -> float:
    """1.0 if the number extracted from ``response`` equals the GSM8K target, else 0.0."""
    return 1.0 if numbers_equal(extract_number(response, mode), gsm8k_target(answer_field)) else 0.0


def regex_extract(
    text: str,
    pattern: str,
    group: int = 1,
    fallback: str = INVALID,
    select: int = 0,
) -> str:
    """The ``group`` of the ``select``-th match of ``pattern`` (0 first, -1 last), stripped.

    As lm-eval's regex filter: a pattern without groups yields the whole match; when the
    chosen group did not take part in the match (alternations such as ``(a)|(b)``), the first
    group that did is used; no match (or ``select`` out of range) yields ``fallback``.
    """
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise UserError(f"regex_extract: invalid pattern {pattern!r}: {e}") from e
    if group < 0 or group > rx.groups:
        raise UserError(
            f"regex_extract: pattern {pattern!r} has {rx.groups} group(s); group {group} "
            "does not exist"
        )
    matches = list(rx.finditer(text))
    try:
        m = matches[select]
    except IndexError:
        return fallback
    if rx.groups == 0:
        return m.group(0).strip()
    value = m.group(group)
    if not value:
        value = next((g for g in m.groups() if g), None)
    return value.strip() if value else fallback


def take_first(responses: Sequence[str]) -> str:
    """The first of several sampled responses (lm-eval's ``take_first`` filter)."""
    if isinstance(responses, str):
        return responses
    if not responses:
        raise UserError("take_first: no responses to take from")
    return responses[0]


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most common extracted answer (self-consistency, maj@k); ties go to the earliest.

    None (nothing extracted) never wins; answers are grouped by ``normalize_number`` so
    ``"1,000"`` and ``"1000"`` vote together, and the first spelling seen is returned.
    """
    valid = [a for a in answers if a is not None]
    if not valid:
        return None
    counts = Counter(normalize_number(a) for a in valid)
    best = max(counts.values())
    return next(a for a in valid if counts[normalize_number(a)] == best)
