"""Subjective evaluation with an LLM as judge: single-answer ratings and pairwise comparisons.

A subjective set is JSONL, one question a line::

    {"id": "q1", "question": "...", "reference": "... (optional)", "category": "... (optional)"}

``reference`` may list several acceptable answers (``["Paris", "Paris, France"]``, as a
TriviaQA row's aliases): the judge is shown all of them, any one of them correct.

``judge_single`` has the model under test answer each question and a judge model rate the
answer 1-10 (``single@1``, or ``single-ref@1`` when the item has a reference);
``judge_pairwise`` has two models answer and the judge compare them in both orders (A/B and
B/A), so a judge that always prefers the first answer produces ties, not wins.

Judge output that cannot be parsed is retried (``retries`` times, with a reminder of the
verdict format appended) and, if still unusable, counted as ``malformed``: it never raises
and is left out of means and win rates. Reports name the judge model and the template
(``id``, ``version``, ``sha256``) that produced every number.

Every prompt (a question to a model under test, a judge prompt) is sent as one user turn
through the model's chat template when it has one of its own, as ``eval run
--apply-chat-template`` renders prompts (:func:`lmops.eval.run.prompt_style`): an instruct
model asked in plain text may answer nothing. ``apply_chat_template`` True or False forces
it either way; each report's ``chat_template`` says, per model, which was done.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lmops.core.errors import UserError
from lmops.core.jsonl import json_objects
from lmops.eval._batching import naming_items
from lmops.eval.judge import (
    PAIRWISE_TEMPLATE,
    SINGLE_REF_TEMPLATE,
    SINGLE_TEMPLATE,
    JudgeOutcome,
    JudgeTemplate,
    Verdict,
    agreement,
    cohen_kappa,
    judge_with_retries,
    pairwise_both_orders,
    parse_pairwise,
    parse_single,
)
from lmops.eval.lm import EvalModel
from lmops.eval.metrics import bootstrap_ci
from lmops.eval.run import prompt_style
from lmops.eval.tasks import ChatTemplate

__all__ = [
    "UNCATEGORIZED",
    "AgreementStats",
    "PairJudgment",
    "PairScore",
    "PairwiseReport",
    "RatingScore",
    "SingleJudgment",
    "SingleReport",
    "SubjectiveItem",
    "judge_agreement",
    "judge_all",
    "judge_pairwise",
    "judge_single",
    "load_subjective_set",
    "template_info",
]

T = TypeVar("T")

UNCATEGORIZED = "uncategorized"  # the category of items that name none
_FIELDS = ("id", "question", "reference", "category")
SINGLE_RETRY_SUFFIX = '\n\nEnd your reply with the rating in exactly this format: "Rating: [[6]]".'
PAIRWISE_RETRY_SUFFIX = '\n\nEnd your reply with exactly one verdict: "[[A]]", "[[B]]" or "[[C]]".'


# ---------------------------------------------------------------------------------------
# The set
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubjectiveItem:
    """One open-ended question; ``reference`` is a model answer the judge may compare to."""

    id: str
    question: str
    reference: str | None = None
    category: str | None = None
    # where it was read (``file:line``): errors name it
    where: str = field(default="", compare=False, repr=False)

    def named(self) -> str:
        """The item in an error: its id and where it was read."""
        return f"item {self.id}" + (f" ({self.where})" if self.where else "")

    @property
    def group(self) -> str:
        """The category that per-category scores are grouped under."""
        return self.category or UNCATEGORIZED


def _optional_text(value: Any, where: str, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise UserError(f"{where}: {name}: expected a string, got {type(value).__name__}")
    return value if value.strip() else None


def _reference(value: Any, where: str) -> str | None:
    """A row's reference as the judge reads it: the text, or several acceptable answers (a
    list) shown one a line, any one of them correct; blank ones left out."""
    if not isinstance(value, list):
        return _optional_text(value, where, "reference")
    answers = []
    for i, one in enumerate(value):
        if not isinstance(one, str):
            raise UserError(f"{where}: reference[{i}]: expected a string, got {type(one).__name__}")
        if one.strip():
            answers.append(one)
    if len(answers) < 2:
        return answers[0] if answers else None
    return "Any one of these answers is correct:\n" + "\n".join(f"- {a}" for a in answers)


def load_subjective_set(path: str | Path) -> list[SubjectiveItem]:
    """Read a subjective set (JSONL). Blank lines are skipped; every problem is a one-line
    ``UserError`` naming ``file:line`` and the field (``id`` must be unique, ``question``
    non-empty, ``reference`` a string or a list of strings and ``category`` a string if
    given, no other fields)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such subjective set") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the subjective set: {e}") from None
    items: list[SubjectiveItem] = []
    seen: dict[str, int] = {}
    for lineno, where, row in json_objects(text, str(path)):
        unknown = [k for k in row if k not in _FIELDS]
        if unknown:
            raise UserError(
                f"{where}: {unknown[0]}: unknown field (a row has {', '.join(_FIELDS)})"
            )
        raw_id = row.get("id")
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or str(raw_id) == "":
            raise UserError(f"{where}: id: missing; give each row a non-empty string id")
        item_id = str(raw_id)
        if item_id in seen:
            raise UserError(f"{where}: id: {item_id!r} repeats line {seen[item_id]}")
        seen[item_id] = lineno
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{where}: question: missing or empty; give the question as text")
        items.append(
            SubjectiveItem(
                id=item_id,
                question=question,
                reference=_reference(row.get("reference"), where),
                category=_optional_text(row.get("category"), where, "category"),
                where=where,
            )
        )
    if not items:
        raise UserError(f"{path}: the subjective set has no rows")
    return items


