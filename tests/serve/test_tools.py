"""Tool calling and structured outputs through the official openai client against
`lmops serve` (real uvicorn on 127.0.0.1) serving a tiny random Llama: whatever the model
knows (nothing), constrained replies parse and validate; the reply shapes are OpenAI's;
bad requests are 400s naming the field; a call cut off by max_tokens is never sent."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from lmops.serve.fake import serve_app
from tests.serve.conftest import lmops_env, make_key, start_server, stop_server
from tests.train.tiny import make_tokenizer

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")
pytest.importorskip("llguidance", reason="grammar-constrained decoding needs llguidance")

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
CLOCK: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 14}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, CLOCK]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def make_long_model(folder: Path, tok_dir: Path) -> Path:
    """The tests' tiny Llama with room for a prompt that lists tools (2048 positions)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(5)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


UPSTREAM_CALL = {
    "id": "call_up1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "to": "bob@example.com"}'},
}


@contextlib.contextmanager
def vllm_like_upstream(seen: list[dict[str, Any]]) -> Iterator[str]:
    """An OpenAI-compatible upstream that answers every chat with one tool call (as vLLM
    does with a tool parser), full or streamed, and keeps the bodies it received."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def chat(request: Request) -> Response:
        body = await request.json()
        seen.append(body)
        head = {"id": "up", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": None, "tool_calls": [UPSTREAM_CALL]}
            return JSONResponse(
                {
                    **head,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
                }
            )
        fn: dict[str, Any] = UPSTREAM_CALL["function"]  # type: ignore[assignment]
        header = {"index": 0, "id": "call_up1", "type": "function",
                  "function": {"name": fn["name"], "arguments": ""}}  # fmt: skip
        rest = {"index": 0, "function": {"arguments": fn["arguments"]}}
        deltas = [{"role": "assistant", "tool_calls": [header]}, {"tool_calls": [rest]}, {}]
        events = [
            {**head, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": d,
                          "finish_reason": "tool_calls" if not d else None}]}
            for d in deltas
        ]  # fmt: skip
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return Response(text, media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    with serve_app(app, "upstream") as url:
        yield f"{url}/v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("tools")
    home = root / "home"
    env = lmops_env(home)
    model = make_long_model(root / "tiny", make_tokenizer(root / "tok"))
    seen: list[dict[str, Any]] = []
    upstream_cm = vllm_like_upstream(seen)
    upstream = upstream_cm.__enter__()
    deployments = root / "deployments.yaml"
    deployments.write_text(
        "deployments:\n"
        f"  - {{name: tiny, model: {model}, log_bodies: true, max_tokens_cap: 512}}\n"
        f"  - {{name: up, upstream: {upstream}, upstream_model: served}}\n"
    )
    key = make_key(home)
    proc, base = start_server(
        env,
        "--deployments",
        str(deployments),
    )
    yield {"base": base, "key": key, "home": home, "seen": seen}
    stop_server(proc)
    upstream_cm.__exit__(None, None, None)


def client(server: dict[str, Any]) -> Any:
    return openai.OpenAI(
        base_url=server["base"] + "/v1", api_key=server["key"], max_retries=0, timeout=120
    )


def schema_of(name: str) -> dict[str, Any]:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


def check_call(call: Any, names: set[str]) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), schema_of(call.function.name))


def test_required_and_named_tool_choice(server: dict[str, Any]) -> None:
    c = client(server)
    kw: dict[str, Any] = dict(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200
    )
    # greedy and sampled, one call each: valid every time
    for seed in range(4):
        r = c.chat.completions.create(
            **kw, temperature=0.0 if seed == 0 else 1.0, seed=seed, parallel_tool_calls=False
        )
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None and len(choice.message.tool_calls) == 1
        check_call(choice.message.tool_calls[0], {"get_weather", "get_time"})
    # parallel calls: as many as the model writes, each one complete and valid
    r = c.chat.completions.create(**kw, temperature=0.0)
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.tool_calls
    for call in r.choices[0].message.tool_calls:
        check_call(call, {"get_weather", "get_time"})
    named = c.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, max_tokens=200, temperature=0.7, seed=1,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )  # fmt: skip
    calls = named.choices[0].message.tool_calls
    assert named.choices[0].finish_reason == "tool_calls" and len(calls) == 1
    check_call(calls[0], {"get_time"})


def test_streamed_tool_calls_match_the_full_reply(server: dict[str, Any]) -> None:
    c = client(server)
    kw: dict[str, Any] = dict(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200,
        temperature=0, parallel_tool_calls=False,
    )  # fmt: skip
    full = c.chat.completions.create(**kw)
    chunks = list(c.chat.completions.create(**kw, stream=True))
    deltas = [ch.choices[0].delta.tool_calls for ch in chunks if ch.choices]
    deltas = [d for d in deltas if d]
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        for piece in d:
            if piece.index not in calls:  # the first chunk of a call: id, type and name
                assert piece.id and piece.type == "function" and piece.function.name
                assert piece.function.arguments == ""
                calls[piece.index] = {"name": piece.function.name, "arguments": ""}
            else:
                assert piece.id is None and piece.function.name is None
                calls[piece.index]["arguments"] += piece.function.arguments
    assert len(deltas) > len(calls)  # arguments came in pieces after each header
    want = full.choices[0].message.tool_calls
    assert [(v["name"], v["arguments"]) for _, v in sorted(calls.items())] == [
        (t.function.name, t.function.arguments) for t in want
    ]
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "tool_calls"
    assert not "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


def test_response_format_json_schema_and_parse(server: dict[str, Any]) -> None:
    c = client(server)
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "maxLength": 10},
            "score": {"type": "integer", "minimum": 0, "maximum": 100},
            "ok": {"type": "boolean"},
        },
        "required": ["answer", "score", "ok"],
        "additionalProperties": False,
    }
    r = c.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=200, temperature=0,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "a", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    obj = c.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=200, temperature=1, seed=3,
        response_format={"type": "json_object"},
    )  # fmt: skip
    assert isinstance(json.loads(obj.choices[0].message.content), dict)

    class Weather(BaseModel):
        city: str = Field(max_length=8)
        unit: Literal["celsius", "fahrenheit"]
        days: int = Field(ge=1, le=7)
        rain: bool

    parsed = c.chat.completions.parse(
        model="tiny", messages=ASK, response_format=Weather, max_tokens=200, temperature=0.8,
        seed=4,
    )  # fmt: skip
    w = parsed.choices[0].message.parsed
    assert isinstance(w, Weather) and 1 <= w.days <= 7 and len(w.city) <= 8


def streamed(chunks: list[Any]) -> tuple[str, list[Any], list[str], str | None]:
    """A streamed choice 0: its content, tool-call pieces, logprob tokens, finish reason."""
    choices = [ch.choices[0] for ch in chunks if ch.choices]
    content = "".join(c.delta.content or "" for c in choices)
    pieces = [p for c in choices for p in c.delta.tool_calls or []]
    tokens = [e.token for c in choices if c.logprobs for e in c.logprobs.content or []]
    return content, pieces, tokens, choices[-1].finish_reason


def test_a_call_cut_off_by_max_tokens_comes_back_as_content(server: dict[str, Any]) -> None:
    # the budget ran out inside the only call: no call to report, finish_reason length,
    # and the text the model wrote is the content, with its logprobs, in full and streamed
    c = client(server)
    kw: dict[str, Any] = dict(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=6,
        temperature=0, logprobs=True,
    )  # fmt: skip
    r = c.chat.completions.create(**kw, user="cut-full")
    choice = r.choices[0]
    assert choice.finish_reason == "length" and not choice.message.tool_calls
    text = choice.message.content
    assert text and (text.startswith("<tool_call>") or "<tool_call>".startswith(text))
    assert "".join(e.token for e in choice.logprobs.content) == text
    assert len(choice.logprobs.content) == r.usage.completion_tokens == 6
    content, pieces, tokens, finish = streamed(
        list(c.chat.completions.create(**kw, stream=True, user="cut-stream"))
    )
    assert (content, pieces, "".join(tokens), finish) == (text, [], text, "length")
    logged = logged_replies(server, {"cut-full", "cut-stream"})
    for x in logged.values():
        message = x.response_body["choices"][0]["message"]
        assert message["content"] == text and not message.get("tool_calls")
        assert x.response_body["choices"][0]["finish_reason"] == "length"


def test_complete_calls_before_a_cut_are_kept_with_length(server: dict[str, Any]) -> None:
    # tool_choice "required", parallel calls allowed: greedy, the tiny model writes the same
    # call again and again, as SmolLM2-135M-Instruct did
    c = client(server)
    kw: dict[str, Any] = dict(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", temperature=0
    )
    one = c.chat.completions.create(**kw, max_tokens=200, parallel_tool_calls=False)
    n = one.usage.completion_tokens  # one call, ended by its grammar
    assert one.choices[0].finish_reason == "tool_calls" and n < 100
    call = one.choices[0].message.tool_calls[0]
    want = [(call.function.name, call.function.arguments)]
    # too little left after the call for another one: the engine ends the list there,
    # a whole reply of calls
    r = c.chat.completions.create(**kw, max_tokens=n + 10)
    assert (r.choices[0].finish_reason, r.usage.completion_tokens) == ("tool_calls", n)
    assert [(t.function.name, t.function.arguments) for t in r.choices[0].message.tool_calls] == (
        want
    )
    assert r.choices[0].message.content is None
    # room to begin one more, which max_tokens cuts: the complete call is kept, the cut
    # one's text is the content (with its logprobs), and the reply ended by length
    cut: dict[str, Any] = dict(**kw, max_tokens=2 * n - 10, logprobs=True)
    r = c.chat.completions.create(**cut)
    choice = r.choices[0]
    assert (choice.finish_reason, r.usage.completion_tokens) == ("length", 2 * n - 10)
    assert [(t.function.name, t.function.arguments) for t in choice.message.tool_calls] == want
    rest = choice.message.content
    assert rest and rest.startswith("<tool_call>") and "</tool_call>" not in rest
    assert "".join(e.token for e in choice.logprobs.content).endswith(rest)
    assert len("".join(e.token for e in choice.logprobs.content)) <= len(rest) + 2
    content, pieces, tokens, finish = streamed(list(c.chat.completions.create(**cut, stream=True)))
    assert (content, {p.index for p in pieces}, finish) == (rest, {0}, "length")
    assert "".join(tokens) == "".join(e.token for e in choice.logprobs.content)


def logged_replies(server: dict[str, Any], users: set[str]) -> dict[str, Any]:
    """The request log's records of the requests sent with ``user`` in ``users``."""
    from lmops.store import Store

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMOPS_HOME", str(server["home"]))
        store = Store()
    try:
        deadline = time.monotonic() + 30
        logged: dict[str, Any] = {}
        while len(logged) < len(users) and time.monotonic() < deadline:
            time.sleep(0.2)
            logged = {
                str((x.request_body or {}).get("user")): x
                for x in store.requests.scan(deployment="tiny", with_bodies=True)
                if (x.request_body or {}).get("user") in users
            }
    finally:
        store.close()
    assert set(logged) == users
    return logged


