"""``lmops prompts optimize`` through the CLI against a scripted OpenAI-compatible server
(real uvicorn on 127.0.0.1, called with the official openai client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from lmops.serve.fake import serve_app
from tests.prompts.test_optimize import rows, scripted

CAP = 64  # the endpoint's max_tokens cap, refused above as lmops serve's max_tokens_cap does
ASKED: list[int] = []  # max_tokens of each request


@pytest.fixture
def endpoint() -> Iterator[str]:
    app = FastAPI()

    @app.post("/v1/chat/completions", response_model=None)
    def chat(body: dict[str, Any]) -> dict[str, Any] | JSONResponse:
        ASKED.append(body.get("max_tokens") or 0)
        if (body.get("max_tokens") or 0) > CAP:
            message = (
                f"max_tokens is too large: {body['max_tokens']} (this deployment allows {CAP})"
            )
            error = {"message": message, "type": "invalid_request_error", "param": "max_tokens"}
            return JSONResponse({"error": {**error, "code": "invalid_value"}}, status_code=400)
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
    args = (
        "prompts", "optimize", "senti", "--task", str(task), "--endpoint", endpoint,
        "--model", "m", "--budget", "300", "--instructions", "1", "--demo-sets", "2",
        "-k", "2", "--promote", "staging", "--json",
    )  # fmt: skip
    # the proposer's default 96 tokens are above this endpoint's cap: the error says so,
    # names the flag, and the answers so far are journaled for the next run
    capped = cli(*args)
    assert capped.code == 2 and "proposing an instruction" in capped.err
    assert "max_tokens is too large: 96" in capped.err and "--proposal-tokens" in capped.err
    ASKED.clear()
    r = cli(*args, "--proposal-tokens", "48")
    assert r.code == 0, r.err
    assert sorted(set(ASKED)) == [4, 48]  # the task's answers, the proposal
    out = json.loads(r.out)
    assert out["registered"] == "senti:2" and out["promoted"] == "staging"
    assert out["test_best"] == 1.0 and out["diff_ci"][0] > 0
    assert out["majority_target"] == "positive" and out["test_chance"] == 0.5
    text = cli(*[a for a in args if a != "--json"], "--proposal-tokens", "48")
    assert "always answering the most common target ('positive') scores" in text.out
    assert "warning:" not in text.out  # 1.0 beats it
    shown = json.loads(cli("prompts", "show", "senti@staging", "--json").out)
    assert shown["ref"] == "senti:2" and shown["metadata"]["optimize"]["test_items"] == 60
    bad = cli("prompts", "optimize", "senti:1", "--task", str(task), "--endpoint",
              "http://127.0.0.1:9/v1", "--model", "m", "--budget", "50")  # fmt: skip
    # (after a warning that its /v1/models card could not be read, twice)
    assert bad.code == 2 and bad.err.strip().splitlines()[-1].startswith(
        "error: http://127.0.0.1:9/v1 (m): ConnectError"
    )