# ---------------------------------------------------------------------------------------
# Calling models
# ---------------------------------------------------------------------------------------


def template_info(template: JudgeTemplate) -> dict[str, Any]:
    """What a report stores about a judge template: ``id``, ``version``, ``sha256``."""
    return {"id": template.id, "version": template.version, "sha256": template.sha256}


def _model_name(model: Any) -> str:
    return str(getattr(model, "name", None) or type(model).__name__)


def _chat_of(model: EvalModel, apply_chat_template: bool | None) -> ChatTemplate | None:
    """The template ``model``'s prompts go through (None: plain text), decided as eval run
    decides: forced by True/False, else the model's own template when it has one."""
    return prompt_style(model, apply_chat_template=apply_chat_template).chat_template


def _generate(
    model: EvalModel,
    prompts: Sequence[str],
    max_gen_toks: int,
    chat: ChatTemplate | None = None,
    names: Sequence[str] | None = None,
) -> list[str]:
    """One generation per prompt; with ``chat``, each prompt is a user turn through it. A
    prompt that fails alone (refused by the server, out of memory alone) is named in the
    error by ``names`` (an item's id and line, and whose call it was)."""
    if chat is not None:
        prompts = [chat([{"role": "user", "content": p}], True) for p in prompts]
    with naming_items(lambda i: names[i] if names else f"prompt {i + 1} of {len(prompts)}"):
        outs = model.generate([(p, {"until": [], "max_gen_toks": max_gen_toks}) for p in prompts])
    if len(outs) != len(prompts):
        raise UserError(
            f"model {_model_name(model)} returned {len(outs)} generations for {len(prompts)} prompts"
        )
    return [o if isinstance(o, str) else "" for o in outs]


def _replay_then_call(
    model: EvalModel, first: str, max_gen_toks: int, chat: ChatTemplate | None, name: str | None
) -> Callable[[str], str]:
    """A judge call that answers the first attempt from the batch and retries live."""
    pending = [first]

    def call(prompt: str) -> str:
        if pending:
            return pending.pop()
        return _generate(model, [prompt], max_gen_toks, chat, [name] if name else None)[0]

    return call


def judge_all(
    judge_model: EvalModel,
    prompts: Sequence[str],
    parse: Callable[[str], T | None],
    *,
    retries: int = 2,
    retry_suffix: str = "",
    max_gen_toks: int = 512,
    chat: ChatTemplate | None = None,
    names: Sequence[str] | None = None,
) -> list[JudgeOutcome[T]]:
    """Judge every prompt: first attempts in one ``generate`` batch, retries one by one.

    Same contract as :func:`lmops.eval.judge.judge_with_retries` per prompt: malformed output
    becomes ``value=None`` after ``1 + retries`` attempts; backend errors propagate. With
    ``chat``, every attempt is a user turn rendered through it.
    """
    if retries < 0:
        raise UserError(f"judge: retries must be 0 or more, got {retries}")
    firsts = _generate(judge_model, prompts, max_gen_toks, chat, names) if prompts else []
    return [
        judge_with_retries(
            _replay_then_call(judge_model, first, max_gen_toks, chat, names[i] if names else None),
            prompt,
            parse,
            retries,
            retry_suffix=retry_suffix,
        )
        for i, (prompt, first) in enumerate(zip(prompts, firsts, strict=True))
    ]


