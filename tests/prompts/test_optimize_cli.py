"""``lmops prompts optimize`` through the CLI against a scripted OpenAI-compatible server
(real uvicorn on 127.0.0.1, called with the official openai client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from lmops.serve.fake import serve_app
from tests.prompts.test_optimize import rows, scripted


@pytest.fixture
def endpoint() -> Iterator[str]:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> dict[str, Any]:
        text = scripted(body["messages"])
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    with serve_app(app) as url:
        yield f"{url}/v1"


def test_optimize_command_registers_and_promotes(cli: Any, tmp_path: Path, endpoint: str) -> None:
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(120)))
    task = tmp_path / "task.yaml"
    task.write_text(
        "dataset: data.jsonl\ninput_field: text\ntarget_field: label\n"
        "labels: [positive, negative]\ntrain: 30\ndev: 30\ntest: 60\nmax_tokens: 4\n"
    )
    assert cli("prompts", "create", "senti", "Text: {{input}}\nSentiment:").code == 0
    r = cli(
        "prompts", "optimize", "senti", "--task", str(task), "--endpoint", endpoint,
        "--model", "m", "--budget", "300", "--instructions", "1", "--demo-sets", "2",
        "-k", "2", "--promote", "staging", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["registered"] == "senti:2" and out["promoted"] == "staging"
    assert out["test_best"] == 1.0 and out["diff_ci"][0] > 0
    shown = json.loads(cli("prompts", "show", "senti@staging", "--json").out)
    assert shown["ref"] == "senti:2" and shown["metadata"]["optimize"]["test_items"] == 60
    bad = cli("prompts", "optimize", "senti:1", "--task", str(task), "--endpoint",
              "http://127.0.0.1:9/v1", "--model", "m", "--budget", "50")  # fmt: skip
    assert bad.code == 2 and bad.err.startswith(
        "error: http://127.0.0.1:9/v1 (m): APIConnectionError"
    )
