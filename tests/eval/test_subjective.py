"""Subjective evaluation: the set format, single-answer grading and pairwise comparison with
scripted answer models and scripted judges (malformed output, position bias), numbers by hand."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.eval.judge import PAIRWISE_TEMPLATE, SINGLE_REF_TEMPLATE, SINGLE_TEMPLATE
from lmops.eval.lm import FakeEvalModel
from lmops.eval.metrics import bootstrap_ci
from lmops.eval.subjective import (
    SubjectiveItem,
    judge_agreement,
    judge_pairwise,
    judge_single,
    load_subjective_set,
)


class RecordingModel(FakeEvalModel):
    """A FakeEvalModel that remembers the size of every generate batch."""

    def __init__(self, respond: Any, name: str) -> None:
        super().__init__(respond=respond, name=name)
        self.batches: list[int] = []

    def generate(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        self.batches.append(len(requests))
        return super().generate(requests)


def _between(prompt: str, start: str, end: str) -> str:
    return prompt.split(start, 1)[1].split(end, 1)[0].strip()


# --- the set -----------------------------------------------------------------------------


def test_load_subjective_set(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    rows = [
        {"id": "q1", "question": "Explain recursion to a child.", "category": "writing"},
        {"id": 2, "question": "北京是哪个国家的首都？", "reference": "中国", "category": "知识"},
        {"id": "q3", "question": "Write a haiku.", "reference": "", "category": None},
    ]
    path.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows[:2])
        + "\n\n"
        + json.dumps(rows[2]),
        encoding="utf-8",
    )
    items = load_subjective_set(path)
    assert items == [
        SubjectiveItem("q1", "Explain recursion to a child.", None, "writing"),
        SubjectiveItem("2", "北京是哪个国家的首都？", "中国", "知识"),
        SubjectiveItem("q3", "Write a haiku.", None, None),  # an empty reference is none
    ]
    assert items[2].group == "uncategorized"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "question": "q"', r"set\.jsonl:2: not a JSON object"),
        ('["a", "q"]', r"set\.jsonl:2: expected a JSON object, got list"),
        ('{"question": "q"}', r"set\.jsonl:2: id: missing"),
        ('{"id": "ok", "question": "q"}', r"set\.jsonl:2: id: 'ok' repeats line 1"),
        ('{"id": "b", "question": "  "}', r"set\.jsonl:2: question: missing or empty"),
        ('{"id": "b", "question": "q", "refrence": "r"}', r"set\.jsonl:2: refrence: unknown field"),
        (
            '{"id": "b", "question": "q", "reference": 4}',
            r"set\.jsonl:2: reference: expected a string",
        ),
        ('{"id": "b", "question": "q", "category": ["x"]}', r"set\.jsonl:2: category: expected"),
    ],
)
def test_load_subjective_set_errors(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text('{"id": "ok", "question": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_subjective_set(path)


def test_a_reference_of_several_answers_shows_the_judge_every_one(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    rows = [
        {"id": "q1", "question": "Capital of France?", "reference": ["Paris", "Paris, France"]},
        {"id": "q2", "question": "Capital of Japan?", "reference": ["Tokyo", " "]},  # one left
        {"id": "q3", "question": "Capital of Peru?", "reference": []},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    items = load_subjective_set(path)
    assert [it.reference for it in items] == [
        "Any one of these answers is correct:\n- Paris\n- Paris, France",
        "Tokyo",
        None,
    ]
    prompts: list[str] = []
    judge = FakeEvalModel(respond=lambda p: prompts.append(p) or "Correct. [[9]]")
    report = judge_single(FakeEvalModel(respond=lambda q: "Paris, France"), judge, items[:1])
    assert [j.template for j in report.items] == ["single-ref@1"]
    shown = _between(prompts[0], "[The Start of the Reference Answer]", "[The End")
    assert shown.splitlines() == [
        "Any one of these answers is correct:",
        "- Paris",
        "- Paris, France",
    ]

    path.write_text(json.dumps({"id": "q", "question": "q", "reference": ["a", 4]}), "utf-8")
    with pytest.raises(
        UserError, match=r"set\.jsonl:1: reference\[1\]: expected a string, got int"
    ):
        load_subjective_set(path)


def test_load_subjective_set_empty_and_missing(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="has no rows"):
        load_subjective_set(tmp_path / "empty.jsonl")
    with pytest.raises(UserError, match="no such subjective set"):
        load_subjective_set(tmp_path / "nope.jsonl")


# --- single-answer grading ---------------------------------------------------------------

ITEMS = [
    SubjectiveItem("q1", "Explain recursion.", category="reasoning"),
    SubjectiveItem("q2", "What is 2+2?", reference="4", category="math"),
    SubjectiveItem("q3", "证明根号2是无理数。", category="math"),
    SubjectiveItem("q4", "Write a limerick.", category="writing"),
    SubjectiveItem("q5", "Summarise the plot of Hamlet."),
]
ANSWERS = {
    "Explain recursion.": "A function that calls itself.",
    "What is 2+2?": "4",
    "证明根号2是无理数。": "假设根号2是有理数……矛盾。",
    "Write a limerick.": "There once was a model from Lyon...",
    "Summarise the plot of Hamlet.": "A prince avenges his father.",
}


def make_single_judge() -> RecordingModel:
    """Ratings by answer: q1 8, q2 10 (with a reference), q3 malformed once then 6,
    q4 malformed every time, q5 7 written the Chinese way."""
    seen: dict[str, int] = {}

    def respond(prompt: str) -> str:
        answer = _between(prompt, "[The Start of the Assistant's Answer]", "[The End")
        seen[answer] = seen.get(answer, 0) + 1
        if answer == "A function that calls itself.":
            return "Correct but brief. Rating: [[8]]"
        if answer == "4":
            assert "[The Start of the Reference Answer]\n4\n" in prompt
            return "Matches the reference. [[10]]"
        if answer.startswith("假设"):
            if seen[answer] == 1:
                return "证明思路正确，但是不完整。"  # no rating: retried
            assert prompt.endswith('"Rating: [[6]]".')  # the reminder is appended
            return "证明思路正确，但是不完整。评分：[[6]]"
        if answer.startswith("There once"):
            return "Helpfulness [[9]], creativity [[3]]"  # contradictory, every time
        return "评分：7分"

    return RecordingModel(respond, name="judge-7b")


def test_judge_single_numbers_by_hand() -> None:
    answerer = FakeEvalModel(respond=ANSWERS.__getitem__, name="model-under-test")
    judge = make_single_judge()
    report = judge_single(answerer, judge, ITEMS, retries=2, n_resamples=200)

    assert report.model == "model-under-test" and report.judge == "judge-7b"
    assert report.ratings == [8, 10, 6, None, 7]
    assert [j.attempts for j in report.items] == [1, 1, 2, 3, 1]
    assert [j.template for j in report.items] == [
        "single@1", "single-ref@1", "single@1", "single@1", "single@1"
    ]  # fmt: skip
    assert report.items[3].rationale == "Helpfulness [[9]], creativity [[3]]"
    assert report.items[0].answer == "A function that calls itself."
    # First attempts go to the judge in one batch; the 1 + 2 retries one at a time.
    assert judge.batches == [5, 1, 1, 1]

    overall = report.overall
    assert (overall.n, overall.rated, overall.malformed) == (5, 4, 1)
    assert overall.mean == pytest.approx((8 + 10 + 6 + 7) / 4)
    assert overall.ci == bootstrap_ci([8.0, 10.0, 6.0, 7.0], n=200, seed=0)
    assert overall.ci is not None and overall.ci[0] <= 7.75 <= overall.ci[1]

    per = report.per_category
    assert list(per) == ["math", "reasoning", "uncategorized", "writing"]
    assert (per["math"].n, per["math"].mean) == (2, 8.0)  # (10 + 6) / 2
    assert per["reasoning"].mean == 8.0 and per["reasoning"].ci == (8.0, 8.0)
    assert per["uncategorized"].mean == 7.0
    assert (per["writing"].rated, per["writing"].malformed) == (0, 1)
    assert per["writing"].mean is None and per["writing"].ci is None

    assert report.templates == [
        {"id": "single", "version": 1, "sha256": SINGLE_TEMPLATE.sha256},
        {"id": "single-ref", "version": 1, "sha256": SINGLE_REF_TEMPLATE.sha256},
    ]
    d = report.to_dict()
    json.dumps(d, ensure_ascii=False)
    assert d["mean"] == 7.75 and d["malformed"] == 1 and d["judge"] == "judge-7b"
    assert d["per_category"]["writing"]["ci"] is None
    assert d["items"][2]["rating"] == 6


def test_judge_single_explicit_template() -> None:
    answerer = FakeEvalModel(respond=ANSWERS.__getitem__)
    judge = FakeEvalModel(respond=lambda p: "[[5]]")
    # single@1 for every item: the reference of q2 is not shown.
    report = judge_single(answerer, judge, ITEMS[:2], template=SINGLE_TEMPLATE)
    assert [j.template for j in report.items] == ["single@1", "single@1"]
    assert report.overall.mean == 5.0
    with pytest.raises(UserError, match="item q1: judge template single-ref@1 needs a reference"):
        judge_single(answerer, judge, ITEMS[:2], template=SINGLE_REF_TEMPLATE)
    with pytest.raises(UserError, match="no items"):
        judge_single(answerer, judge, [])


# --- pairwise ------------------------------------------------------------------------------

PAIR_ITEMS = [
    SubjectiveItem("p1", "Q1", category="x"),  # A clearly better
    SubjectiveItem("p2", "Q2", category="x"),  # B clearly better
    SubjectiveItem("p3", "Q3", category="y"),  # judge always picks the first answer
    SubjectiveItem("p4", "Q4", category="y"),  # a tie both ways
    SubjectiveItem("p5", "Q5", category="y"),  # malformed in the swapped order
    SubjectiveItem("p6", "Q6"),  # malformed once, then A
]
A_ANSWERS = {f"Q{i}": f"answer-a{i}" for i in range(1, 7)}
B_ANSWERS = {f"Q{i}": f"answer-b{i}" for i in range(1, 7)}
BETTER = {"Q1": "answer-a1", "Q2": "answer-b2", "Q6": "answer-a6"}


def make_pair_judge() -> tuple[RecordingModel, list[str]]:
    prompts: list[str] = []

    def respond(prompt: str) -> str:
        prompts.append(prompt)
        q = _between(prompt, "[Question]", "[The Start")
        first = _between(prompt, "[The Start of Assistant A's Answer]", "[The End")
        if q == "Q3":
            return "The first answer is better. [[A]]"  # position bias
        if q == "Q4":
            return "两个回答不相上下。[[C]]"
        if q == "Q5" and first.startswith("answer-b"):
            return "Both have merits."  # no verdict, every time
        if q == "Q6" and sum(1 for p in prompts if "Q6" in p) == 1:
            return "Hmm, hard to say."
        if q == "Q5":
            return "[[B]]"
        return "[[A]]" if first == BETTER[q] else "[[B]]"

    return RecordingModel(respond, name="judge"), prompts


def test_judge_pairwise_numbers_by_hand() -> None:
    model_a = FakeEvalModel(respond=A_ANSWERS.__getitem__, name="model-a")
    model_b = FakeEvalModel(respond=B_ANSWERS.__getitem__, name="model-b")
    judge, prompts = make_pair_judge()
    report = judge_pairwise(model_a, model_b, judge, PAIR_ITEMS, retries=1, n_resamples=300)

    # Both orders for every item: 12 first attempts in one batch, then retries.
    assert judge.batches[0] == 12
    first_p1 = [p for p in prompts if "[Question]\nQ1\n" in p]
    assert "A's Answer]\nanswer-a1" in first_p1[0] and "A's Answer]\nanswer-b1" in first_p1[1]

    assert [(j.verdict_ab, j.verdict_ba, j.verdict) for j in report.items] == [
        ("A", "A", "A"),  # p1: A wins in both orders (B/A order said [[B]] = model A)
        ("B", "B", "B"),  # p2
        ("A", "B", "tie"),  # p3: position bias, the orders disagree
        ("tie", "tie", "tie"),  # p4
        ("B", None, None),  # p5: swapped order stayed malformed after 1 retry
        ("A", "A", "A"),  # p6: malformed first attempt, then a verdict
    ]
    assert [j.attempts for j in report.items] == [2, 2, 2, 2, 3, 3]

    o = report.overall
    assert (o.n, o.wins, o.losses, o.ties, o.malformed) == (6, 2, 1, 2, 1)
    assert o.position_disagreements == 1
    # Scores of the 5 judged pairs: 1, 0, 0.5, 0.5, 1 -> (2 + 2 * 0.5) / 5
    assert o.win_rate == pytest.approx(3 / 5)
    assert o.ci == bootstrap_ci([1.0, 0.0, 0.5, 0.5, 1.0], n=300, seed=0)

    per = report.per_category
    assert list(per) == ["uncategorized", "x", "y"]
    assert (per["x"].wins, per["x"].losses, per["x"].win_rate) == (1, 1, 0.5)
    assert (per["y"].ties, per["y"].malformed, per["y"].win_rate) == (2, 1, 0.5)
    assert per["uncategorized"].win_rate == 1.0

    assert report.template == {
        "id": "pairwise",
        "version": 1,
        "sha256": PAIRWISE_TEMPLATE.sha256,
    }
    assert (report.model_a, report.model_b, report.judge) == ("model-a", "model-b", "judge")
    d = report.to_dict()
    json.dumps(d)
    assert d["win_rate"] == pytest.approx(0.6) and d["malformed"] == 1
    assert d["per_category"]["x"]["ci"] is not None
    assert d["items"][4]["raw_ba"] == "Both have merits."


def test_judge_pairwise_retry_prompt_reminds_the_format() -> None:
    model = FakeEvalModel(respond=lambda q: "same")
    prompts: list[str] = []

    def respond(prompt: str) -> str:
        prompts.append(prompt)
        return "no idea"

    report = judge_pairwise(
        model, model, FakeEvalModel(respond=respond), [SubjectiveItem("1", "Q")], retries=2
    )
    assert report.overall.malformed == 1 and report.overall.win_rate is None
    assert len(prompts) == 6  # 2 orders x (1 + 2 retries)
    assert sum(1 for p in prompts if re.search(r'"\[\[C\]\]"\.$', p)) == 4


# --- agreement -----------------------------------------------------------------------------


def test_judge_agreement_hand_computed() -> None:
    judge_1 = ["A", "A", "B", "tie", None, "B"]
    judge_2 = ["A", "B", "B", "tie", "A", "B"]
    stats = judge_agreement(judge_1, judge_2)
    assert (stats.n, stats.skipped) == (5, 1)
    assert stats.agreement == pytest.approx(4 / 5)
    # p_o 4/5; marginals A 2 vs 1, B 2 vs 3, tie 1 vs 1 over 5 -> p_e = (2 + 6 + 1) / 25
    assert stats.kappa == pytest.approx((4 / 5 - 9 / 25) / (1 - 9 / 25))
    assert stats.to_dict()["n"] == 5


def test_judge_agreement_between_two_reports() -> None:
    model_a = FakeEvalModel(respond=A_ANSWERS.__getitem__)
    model_b = FakeEvalModel(respond=B_ANSWERS.__getitem__)
    # A judge that always prefers A, whatever the order: every pair is a position-bias tie.
    biased = FakeEvalModel(respond=lambda p: "[[A]]")
    fair, _ = make_pair_judge()
    r1 = judge_pairwise(model_a, model_b, fair, PAIR_ITEMS, retries=1)
    r2 = judge_pairwise(model_a, model_b, biased, PAIR_ITEMS, retries=1)
    assert r2.verdicts == ["tie"] * 6 and r2.overall.position_disagreements == 6
    stats = judge_agreement(r1.verdicts, r2.verdicts)
    assert (stats.n, stats.agreement) == (5, pytest.approx(2 / 5))
    with pytest.raises(UserError, match="6 labels from the first rater but 2"):
        judge_agreement(r1.verdicts, ["A", "B"])
    with pytest.raises(UserError, match="no item has a label from both"):
        judge_agreement([None, "A"], ["B", None])


# --- the command -------------------------------------------------------------------------


def _write_set(tmp_path: Path) -> Path:
    rows = [
        {"id": "q1", "question": "Explain recursion.", "category": "reasoning"},
        {"id": "q2", "question": "What is 2+2?", "reference": "4", "category": "math"},
        {"id": "q3", "question": "Write a haiku."},
    ]
    path = tmp_path / "judge_set.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_eval_judge_prints_and_registers_both_modes(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The human output of single grading and of --vs (it once read a key the report does
    not have, after minutes of judging, and lost the results); --limit; the report is
    registered either way."""
    from lmops.serve.fake import fake_server

    questions = _write_set(tmp_path)
    sent: list[dict[str, Any]] = []
    with (
        fake_server(tokens=4) as answers,
        fake_server(reply="Clear and correct. Rating: [[7]]", requests=sent) as rater,
        fake_server(reply="The first is better. [[A]]") as biased,
    ):
        base = ["eval", "judge", "--model", "fake", "--judge", "fake", "--set", str(questions)]
        single = cli(*base, "--endpoint", answers + "/v1", "--judge-endpoint", rater + "/v1",
                     "--limit", "2")  # fmt: skip
        assert single.code == 0, single.err
        assert "fake: mean rating 7.00 (95% CI 7.00-7.00) over 2 of 2 answers" in single.out
        assert "reasoning" in single.out and "math" in single.out
        assert "uncategorized" not in single.out  # q3 is past --limit 2
        assert single.out.strip().splitlines()[-1] == "registered judge-fake:1"

        pair = cli(*base, "--vs", "fake", "--endpoint", answers + "/v1",
                   "--judge-endpoint", biased + "/v1", "--output", "pair")  # fmt: skip
        assert pair.code == 0, pair.err
        # a judge that always picks the first answer: every pair is a tie of the two orders
        assert "fake vs fake: wins 0, losses 0, ties 3 (3 from judgments" in pair.out
        assert "malformed 0; win rate 0.500" in pair.out
        assert pair.out.strip().splitlines()[-1] == "registered pair:1"

        unparsable = cli(*base, "--vs", "fake", "--endpoint", answers + "/v1",
                         "--judge-endpoint", answers + "/v1", "--retries", "0")  # fmt: skip
        # nothing judged: a failed run (exit 1), its report kept as the record
        assert unparsable.code == 1, unparsable.err
        assert "malformed 3; no pair was judged" in unparsable.out
        assert "the judge gave no usable verdict" in unparsable.err
        nothing = cli(*base, "--endpoint", answers + "/v1", "--judge-endpoint",
                      answers + "/v1", "--retries", "0")  # fmt: skip
        assert nothing.code == 1, nothing.err
        assert "no answer was rated: all 3 judge outputs were malformed" in nothing.out
        assert "registered judge-fake:2" in nothing.out  # the --vs ones: judge-fake-vs-fake

        assert all("messages" in body for body in sent)
        sent.clear()
        plain = cli(*base, "--endpoint", answers + "/v1", "--judge-endpoint", rater + "/v1",
                    "--no-apply-chat-template", "--output", "plain")  # fmt: skip
        assert plain.code == 0, plain.err
        # plain text to an endpoint goes to its completions API, which applies no template
        assert sent and all("prompt" in body and "messages" not in body for body in sent)
        assert "prompts to model, judge were plain text (--no-apply-chat-template)" in plain.out
        as_json = cli(*base, "--endpoint", answers + "/v1", "--judge-endpoint", rater + "/v1",
                      "--json")  # fmt: skip
        # the same judge on other questions: ranked beside the first, flagged not comparable
        other = tmp_path / "other.jsonl"
        other.write_text(json.dumps({"id": "z", "question": "Name a colour."}) + "\n")
        again = cli("eval", "judge", "--model", "fake", "--judge", "fake", "--set", str(other),
                    "--endpoint", answers + "/v1", "--judge-endpoint", rater + "/v1",
                    "--output", "other-set")  # fmt: skip
        assert again.code == 0, again.err
    assert as_json.code == 0, as_json.err
    report = json.loads(as_json.out)
    assert report["kind"] == "single" and report["mean"] == 7.0 and report["n"] == 3
    assert report["config"]["limit"] is None and report["report"] == "judge-fake:3"
    # an endpoint's chat API applies the model's template: the default uses it
    assert report["config"]["apply_chat_template"] == "auto"
    assert report["config"]["chat_template"] == {"model": True, "judge": True}
    assert "plain text" not in single.out
    stored = Path(cli("assets", "path", "plain:1").out.strip()) / "results.json"
    config = json.loads(stored.read_text(encoding="utf-8"))["config"]
    assert config["apply_chat_template"] is False
    assert config["chat_template"] == {"model": False, "judge": False}
    shown = json.loads(cli("assets", "show", "judge-fake:1", "--json").out)
    assert shown["metadata"]["results"] == {"judge": {"mean_rating": 7.0, "n": 2}}
    stored = Path(cli("assets", "path", "judge-fake:1").out.strip()) / "results.json"
    assert json.loads(stored.read_text(encoding="utf-8"))["config"]["limit"] == 2
    pair_meta = json.loads(cli("assets", "show", "pair:1", "--json").out)["metadata"]
    assert pair_meta["results"] == {"judge_pairwise:fake": {"win_rate": 0.5, "n": 3}}
    compared = cli("eval", "compare", "judge-fake:1", "pair:1")  # not task reports
    assert compared.code == 2 and "judge-fake:1 holds no task results" in compared.err
    ranked = json.loads(cli("eval", "leaderboard", "--json").out)
    assert {(r["task"], r["metric"]) for r in ranked} == {
        ("judge", "mean_rating"),
        ("judge_pairwise:fake", "win_rate"),
    }
    assert all(r["basis_differs"] for r in ranked if r["task"] == "judge")
    board = cli("eval", "leaderboard", "--task", "judge")
    assert "mix judge reports of different question sets or judges" in " ".join(board.out.split())


