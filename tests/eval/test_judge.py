"""Judge templates, verdict parsing on literal judge outputs, agreement and retries."""

from __future__ import annotations

import hashlib

import pytest

from lmops.core.errors import NotFoundError, UserError
from lmops.eval.judge import (
    PAIRWISE_TEMPLATE,
    SINGLE_REF_TEMPLATE,
    SINGLE_TEMPLATE,
    TEMPLATES,
    agreement,
    cohen_kappa,
    get_template,
    judge_with_retries,
    pairwise_both_orders,
    parse_pairwise,
    parse_single,
)

# Changing a template's words changes its digest: bump its version and pin the new digest.
PINNED = {
    "single@1": "7f3f41843d15b7dcec9052cd1a8a1b40fb154071346af6b1801f20f0cb476fdd",
    "single-ref@1": "2007b174472a60e12dbdf5d5d16b324770b800f7420e18f01352d17b35fddc05",
    "pairwise@1": "e17e7210c74e80c9f104d632bd62f481f5ec96654d1d084f93df592d50703b12",
}


# --- templates -----------------------------------------------------------------------


def test_templates_are_pinned_by_digest() -> None:
    assert {ref: t.sha256 for ref, t in TEMPLATES.items()} == PINNED
    for t in TEMPLATES.values():
        assert t.sha256 == hashlib.sha256(t.text.encode("utf-8")).hexdigest()


def test_template_fields_and_render() -> None:
    assert SINGLE_TEMPLATE.fields == ("question", "answer")
    assert SINGLE_REF_TEMPLATE.fields == ("question", "reference", "answer")
    assert PAIRWISE_TEMPLATE.fields == ("question", "answer_a", "answer_b")
    prompt = PAIRWISE_TEMPLATE.render(question="1+1 等于几？", answer_a="2", answer_b="答案是 {3}")
    assert "1+1 等于几？" in prompt
    assert "答案是 {3}" in prompt  # braces in values are left alone
    assert "[[A]]" in prompt and "[[B]]" in prompt and "[[C]]" in prompt
    assert '"[[rating]]"' in SINGLE_TEMPLATE.render(question="q", answer="a")
    with pytest.raises(UserError, match=r"single@1: missing answer; unknown answr"):
        SINGLE_TEMPLATE.render(question="q", answr="a")


def test_get_template() -> None:
    assert get_template("pairwise") is PAIRWISE_TEMPLATE
    assert get_template("single@1") is SINGLE_TEMPLATE
    with pytest.raises(NotFoundError, match="unknown judge template 'single@9'"):
        get_template("single@9")


# --- single-answer ratings -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rating"),
    [
        ("The answer is accurate and well organised.\nRating: [[7]]", 7),
        ("Good answer. [[10]]", 10),
        ("Weak. Rating: [[ 1 ]]", 1),
        ("Rating: [[8/10]]", 8),
        ("Rating: 7/10", 7),
        ("Score: 6", 6),
        ("I would give it a rating of 9.", 9),
        ("Overall this deserves 7 out of 10.", 7),
        ("评分：7", 7),
        ("回答基本正确，但不够详细。评分：6分", 6),
        ("得分为 8", 8),
        ("这个回答很好。评分：［［９］］", 9),  # full-width brackets and digits
        ("Reasonable answer overall, 5/10.", 5),
        ("[5]", 5),  # MT-Bench's single-bracket fallback
        ("Rating: [[7.0]]", 7),
        ("The user asks 3 questions; the answer covers 2 of them. Rating: [[4]]", 4),
    ],
)
def test_parse_single_accepts(text: str, rating: int) -> None:
    assert parse_single(text) == rating


@pytest.mark.parametrize(
    "text",
    [
        "Rating: [[11]]",  # out of range
        "Rating: [[0]]",
        "Score: 15/10",
        "Rating: 4/5",  # another scale
        "评分：12分",
        "Rating: [[7.5]]",  # not a whole number
        "Rating: [[rating]]",  # the placeholder, unfilled
        "Helpfulness [[8]], accuracy [[3]]",  # contradictory
        "The answer is fine.",  # no rating at all
        "",
        "答案很好，值得表扬。",
    ],
)
def test_parse_single_rejects(text: str) -> None:
    assert parse_single(text) is None


def test_parse_single_prefers_the_requested_format() -> None:
    # A labelled score elsewhere does not override the [[N]] verdict.
    assert parse_single("Helpfulness score: 9. Accuracy: 4/10. Rating: [[6]]") == 6