def test_multi_turn_with_tool_results(server: dict[str, Any]) -> None:
    c = client(server)
    first = c.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200,
        temperature=0, parallel_tool_calls=False,
    )  # fmt: skip
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    second = c.chat.completions.create(
        model="tiny", messages=messages, tools=TOOLS, tool_choice="none", max_tokens=5,
        temperature=0,
    )  # fmt: skip
    assert second.choices[0].message.tool_calls is None
    assert isinstance(second.choices[0].message.content, str)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the history was rendered


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "invalid_value",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]},
            "tools[0].function.parameters",
            "invalid_json_schema",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}},
                            },
                        },
                    }
                ]
            },
            "tools[0].function.parameters",
            "unsupported_schema",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
            "invalid_value",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}},
                }
            },
            "response_format.json_schema.schema",
            "invalid_json_schema",
        ),
    ],
)
def test_bad_tool_requests_are_400s_naming_the_field(
    server: dict[str, Any], body: dict[str, Any], param: str, code: str
) -> None:
    c = client(server)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=ASK, max_tokens=5, **body)
    err = e.value.body
    assert err["param"] == param and err["code"] == code, err
    assert err["message"].startswith(param)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {
                            "type": "object",
                            "properties": {"a": {"$ref": "#/$defs/nope"}},
                            "$defs": {"yes": {"type": "string"}},
                        },
                    },
                }
            },
            "response_format.json_schema.schema: $ref '#/$defs/nope' at properties.a points "
            "at nothing in this schema; define it (under $defs) or fix the reference",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"$ref": "http://example.com/a.json"}},
                            },
                        },
                    }
                ]
            },
            "tools[0].function.parameters: unsupported JSON schema: Resource "
            "'http://example.com/a.json' is not present in a registry",
        ),
    ],
)
def test_a_bad_reference_is_one_clean_line(
    server: dict[str, Any], body: dict[str, Any], said: str
) -> None:
    """Not llguidance's grammar (``start: %json {... "x-guidance": ...}``) with a caret."""
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model="tiny", messages=ASK, max_tokens=5, **body)
    message = e.value.body["message"]
    assert message.startswith(said) and "\n" not in message
    assert "x-guidance" not in message and "%json" not in message


