"""A generation task whose ``doc_to_target`` renders a list (TriviaQA's and Natural
Questions' aliases) scores a prediction against each answer and keeps the best, as
lm-evaluation-harness scores ``multiple_target`` tasks; the report's item lists every answer.
A single answer scores as before. The model is the in-package fake, answering what the test
says; the task file and its data are written here."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.eval.lm import FakeEvalModel
from lmops.eval.run import TaskResult, evaluate, flag_contamination
from lmops.eval.tasks import load_task_file

TASK = """\
task: capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: capital of {{{{country}}}}?\\nA:"
doc_to_target: {target}
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
metric_list:
{metrics}
{extra}"""

ALL_METRICS = """\
  - metric: exact_match
  - metric: f1
  - metric: rouge_l
  - metric: bleu
"""

DOCS = [
    {"country": "France", "answers": ["Paris", "paris, france"], "capital": "Paris"},
    {"country": "Japan", "answers": ["Tokyo", "Edo", "東京"], "capital": "Tokyo"},
    {"country": "Peru", "answers": ["Lima"], "capital": "Lima"},
]


def write_task(
    tmp: Path,
    target: str = '"{{answers}}"',
    *,
    metrics: str = ALL_METRICS,
    extra: str = "",
    docs: list[dict[str, Any]] = DOCS,
) -> Path:
    data = tmp / "capitals.jsonl"
    data.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in docs) + "\n", "utf-8")
    f = tmp / "capitals.yaml"
    f.write_text(TASK.format(data=data, target=target, metrics=metrics, extra=extra), "utf-8")
    return f


def answering(answers: dict[str, str]) -> FakeEvalModel:
    """A model that answers "<answer>" to the question about each country: no space before
    it, as a task without filters scores the output as it is (lm-eval's)."""
    return FakeEvalModel(lambda ctx: next(a for c, a in answers.items() if c in ctx))


def run(task_file: Path, answers: dict[str, str]) -> TaskResult:
    return evaluate(answering(answers), [load_task_file(task_file)], progress=False)[0]


def test_an_alias_scores_as_the_answer_and_the_item_lists_every_answer(tmp_path: Path) -> None:
    # France and Japan answered with an alias that is not their first answer; Peru with
    # its one answer
    res = run(write_task(tmp_path), {"France": "paris, france", "Japan": "Edo", "Peru": "Lima"})
    assert [it["scores"]["exact_match,none"] for it in res.items] == [1.0, 1.0, 1.0]
    assert res.metrics["exact_match,none"] == 1.0
    assert res.metrics["f1,none"] == 1.0 and res.metrics["rouge_l,none"] == 1.0
    assert [it["target"] for it in res.items] == [
        ["Paris", "paris, france"],
        ["Tokyo", "Edo", "東京"],
        ["Lima"],  # a list of one is still the task's list
    ]


def test_a_prediction_matching_no_answer_scores_zero_and_partial_credit_is_the_best(
    tmp_path: Path,
) -> None:
    res = run(write_task(tmp_path), {"France": "Lyon", "Japan": "Kyoto", "Peru": "Cusco"})
    assert res.metrics["exact_match,none"] == 0.0 and res.metrics["f1,none"] == 0.0

    # "Paris France" shares one of two tokens with "Paris" (F1 2/3) and both with
    # "paris, france" (F1 1): the best is kept, not the first answer's or the mean
    res = run(write_task(tmp_path), {"France": "Paris France", "Japan": "x", "Peru": "x"})
    first = res.items[0]["scores"]
    assert first["f1,none"] == 1.0 and first["rouge_l,none"] == 1.0
    assert first["exact_match,none"] == 0.0  # no answer is the text itself
    # an answer with only part of a multi-word alias: partial credit, not 0 or 1
    res = run(write_task(tmp_path), {"France": "france", "Japan": "x", "Peru": "x"})
    assert res.items[0]["scores"]["f1,none"] == pytest.approx(2 / 3)


def test_bleu_takes_every_answer_as_a_reference(tmp_path: Path) -> None:
    """BLEU is a corpus metric: each document's answers are its references, as sacrebleu
    takes several (clipped counts against the best reference, the closest length)."""
    from lmops.eval.metrics import bleu

    docs = [
        {"country": "France", "answers": ["the city of Paris on the Seine", "Paris is it"]},
        {"country": "Japan", "answers": ["it is Tokyo in the east of Japan"]},
    ]
    outs = {"France": "Paris is it of course", "Japan": "it is Tokyo in the east"}
    res = run(write_task(tmp_path, metrics="  - metric: bleu\n", docs=docs), outs)
    preds = list(outs.values())
    every = bleu(preds, [d["answers"] for d in docs])
    assert res.metrics["bleu,none"] == pytest.approx(every)
    assert every > bleu(preds, [d["answers"][0] for d in docs]) > 0  # the alias counted


def test_a_single_target_scores_and_reads_as_before(tmp_path: Path) -> None:
    answers = {"France": "Paris", "Japan": "Edo", "Peru": "Lima"}
    res = run(write_task(tmp_path, '"{{capital}}"'), answers)
    assert [it["scores"]["exact_match,none"] for it in res.items] == [1.0, 0.0, 1.0]
    assert [it["target"] for it in res.items] == ["Paris", "Tokyo", "Lima"]  # a string
    # a column holding a string, too
    res = run(write_task(tmp_path, "capital"), answers)
    assert [it["target"] for it in res.items] == ["Paris", "Tokyo", "Lima"]
    assert res.metrics["exact_match,none"] == pytest.approx(2 / 3)


def test_a_list_column_is_several_answers_too(tmp_path: Path) -> None:
    res = run(write_task(tmp_path, "answers"), {"France": "x", "Japan": "東京", "Peru": "Lima"})
    assert [it["scores"]["exact_match,none"] for it in res.items] == [0.0, 1.0, 1.0]


def test_filters_and_metric_options_apply_to_every_answer(tmp_path: Path) -> None:
    extra = """\
filter_list:
  - name: answer
    filter:
      - function: regex
        regex_pattern: "answer is (.+)"
      - function: lowercase
"""
    metrics = "  - metric: exact_match\n    ignore_case: true\n    ignore_punctuation: true\n"
    f = write_task(tmp_path, metrics=metrics, extra=extra)
    answers = {"France": "I think the answer is PARIS FRANCE", "Japan": "the answer is edo"}
    res = run(f, {**answers, "Peru": "no idea"})
    assert [it["pred,answer"] for it in res.items] == ["paris france", "edo", None]
    assert [it["scores"]["exact_match,answer"] for it in res.items] == [1.0, 1.0, 0.0]

    # numbers: GSM8K's extraction, compared as numbers with each answer
    docs = [{"country": "Mars", "answers": ["2", "two"]}, {"country": "Venus", "answers": ["0"]}]
    extra = "filter_list:\n  - name: num\n    filter:\n      - function: number\n"
    metrics = "  - metric: exact_match\n    numeric: true\n"
    f = write_task(tmp_path, metrics=metrics, extra=extra, docs=docs)
    res = run(f, {"Mars": "It has 2.0 moons", "Venus": "none, so 1"})
    assert [it["scores"]["exact_match,num"] for it in res.items] == [1.0, 0.0]


def test_a_document_without_an_answer_scores_zero_as_lm_eval(tmp_path: Path) -> None:
    """SQuAD v2's unanswerable questions (``answers.text: []``): lm-eval scores such a
    document 0 on every metric (no answer to match, the empty prediction included) and runs
    on; the run used to stop at it."""
    docs = [DOCS[0], {"country": "Atlantis", "answers": []}, DOCS[2]]
    for answers in (
        {"France": "Paris", "Atlantis": "Atlantis City", "Peru": "Lima"},
        {"France": "Paris", "Atlantis": "", "Peru": "Lima"},
    ):
        res = run(write_task(tmp_path, docs=docs), answers)
        assert [it["target"] for it in res.items][1] == []
        for metric in ("exact_match", "f1", "rouge_l"):
            assert [it["scores"][f"{metric},none"] for it in res.items] == [1.0, 0.0, 1.0]
            assert res.metrics[f"{metric},none"] == pytest.approx(2 / 3)
    # BLEU: the prediction counts against an empty reference, which nothing matches
    from lmops.eval.metrics import bleu

    res = run(write_task(tmp_path, docs=docs), {"France": "Paris", "Atlantis": "a b", "Peru": "x"})
    assert res.metrics["bleu,none"] == pytest.approx(
        bleu(["Paris", "a b", "x"], [DOCS[0]["answers"], [""], DOCS[2]["answers"]])
    )
    # a first document without an answer loads too
    assert load_task_file(write_task(tmp_path, docs=docs[::-1])).name == "capitals"

    # to credit an empty answer instead, as SQuAD v2's own script does, render [""] (README)
    f = write_task(tmp_path, "\"{{answers or ['']}}\"", docs=docs)
    res = run(f, {"France": "Paris", "Atlantis": "", "Peru": "Lima"})
    assert [it["scores"]["exact_match,none"] for it in res.items] == [1.0, 1.0, 1.0]
    assert [it["scores"]["f1,none"] for it in res.items] == [1.0, 1.0, 1.0]


def test_a_few_shot_example_without_an_answer_is_named(tmp_path: Path) -> None:
    docs = [{"country": "Atlantis", "answers": []}, DOCS[0]]
    extra = "fewshot_split: test\nnum_fewshot: 1\n"
    task = load_task_file(write_task(tmp_path, docs=docs, extra=extra))
    with pytest.raises(UserError, match="a few-shot example needs an answer"):
        evaluate(answering({"France": "Paris", "Atlantis": "x"}), [task], progress=False)


def test_an_answer_that_reads_as_a_list_is_several_answers_unless_it_is_a_column(
    tmp_path: Path,
) -> None:
    """What the README says: a rendered target that reads as a Python list is split into
    its elements (lm-eval reads it so too); a column named as the target, or a list of the
    one answer, keeps it whole."""
    docs = [{"country": "Sortland", "answers": "[1, 2, 3]"}]
    outs = {"Sortland": "[1, 2, 3]"}
    metrics = "  - metric: exact_match\n"
    res = run(write_task(tmp_path, metrics=metrics, docs=docs), outs)
    assert res.items[0]["target"] == ["1", "2", "3"]
    assert res.items[0]["scores"]["exact_match,none"] == 0.0
    for target in ("answers", '"{{[answers]}}"'):
        res = run(write_task(tmp_path, target, metrics=metrics, docs=docs), outs)
        assert res.items[0]["scores"]["exact_match,none"] == 1.0, target


def test_a_metric_where_lower_is_better_keeps_the_lowest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direction is the metric registry's (eval.metrics.METRICS, what the pipelines'
    gates read too): a distance keeps its smallest value over the answers."""
    from lmops.eval import metrics

    def length_gap(pred: str, ref: str) -> float:
        return float(abs(len(pred) - len(ref)))

    monkeypatch.setitem(
        metrics.METRICS, "length_gap", metrics.Metric(length_gap, metrics.mean, False)
    )
    res = run(
        write_task(tmp_path, metrics="  - metric: length_gap\n"),
        {"France": "Pari", "Japan": "Edo", "Peru": "Li"},
    )
    assert [it["scores"]["length_gap,none"] for it in res.items] == [1.0, 0.0, 2.0]


def test_an_answer_without_a_score_is_left_out_whatever_its_place() -> None:
    """A metric that gives one answer no score (None) or NaN: the others' best is kept,
    wherever that answer stands, and the item function only ever sees one answer at a
    time; no answer scored, no score."""
    from lmops.eval.run import _best_of

    seen: list[Any] = []

    def partial(pred: str, ref: str) -> float | None:
        seen.append(ref)
        return {"none": None, "nan": math.nan}.get(ref, float(pred == ref))

    for golds in (["none", "Paris"], ["Paris", "none"], ["nan", "Paris"], ["Paris", "nan"]):
        assert _best_of("exact_match", partial, "Paris", golds, {}) == 1.0, golds
        assert _best_of("exact_match", partial, "Lyon", golds, {}) == 0.0, golds
    assert all(isinstance(r, str) for r in seen)
    assert _best_of("exact_match", partial, "Paris", ["none", "none"], {}) is None
    assert math.isnan(_best_of("exact_match", partial, "Paris", ["nan", "none"], {}))


TOOLS = """\
tools:
  - type: function
    function: {name: get_weather, parameters: {type: object}}
