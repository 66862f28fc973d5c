"""Text with template syntax in it (a demo row of code, of Jinja, of the template's own
``{{input}}``) written into a prompt stays that text: when lmops renders the prompt, and
when an eval task renders it as its ``doc_to_text``, which is Jinja (``{%`` and ``{#`` open
tags there). ``literal`` writes it with Jinja's own escape, ``{{ '{' }}``, which lmops'
templates read too; the optimiser writes its demos and instructions with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.eval.tasks import load_task_file, render_text
from lmops.prompts import create, load
from lmops.prompts._candidates import Builder, Candidate
from lmops.prompts.lm import ScriptedChat
from lmops.prompts.optimize import OptimizeSettings, OptimizeTask, optimize
from lmops.prompts.template import Template, literal
from lmops.store import Store
from tests.prompts.test_optimize import rows, scripted

ADVERSARIAL = [
    "{\r",
    "int f() {\r\n  return 1;\r\n}",
    "{% raw %}x{% endraw %}",  # a Jinja block
    "{% if a %}yes{% endif %}",
    "{# not a comment #} after",  # a Jinja comment would swallow text
    'printf("{%d}\\n", n); {%s}',  # C formats
    "{{ }} and {{input}} and {{ input }}",  # the template's own variable, as text
    "{{ '{{' }}",  # the escape itself, as text
    "C:\\path\\{{x}}\\ and \\\\{% a %}",  # backslashes before tags
    "{",
    "{{",
    "{{{",
    "}}",
    "%}",
    "#}",
    "{-",
    "{%-",
    "{#-",
    'json {"a": {"b": {}}} ends with {',
    "a line\r\nwindows line\rold mac line",  # Jinja reads a bare \r as \n
    "",
]


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_literal_text_renders_as_itself_in_lmops_and_in_eval_jinja(text: str) -> None:
    source = f"{literal(text)}Q: {{{{input}}}}{literal(text)}"
    want = f"{text}Q: it's {{% x %}}{text}"
    assert Template(source).variables == ("input",)
    assert Template(source).render({"input": "it's {% x %}"}) == want
    assert render_text(source, {"input": "it's {% x %}"}) == want


def test_a_quoted_string_in_braces_is_text() -> None:
    t = Template("{{ '{{' }}x}} {{\"{%\"}} {{ 'a\\tb\\\\' }}{{v}}")
    assert t.variables == ("v",) and t.render({"v": 1}) == "{{x}} {% a\tb\\1"
    assert Template("{{ '}}' }}").render({}) == "}}"  # quotes are read as Jinja reads them
    with pytest.raises(UserError, match=r"^t:2:3: unknown escape '\\q' in a quoted string"):
        Template("ok\n  {{ 'a\\q' }}", where="t")
    with pytest.raises(UserError, match=r"^t:1:1: \{\{ 'open \}\} is not a variable"):
        Template("{{ 'open }}", where="t")


def _task_yaml(tmp_path: Path, data: Path, ref: str) -> Path:
    path = tmp_path / "task.yaml"
    path.write_text(
        "task: t\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {data}}}}}\ntest_split: test\n"
        f"doc_to_text: 'prompt:{ref}'\ndoc_to_target: '-'\noutput_type: generate_until\n"
    )
    return path


def test_a_candidate_registered_renders_what_was_scored(store: Store, tmp_path: Path) -> None:
    """Demo rows, the instruction and the fixed variables full of template syntax: the
    registered version renders, for any input, exactly the text the candidate was scored
    with, by lmops and as an eval task's doc_to_text."""
    train = [{"text": t, "label": f"L{i}\\{{{{x}}}}"} for i, t in enumerate(ADVERSARIAL)]
    create(store, "p", "{{topic}} {% not jinja here %}: {{input}} =>")
    task = OptimizeTask(
        dataset="-", input_field="text", target_field="label", variables={"topic": "{#t#}"}
    )
    builder = Builder(load(store, "p:1"), task, train, route="completions")
    c = Candidate(
        key="c", instruction="Say {% raw %}{{x}}{% endraw %} {#", demos=list(range(len(train)))
    )
    create(store, "p", builder.template(c))
    version = load(store, "p:2")
    assert version.variables == ("input",)
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"input": t + " {{input}}"}) + "\n" for t in ADVERSARIAL))
    evaluated = load_task_file(_task_yaml(tmp_path, data, "p:2"), store)
    assert len(evaluated.eval_docs) == len(ADVERSARIAL)
    for doc in evaluated.eval_docs:
        scored = builder.request(c, doc["input"])
        assert isinstance(scored, str) and "Say {% raw %}{{x}}{% endraw %} {#" in scored
        assert version.render(input=doc["input"]) == scored
        assert evaluated.text(doc) == scored


def test_optimised_demos_full_of_template_syntax_come_out_as_they_were(
    store: Store, tmp_path: Path
) -> None:
    """End to end: a data set whose rows carry template syntax; the winner's demos are in
    the registered prompt as their text, and an eval of it sends what the optimiser did."""
    data = tmp_path / "senti.jsonl"
    base = rows(160)
    for i, r in enumerate(base):
        r["text"] = f"{ADVERSARIAL[i % len(ADVERSARIAL)]} | {r['text']}"
    data.write_text(
        "".join(json.dumps({"input": r["text"], "label": r["label"]}) + "\n" for r in base)
    )
    create(store, "senti", "Text: {{input}}\nSentiment:")
    task = OptimizeTask(
        dataset=str(data), input_field="input", target_field="label",
        labels=["positive", "negative"], train=40, dev=40, test=80, max_tokens=4,
    )  # fmt: skip
    sent: dict[str, str] = {}  # the text sent -> the input it was for

    def text(prompt: str) -> str:
        sent[prompt] = prompt.rsplit("Text: ", 1)[-1].removesuffix("\nSentiment:")
        return scripted([{"role": "user", "content": prompt}])

    def proposer(messages: list[dict[str, Any]]) -> str:
        return "Think {% step %} by {# step #}."

    settings = OptimizeSettings(budget=400, instructions=1, demo_sets=2, k=2, concurrency=1)
    r = optimize(store, load(store, "senti:1"), task, ScriptedChat(proposer, text), settings)
    assert r.registered == "senti:2" and r.best.demos and r.scored_via == "completions"
    new = load(store, "senti:2")
    shots = [base_row for base_row in base if base_row["text"] in new.render(input="x")]
    assert len(shots) == len(r.best.demos)  # each demo row's text, as it was
    evaluated = load_task_file(_task_yaml(tmp_path, data, "senti:2"), store)
    winner = list(sent)[-task.test :]  # the final pass: the winner's texts
    for prompt in winner:
        doc = {"input": sent[prompt]}
        assert new.render(input=sent[prompt]) == prompt
        assert evaluated.text(doc) == prompt
