"""A task's prompt text is what its ``doc_to_text`` renders, character for character: a
question that happens to read as a Python literal (a list, a number) is not parsed and
printed back. Only ``doc_to_choice`` and ``doc_to_target`` are parsed, as
lm-evaluation-harness parses them (choice lists, several targets, an answer's index)."""

from __future__ import annotations

import json
from pathlib import Path

from lmops.eval.tasks import load_task_file

TASK = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_text: "{text}"
doc_to_target: "{{{{answer}}}}"
{extra}
"""


def _task(tmp_path: Path, rows: list[dict[str, object]], *, text: str, **kw: str):  # type: ignore[no-untyped-def]
    data = tmp_path / f"{kw.get('name', 't')}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    f = tmp_path / f"{kw.get('name', 't')}.yaml"
    f.write_text(
        TASK.format(
            name=kw.get("name", "t"),
            data=data,
            output_type=kw.get("output_type", "generate_until"),
            text=text,
            extra=kw.get("extra", ""),
        ),
        encoding="utf-8",
    )
    return load_task_file(f, None)


def test_a_question_that_reads_as_a_literal_is_sent_as_written(tmp_path: Path) -> None:
    questions = ["[3,1,2]", "['x','y']", "[0x10, 1_000]", "12", "-0", " 7 "]
    task = _task(
        tmp_path,
        [{"q": q, "answer": "a"} for q in questions],
        text="{{q}}\\n",
    )
    docs = task.eval_docs
    assert [task.text(d) for d in docs] == [q + "\n" for q in questions]
    # and so is the whole prompt, few-shot examples included
    for doc, q in zip(docs, questions, strict=True):
        assert task.context(doc, 0) == q + "\n"
    shots = _task(
        tmp_path,
        [{"q": q, "answer": "a"} for q in questions],
        text="{{q}}",
        name="shots",
        extra="fewshot_split: test\nnum_fewshot: 1",
    )
    assert shots.context(shots.eval_docs[1], 1).startswith("[3,1,2] a\n\n")


def test_choices_targets_and_indices_are_still_parsed(tmp_path: Path) -> None:
    rows = [
        {"question": "2+2", "options": ["3", "4"], "answer": 1},
        {"question": "1+1", "options": ["two", "five"], "answer": "two"},
    ]
    task = _task(
        tmp_path,
        rows,
        text="{{question}} =",
        output_type="multiple_choice",
        extra='doc_to_choice: "{{options}}"',
    )
    docs = task.eval_docs
    assert [task.choices(d) for d in docs] == [["3", "4"], ["two", "five"]]
    # a rendered number is the answer's index (lm-eval), even where the choices are
    # numbers; a text is the choice it names
    assert [task.target(d) for d in docs] == [1, 0]
    # several targets of a generation task: the first is the few-shot answer
    gen = _task(
        tmp_path,
        [{"q": "name a colour", "answer": ["red", "blue"]}],
        text="{{q}}",
        name="gen",
    )
    assert gen.answer_text(gen.eval_docs[0]) == "red"