CALL_A = {"id": "call_a", "type": "function",
          "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}  # fmt: skip


@pytest.mark.parametrize("model", ["tiny", "up"])
@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([*ASK, {"role": "tool", "content": "21"}], "messages[1].tool_call_id"),
        ([*ASK, {"role": "tool", "tool_call_id": "call_a", "content": "21"}],
         "messages[1].tool_call_id"),
        ([*ASK, {"role": "assistant", "content": None, "tool_calls": [CALL_A]},
          {"role": "tool", "tool_call_id": "call_b", "content": "21"}],
         "messages[2].tool_call_id"),
        ([*ASK, {"role": "tool", "tool_call_id": "call_a", "content": "21"},
          {"role": "assistant", "content": None, "tool_calls": [CALL_A]}],
         "messages[1].tool_call_id"),
    ],
)  # fmt: skip
def test_a_tool_message_must_answer_an_earlier_call(
    server: dict[str, Any], model: str, messages: list[dict[str, Any]], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model=model, messages=messages, max_tokens=2)
    err = e.value.body
    assert err["param"] == param and err["code"] == "invalid_value", err
    assert err["message"].startswith(param)


def test_a_function_without_parameters_takes_no_arguments(server: dict[str, Any]) -> None:
    # OpenAI: omitting parameters defines a function with an empty parameter list
    c = client(server)
    now = {"type": "function", "function": {"name": "now", "description": "The time"}}
    for seed in range(3):
        r = c.chat.completions.create(
            model="tiny", messages=ASK, tools=[now], tool_choice="required", max_tokens=100,
            temperature=1.0, seed=seed, parallel_tool_calls=False,
        )  # fmt: skip
        (call,) = r.choices[0].message.tool_calls
        assert (call.function.name, json.loads(call.function.arguments)) == ("now", {})


