"""A text prompt's candidates are scored the way the registered version will be used: as
plain text on ``/v1/completions``, which is how ``lmops eval`` sends a task's
``doc_to_text`` (``prompt:NAME``), where the target takes plain text; else through chat
with a warning. Chat prompts stay chat. The route is part of the resume journal's key.

The endpoint is a real server on 127.0.0.1 (uvicorn), called with the official openai
client by the optimiser and with ``lmops eval`` afterwards, recording what each sent."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from lmops.core.errors import UserError
from lmops.prompts import create, label, load
from lmops.prompts.lm import EndpointError, OpenAIChat, ScriptedChat
from lmops.prompts.optimize import OptimizeSettings, OptimizeTask, optimize
from lmops.serve.fake import serve_app
from lmops.store import Store
from tests.prompts.test_optimize import rows, scripted

pytest.importorskip("openai", reason="the official openai client is in the dev extra")


def as_text(prompt: str) -> str:
    """A base model continuing plain text: the scripted model of ``test_optimize`` (the
    label instruction and demos together are always right), reading the text as is."""
    if "item" not in prompt:  # a probe: does it take plain text?
        return "there"
    return scripted([{"role": "user", "content": prompt}])


def as_chat(messages: list[dict[str, str]]) -> str:
    """The same model through its chat template, where demos written into one user message
    are lost on it (as on SmolLM2): only the instruction helps there."""
    if messages[-1]["content"].startswith("Write one clear instruction"):
        return "Reply in a friendly tone."
    kept = [c for c in messages[-1]["content"].split("\n\n") if not re.search(r": \w+$", c)]
    return scripted([{"role": "user", "content": "\n\n".join(kept)}])


class Endpoint:
    """A served model: ``card`` is its ``/v1/models`` card's ``lmops`` part (None: a server
    without the route); ``completions`` whether ``/v1/completions`` exists."""

    def __init__(self, card: dict[str, Any] | None, completions: bool = True) -> None:
        self.card, self.completions = card, completions
        self.sent: list[tuple[str, dict[str, Any]]] = []  # (path, body) of each request

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models/{name}", response_model=None)
        def card(name: str) -> dict[str, Any] | JSONResponse:
            if self.card is None:
                return JSONResponse({"error": {"message": "Not Found"}}, status_code=404)
            return {"id": name, "object": "model", "created": 0, "owned_by": "lmops",
                    "lmops": self.card}  # fmt: skip

        @app.post("/v1/completions", response_model=None)
        def completions(body: dict[str, Any]) -> dict[str, Any] | JSONResponse:
            if not self.completions:
                return JSONResponse({"error": {"message": "Not Found"}}, status_code=404)
            self.sent.append(("completions", body))
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            choices = [
                {"index": i, "text": " " + as_text(p), "finish_reason": "stop"}
                for i, p in enumerate(prompts)
            ]
            return {"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                    "choices": choices}  # fmt: skip

        @app.post("/v1/chat/completions")
        def chat(body: dict[str, Any]) -> dict[str, Any]:
            self.sent.append(("chat", body))
            message = {"role": "assistant", "content": as_chat(body["messages"])}
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}  # fmt: skip

        return app


@pytest.fixture
def served() -> Iterator[tuple[str, Endpoint]]:
    ep = Endpoint({"versions": ["m:1"], "endpoints": ["chat", "completion", "embeddings"]})
    with serve_app(ep.app()) as url:
        yield f"{url}/v1", ep


def senti(store: Store, tmp_path: Path, n: int = 160) -> OptimizeTask:
    data = tmp_path / "senti.jsonl"
    data.write_text(
        "".join(json.dumps({"input": r["text"], "label": r["label"]}) + "\n" for r in rows(n))
    )
    create(store, "senti", "Text: {{input}}\nSentiment:")
    label(store, "senti:1", "production")
    return OptimizeTask(
        dataset=str(data), input_field="input", target_field="label",
        labels=["positive", "negative"], train=40, dev=40, test=80, max_tokens=4,
    )  # fmt: skip


SETTINGS = OptimizeSettings(budget=400, instructions=1, demo_sets=2, k=2, concurrency=2)


def test_a_text_prompt_is_scored_on_completions_as_the_eval_sends_it(
    cli: Any, store: Store, tmp_path: Path, served: tuple[str, Endpoint]
) -> None:
    url, ep = served
    task = senti(store, tmp_path)
    model = OpenAIChat(url, "m", api_key="x", max_retries=0)
    r = optimize(store, load(store, "senti:1"), task, model, SETTINGS)
    assert r.scored_via == "completions"
    # every candidate went to /v1/completions, plain text, stopped at the blank line between
    # demos; only the proposer's request is chat
    asked = [b for path, b in ep.sent if path == "completions"]
    assert len(asked) == r.calls_total - r.calls_propose and model.calls == r.calls_total
    assert all(isinstance(b["prompt"], str) and b["stop"] == ["\n\n"] for b in asked)
    assert [b["messages"][-1]["content"][:27] for path, b in ep.sent if path == "chat"] == [
        "Write one clear instruction"
    ]
    # measured as text, the demos (useless through chat here) are part of the winner
    assert r.best.demos and "exactly one of" in r.best.instruction and r.test_best == 1.0
    assert r.registered == "senti:2"
    meta = load(store, "senti:2").version.metadata["optimize"]
    assert meta["scored_via"] == "completions"
    # lmops eval of the registered version (doc_to_text: prompt:senti:2) sends each test
    # row the very text the optimiser scored for it, to the same endpoint, stopped alike
    winner = [b["prompt"] for b in asked[-task.test :]]  # the final pass: the winner last
    task_file = tmp_path / "task.yaml"
    task_file.write_text(
        "task: senti\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {tmp_path / 'senti.jsonl'}}}}}\n"
        "test_split: test\ndoc_to_text: 'prompt:senti:2'\ndoc_to_target: label\n"
        "output_type: generate_until\n"
    )
    ep.sent.clear()
    out = cli("eval", "run", "--model", "m", "--endpoint", url, "--task-file", str(task_file),
              "--no-resume", "--json")  # fmt: skip
    assert out.code == 0, out.err
    evaluated = [(path, b) for path, b in ep.sent]
    assert {path for path, _ in evaluated} == {"completions"}
    sent_by_eval = {
        p
        for _, b in evaluated
        for p in (b["prompt"] if isinstance(b["prompt"], list) else [b["prompt"]])
    }
    assert set(winner) <= sent_by_eval and len(set(winner)) == task.test
    assert {json.dumps(b["stop"]) for _, b in evaluated} == {json.dumps(["\n\n"])}


def test_without_plain_text_a_text_prompt_is_scored_through_chat_with_a_warning(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    task = senti(store, tmp_path)
    ep = Endpoint(None, completions=False)  # not lmops, no /v1/completions
    with serve_app(ep.app()) as url, caplog.at_level(logging.WARNING, "lmops.prompts"):
        model = OpenAIChat(f"{url}/v1", "m", api_key="x", max_retries=0)
        assert model.takes_text() == (False, "/v1/completions answered 404: Not Found")
        r = optimize(store, load(store, "senti:1"), task, model, SETTINGS)
    assert r.scored_via == "chat"
    assert {path for path, _ in ep.sent} == {"chat"}
    said = [rec.getMessage() for rec in caplog.records if "text prompt" in rec.getMessage()]
    assert len(said) == 1 and said[0].startswith(
        f"senti:1 is a text prompt, but {url}/v1/m takes no plain text (/v1/completions "
        "answered 404: Not Found): its candidates are scored through chat"
    )
    # scored as this model answers chat, where inline demos do nothing: the instruction's
    # every-4th-item mistakes stay
    assert r.test_best < 1.0


def test_what_the_card_or_a_probe_says_decides(served: tuple[str, Endpoint]) -> None:
    url, ep = served
    model = OpenAIChat(url, "m", api_key="x", max_retries=0)
    assert model.takes_text() == (True, "its /v1/models card lists chat, completion, embeddings")
    assert ep.sent == []  # the card said so: nothing asked
    ep.card = {"versions": ["enc:1"], "endpoints": ["embeddings"]}
    assert OpenAIChat(url, "m", api_key="x").takes_text() == (
        False,
        "its /v1/models card lists embeddings",
    )
    ep.card = {"upstream": "http://vllm:8000/v1", "model": "m"}  # lists no endpoints: asked
    ok, why = OpenAIChat(url, "m", api_key="x").takes_text()
    assert ok and why == "it answered a one-token /v1/completions request"
    assert [(p, b["prompt"], b["max_tokens"]) for p, b in ep.sent] == [("completions", "Hello", 1)]


def test_a_failing_probe_stops_the_run_rather_than_pick_a_route(
    store: Store, tmp_path: Path
) -> None:
    """A 5xx (or a key refused) on the probe is not "no plain text": the run stops."""
    task = senti(store, tmp_path)
    app = FastAPI()

    @app.post("/v1/completions")
    def down() -> JSONResponse:
        return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)

    with serve_app(app) as url:
        model = OpenAIChat(f"{url}/v1", "m", api_key="x", max_retries=0)
        with pytest.raises(EndpointError, match="InternalServerError"):
            optimize(store, load(store, "senti:1"), task, model, SETTINGS)
    assert not list((store.settings.home / "prompt-optimize").glob("*.jsonl"))


def test_chat_prompts_stay_chat_whatever_the_target_takes(store: Store, tmp_path: Path) -> None:
    task = senti(store, tmp_path)
    create(store, "senti-chat", [{"role": "user", "content": "Text: {{input}}"}])
    texts: list[str] = []
    model = ScriptedChat(scripted, text=lambda p: texts.append(p) or "positive")
    r = optimize(store, load(store, "senti-chat:1"), task, model, SETTINGS)
    assert r.scored_via == "chat" and texts == [] and r.test_best == 1.0


def test_the_route_is_part_of_the_resume_key(store: Store, tmp_path: Path) -> None:
    """Answers to plain text are not replayed into a run scored through chat (nor the
    other way): the same command after the target lost /v1/completions starts afresh."""
    task = senti(store, tmp_path)
    settings = SETTINGS.model_copy(update={"concurrency": 1})

    def flaky(prompt: str) -> str:
        if len(seen) >= 30:
            raise EndpointError("http://127.0.0.1:9/v1 (m): APIConnectionError: refused")
        seen.append(prompt)
        return as_text(prompt)

    seen: list[str] = []
    with pytest.raises(UserError, match="APIConnectionError"):
        optimize(store, load(store, "senti:1"), task, ScriptedChat(as_chat, flaky), settings)
    chat = ScriptedChat(as_chat)
    r = optimize(store, load(store, "senti:1"), task, chat, settings)
    assert r.scored_via == "chat" and chat.calls == r.calls_total  # nothing replayed
    # on the first run's route, its answers are replayed
    again = ScriptedChat(as_chat, as_text)
    r = optimize(store, load(store, "senti:1"), task, again, settings)
    assert r.scored_via == "completions" and again.calls == r.calls_total - 30