# --- pairwise verdicts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Assistant A is more detailed and correct. [[A]]", "A"),
        ("Assistant B answers the question directly.\n\n[[B]]", "B"),
        ("Both are equally good. [[C]]", "tie"),
        ("Equally good: [[tie]]", "tie"),
        ("两个回答各有优劣。最终裁决：[[C]]", "tie"),
        ("助手A的回答更准确。[[A]]", "A"),
        ("两者不相上下 [[平局]]", "tie"),
        ("Final verdict: B", "B"),
        ("最终裁决：A", "A"),
        ("结论：助手B更好", "B"),
        ("Verdict: Assistant A", "A"),
        ("I prefer the first one. [A]", "A"),
        ("Assistant A's answer and Assistant B's answer differ. [[B]]", "B"),
    ],
)
def test_parse_pairwise_accepts(text: str, verdict: str) -> None:
    assert parse_pairwise(text) == verdict


@pytest.mark.parametrize(
    "text",
    [
        "Assistant A is better in style, but [[A]] ... on reflection [[B]]",  # contradictory
        "Assistant A is better.",  # no marker
        "[[D]]",
        "Both have merits.",
        "",
        "我认为助手A更好",  # no verdict marker or label
    ],
)
def test_parse_pairwise_rejects(text: str) -> None:
    assert parse_pairwise(text) is None


def test_pairwise_both_orders() -> None:
    # Second run swaps the answers, so its "B" means model 1 again.
    assert pairwise_both_orders("A", "B") == "A"
    assert pairwise_both_orders("B", "A") == "B"
    assert pairwise_both_orders("tie", "tie") == "tie"
    assert pairwise_both_orders("A", "A") == "tie"  # position bias: always the first answer
    assert pairwise_both_orders("A", "tie") == "tie"
    assert pairwise_both_orders(None, "A") is None
    assert pairwise_both_orders("B", None) is None


# --- agreement -----------------------------------------------------------------------


def test_agreement_and_kappa_hand_computed() -> None:
    a = ["A", "A", "B", "B", "tie", "A"]
    b = ["A", "B", "B", "B", "tie", "tie"]
    assert agreement(a, b) == pytest.approx(4 / 6)
    # p_o = 4/6; marginals A 3/6 vs 1/6, B 2/6 vs 3/6, tie 1/6 vs 2/6
    p_e = (3 * 1 + 2 * 3 + 1 * 2) / 36
    assert cohen_kappa(a, b) == pytest.approx((4 / 6 - p_e) / (1 - p_e))


def test_kappa_edge_cases() -> None:
    assert cohen_kappa([1, 2, 3], [1, 2, 3]) == 1.0
    assert cohen_kappa(["A", "A"], ["A", "A"]) == 1.0  # undefined; defined as 1 here
    # Systematic disagreement on a balanced binary task: kappa = -1.
    assert cohen_kappa(["A", "B", "A", "B"], ["B", "A", "B", "A"]) == pytest.approx(-1.0)


def test_agreement_skips_malformed_and_checks_lengths() -> None:
    assert agreement(["A", None, "B"], ["A", "B", None]) == 1.0
    with pytest.raises(UserError, match="3 labels from the first rater but 2"):
        agreement(["A", "B", "A"], ["A", "B"])
    with pytest.raises(UserError, match="no item has a label from both"):
        cohen_kappa([None], ["A"])


# --- retries -------------------------------------------------------------------------


class ScriptedJudge:
    """A fake judge backend that answers from a script and records the prompts."""

    def __init__(self, replies: list[object]) -> None:
        self.replies = list(replies)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.replies.pop(0)  # type: ignore[return-value]


def test_judge_with_retries_returns_the_first_parseable_answer() -> None:
    judge = ScriptedJudge(["I think it's fine.", "Rating: [[8]]", "Rating: [[2]]"])
    value, attempts, raw = judge_with_retries(judge, "PROMPT", parse_single, retry_suffix=" !")
    assert (value, attempts, raw) == (8, 2, "Rating: [[8]]")
    assert judge.prompts == ["PROMPT", "PROMPT !"]


def test_judge_with_retries_never_raises_on_malformed_output() -> None:
    judge = ScriptedJudge(["no verdict", None, "[[A]] [[B]]"])
    outcome = judge_with_retries(judge, "P", parse_pairwise, retries=2)
    assert outcome.value is None
    assert outcome.attempts == 3
    assert outcome.raw == "[[A]] [[B]]"
    outcome = judge_with_retries(ScriptedJudge(["[[C]]"]), "P", parse_pairwise, retries=0)
    assert (outcome.value, outcome.attempts) == ("tie", 1)
    with pytest.raises(UserError, match="retries must be 0 or more"):
        judge_with_retries(ScriptedJudge([]), "P", parse_single, retries=-1)


def test_judge_with_retries_lets_backend_errors_through() -> None:
    def broken(prompt: str) -> str:
        raise ConnectionError("judge server down")

    with pytest.raises(ConnectionError):
        judge_with_retries(broken, "P", parse_single)