def test_request_log_keeps_tool_calls(server: dict[str, Any]) -> None:
    c = client(server)
    kw: dict[str, Any] = dict(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200,
        temperature=0, parallel_tool_calls=False,
    )  # fmt: skip
    r = c.chat.completions.create(**kw, user="log-full")
    list(c.chat.completions.create(**kw, stream=True, user="log-stream"))
    logged = logged_replies(server, {"log-full", "log-stream"})
    want = r.choices[0].message.tool_calls[0].function
    for x in logged.values():
        assert x.request_body["tools"][0]["function"]["name"] == "get_weather"
        call = x.response_body["choices"][0]["message"]["tool_calls"][0]["function"]
        assert (call["name"], call["arguments"]) == (want.name, want.arguments)


def test_upstream_gets_the_fields_unchanged_and_guardrails_see_tool_text(
    server: dict[str, Any],
) -> None:
    c = client(server)
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "carol@example.com"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "mail alice@example.com"},
    ]  # fmt: skip
    fields: dict[str, Any] = {
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
    }
    r = c.chat.completions.create(model="up", messages=history, max_tokens=50, **fields)
    sent = server["seen"][-1]
    assert {k: sent[k] for k in fields} == fields  # passed through unchanged
    # tool results and earlier calls' arguments went through the input guardrails
    dumped = json.dumps(sent["messages"])
    assert "example.com" not in dumped and "<EMAIL>" in dumped
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    # the upstream's call comes back in OpenAI's shape, its arguments guarded as output
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.id, call.function.name) == ("call_up1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris", "to": "<EMAIL>"}
    chunks = list(c.chat.completions.create(model="up", messages=ASK, stream=True, **fields))
    pieces = [d for ch in chunks if ch.choices for d in ch.choices[0].delta.tool_calls or []]
    assert pieces[0].id == "call_up1" and pieces[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces)  # guarded whole
    assert json.loads(arguments) == {"city": "Paris", "to": "<EMAIL>"}
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
