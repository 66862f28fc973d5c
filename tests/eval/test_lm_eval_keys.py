"""lm-eval's task files load as written: the keys of lm-eval's ``TaskConfig`` that change no
score (TriviaQA's ``should_decontaminate`` and ``doc_to_decontamination_query``, a
``task_alias``, ``metadata``) are accepted, and those that would make lmops score the task
differently from lm-eval (Python hooks, other inputs, repeated sampling) are refused with the
file's line and what to write instead."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from lmops.core.errors import UserError
from lmops.eval.lm import FakeEvalModel
from lmops.eval.run import evaluate
from lmops.eval.tasks import _FEWSHOT_REFUSED, _LM_EVAL_REFUSED, TaskConfig, load_task_file

# lm-eval 0.4.13's tasks/triviaqa/default.yaml, every key as it ships; only where the data
# lives differs (a local file instead of the Hub's mandarjoshi/trivia_qa)
TRIVIAQA = """\
task: triviaqa
dataset_path: json
dataset_kwargs:
  data_files:
    train: {data}
    validation: {data}
dataset_name: rc.nocontext
output_type: generate_until
training_split: train
validation_split: validation
doc_to_text: "Question: {{{{question}}}}?\\nAnswer:"
doc_to_target: "{{{{answer.aliases}}}}"
should_decontaminate: true
doc_to_decontamination_query: question
generation_kwargs:
  until:
    - "\\n"
    - "."
    - ","
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
metadata:
  version: 3.0
"""

ROWS = [
    {"question": "Which city is the capital of France", "answer": {"aliases": ["Paris"]}},
    {"question": "Who wrote Hamlet", "answer": {"aliases": ["Shakespeare", "The Bard"]}},
]


def write(tmp_path: Path, text: str = TRIVIAQA) -> Path:
    data = tmp_path / "trivia.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), "utf-8")
    f = tmp_path / "triviaqa.yaml"
    f.write_text(text.format(data=data), "utf-8")
    return f


def test_lm_eval_triviaqa_yaml_loads_as_written_and_scores(tmp_path: Path) -> None:
    task = load_task_file(write(tmp_path))
    assert task.config.should_decontaminate is True
    assert task.config.doc_to_decontamination_query == "question"
    replies = {"France": " Paris, of course", "Hamlet": " Marlowe"}
    model = FakeEvalModel(lambda ctx: next(r for k, r in replies.items() if k in ctx))
    (res,) = evaluate(model, [task], progress=False)
    assert [i["pred,remove_whitespace"] for i in res.items] == ["Paris", "Marlowe"]
    assert res.metrics["exact_match,remove_whitespace"] == 0.5


def test_every_key_of_lm_evals_task_config_is_read_or_refused_by_name() -> None:
    """No key of lm-eval's TaskConfig falls through to "unknown field (check the
    spelling)": lmops reads it, or refuses it saying why."""
    config = pytest.importorskip(
        "lm_eval.config.task",
        reason="lm-evaluation-harness not installed (pip install 'lmops[dev]')",
    )
    theirs = {f.name for f in dataclasses.fields(config.TaskConfig)}
    assert theirs
    missing = theirs - set(TaskConfig.model_fields) - set(_LM_EVAL_REFUSED)
    assert not missing


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("process_docs: utils.process_docs", "process_docs: lm-eval's Python hook"),
        ("process_results: utils.process_results", "process_results: lm-eval's Python scoring"),
        ("doc_to_image: image", "doc_to_image: an image input; lmops evaluates text only"),
        ("use_prompt: promptsource:GPT-3 Style", "use_prompt: a promptsource template"),
        ("class: mytask.MyTask", "class: a Python task class"),
        ("repeats: 5", "repeats: lmops generates once per document; lm-eval's 5 repeats"),
        (
            "process_docs: !function utils.process_docs",
            "process_docs: !function utils.process_docs is Python that lm-eval runs",
        ),
        (
            "doc_to_text: !function utils.doc_to_text",
            "doc_to_text: !function utils.doc_to_text is Python .* Jinja template",
        ),
    ],
)
def test_a_key_that_would_change_the_numbers_is_refused_with_its_line(
    tmp_path: Path, line: str, expected: str
) -> None:
    if line.startswith("doc_to_text"):  # in place of the template
        text = "\n".join(line if s.startswith("doc_to_text") else s for s in TRIVIAQA.splitlines())
    else:
        text = TRIVIAQA + line + "\n"
    f = write(tmp_path, text)
    n = next(i for i, s in enumerate(f.read_text("utf-8").splitlines(), 1) if s == line)
    with pytest.raises(UserError, match=f"^{re.escape(str(f))}:{n}: {expected}"):
        load_task_file(f)