def _ci(values: Sequence[float], n_resamples: int, seed: int) -> tuple[float, float] | None:
    return bootstrap_ci(values, n=n_resamples, seed=seed) if values else None


def _by_group(groups: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        out.setdefault(g, []).append(i)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------
# Single-answer grading
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SingleJudgment:
    """One question: the answer, the judge's rating (None = malformed) and its rationale."""

    id: str
    category: str
    question: str
    answer: str
    rating: int | None
    rationale: str  # the judge's last raw output
    attempts: int
    template: str  # id@version


@dataclass(frozen=True)
class RatingScore:
    """Ratings of a group of items: ``mean`` and its bootstrap ``ci`` over rated items."""

    n: int
    rated: int
    malformed: int
    mean: float | None
    ci: tuple[float, float] | None

    @classmethod
    def of(cls, ratings: Sequence[int | None], n_resamples: int, seed: int) -> RatingScore:
        values = [float(r) for r in ratings if r is not None]
        return cls(
            n=len(ratings),
            rated=len(values),
            malformed=len(ratings) - len(values),
            mean=sum(values) / len(values) if values else None,
            ci=_ci(values, n_resamples, seed),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ci": list(self.ci) if self.ci else None}


@dataclass
class SingleReport:
    """What ``judge_single`` found: overall and per-category ratings, per-item judgments."""

    model: str
    judge: str
    templates: list[dict[str, Any]]
    retries: int
    overall: RatingScore
    per_category: dict[str, RatingScore]
    items: list[SingleJudgment] = field(default_factory=list)
    # per role ("model", "judge"): whether its prompts went through its chat template
    chat_template: dict[str, bool] = field(default_factory=dict)

    @property
    def ratings(self) -> list[int | None]:
        """Per-item ratings in set order (None = malformed), e.g. for ``judge_agreement``."""
        return [j.rating for j in self.items]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "single",
            "model": self.model,
            "judge": self.judge,
            "templates": self.templates,
            "retries": self.retries,
            "chat_template": self.chat_template,
            **self.overall.to_dict(),
            "per_category": {k: v.to_dict() for k, v in self.per_category.items()},
            "items": [asdict(j) for j in self.items],
        }


def _single_template(item: SubjectiveItem, template: JudgeTemplate | None) -> JudgeTemplate:
    if template is None:
        return SINGLE_REF_TEMPLATE if item.reference else SINGLE_TEMPLATE
    if "reference" in template.fields and not item.reference:
        raise UserError(
            f"item {item.id}: judge template {template.ref} needs a reference and the item has none"
        )
    return template


def _render_single(template: JudgeTemplate, item: SubjectiveItem, answer: str) -> str:
    values = {"question": item.question, "answer": answer}
    if "reference" in template.fields:
        values["reference"] = item.reference or ""
    return template.render(**values)


def judge_single(
    answer_model: EvalModel,
    judge_model: EvalModel,
    items: Sequence[SubjectiveItem],
    *,
    template: JudgeTemplate | None = None,
    retries: int = 2,
    max_gen_toks: int = 512,
    judge_max_gen_toks: int = 512,
    n_resamples: int = 1000,
    seed: int = 0,
    apply_chat_template: bool | None = None,
) -> SingleReport:
    """Answer every item with ``answer_model`` and have ``judge_model`` rate it 1-10.

    ``template=None`` picks ``single-ref@1`` for items with a reference and ``single@1`` for
    the rest; a given template is used for every item (one that needs a reference refuses
    items without one). Means and 95% bootstrap CIs count rated items only; malformed
    judgments are counted separately. ``apply_chat_template``: see the module docstring.
    """
    if not items:
        raise UserError("judge_single: no items to judge")
    chat = _chat_of(answer_model, apply_chat_template)
    judge_chat = _chat_of(judge_model, apply_chat_template)
    answered = [f"{it.named()}, answered by {_model_name(answer_model)}" for it in items]
    answers = _generate(answer_model, [it.question for it in items], max_gen_toks, chat, answered)
    chosen = [_single_template(it, template) for it in items]
    prompts = [_render_single(t, it, a) for t, it, a in zip(chosen, items, answers, strict=True)]
    outcomes = judge_all(
        judge_model,
        prompts,
        parse_single,
        retries=retries,
        retry_suffix=SINGLE_RETRY_SUFFIX,
        max_gen_toks=judge_max_gen_toks,
        chat=judge_chat,
        names=[f"{it.named()}, judged by {_model_name(judge_model)}" for it in items],
    )
    judgments = [
        SingleJudgment(
            id=it.id,
            category=it.group,
            question=it.question,
            answer=a,
            rating=o.value,
            rationale=o.raw,
            attempts=o.attempts,
            template=t.ref,
        )
        for it, a, o, t in zip(items, answers, outcomes, chosen, strict=True)
    ]
    ratings = [j.rating for j in judgments]
    used = {t.ref: t for t in chosen}
    return SingleReport(
        model=_model_name(answer_model),
        judge=_model_name(judge_model),
        templates=[template_info(t) for t in used.values()],  # in order of first use
        retries=retries,
        overall=RatingScore.of(ratings, n_resamples, seed),
        per_category={
            g: RatingScore.of([ratings[i] for i in idx], n_resamples, seed)
            for g, idx in _by_group([j.category for j in judgments]).items()
        },
        items=judgments,
        chat_template={"model": chat is not None, "judge": judge_chat is not None},
    )


# ---------------------------------------------------------------------------------------
# Pairwise comparison
# ---------------------------------------------------------------------------------------

# Each pair scores 1 for an A win, 0.5 for a tie and 0 for a loss (the AlpacaEval/Arena
# convention), so the win rate is (wins + ties / 2) / judged pairs.
_PAIR_SCORE = {"A": 1.0, "tie": 0.5, "B": 0.0}


def _swap(v: Verdict | None) -> Verdict | None:
    return "B" if v == "A" else "A" if v == "B" else v


@dataclass(frozen=True)
class PairJudgment:
    """One question judged in both orders; verdicts are in terms of model A vs model B."""

    id: str
    category: str
    question: str
    answer_a: str
    answer_b: str
    verdict_ab: Verdict | None  # judge shown (A, B)
    verdict_ba: Verdict | None  # judge shown (B, A), already mapped back to A/B terms
    verdict: Verdict | None  # combined; None = malformed
    raw_ab: str
    raw_ba: str
    attempts: int  # judge calls over both orders


@dataclass(frozen=True)
class PairScore:
    """Wins, losses and ties of model A against B, and A's win rate with a bootstrap CI."""

    n: int
    wins: int
    losses: int
    ties: int
    malformed: int
    position_disagreements: int  # both orders parsed but disagreed: counted as ties
    win_rate: float | None
    ci: tuple[float, float] | None

    @classmethod
    def of(cls, judgments: Sequence[PairJudgment], n_resamples: int, seed: int) -> PairScore:
        verdicts = [j.verdict for j in judgments]
        scores = [_PAIR_SCORE[v] for v in verdicts if v is not None]
        return cls(
            n=len(judgments),
            wins=verdicts.count("A"),
            losses=verdicts.count("B"),
            ties=verdicts.count("tie"),
            malformed=verdicts.count(None),
            position_disagreements=sum(
                1
                for j in judgments
                if j.verdict_ab is not None
                and j.verdict_ba is not None
                and j.verdict_ab != j.verdict_ba
            ),
            win_rate=sum(scores) / len(scores) if scores else None,
            ci=_ci(scores, n_resamples, seed),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ci": list(self.ci) if self.ci else None}


@dataclass
class PairwiseReport:
    """What ``judge_pairwise`` found: model A against model B, overall and per category."""

    model_a: str
    model_b: str
    judge: str
    template: dict[str, Any]
    retries: int
    overall: PairScore
    per_category: dict[str, PairScore]
    items: list[PairJudgment] = field(default_factory=list)
    # per role ("model_a", "model_b", "judge"): whether its prompts went through its template
    chat_template: dict[str, bool] = field(default_factory=dict)

    @property
    def verdicts(self) -> list[Verdict | None]:
        """Per-item combined verdicts in set order (None = malformed)."""
        return [j.verdict for j in self.items]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "pairwise",
            "model_a": self.model_a,
            "model_b": self.model_b,
            "judge": self.judge,
            "template": self.template,
            "retries": self.retries,
            "chat_template": self.chat_template,
            **self.overall.to_dict(),
            "per_category": {k: v.to_dict() for k, v in self.per_category.items()},
            "items": [asdict(j) for j in self.items],
        }


def judge_pairwise(
    model_a: EvalModel,
    model_b: EvalModel,
    judge_model: EvalModel,
    items: Sequence[SubjectiveItem],
    *,
    retries: int = 2,
    max_gen_toks: int = 512,
    judge_max_gen_toks: int = 512,
    n_resamples: int = 1000,
    seed: int = 0,
    apply_chat_template: bool | None = None,
) -> PairwiseReport:
    """Answer every item with both models and have ``judge_model`` compare the answers.

    Each pair is judged twice, as (A, B) and as (B, A); the two verdicts combine by
    :func:`~lmops.eval.judge.pairwise_both_orders`: agreement stands, disagreement is a tie,
    and a side still malformed after retries makes the pair malformed (left out of the win
    rate, counted in ``malformed``). References are not shown to the pairwise judge.
    ``apply_chat_template``: see the module docstring.
    """
    if not items:
        raise UserError("judge_pairwise: no items to judge")
    chats = {
        "model_a": _chat_of(model_a, apply_chat_template),
        "model_b": _chat_of(model_b, apply_chat_template),
        "judge": _chat_of(judge_model, apply_chat_template),
    }
    questions = [it.question for it in items]
    names_a = [f"{it.named()}, answered by {_model_name(model_a)}" for it in items]
    names_b = [f"{it.named()}, answered by {_model_name(model_b)}" for it in items]
    answers_a = _generate(model_a, questions, max_gen_toks, chats["model_a"], names_a)
    answers_b = _generate(model_b, questions, max_gen_toks, chats["model_b"], names_b)
    prompts = [
        PAIRWISE_TEMPLATE.render(question=q, answer_a=first, answer_b=second)
        for q, a, b in zip(questions, answers_a, answers_b, strict=True)
        for first, second in ((a, b), (b, a))
    ]
    outcomes: list[JudgeOutcome[Verdict]] = judge_all(
        judge_model,
        prompts,
        parse_pairwise,
        retries=retries,
        retry_suffix=PAIRWISE_RETRY_SUFFIX,
        max_gen_toks=judge_max_gen_toks,
        chat=chats["judge"],
        names=[
            f"{it.named()}, judged by {_model_name(judge_model)} ({order})"
            for it in items
            for order in ("A then B", "B then A")
        ],
    )
    judgments = []
    for i, it in enumerate(items):
        ab, ba = outcomes[2 * i], outcomes[2 * i + 1]
        judgments.append(
            PairJudgment(
                id=it.id,
                category=it.group,
                question=it.question,
                answer_a=answers_a[i],
                answer_b=answers_b[i],
                verdict_ab=ab.value,
                verdict_ba=_swap(ba.value),
                verdict=pairwise_both_orders(ab.value, ba.value),
                raw_ab=ab.raw,
                raw_ba=ba.raw,
                attempts=ab.attempts + ba.attempts,
            )
        )
    return PairwiseReport(
        model_a=_model_name(model_a),
        model_b=_model_name(model_b),
        judge=_model_name(judge_model),
        template=template_info(PAIRWISE_TEMPLATE),
        retries=retries,
        overall=PairScore.of(judgments, n_resamples, seed),
        per_category={
            g: PairScore.of([judgments[i] for i in idx], n_resamples, seed)
            for g, idx in _by_group([j.category for j in judgments]).items()
        },
        items=judgments,
        chat_template={role: chat is not None for role, chat in chats.items()},
    )


# ---------------------------------------------------------------------------------------
# Agreement between raters
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgreementStats:
    """Agreement of two raters over the items both labelled (None labels are skipped)."""

    n: int  # items with a label from both raters
    skipped: int  # items where either label is None (malformed)
    agreement: float
    kappa: float  # Cohen's kappa

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_agreement(
    labels_1: Sequence[Hashable | None], labels_2: Sequence[Hashable | None]
) -> AgreementStats:
    """Raw agreement and Cohen's kappa of two label lists (two judges, a judge and humans,
    one judge in two runs), e.g. ``report_1.verdicts`` and ``report_2.verdicts``.

    Lists of different lengths, or no item labelled by both, are a ``UserError``.
    """
    rate = agreement(labels_1, labels_2)  # checks lengths and that a pair exists
    n = sum(1 for a, b in zip(labels_1, labels_2, strict=True) if a is not None and b is not None)
    return AgreementStats(
        n=n,
        skipped=len(labels_1) - n,
        agreement=rate,
        kappa=cohen_kappa(labels_1, labels_2),
    )