"""


def test_several_expected_tool_calls_any_one_matches(tmp_path: Path) -> None:
    """An answer that is not text (an expected tool call, a JSON object) is its JSON, what
    the tool-use metrics read; it was Python's repr, refused as not JSON."""
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Paris, FR"}},
    ]
    docs = [{"country": "France", "calls": calls}, {"country": "Peru", "calls": calls[:1]}]
    outs = {
        "France": json.dumps(calls[1]),  # the second expected call
        "Peru": '{"name": "get_weather", "arguments": {"city": "Lima"}}',
    }
    metrics = "  - metric: tool_name\n  - metric: tool_args_match\n"
    for target in ('"{{calls | tojson}}"', "calls"):
        res = run(write_task(tmp_path, target, metrics=metrics, extra=TOOLS, docs=docs), outs)
        assert [it["scores"]["tool_args_match,none"] for it in res.items] == [1.0, 0.0], target
        assert [it["scores"]["tool_name,none"] for it in res.items] == [1.0, 1.0], target
        assert json.loads(res.items[0]["target"][1]) == calls[1]
    # one expected call in a column (an object, not a list): its JSON too
    docs = [{"country": "France", "call": calls[0]}]
    f = write_task(tmp_path, "call", metrics=metrics, extra=TOOLS, docs=docs)
    res = run(f, {"France": json.dumps(calls[0])})
    assert res.items[0]["scores"]["tool_args_match,none"] == 1.0


