"""LLM-as-judge: versioned prompt templates, tolerant verdict parsing, agreement statistics.

The verdict formats are MT-Bench's, so judge models tuned on them behave: a single answer is
rated ``[[1]]`` .. ``[[10]]``; a pair is judged ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie). The
templates ask for an explanation in the question's language (English or Chinese) but always
the same verdict markers, and the parsers also accept the forms judges drift into
(``Rating: 7/10``, ``评分：7``, ``最终裁决：A``).

Parsing never guesses: a verdict that is missing, out of range, or contradicted elsewhere in
the same output (``[[3]] ... [[8]]``) is ``None``, counted as malformed by the caller.

A template is identified by ``id@version`` and pinned by the sha256 of its text; changing the
text means bumping the version, so stored judgments always say which words produced them.
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, NamedTuple, TypeVar

from lmops.core.errors import NotFoundError, UserError

__all__ = [
    "PAIRWISE_TEMPLATE",
    "SINGLE_REF_TEMPLATE",
    "SINGLE_TEMPLATE",
    "TEMPLATES",
    "JudgeOutcome",
    "JudgeTemplate",
    "Verdict",
    "agreement",
    "cohen_kappa",
    "get_template",
    "judge_with_retries",
    "pairwise_both_orders",
    "parse_pairwise",
    "parse_single",
]

Verdict = Literal["A", "B", "tie"]
T = TypeVar("T")


@dataclass(frozen=True)
class JudgeTemplate:
    """A judge prompt: ``id``, ``version``, and ``text`` with ``{field}`` placeholders."""

    id: str
    version: int
    text: str
    fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = [f for _, f, _, _ in string.Formatter().parse(self.text) if f is not None]
        object.__setattr__(self, "fields", tuple(dict.fromkeys(names)))

    @property
    def ref(self) -> str:
        """``id@version``, the name stored beside each judgment."""
        return f"{self.id}@{self.version}"

    @property
    def sha256(self) -> str:
        """Hex sha256 of the UTF-8 text: proves which words produced a stored judgment."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, **values: str) -> str:
        """The prompt with every placeholder filled; a missing or unknown field is an error."""
        missing = [f for f in self.fields if f not in values]
        extra = [k for k in values if k not in self.fields]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unknown {', '.join(extra)}")
            raise UserError(
                f"judge template {self.ref}: {'; '.join(parts)} (it takes {', '.join(self.fields)})"
            )
        return self.text.format(**values)


SINGLE_TEMPLATE = JudgeTemplate(
    id="single",
    version=1,
    text=(
        "[Instructions]\n"
        "You are an impartial judge. Read the user's question and the AI assistant's answer "
        "below, then rate how well the answer serves the user. Weigh helpfulness, correctness, "
        "relevance, depth and level of detail; do not reward length for its own sake. The "
        "question and the answer may be written in English, in Chinese, or in both: judge the "
        "content, expect the answer in the language the user wrote in, and write your own "
        "explanation in that language.\n"
        "First explain your assessment briefly and objectively. Then give a rating from 1 "
        'to 10 in exactly this format: "[[rating]]", for example "Rating: [[6]]". Use these '
        "ASCII brackets and digits even when writing Chinese (评分也请写成 [[6]] 的格式).\n\n"
        "[Question]\n{question}\n\n"
        "[The Start of the Assistant's Answer]\n{answer}\n[The End of the Assistant's Answer]"
    ),
)

SINGLE_REF_TEMPLATE = JudgeTemplate(
    id="single-ref",
    version=1,
    text=(
        "[Instructions]\n"
        "You are an impartial judge. Read the user's question, the reference answer and the "
        "AI assistant's answer below, then rate the assistant's answer. Correctness against "
        "the reference comes first: find and name any mistake before anything else. Then "
        "weigh helpfulness and clarity. The texts may be written in English, in Chinese, or in "
        "both: judge the content, and write your explanation in the language of the question.\n"
        "First explain your assessment briefly and objectively. Then give a rating from 1 "
        'to 10 in exactly this format: "[[rating]]", for example "Rating: [[6]]". Use these '
        "ASCII brackets and digits even when writing Chinese (评分也请写成 [[6]] 的格式).\n\n"
        "[Question]\n{question}\n\n"
        "[The Start of the Reference Answer]\n{reference}\n[The End of the Reference Answer]\n\n"
        "[The Start of the Assistant's Answer]\n{answer}\n[The End of the Assistant's Answer]"
    ),
)