def test_an_accepted_key_changes_no_score(tmp_path: Path) -> None:
    """task_alias, unsafe_code and repeats: 1 are read and the scores stay as without them."""
    extra = "task_alias: TriviaQA (local)\nunsafe_code: false\nrepeats: 1\n"
    replies = {"France": " Paris", "Hamlet": " The Bard."}
    model = FakeEvalModel(lambda ctx: next(r for k, r in replies.items() if k in ctx))
    scores = []
    for i, text in enumerate((TRIVIAQA, TRIVIAQA + extra)):
        (tmp_path / str(i)).mkdir()
        (res,) = evaluate(model, [load_task_file(write(tmp_path / str(i), text))], progress=False)
        scores.append([it["scores"] for it in res.items])
    assert scores[0] == scores[1] == [{"exact_match,remove_whitespace": 1.0}] * 2


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (  # a flow mapping, as a one-line filter_list writes it
            "filter_list:\n  - name: remove_whitespace\n    filter:\n"
            "      - function: remove_whitespace\n      - function: take_first\n",
            "filter_list: [{{name: custom, filter: [{{function: !function utils.my_filter}}]}}]\n",
            "function: !function utils.my_filter is Python .* name one of lmops' filters "
            r"\(regex, take_first",
        ),
        (  # a quoted key
            'doc_to_text: "Question: {{{{question}}}}?\\nAnswer:"\n',
            '"doc_to_text": !function utils.doc_to_text\n',
            "doc_to_text: !function utils.doc_to_text is Python .* Jinja template",
        ),
    ],
)
def test_a_function_tag_is_found_where_yaml_puts_it(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in TRIVIAQA
    f = write(tmp_path, TRIVIAQA.replace(old, new))
    n = next(i for i, s in enumerate(f.read_text("utf-8").splitlines(), 1) if "!function" in s)
    with pytest.raises(UserError, match=f"^{re.escape(str(f))}:{n}: {expected}"):
        load_task_file(f)


def test_words_that_read_like_a_function_tag_inside_a_text_are_text(tmp_path: Path) -> None:
    """A block scalar (or a quoted string) whose text reads ``key: !function ...`` is a
    prompt, not a tag: the file loads, as it does in lm-eval."""
    prompt = (
        "doc_to_text: |\n"
        "  Note: !function calls are not allowed.\n"
        "  Question: {{{{question}}}}?\n"
        "description: 'Rule: !function x is only words'\n"
    )
    old = 'doc_to_text: "Question: {{{{question}}}}?\\nAnswer:"\n'
    task = load_task_file(write(tmp_path, TRIVIAQA.replace(old, prompt)))
    assert task.text(ROWS[0]) == (
        "Note: !function calls are not allowed.\nQuestion: Which city is the capital of France?\n"
    )
    assert task.config.description == "Rule: !function x is only words"


def test_every_key_of_lm_evals_fewshot_config_is_read_or_refused_by_name() -> None:
    config = pytest.importorskip(
        "lm_eval.config.task",
        reason="lm-evaluation-harness not installed (pip install 'lmops[dev]')",
    )
    theirs = {f.name for f in dataclasses.fields(config.FewshotConfig)}
    assert "sampler" in theirs and "samples" in theirs
    assert not theirs - {"sampler"} - set(_FEWSHOT_REFUSED)


@pytest.mark.parametrize(
    ("sub", "expected"),
    [
        ("samples: [{{question: Q, answer: A}}]", "samples: examples written in the task file"),
        ("split: train", "split: the split the examples come from: write it as the task's"),
        ("fewshot_indices: [0, 3]", "fewshot_indices: the rows of the few-shot split"),
        ("doc_to_text: 'Q: {{{{question}}}}'", "doc_to_text: the few-shot examples' own"),
        ("fewshot_delimiter: '###'", "fewshot_delimiter: the few-shot examples' own"),
        ("sampler_kind: first_n", r"sampler_kind: unknown field \(fewshot_config takes sampler"),
    ],
)
def test_a_fewshot_config_key_that_would_change_the_numbers_is_refused_with_its_line(
    tmp_path: Path, sub: str, expected: str
) -> None:
    f = write(tmp_path, TRIVIAQA + "fewshot_config:\n  sampler: first_n\n  " + sub + "\n")
    n = len(TRIVIAQA.splitlines()) + 3
    with pytest.raises(UserError, match=f"^{re.escape(str(f))}:{n}: fewshot_config.{expected}"):
        load_task_file(f)


def test_sampler_alone_is_read(tmp_path: Path) -> None:
    f = write(tmp_path, TRIVIAQA + "fewshot_config:\n  sampler: first_n\n")
    assert load_task_file(f).config.fewshot_config == {"sampler": "first_n"}


@pytest.mark.parametrize(
    "kwargs", ["", "generation_kwargs:\n  max_gen_toks: 8\n  do_sample: false\n"]
)
def test_a_generation_stops_at_the_fewshot_delimiter_unless_until_says(
    tmp_path: Path, kwargs: str
) -> None:
    """Without generation_kwargs, or with them but no ``until``, a generation stops at the
    task's fewshot_delimiter (here a line break), as lm-eval's TaskConfig sets it."""
    text = re.sub(r"generation_kwargs:\n(  .*\n)+", kwargs, TRIVIAQA)
    text = text.replace("filter_list:", 'fewshot_delimiter: "\\n"\nfilter_list:')
    task = load_task_file(write(tmp_path, text))
    assert task.config.generation_kwargs.until == ["\n"]
    model = FakeEvalModel(lambda ctx: " Paris\n\nQuestion: more" if "France" in ctx else " Bard")
    (res,) = evaluate(model, [task], progress=False)
    assert [i["output"] for i in res.items] == [" Paris", " Bard"]
    config = pytest.importorskip("lm_eval.config.task", reason="lm-evaluation-harness")
    theirs = config.TaskConfig(
        task="t",
        output_type="generate_until",
        fewshot_delimiter="\n",
        generation_kwargs={"max_gen_toks": 8} if kwargs else None,
    )
    assert theirs.generation_kwargs["until"] == task.config.generation_kwargs.until