def test_a_generation_task_with_choices_scores_the_indexed_choice(tmp_path: Path) -> None:
    """lm-eval's generate_until with ``doc_to_choice``: the target is an index into the
    choices, and the choice's text is the answer (not the index's digits)."""
    extra = 'doc_to_choice: ["Paris", "Tokyo", "Lima"]\n'
    docs = [{"country": "France", "i": 0}, {"country": "Peru", "i": 2}]
    res = run(write_task(tmp_path, "i", extra=extra, docs=docs), {"France": "Paris", "Peru": "2"})
    assert [it["target"] for it in res.items] == ["Paris", "Lima"]
    assert [it["scores"]["exact_match,none"] for it in res.items] == [1.0, 0.0]


def test_contamination_reads_every_answer_as_text(tmp_path: Path) -> None:
    task = load_task_file(write_task(tmp_path))
    res = evaluate(answering({"France": "x", "Japan": "x", "Peru": "x"}), [task], progress=False)
    # Japan's question and its answers, word for word, in the training data
    flag_contamination(res, [task], ["Q: capital of Japan? A: Tokyo Edo 東京"], n=5)
    assert [it["contaminated"] for it in res[0].items] == [False, True, False]


# -- the same scores as lm-evaluation-harness ----------------------------------------------------
# lm-eval's own triviaqa.yaml (0.4), its data a local file (tests/eval/test_lm_eval_keys.py
# reads it with every key as it ships)
TRIVIAQA = """\
task: triviaqa_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}?\\nAnswer:"
doc_to_target: "{{{{answer.aliases}}}}"
should_decontaminate: true
doc_to_decontamination_query: question
generation_kwargs:
  until: ["\\n", ".", ","]
  do_sample: false
  temperature: 0.0
filter_list:
  - name: remove_whitespace
    filter:
      - function: remove_whitespace
      - function: take_first
target_delimiter: " "
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
"""