PAIRWISE_TEMPLATE = JudgeTemplate(
    id="pairwise",
    version=1,
    text=(
        "[Instructions]\n"
        "You are an impartial judge. Compare the answers two AI assistants gave to the user's "
        "question below and decide which one serves the user better. Weigh helpfulness, "
        "correctness, relevance, depth and level of detail. Do not let the order in which "
        "the answers appear, their length, or the assistants' names sway you. The question "
        "and the answers may be written in English, in Chinese, or in both: judge the content, "
        "expect answers in the language the user wrote in, and write your own explanation in "
        "that language.\n"
        "First compare the two answers briefly and objectively. Then give your verdict in "
        'exactly one of these formats: "[[A]]" if assistant A is better, "[[B]]" if assistant '
        'B is better, "[[C]]" for a tie. Use these ASCII markers even when writing Chinese '
        "(裁决也请写成 [[A]]、[[B]] 或 [[C]]).\n\n"
        "[Question]\n{question}\n\n"
        "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
        "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
    ),
)

TEMPLATES: dict[str, JudgeTemplate] = {
    t.ref: t for t in (SINGLE_TEMPLATE, SINGLE_REF_TEMPLATE, PAIRWISE_TEMPLATE)
}


def get_template(ref: str) -> JudgeTemplate:
    """The template ``id@version``, or the newest version of ``id`` when no version is given."""
    if ref in TEMPLATES:
        return TEMPLATES[ref]
    versions = [t for t in TEMPLATES.values() if t.id == ref]
    if versions:
        return max(versions, key=lambda t: t.version)
    raise NotFoundError(f"unknown judge template {ref!r}; known: {', '.join(sorted(TEMPLATES))}")


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------

_NUM = r"(\d+(?:\.\d+)?)"
_SINGLE_PATTERNS = (
    # [[7]], [[ 7 ]], [[7/10]]: the format the templates ask for.
    re.compile(rf"\[\[\s*{_NUM}\s*(?:/\s*(\d+)\s*)?\]\]"),
    # Rating: 7/10, Score = 7 out of 10, 评分：7分, 得分为 7
    re.compile(
        r"(?:rating|score|评分|得分|分数|打分)\s*(?:is|of|为|是)?\s*[:：=]?\s*"
        rf"{_NUM}\s*(?:/\s*(\d+)|out\s+of\s+(\d+)|分)?",
        re.IGNORECASE,
    ),
    # 7/10, 7 out of 10 anywhere.
    re.compile(rf"(?<![\d.]){_NUM}\s*(?:/|out\s+of)\s*(10)(?!\d|\.\d)", re.IGNORECASE),
    # [7]: MT-Bench's own fallback.
    re.compile(rf"(?<!\[)\[\s*{_NUM}\s*\](?!\])"),
)


def _rating(m: re.Match[str]) -> int | None:
    """The rating a match stands for, or None when it is not an integer in 1..10 (of 10)."""
    value = float(m.group(1))
    scale = next((g for g in m.groups()[1:] if g), None)
    if scale is not None and int(scale) != 10:
        return None
    if value != int(value) or not 1 <= value <= 10:
        return None
    return int(value)


def _prepare(text: str) -> str:
    # NFKC turns full-width brackets, digits and colons (［［７］］, ：) into ASCII.
    return unicodedata.normalize("NFKC", text)


def parse_single(text: str) -> int | None:
    """The 1-10 rating in a judge's output, or None when it is missing or unusable.

    Tried in order, the first kind that appears decides: ``[[7]]``; a labelled score
    (``Rating: 7/10``, ``Score: 7``, ``评分：7分``); a bare ``7/10``; ``[7]``. If that kind
    appears with different values, or its value is out of 1..10, not whole, or out of a scale
    other than 10, the output is malformed: None.
    """
    text = _prepare(text)
    for pattern in _SINGLE_PATTERNS:
        matches = list(pattern.finditer(text))
        if not matches:
            continue
        ratings = {_rating(m) for m in matches}
        if len(ratings) != 1:
            return None
        return ratings.pop()
    return None


_PAIR_LABELS = {"a": "A", "b": "B", "c": "tie", "tie": "tie", "平局": "tie", "平手": "tie"}
_PAIR_TOKEN = r"(A|B|C|tie|平局|平手)(?![A-Za-z])"
_PAIRWISE_PATTERNS = (
    re.compile(rf"\[\[\s*{_PAIR_TOKEN}\s*\]\]", re.IGNORECASE),
    re.compile(
        r"(?:final\s+verdict|verdict|winner|最终裁决|最终判决|裁决|判决|结论|胜者)"
        r"\s*(?:is)?\s*[:：]?\s*(?:assistant\s*|助手\s*)?[\"'“”]?\s*"
        rf"{_PAIR_TOKEN}",
        re.IGNORECASE,
    ),
    re.compile(rf"(?<!\[)\[\s*{_PAIR_TOKEN}\s*\](?!\])", re.IGNORECASE),
)


