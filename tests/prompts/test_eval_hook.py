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
