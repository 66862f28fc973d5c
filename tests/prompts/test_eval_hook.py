"""An eval task takes a registered prompt as its ``doc_to_text``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmops.core.errors import UserError
from lmops.eval.tasks import load_task_file
from lmops.prompts import create, label
from lmops.store import Store


def task_file(tmp_path: Path, doc_to_text: str) -> Path:
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    path = tmp_path / "task.yaml"
    path.write_text(
        "task: qa\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {data}}}}}\ntest_split: test\n"
        f"doc_to_text: '{doc_to_text}'\ndoc_to_target: answer\noutput_type: generate_until\n"
    )
    return path


def test_a_registered_prompt_is_the_tasks_doc_to_text(store: Store, tmp_path: Path) -> None:
    create(store, "qa", "Q: {{question}}\nA:")
    create(store, "qa", "Question: {{ question }}\nAnswer:")
    label(store, "qa:2", "production")
    task = load_task_file(task_file(tmp_path, "prompt:qa@production"), store)
    assert task.text(task.eval_docs[0]) == "Question: 2+2?\nAnswer:"
    assert task.prompt_refs == ["qa:2"] and task.config.metadata["prompt"] == "qa:2"
    pinned = load_task_file(task_file(tmp_path, "prompt:qa:1"), store)
    assert pinned.text(pinned.eval_docs[0]) == "Q: 2+2?\nA:"
    assert pinned.config.template_hash() != task.config.template_hash()


def test_a_chat_prompt_is_refused_with_a_reason(store: Store, tmp_path: Path) -> None:
    create(store, "chatty", [{"role": "user", "content": "{{question}}"}])
    with pytest.raises(UserError, match="chatty:1 is a chat prompt; a task's doc_to_text takes"):
        load_task_file(task_file(tmp_path, "prompt:chatty"), store)


def test_the_eval_report_links_the_prompt_version(cli, store: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.train.tiny import make_model, make_tokenizer

    model = make_model(tmp_path / "m", make_tokenizer(tmp_path / "tok"), seed=0)
    create(store, "qa", "Q: {{question}}\nA:")
    label(store, "qa:1", "production")
    path = task_file(tmp_path, "prompt:qa@production")
    path.write_text(path.read_text() + "generation_kwargs: {max_gen_toks: 3, until: ['\\n']}\n")
    r = cli("eval", "run", "--model", str(model), "--task-file", str(path), "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)["report"]
    edges = {(e.parent, e.role) for e in store.assets.lineage(report).upstream}
    assert ("qa:1", "prompt") in edges


def test_an_optimised_text_prompt_is_still_a_tasks_doc_to_text(
    store: Store, tmp_path: Path
) -> None:
    """The optimiser keeps a text prompt text, so a task that names it by label still
    loads after ``--promote`` moved the label, and renders what the optimiser scored."""
    from lmops.prompts import load
    from lmops.prompts.lm import ScriptedChat
    from lmops.prompts.optimize import OptimizeSettings, OptimizeTask, optimize
    from tests.prompts.test_optimize import rows, scripted

    data = tmp_path / "senti.jsonl"
    data.write_text(
        "".join(json.dumps({"input": r["text"], "label": r["label"]}) + "\n" for r in rows(120))
    )
    create(store, "senti", "Text: {{input}}\nSentiment:")
    label(store, "senti:1", "production")
    task = OptimizeTask(
        dataset=str(data), input_field="input", target_field="label",
        labels=["positive", "negative"], train=30, dev=30, test=60, max_tokens=4,
    )  # fmt: skip
    settings = OptimizeSettings(budget=300, instructions=1, demo_sets=1, k=2)
    r = optimize(
        store, load(store, "senti:1"), task, ScriptedChat(scripted), settings, promote="production"
    )
    assert r.registered == "senti:2" and r.promoted == "production"
    path = tmp_path / "task.yaml"
    path.write_text(
        "task: senti\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {data}}}}}\ntest_split: test\n"
        "doc_to_text: 'prompt:senti@production'\ndoc_to_target: label\n"
        "output_type: generate_until\n"
    )
    evaluated = load_task_file(path, store)
    assert evaluated.prompt_refs == ["senti:2"]
    doc = evaluated.eval_docs[0]
    assert evaluated.text(doc) == load(store, "senti:2").render(input=doc["input"])
    assert evaluated.text(doc).endswith(f"\n\nText: {doc['input']}\nSentiment:")
