"""Task-specific scoring lives in task configuration: lm-eval's own GSM8K task file (its
regex filters and exact_match options) scores as lm-eval scores it, and the built-in GSM8K
reads numbers through filters declared in its config, not through a branch on its name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmops.core.errors import UserError
from lmops.eval.lm import FakeEvalModel
from lmops.eval.run import evaluate
from lmops.eval.tasks import load_task_file

# lm-evaluation-harness 0.4's tasks/gsm8k/gsm8k.yaml, with local data
LM_EVAL_GSM8K = """\
task: gsm8k
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore:
      - ","
      - "\\\\$"
      - "(?s).*#### "
      - "\\\\.$"
generation_kwargs:
  until: ["Question:", "</s>", "<|im_end|>"]
  do_sample: false
  temperature: 0.0
filter_list:
  - name: "strict-match"
    filter:
      - function: "regex"
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: "take_first"
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: "take_first"
"""

DOCS = [
    {"question": "2 + 3?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
    {"question": "How much is 1000 + 234?", "answer": "#### 1,234"},
    {"question": "10 - 4?", "answer": "#### 6"},
    {"question": "7 * 3?", "answer": "#### 21"},
]
REPLIES = {
    "2 + 3?": " 2 + 3 = 5\n#### 5",  # strict and flexible
    "How much is 1000 + 234?": " It is $1,234.",  # flexible only (lm-eval: last number)
    "10 - 4?": " The answer is 6, not 60",  # lm-eval's flexible takes 60; ours 6
    "7 * 3?": " I do not know",  # neither
}


def _task(tmp_path: Path) -> Path:
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), "utf-8")
    f = tmp_path / "gsm8k.yaml"
    f.write_text(LM_EVAL_GSM8K.format(data=data), "utf-8")
    return f


def _model() -> FakeEvalModel:
    return FakeEvalModel(respond=lambda ctx: REPLIES[ctx.split("Question: ")[-1].split("\n")[0]])


def test_lm_eval_gsm8k_task_file_scores_as_lm_eval(tmp_path: Path) -> None:
    res = evaluate(_model(), [load_task_file(_task(tmp_path))], progress=False)[0]
    preds = [(i["pred,strict-match"], i["pred,flexible-extract"]) for i in res.items]
    # lm-eval's regex filter: the first group that matched, stripped; None where it found
    # nothing (lm-eval's "[invalid]", which matches no target either)
    assert preds == [("5", "5"), (None, "$1,234."), (None, "60"), (None, None)]
    # exact_match's options from the task file: "$", "," and the final "." ignored; the
    # target is cut to the number after "#### "
    assert res.metrics["exact_match,strict-match"] == 0.25
    assert res.metrics["exact_match,flexible-extract"] == 0.5


def test_builtin_gsm8k_reads_numbers_through_its_filters(shared_datasets: Path) -> None:
    from lmops.eval.builtin import load_builtin

    (gsm,) = load_builtin("gsm8k", root=shared_datasets)
    assert [f.name for f in gsm.config.filter_list] == ["strict-match", "flexible-extract"]
    docs = gsm.eval_docs[:3]
    golds = [d["answer"].split("####")[-1].strip() for d in docs]
    replies = {
        d["question"]: r
        for d, r in zip(
            docs,
            [
                f" so ${golds[0]}.00 in all.\n#### {golds[0]}",  # both filters
                f" The answer is {golds[1]}. Check: {golds[1]} x 2 = 0",  # flexible only
                " #### 123456789",  # wrong
            ],
            strict=True,
        )
    }
    model = FakeEvalModel(
        respond=lambda ctx: replies[ctx.rsplit("Question: ", 1)[1].rsplit("\nAnswer:", 1)[0]]
    )
    res = evaluate(model, [gsm], limit=3, num_fewshot=1, progress=False)[0]
    assert [i["scores"] for i in res.items] == [
        {"exact_match,strict-match": 1.0, "exact_match,flexible-extract": 1.0},
        {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 1.0},
        {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 0.0},
    ]


def test_a_metric_or_option_it_does_not_know_is_named_with_its_file_and_line(
    tmp_path: Path,
) -> None:
    """Refused when the task file is read (before any model loads), naming the line."""
    f = _task(tmp_path)
    text = f.read_text("utf-8")
    line = next(i for i, s in enumerate(text.splitlines(), 1) if s.startswith("metric_list"))
    f.write_text(text.replace("ignore_case: true", "ignore_cases: true"), "utf-8")
    with pytest.raises(UserError, match="exact_match has no option 'ignore_cases'") as e:
        load_task_file(f)
    assert str(e.value).startswith(f"{f}:{line + 1}: metric_list: [0]: ")  # the list's line
    f.write_text(text.replace("metric: exact_match", "metric: exact_mach"), "utf-8")
    with pytest.raises(UserError, match="unknown metric 'exact_mach'; did you mean 'exact_match'"):
        load_task_file(f)


def test_lmops_own_generation_tasks_strip_through_their_filters(tmp_path: Path) -> None:
    """A task without filters now scores its replies unstripped, as lm-eval does; lmops' own
    generation tasks never leaned on that: the built-in GSM8K reads numbers through its two
    filters (above, replies with a space before them) and the quickstart's addition task
    through its regex, so a reply with spaces around the answer scores as before."""
    from importlib import resources

    yaml_text = (resources.files("lmops.pipelines") / "resources" / "addition_task.yaml").read_text(
        "utf-8"
    )
    rows = [
        {"question": "2 + 3 =", "answer": "5"},
        {"question": "40 + 7 =", "answer": "4 7"},
        {"question": "9 + 9 =", "answer": "1 8"},
    ]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    f = tmp_path / "addition_task.yaml"
    f.write_text(yaml_text, "utf-8")
    task = load_task_file(f)
    assert task.config.filter_list  # declared, not the default
    replies = {"2 + 3 =": " 5", "40 + 7 =": "\t4 7 ", "9 + 9 =": " 1 9"}
    model = FakeEvalModel(respond=lambda ctx: next(r for q, r in replies.items() if q in ctx))
    res = evaluate(model, [task], progress=False)[0]
    assert [i["pred,answer"] for i in res.items] == ["5", "4 7", "1 9"]
    assert [i["scores"]["exact_match,answer"] for i in res.items] == [1.0, 1.0, 0.0]
