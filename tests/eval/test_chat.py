"""--apply-chat-template, --system-instruction and --fewshot-as-multiturn in the CLI and
the pipeline's eval step (parity with lm-eval is in test_parity.py), and their errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.eval.test_resume import write_task
from tests.train.tiny import SENTENCES, make_model, make_tokenizer


def test_cli_flags_render_chat_prompts(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = make_model(tmp_path / "model", make_tokenizer(tmp_path / "tok"), seed=1)
    task = write_task(tmp_path, "caps", 3, "fewshot_split: test\n")  # less the question itself
    args = ["eval", "run", "--model", str(model), "--task-file", str(task), "--json"]
    r = cli(
        *args, "--apply-chat-template", "--system-instruction", "Be brief.", "--num-fewshot", "1"
    )
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["config"]["apply_chat_template"] is True
    assert report["config"]["fewshot_as_multiturn"] is True  # lm-eval's default with a template
    items = Path(cli("assets", "path", report["report"]).out.strip()) / "items.jsonl"
    first = json.loads(items.read_text(encoding="utf-8").splitlines()[1])
    assert first["context"] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nQ: capital of France?\nA:<|im_end|>\n"  # the one example, as a turn
        "<|im_start|>assistant\nParis<|im_end|>\n"
        "<|im_start|>user\nQ: capital of Japan?\nA:<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    one = cli(*args, "--apply-chat-template", "--no-fewshot-as-multiturn", "--num-fewshot", "1")
    assert one.code == 0, one.err
    assert json.loads(one.out)["config"]["fewshot_as_multiturn"] is False

    bad = cli(*args, "--fewshot-as-multiturn")
    assert bad.code == 2 and "needs --apply-chat-template" in bad.err
    assert len(bad.err.strip().splitlines()) == 1
    plain = write_task(tmp_path, "plain", 3)  # no few-shot split: 1-shot cannot be built
    r = cli("eval", "run", "--model", str(model), "--task-file", str(plain), "--num-fewshot", "1")
    assert r.code == 2 and "1-shot needs 1 few-shot examples" in r.err


def test_a_model_without_a_chat_template_is_a_user_error(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from lmops.data.tokenizer import train_tokenizer

    tok = tmp_path / "tok"
    train_tokenizer(SENTENCES, tok, vocab_size=320, min_frequency=1, chat_template=None)
    model = make_model(tmp_path / "model", tok)
    task = write_task(tmp_path, "caps", 2)
    r = cli("eval", "run", "--model", str(model), "--task-file", str(task), "--apply-chat-template")
    assert r.code == 2 and "the tokenizer has no chat template" in r.err
    assert r.err.strip().splitlines()[-1].startswith("error:")


def test_pipeline_eval_step_takes_the_same_options(tmp_path: Path, store: Any) -> None:
    from lmops.pipelines import load_pipeline, run_pipeline

    make_model(tmp_path / "model", make_tokenizer(tmp_path / "tok"), seed=1)
    write_task(tmp_path, "caps", 2)
    steps = {
        "model": {"type": "register", "path": "model", "name": "chat-m", "kind": "model"},
        "eval": {
            "type": "eval",
            "model": "${steps.model.output}",
            "task_files": ["caps.yaml"],
            "apply_chat_template": True,
            "system_instruction": "Be brief.",
            "fewshot_as_multiturn": False,
            "output": "chat-eval",
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "chat", "steps": steps}, sort_keys=False))
    run = run_pipeline(load_pipeline(path), store, progress=False)
    assert run.ok, run.failed
    folder = store.assets.path("chat-eval")  # type: ignore[attr-defined]
    report = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    assert report["config"]["apply_chat_template"] is True
    assert report["config"]["system_instruction"] == "Be brief."
    assert report["config"]["fewshot_as_multiturn"] is False
    item = json.loads((folder / "items.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert item["context"].startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