def parse_pairwise(text: str) -> Verdict | None:
    """``"A"``, ``"B"`` or ``"tie"`` from a pairwise judge's output, or None if malformed.

    Tried in order, the first kind that appears decides: ``[[A]]``/``[[B]]``/``[[C]]`` (also
    ``[[tie]]``, ``[[平局]]``); a labelled verdict (``Final verdict: A``, ``最终裁决：B``);
    ``[A]``. Conflicting verdicts of that kind make the output malformed.
    """
    text = _prepare(text)
    for pattern in _PAIRWISE_PATTERNS:
        found = {_PAIR_LABELS[m.group(1).lower()] for m in pattern.finditer(text)}
        if not found:
            continue
        if len(found) != 1:
            return None
        verdict = found.pop()
        return "A" if verdict == "A" else "B" if verdict == "B" else "tie"
    return None


def pairwise_both_orders(verdict_ab: Verdict | None, verdict_ba: Verdict | None) -> Verdict | None:
    """Combine a pair judged in both orders, in terms of the first order's A and B.

    ``verdict_ab`` judged (A=model 1, B=model 2); ``verdict_ba`` judged the swapped prompt
    (A=model 2, B=model 1). Agreement gives that verdict; disagreement (position bias) gives
    ``"tie"``; a malformed side (None) makes the pair malformed: None.
    """
    if verdict_ab is None or verdict_ba is None:
        return None
    swapped: Verdict = "B" if verdict_ba == "A" else "A" if verdict_ba == "B" else "tie"
    return verdict_ab if verdict_ab == swapped else "tie"


# ---------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------


def _pairs(
    labels_a: Sequence[Hashable | None], labels_b: Sequence[Hashable | None]
) -> list[tuple[Hashable, Hashable]]:
    if len(labels_a) != len(labels_b):
        raise UserError(
            f"agreement: {len(labels_a)} labels from the first rater but {len(labels_b)} from "
            "the second; give one label per item from each"
        )
    pairs = [
        (a, b) for a, b in zip(labels_a, labels_b, strict=True) if a is not None and b is not None
    ]
    if not pairs:
        raise UserError("agreement: no item has a label from both raters")
    return pairs


def agreement(labels_a: Sequence[Hashable | None], labels_b: Sequence[Hashable | None]) -> float:
    """Fraction of items on which two raters give the same label (None = malformed, skipped)."""
    pairs = _pairs(labels_a, labels_b)
    return sum(a == b for a, b in pairs) / len(pairs)


def cohen_kappa(labels_a: Sequence[Hashable | None], labels_b: Sequence[Hashable | None]) -> float:
    """Cohen's kappa, (p_o - p_e) / (1 - p_e); items where either label is None are skipped.

    p_e sums, over labels, the product of the two raters' marginal frequencies. When both
    raters give one and the same label to every item, p_e = 1 and kappa is undefined
    (scikit-learn returns NaN); this returns 1.0 then, since agreement is perfect.
    """
    pairs = _pairs(labels_a, labels_b)
    n = len(pairs)
    p_o = sum(a == b for a, b in pairs) / n
    count_a = Counter(a for a, _ in pairs)
    count_b = Counter(b for _, b in pairs)
    p_e = sum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    if p_e == 1:
        return 1.0
    return (p_o - p_e) / (1 - p_e)


# ---------------------------------------------------------------------------------------
# Calling a judge
# ---------------------------------------------------------------------------------------


class JudgeOutcome(NamedTuple, Generic[T]):
    """What one judgment took: the parsed value (None if every attempt was malformed)."""

    value: T | None
    attempts: int
    raw: str  # the last raw output, kept for inspection


def judge_with_retries(
    call: Callable[[str], str],
    prompt: str,
    parse: Callable[[str], T | None],
    retries: int = 2,
    *,
    retry_suffix: str = "",
) -> JudgeOutcome[T]:
    """Ask the judge until ``parse`` accepts its output, at most ``1 + retries`` times.

    Malformed output (``parse`` returns None, or ``call`` returns something that is not a
    string) never raises: it is retried and, if it persists, reported as ``value=None`` with
    the attempt count, so the caller can count malformed judgments. Errors raised by ``call``
    itself (a dead backend) propagate. ``retry_suffix`` is appended to the prompt on retries,
    e.g. a reminder of the verdict format, since a greedy judge repeats itself verbatim.
    """
    if retries < 0:
        raise UserError(f"judge_with_retries: retries must be 0 or more, got {retries}")
    raw = ""
    for attempt in range(1, retries + 2):
        out = call(prompt if attempt == 1 else prompt + retry_suffix)
        raw = out if isinstance(out, str) else ""
        value = parse(raw) if raw else None
        if value is not None:
            return JudgeOutcome(value, attempt, raw)
    return JudgeOutcome(None, retries + 1, raw)