TRIVIA = [
    ("Which city is the capital of France", ["Paris", "Paris, France", "City of Light"]),
    ("Who wrote Hamlet", ["William Shakespeare", "Shakespeare", "The Bard"]),
    ("What is the largest planet", ["Jupiter"]),
    ("Which element has the symbol Fe", ["Iron", "Fe", "Ferrum"]),
]
OUTPUTS = {  # what the model says to each question
    "France": " CITY OF LIGHT, surely",  # the third alias, after until and the filter
    "Hamlet": " shakespeare!",  # punctuation and case ignored
    "planet": " Saturn",  # no alias
    "Fe": "iron. It rusts",  # the first alias
}


def both(
    tmp_path: Path, task_yaml: str, rows: list[dict[str, Any]], outputs: dict[str, str]
) -> tuple[TaskResult, list[dict[str, Any]], dict[str, Any]]:
    """The task (its ``{data}`` the rows) run by lmops and by lm-eval on the same fake model:
    lmops' result, lm-eval's samples in document order and its results."""
    pytest.importorskip(
        "lm_eval", reason="lm-evaluation-harness not installed (pip install 'lmops[dev]')"
    )
    from lm_eval import simple_evaluate
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    f = tmp_path / "task.yaml"
    f.write_text(task_yaml.format(data=data), encoding="utf-8")
    model = FakeEvalModel(lambda ctx: next(a for c, a in outputs.items() if c in ctx))

    class Fake(LM):  # type: ignore[misc]
        """lm-eval's side of the same model: the output cut at the first stop string."""

        def generate_until(self, requests: list[Any]) -> list[str]:
            return model.generate([(r.args[0], r.args[1]) for r in requests])

        def loglikelihood(self, requests: list[Any]) -> list[Any]:
            raise NotImplementedError

        def loglikelihood_rolling(self, requests: list[Any]) -> list[Any]:
            raise NotImplementedError

    task = load_task_file(f)
    (ours,) = evaluate(model, [task], progress=False)
    theirs = simple_evaluate(
        model=Fake(),
        tasks=[task.name],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True,
    )
    assert theirs is not None
    samples = sorted(theirs["samples"][task.name], key=lambda s: s["doc_id"])
    return ours, samples, theirs["results"][task.name]


