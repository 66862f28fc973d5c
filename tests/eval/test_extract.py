"""Answer extraction on literal model outputs, English and Chinese."""

from __future__ import annotations

import pytest

from lmops.core.errors import UserError
from lmops.eval.extract import (
    INVALID,
    extract_number,
    gsm8k_match,
    gsm8k_target,
    majority_vote,
    normalize_number,
    numbers_equal,
    regex_extract,
    take_first,
)

# (model output, what flexible extraction returns)
FLEXIBLE_CASES = [
    ("Natalia sold 24 clips in May.\n#### 1,234", "1,234"),
    ("The answer is $1,234.50.", "1,234.50"),
    ("She is left with -12 dollars.", "-12"),
    ("x = -7", "-7"),
    ("So he has 18 dollars", "18"),
    ("The ribbon is 5 cm long.", "5"),
    ("Therefore she picked 7 apples.", "7"),
    ("The final answer is $\\boxed{42}$.", "42"),
    ("So the result is \\boxed{\\frac{3}{4}}", "3/4"),
    ("So \\boxed{1{,}234} dollars", "1,234"),
    ("She ate 3/4 of the cake", "3/4"),
    ("25% of the students passed", "25"),
    ("答案是 42 元", "42"),
    ("所以最终答案为-3。", "-3"),
    ("答案：1,000", "1,000"),
    ("答案是42元，因为6*7=42", "42"),
    ("First 3 + 4 = 7. Then 7 * 2 = 14", "14"),  # the last number
    ("The answer is 42. Check: 42 x 2 = 84", "42"),  # the anchor beats the last number
    ("**Answer:** 36", "36"),
    ("The area is 25 m^2", "25"),  # the exponent is not the answer
    ("The area is 25 cm2.", "25"),
    ("5-3=2", "2"),  # subtraction, not a negative 3
    ("(2+3)-4 = 1", "1"),
    ("He ran 3.5 miles.", "3.5"),
    ("It costs $0.50.", "0.50"),
    ("There are 1,234,567 people", "1,234,567"),
    ("全班共有４２名学生", "42"),  # full-width digits
    ("Step 1: 5*3=<<5*3=15>>15 eggs\n#### 15", "15"),
    ("On 12/25/2023 she bought 3 pies", "3"),  # a date is not a fraction
    ("#### $18", "18"),
    ("I need more information.", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), FLEXIBLE_CASES)
def test_flexible_extraction(text: str, expected: str | None) -> None:
    assert extract_number(text) == expected


def test_strict_only_accepts_the_hash_line() -> None:
    assert extract_number("blah blah\n#### 72", "strict") == "72"
    assert extract_number("#### -3", "strict") == "-3"
    assert extract_number("####1,000", "strict") == "1,000"
    assert extract_number("The answer is 72.", "strict") is None
    assert extract_number("\\boxed{72}", "strict") is None
    # The first '#### N' wins: the rest is a runaway continuation of the few-shot prompt.
    assert extract_number("#### 5\n\nQuestion: ...\n#### 9", "strict") == "5"


def test_last_mode_is_lm_eval_flexible_extract() -> None:
    assert extract_number("The answer is 42. Check: 42 x 2 = 84", "last") == "84"
    assert extract_number("Answer: 12 and then 13", "last") == "13"
    assert extract_number("\\boxed{1{,}234}", "last") == "234"
    with pytest.raises(UserError, match="unknown mode 'loose'"):
        extract_number("1", "loose")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("1,234.00", "1234"),
        ("1234", "1234"),
        ("1,234", "1234"),
        ("1234.0", "1234"),
        ("$1,234", "1234"),
        ("1234.", "1234"),
        ("1,234.50", "1234.5"),
        ("-0.50", "-0.5"),
        ("−12", "-12"),
        ("+5", "5"),
        ("05", "5"),
        ("-0", "0"),
        ("25%", "25"),
        ("3/4", "3/4"),
        ("-03 / 4", "-3/4"),
        (" 42 ", "42"),
        ("forty-two", "forty-two"),
    ],
)
def test_normalize_number(raw: str, normal: str) -> None:
    assert normalize_number(raw) == normal


def test_numbers_equal() -> None:
    for a in ("1234", "1,234", "1234.0", "$1,234", "1234.00"):
        assert numbers_equal(a, "1234")
    assert numbers_equal("0.75", "3/4")
    assert not numbers_equal("1234", "1243")
    assert not numbers_equal(None, "1")
    assert numbers_equal("forty", "forty")


def test_gsm8k_target_and_match() -> None:
    answer = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert gsm8k_target(answer) == "72"
    assert gsm8k_target("#### 1,000") == "1000"
    assert gsm8k_target("#### -5") == "-5"
    assert gsm8k_match("She sold 72 clips altogether.", answer) == 1.0
    assert gsm8k_match("The answer is $72.00.", answer) == 1.0
    assert gsm8k_match("The answer is 71.", answer) == 0.0
    assert gsm8k_match("She sold 72 clips altogether.", answer, mode="strict") == 0.0
    with pytest.raises(UserError, match="no '#### N' line"):
        gsm8k_target("72")


def test_regex_extract_like_lm_eval() -> None:
    text = "The answer is 12. Also #### 34 and #### 56"
    assert regex_extract(text, r"#### (\-?[0-9\.\,]+)") == "34"
    assert regex_extract(text, r"#### (\-?[0-9\.\,]+)", select=-1) == "56"
    assert regex_extract("no match", r"#### (\d+)") == INVALID
    assert regex_extract("no match", r"#### (\d+)", fallback="") == ""
    assert regex_extract("#### 7", r"#### (\d+)", select=5) == INVALID
    # lm-eval's flexible pattern: an alternation where group 1 may not take part.
    flexible = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
    assert regex_extract("It is 7", flexible, select=-1) == "7"
    assert regex_extract("It is $1,234.", flexible, select=-1) == "$1,234."
    assert regex_extract("Answer: (B) yes", r"\(([A-D])\)") == "B"
    assert regex_extract("  yes  ", r"\s*yes\s*", group=0) == "yes"
    with pytest.raises(UserError, match="invalid pattern"):
        regex_extract("x", "(")
    with pytest.raises(UserError, match="group 2 does not exist"):
        regex_extract("x", "(x)", group=2)


def test_take_first_and_majority_vote() -> None:
    assert take_first(["a", "b"]) == "a"
    assert take_first("only") == "only"
    with pytest.raises(UserError, match="no responses"):
        take_first([])
    assert majority_vote(["3", "1,000", "1000", None, "3", "1000.0"]) == "1,000"
    assert majority_vote(["5", "6"]) == "5"  # a tie goes to the earliest
    assert majority_vote([None, None]) is None
