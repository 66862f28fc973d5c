"""Served tool conversations flow back into training data whole: a gateway on a real uvicorn
with body logging, a deployment whose model answers with tool calls (an upstream that calls
tools as vLLM with a tool parser does), the official openai client holding a two-turn tool
conversation through it; `lmops data from-logs` makes rows that `lmops data validate --stage
sft` accepts, with the tools, the calls as the model wrote them and the results with their
call ids, PII still masked; an answer cut inside a call, a call whose arguments the mask
changed and a chat lmops train refuses are skipped and counted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmops.serve.deployments import DeploymentSpec
from lmops.serve.fake import serve_app
from lmops.serve.server import gateway_app

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}
MAIL = {  # a plain string: {"to": "<EMAIL>"} is valid under it, yet must never train
    "type": "function",
    "function": {
        "name": "send_mail",
        "parameters": {
            "type": "object",
            "properties": {"to": {"type": "string"}},
            "required": ["to"],
        },
    },
}
TOOLS = [WEATHER, MAIL]
# the model's own spelling of the arguments (compact, unit first): kept as written
PARIS_ARGS = '{"unit":"celsius","city":"Paris"}'


def _model_reply(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """What the scripted model answers: text without tools, the weather after a tool
    result, the tag quoted when asked how to call, else a call (of send_mail when asked to
    mail), cut mid-call when max_tokens is tiny."""
    last = body["messages"][-1]
    text = last.get("content") or ""
    if not body.get("tools"):
        return {"role": "assistant", "content": "Hello there."}, "stop"
    if last["role"] == "tool":
        return {"role": "assistant", "content": "It is 21 C in Paris."}, "stop"
    if text.startswith("How do"):  # a whole answer that only quotes the tag: not a cut call
        return {"role": "assistant", "content": "I write <tool_call> and the call."}, "stop"
    if (body.get("max_tokens") or 100) < 8:  # cut where a tool parser leaves text
        return {"role": "assistant", "content": '<tool_call>\n{"name": "get_wea'}, "length"
    if text.startswith("Mail "):
        fn = {"name": "send_mail", "arguments": json.dumps({"to": "bob@example.com"})}
    elif "Lyon" in text:
        fn = {"name": "get_weather", "arguments": '{"city": "Lyon"}'}
    else:
        fn = {"name": "get_weather", "arguments": PARIS_ARGS}
    call = {"id": f"call_{fn['name']}", "type": "function", "function": fn}
    return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"


@pytest.fixture
def tool_model() -> Iterator[str]:
    """An OpenAI-compatible model server that calls tools, full replies and streams."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def chat(request: Request) -> Response:
        body = await request.json()
        message, finish = _model_reply(body)
        head = {"id": "up", "created": 0, "model": body["model"]}
        usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        if not body.get("stream"):
            choice = {"index": 0, "message": message, "finish_reason": finish}
            return JSONResponse(
                {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            )
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": message["content"]}]
        for i, call in enumerate(message.get("tool_calls") or []):
            deltas.append({"tool_calls": [{**call, "index": i}]})
        events = [
            {**head, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
            for d in deltas
        ]  # fmt: skip
        events.append(
            {**head, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        )  # fmt: skip
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return Response(text, media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    with serve_app(app, "tool model") as url:
        yield f"{url}/v1"


def test_a_served_tool_conversation_becomes_a_valid_training_row(
    store: Any, cli: Any, tool_model: str, tmp_path: Path
) -> None:
    secret = store.keys.create("app")[1]
    spec = DeploymentSpec(
        name="weather", upstream=tool_model, upstream_model="served", log_bodies=True
    )
    ask = {"role": "user", "content": "Weather in Paris? I am alice@example.com."}
    with serve_app(gateway_app([spec], store), "gateway") as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0, timeout=30)
        first = c.chat.completions.create(model="weather", messages=[ask], tools=TOOLS)
        (call,) = first.choices[0].message.tool_calls
        assert (call.function.name, call.function.arguments) == ("get_weather", PARIS_ARGS)
        result = {"role": "tool", "tool_call_id": call.id, "content": "21 C, call 13812345678"}
        history = [ask, first.choices[0].message.model_dump(exclude_none=True), result]
        final = c.chat.completions.create(model="weather", messages=history, tools=TOOLS)
        assert final.choices[0].message.content == "It is 21 C in Paris."
        streamed = c.chat.completions.create(
            model="weather",
            messages=[{"role": "user", "content": "And in Lyon?"}],
            tools=TOOLS,
            stream=True,
        )
        assert [ch for ch in streamed if ch.choices and ch.choices[0].delta.tool_calls]
        cut = c.chat.completions.create(
            model="weather", messages=[{"role": "user", "content": "Rome?"}], tools=TOOLS,
            max_tokens=4,
        )  # fmt: skip
        assert cut.choices[0].finish_reason == "length"
        mail = c.chat.completions.create(
            model="weather", messages=[{"role": "user", "content": "Mail it to Bob."}],
            tools=TOOLS,
        )  # fmt: skip
        assert mail.choices[0].message.tool_calls[0].function.name == "send_mail"
        quoted = c.chat.completions.create(
            model="weather", messages=[{"role": "user", "content": "How do you call tools?"}],
            tools=TOOLS,
        )  # fmt: skip
        assert quoted.choices[0].finish_reason == "stop"
        # a plain chat of a shape lmops train refuses: two user turns in a row
        twice = [{"role": "user", "content": "Hi."}, {"role": "user", "content": "Anyone?"}]
        assert c.chat.completions.create(model="weather", messages=twice).choices[0]
    # leaving serve_app shut the gateway down, which wrote the request log

    r = cli("data", "from-logs", "--deployment", "weather", "--output", "weather-sft",
            "--keep-truncated", "--json")  # fmt: skip
    assert r.code == 0, r.err
    meta = json.loads(r.out)["metadata"]
    assert meta["count"] == 4 and meta["tool_rows"] == 3
    # a cut call is never a training row, even with --keep-truncated; nor a call whose
    # arguments the mask changed (it would teach send_mail(to="<EMAIL>")), nor a chat
    # lmops train refuses
    assert meta["skipped"] == {"cut_tool_call": 1, "invalid_row": 1, "masked_arguments": 1}
    assert "expected 'assistant' after 'user', got 'user'" in meta["first_invalid"]

    path = store.assets.path("weather-sft")  # the JSONL file itself
    checked = cli("data", "validate", str(path), "--stage", "sft")
    assert checked.code == 0, checked.out + checked.err
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(row["tools"] == TOOLS for row in rows)
    calling, answered, lyon, quoting = rows
    assert quoting["messages"][-1] == {
        "role": "assistant",
        "content": "I write <tool_call> and the call.",
    }
    calls = [c for row in rows for m in row["messages"] for c in m.get("tool_calls") or []]
    assert "send_mail" not in {c["function"]["name"] for c in calls}  # masked: left out
    user = {"role": "user", "content": "Weather in Paris? I am <EMAIL>."}  # still masked
    paris_call = {
        "id": "call_get_weather",
        "type": "function",
        "function": {"name": "get_weather", "arguments": PARIS_ARGS},  # as the model wrote it
    }
    assert calling["messages"] == [
        user,
        {"role": "assistant", "content": None, "tool_calls": [paris_call]},
    ]
    assert answered["messages"] == [
        user,
        {"role": "assistant", "content": None, "tool_calls": [paris_call]},
        {"role": "tool", "tool_call_id": "call_get_weather", "content": "21 C, call <PHONE>"},
        {"role": "assistant", "content": "It is 21 C in Paris."},
    ]
    # the streamed reply is logged as the completion it assembles to, its call whole
    assert lyon["messages"][-1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Lyon"}',
    }
    assert "example.com" not in path.read_text(encoding="utf-8")

    without = cli("data", "from-logs", "--deployment", "weather", "--output", "w2", "--json")
    assert json.loads(without.out)["metadata"]["skipped"] == {
        "invalid_row": 1,
        "masked_arguments": 1,
        "truncated": 1,
    }


@pytest.mark.parametrize("placeholder", ["[REDACTED:{type}]", "***"])
def test_a_call_masked_with_the_deployments_own_placeholder_is_not_trained_on(
    store: Any, cli: Any, tool_model: str, placeholder: str
) -> None:
    """A deployment whose guardrails mask with their own ``pii_placeholder``: the model's
    call of send_mail(to=bob@example.com) reaches the client, and the log, as
    ``{"to": "[REDACTED:EMAIL]"}`` (or ``***``), which holds no PII for the log's own mask
    to find; the flow-back still knows it for a mask, in the answer and in a later
    request's history, and leaves both out."""
    secret = store.keys.create("app")[1]
    spec = DeploymentSpec(
        name="mailer",
        upstream=tool_model,
        upstream_model="served",
        log_bodies=True,
        guardrails={"pii_placeholder": placeholder},
    )
    masked = json.dumps({"to": placeholder.format(type="EMAIL")})
    with serve_app(gateway_app([spec], store), "gateway") as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0, timeout=30)
        ask = {"role": "user", "content": "Mail it to Bob."}
        mail = c.chat.completions.create(model="mailer", messages=[ask], tools=TOOLS)
        (call,) = mail.choices[0].message.tool_calls
        assert (call.function.name, call.function.arguments) == ("send_mail", masked)
        sent = {"role": "tool", "tool_call_id": call.id, "content": "sent"}
        history = [ask, mail.choices[0].message.model_dump(exclude_none=True), sent]
        after = c.chat.completions.create(model="mailer", messages=history, tools=TOOLS)
        assert after.choices[0].message.content == "It is 21 C in Paris."
        weather = [{"role": "user", "content": "Weather in Paris?"}]
        assert c.chat.completions.create(model="mailer", messages=weather, tools=TOOLS)

    r = cli("data", "from-logs", "--deployment", "mailer", "--output", "mail-sft", "--json")
    assert r.code == 0, r.err
    meta = json.loads(r.out)["metadata"]
    assert meta["count"] == 1 and meta["skipped"] == {"masked_arguments": 2}, meta
    (row,) = [json.loads(line) for line in store.assets.path("mail-sft").read_text().splitlines()]
    assert row["messages"][0] == weather[0]


def test_a_placeholder_mask_is_found_as_itself_not_inside_words() -> None:
    """``{type}`` masks as bare words (EMAIL, SSN, SECRET): a call's ``ZIP``, ``VIP`` or
    ``SECRETARY`` holds none of them; a mask right after Chinese text or in JSON is found."""
    from lmops.monitor.masks import mask_pattern

    bare = mask_pattern("{type}")
    for text in ['{"code": "ZIP"}', '{"tier": "VIP"}', '{"role": "SECRETARY"}', "SSNS", "*.py"]:
        assert bare.search(text) is None, text
    for text in ['{"to": "EMAIL"}', "电话PHONE", "ssn: SSN.", '{"to": "<EMAIL>"}']:
        assert bare.search(text) is not None, text
    # a mask of 2 characters or fewer (a row logged with "*", or IP of {type}) is not looked
    # for: "*.py", "the IP address" are ordinary text (the guardrails refuse such placeholders)
    assert mask_pattern("*").search('{"glob": "*.py"}') is None
    assert bare.search('{"q": "IP address"}') is None
    assert mask_pattern("***").search('{"to": "***"}') is not None


@pytest.mark.parametrize(
    ("placeholder", "said"),
    [
        ("{type.foo}", "pii_placeholder: pii_placeholder '{type.foo}' must format with only"),
        ("{type[0]}", "pii_placeholder: '{type[0]}' masks SECRET as 'S': a mask of 2"),
        ("*", "pii_placeholder: '*' masks SECRET as '*': a mask of 2 characters or fewer"),
    ],
)
def test_a_placeholder_the_monitor_cannot_tell_from_text_is_refused_with_its_line(
    cli: Any, tmp_path: Path, placeholder: str, said: str
) -> None:
    dep = tmp_path / "d.yaml"
    dep.write_text(
        "deployments:\n  - name: chat\n    fake: {}\n"
        f"    guardrails: {{pii_placeholder: {json.dumps(placeholder)}}}\n"
    )
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "q"}\n')
    r = cli("serve", "batch", "--deployments", str(dep), "--input", str(src), "--output", "o")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert f"d.yaml:4: deployments[0].guardrails: {said}" in r.err, r.err
