"""``prompts optimize`` against a local model with no server: a tiny 2-layer Llama served
in-process by the gateway's own engine answers every call the optimiser makes."""

from __future__ import annotations

import json
from pathlib import Path

from lmops.prompts import create, load
from lmops.prompts.local import LocalChat
from lmops.prompts.optimize import OptimizeSettings, OptimizeTask, optimize
from lmops.store import Store
from tests.prompts.test_optimize import rows
from tests.train.tiny import make_model, make_tokenizer


def test_optimize_runs_on_an_in_process_model(store: Store, tmp_path: Path) -> None:
    folder = make_model(tmp_path / "tiny", make_tokenizer(tmp_path / "tok"), seed=1)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(40)))
    create(store, "senti", "Text: {{input}}\nSentiment:")
    task = OptimizeTask(
        dataset=str(data), input_field="text", target_field="label",
        labels=["positive", "negative"], train=10, dev=10, test=20, max_tokens=3,
    )  # fmt: skip
    # no proposals: the proposer's prompt is longer than the tiny model's 256-token context
    settings = OptimizeSettings(budget=30, instructions=0, demo_sets=1, k=2, min_rows=5)
    with LocalChat(store, str(folder)) as model:
        assert model.complete([{"role": "user", "content": "hello"}], max_tokens=3)
        r = optimize(store, load(store, "senti:1"), task, model, settings)
    # every answer came from the engine: the search and both test passes
    assert model.calls == 1 + r.calls_total and r.calls_search <= settings.budget
    assert r.test_items == 20 and 0.0 <= r.test_baseline <= 1.0
    # a text prompt, given to the engine as plain text (as lmops serve's /v1/completions
    # and an eval's doc_to_text), stopped at the blank line before a next demo
    assert r.scored_via == "completions"


def test_a_local_model_continues_plain_text_until_the_stop(store: Store, tmp_path: Path) -> None:
    folder = make_model(tmp_path / "tiny", make_tokenizer(tmp_path / "tok"), seed=1)
    asked = "Text: hello\nSentiment:"
    with LocalChat(store, str(folder)) as model:
        free = model.complete_text(asked, max_tokens=24)
        assert len(free) >= 6, free
        stop = free[3:6]  # a string the greedy reply holds
        cut = model.complete_text(asked, max_tokens=24, stop=[stop])
        chat = model.complete([{"role": "user", "content": asked}], max_tokens=24)
    assert model.calls == 3 and model.takes_text()[0]
    assert cut == free[: free.index(stop)]  # the same greedy text, ended before the stop
    assert chat != free  # the chat template around it: another prompt


def test_cli_optimize_local_needs_no_server(cli, store: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = make_model(tmp_path / "tiny", make_tokenizer(tmp_path / "tok"), seed=1)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(30)))
    (tmp_path / "task.yaml").write_text(
        f"dataset: {data}\ninput_field: text\ntarget_field: label\n"
        "labels: [positive, negative]\ntrain: 10\ndev: 10\ntest: 10\nmax_tokens: 3\n"
    )
    create(store, "senti", "Text: {{input}}\nSentiment:")
    r = cli(
        "prompts", "optimize", "senti", "--task", str(tmp_path / "task.yaml"),
        "--model", str(folder), "--local", "--endpoint", "http://127.0.0.1:9/v1",
        "--budget", "20", "--instructions", "0", "--demo-sets", "1", "-k", "2", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err  # the unreachable --endpoint is never called
    out = json.loads(r.out)
    assert out["test_items"] == 10 and out["calls_search"] <= 20