def test_triviaqa_scores_each_document_as_lm_eval(tmp_path: Path) -> None:
    rows = [{"question": q, "answer": {"aliases": a}} for q, a in TRIVIA]
    ours, samples, results = both(tmp_path, TRIVIAQA, rows, OUTPUTS)
    assert [s["exact_match"] for s in samples] == [1.0, 1.0, 0.0, 1.0]
    assert [it["scores"]["exact_match,remove_whitespace"] for it in ours.items] == [
        s["exact_match"] for s in samples
    ]
    assert [it["pred,remove_whitespace"] for it in ours.items] == [
        s["filtered_resps"][0] for s in samples
    ]
    assert [it["target"] for it in ours.items] == [s["target"] for s in samples]
    assert ours.metrics["exact_match,remove_whitespace"] == pytest.approx(
        results["exact_match,remove_whitespace"]
    )


# SQuAD v2's shape: an unanswerable question has no answer (answers.text: [])
SQUAD2 = """\
task: squad2_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answers.text}}}}"
generation_kwargs:
  until: ["\\n"]
metric_list:
  - metric: exact_match
"""


def test_a_document_without_an_answer_scores_as_lm_eval(tmp_path: Path) -> None:
    """lm-eval 0.4 scores a document with an empty list of answers 0 (its exact match
    over no references) and goes on; lmops the same, the empty answer included. (With
    ``ignore_case`` or ``ignore_punctuation`` lm-eval stops there with a numpy error.)"""
    rows = [
        {"question": "What is the capital of France", "answers": {"text": ["Paris", "paris"]}},
        {"question": "What is the capital of Atlantis", "answers": {"text": []}},
        {"question": "Where did Atlantis sink", "answers": {"text": []}},
    ]
    outputs = {"France": "Paris", "capital of Atlantis": "Poseidonis", "sink": ""}
    ours, samples, results = both(tmp_path, SQUAD2, rows, outputs)
    assert [s["exact_match"] for s in samples] == [1.0, 0.0, 0.0]
    assert [it["scores"]["exact_match,none"] for it in ours.items] == [1.0, 0.0, 0.0]
    assert [it["target"] for it in ours.items] == [s["target"] for s in samples]
    assert ours.metrics["exact_match,none"] == pytest.approx(results["exact_match,none"])


# no filter_list: lm-eval's default filter ("none", take_first) scores the output as it came
PLAIN = """\
task: capitals_plain
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: capital of {{{{country}}}}?\\nA:"
doc_to_target: "{{{{capital}}}}"
generation_kwargs:
  until: ["\\n"]
metric_list:
  - metric: exact_match
"""


def test_a_task_without_filters_scores_the_reply_unstripped_as_lm_eval(tmp_path: Path) -> None:
    """`" Paris"` is not an exact match of `"Paris"` in lm-eval (no filter, nothing
    stripped); lmops stripped every reply of such a task and scored it 1. Item by item the
    same predictions and scores as lm-eval on the same model, and the same means."""
    rows = [
        {"country": "France", "capital": "Paris"},
        {"country": "Japan", "capital": "Tokyo"},
        {"country": "Peru", "capital": "Lima"},
        {"country": "Chad", "capital": "N'Djamena"},
    ]
    outputs = {"France": " Paris", "Japan": "Tokyo", "Peru": "Lima ", "Chad": "\tN'Djamena"}
    ours, samples, results = both(tmp_path, PLAIN, rows, outputs)
    assert [s["exact_match"] for s in samples] == [0.0, 1.0, 0.0, 0.0]
    assert [it["pred,none"] for it in ours.items] == [s["filtered_resps"][0] for s in samples]
    assert [it["pred,none"] for it in ours.items] == [" Paris", "Tokyo", "Lima ", "\tN'Djamena"]
    assert [it["scores"]["exact_match,none"] for it in ours.items] == [0.0, 1.0, 0.0, 0.0]
    assert ours.metrics["exact_match,none"] == pytest.approx(results["exact_match,none"])

    # the same task with lm-eval's remove_whitespace filter: every reply matches, in both
    stripped = PLAIN.replace("capitals_plain", "capitals_stripped") + (
        "filter_list:\n  - name: remove_whitespace\n    filter:\n"
        "      - function: remove_whitespace\n      - function: take_first\n"
    )
    ours, samples, results = both(tmp_path, stripped, rows, outputs)
    assert [s["exact_match"] for s in samples] == [1.0, 1.0, 1.0, 1.0]
    assert [it["scores"]["exact_match,remove_whitespace"] for it in ours.items] == [1.0] * 4
    assert ours.metrics["exact_match,remove_whitespace"] == pytest.approx(
        results["exact_match,remove_whitespace"]
    )
