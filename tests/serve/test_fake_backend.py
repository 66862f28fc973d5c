"""The in-package fake backend (``fake:`` in a deployments file): a deployment with no
model, answered through the same handlers and policy as every backend, via the official
openai client against a real `lmops serve`; and `lmops serve batch` on it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmops.serve.deployments import DeploymentSpec
from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")

REPLY = "Sure, call me at 13812345678 tomorrow."
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fake-backend")
    env = lmops_env(root / "home")
    (root / "d.yaml").write_text(
        "deployments:\n"
        f"  - {{name: fake, fake: {{reply: '{REPLY}'}}}}\n"
        "  - {name: counter, fake: {tokens: 5}}\n"
        "  - name: caller\n"
        "    fake:\n"
        f"      reply: {json.dumps(CALL)}\n"
    )
    lmops = lmops_cli(env)
    key = json.loads(lmops("keys", "create", "--name", "app", "--json"))["key"]
    proc, base = start_server(
        env,
        "--deployments",
        str(root / "d.yaml"),
    )
    yield {"base": base, "key": key, "root": root, "lmops": lmops}
    stop_server(proc)


def client(g: dict[str, Any]) -> Any:
    return openai.OpenAI(base_url=g["base"] + "/v1", api_key=g["key"], max_retries=0, timeout=30)


def test_a_fake_deployment_answers_through_the_policy(gw: dict[str, Any]) -> None:
    c = client(gw)
    r = c.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == REPLY.replace("13812345678", "<PHONE>")
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 6
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(
            model="counter", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        if ch.choices
    )
    assert streamed == "tok0 tok1 tok2 tok3 tok4"
    cut = c.completions.create(model="counter", prompt="x", max_tokens=2)
    assert cut.choices[0].text == "tok0 tok1" and cut.choices[0].finish_reason == "length"
    e = c.embeddings.create(model="counter", input=["a b", "a b", "c"])
    assert e.data[0].embedding == e.data[1].embedding != e.data[2].embedding
    assert c.models.retrieve("fake").model_extra["lmops"]["fake"] is True


def test_a_fake_reply_holding_a_call_is_parsed_when_the_request_lists_tools(
    gw: dict[str, Any],
) -> None:
    """A fake deployment whose reply is the gateway's call text answers a request with
    tools as an engine would: parsed ``tool_calls``, streamed and not; without tools the
    text comes back as it is."""
    c = client(gw)
    ask = [{"role": "user", "content": "weather in Paris?"}]
    r = c.chat.completions.create(model="caller", messages=ask, tools=[WEATHER])
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert r.choices[0].finish_reason == "tool_calls" and not r.choices[0].message.content
    names, args, ends = [], "", []
    for ch in c.chat.completions.create(model="caller", messages=ask, tools=[WEATHER], stream=True):
        if not ch.choices:
            continue
        for tc in ch.choices[0].delta.tool_calls or []:
            names += [tc.function.name] if tc.function.name else []
            args += tc.function.arguments or ""
        ends += [ch.choices[0].finish_reason] if ch.choices[0].finish_reason else []
    assert names == ["get_weather"] and json.loads(args) == {"city": "Paris"}
    assert ends == ["tool_calls"]
    plain = c.chat.completions.create(model="caller", messages=ask)
    assert plain.choices[0].message.content == CALL and not plain.choices[0].message.tool_calls


def test_serve_batch_runs_on_a_fake_deployment(gw: dict[str, Any], tmp_path: Path) -> None:
    rows = tmp_path / "prompts.jsonl"
    rows.write_text("".join(json.dumps({"text": f"question {i}"}) + "\n" for i in range(3)))
    out = json.loads(
        gw["lmops"](
            "serve",
            "--deployments",
            str(gw["root"] / "d.yaml"),
            "batch",
            "--deployment",
            "counter",
            "--input",
            str(rows),
            "--output",
            "answers",
            "--json",
        )
    )
    assert out["succeeded"] == 3 and out["written"] == 3


def test_fake_options_are_validated() -> None:
    with pytest.raises(ValueError, match="exactly one of model, split, upstream or fake"):
        DeploymentSpec.model_validate({"name": "x", "fake": {}, "model": "m"})
    with pytest.raises(ValueError):
        DeploymentSpec.model_validate({"name": "x", "fake": {"tokens": 0}})