def test_questions_and_judge_prompts_go_through_each_models_chat_template(
    tmp_path: Path,
) -> None:
    """An SFT'd model asked in plain text answers nothing: questions go as a user turn
    through the model's own chat template (a local model's tokenizer), judge prompts
    through the judge's, retries included; off with apply_chat_template=False, refused
    when forced on a model without one; the report says what was done per model."""
    from lmops.data.tokenizer import train_tokenizer
    from lmops.eval.lm import HFEvalModel
    from tests.train.tiny import SENTENCES, make_model, make_tokenizer

    chat_dir = make_model(tmp_path / "chat", make_tokenizer(tmp_path / "tok"))
    plain_tok = tmp_path / "plain-tok"
    train_tokenizer(SENTENCES, plain_tok, vocab_size=320, min_frequency=1, chat_template=None)
    plain_dir = make_model(tmp_path / "plain", plain_tok)

    def recording(path: Path) -> tuple[HFEvalModel, list[str]]:
        """The local model, its generations replaced by a recorder of the prompts."""
        lm = HFEvalModel(path, device="cpu", batch_size=1)
        seen: list[str] = []

        def generate(requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
            seen.extend(context for context, _ in requests)
            return ["an answer"] * len(requests)

        lm.generate = generate  # type: ignore[method-assign]
        return lm, seen

    chat, chat_seen = recording(chat_dir)
    plain, plain_seen = recording(plain_dir)
    assert chat.has_chat_template and not plain.has_chat_template
    plain_judge = FakeEvalModel(respond=lambda p: "[[6]]", name="judge")
    item = [SubjectiveItem("q1", "Explain recursion.")]

    report = judge_single(chat, plain_judge, item)
    assert chat_seen == ["<|im_start|>user\nExplain recursion.<|im_end|>\n<|im_start|>assistant\n"]
    assert report.chat_template == {"model": True, "judge": False}
    assert report.to_dict()["chat_template"] == {"model": True, "judge": False}
    chat_seen.clear()
    off = judge_single(chat, plain_judge, item, apply_chat_template=False)
    assert chat_seen == ["Explain recursion."] and off.chat_template["model"] is False
    assert judge_single(plain, plain_judge, item).chat_template["model"] is False
    assert plain_seen == ["Explain recursion."]
    with pytest.raises(UserError, match="the tokenizer has no chat template"):
        judge_single(plain, plain_judge, item, apply_chat_template=True)

    judge_prompts: list[str] = []

    def respond(prompt: str) -> str:
        judge_prompts.append(prompt)
        return "[[A]]" if len(judge_prompts) > 2 else "undecided"  # one retry per order

    def inst(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return "[INST] " + messages[-1]["content"] + " [/INST]"

    chat_judge = FakeEvalModel(respond=respond, chat_template=inst)
    pair = judge_pairwise(chat, plain, chat_judge, item, retries=1)
    assert pair.chat_template == {"model_a": True, "model_b": False, "judge": True}
    assert len(judge_prompts) == 4
    assert all(p.startswith("[INST] ") and p.endswith(" [/INST]") for p in judge_prompts)
    assert '"[[C]]". [/INST]' in judge_prompts[2]  # the retry reminder, inside the turn
