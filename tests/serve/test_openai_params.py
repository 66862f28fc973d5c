"""OpenAI's request parameters through the official openai client against `lmops serve`
(real uvicorn on 127.0.0.1) serving a tiny Llama (256 positions): a completion budget
that does not fit the context is refused before anything runs; logit_bias and the
penalties change what the built-in engine generates and are validated as OpenAI does;
parameters the engine cannot honour are 400s naming them, and an upstream gets them all
unchanged; stream_options needs stream."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from lmops.serve.fake import serve_app
from tests.serve.conftest import lmops_env, make_key, start_server, stop_server
from tests.train.tiny import make_model, make_tokenizer

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")

CONTEXT = 256  # the tiny model's positions
ASK = [{"role": "user", "content": "The quick brown fox"}]


@contextlib.contextmanager
def recording_upstream(seen: list[dict[str, Any]]) -> Iterator[str]:
    """An OpenAI-compatible upstream that keeps every body it gets and answers a short
    reply (chat, completions) or one vector per input (embeddings)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body)
        message = {"role": "assistant", "content": "ok"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return JSONResponse({"id": "u", "object": "chat.completion", "created": 0,
                             "model": body["model"], "choices": [choice], "usage": usage})  # fmt: skip

    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body)
        choice = {"index": 0, "text": "ok", "finish_reason": "stop", "logprobs": None}
        return JSONResponse({"id": "u", "object": "text_completion", "created": 0,
                             "model": body["model"], "choices": [choice], "usage": usage})  # fmt: skip

    async def embeddings(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body)
        size = body.get("dimensions") or 4
        data = [
            {"object": "embedding", "index": i, "embedding": [0.5] * size}
            for i, _ in enumerate(body["input"])
        ]
        return JSONResponse({"object": "list", "data": data, "model": "m",
                             "usage": {"prompt_tokens": 2, "total_tokens": 2}})  # fmt: skip

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
        ]
    )
    with serve_app(app, "upstream") as url:
        yield f"{url}/v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("params")
    home = root / "home"
    env = lmops_env(home)
    tok_dir = make_tokenizer(root / "tok")
    model = make_model(root / "tiny", tok_dir, seed=2)
    seen: list[dict[str, Any]] = []
    upstream_cm = recording_upstream(seen)
    upstream = upstream_cm.__enter__()
    deployments = root / "deployments.yaml"
    deployments.write_text(
        "deployments:\n"
        f"  - {{name: tiny, model: {model}, default_max_tokens: 1000, max_tokens_cap: 1000}}\n"
        f"  - {{name: up, upstream: {upstream}, upstream_model: served}}\n"
    )
    key = make_key(home)
    proc, base = start_server(env, "--deployments", str(deployments))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    yield {"base": base, "key": key, "seen": seen, "tokenizer": tokenizer}
    stop_server(proc)
    upstream_cm.__exit__(None, None, None)


def client(server: dict[str, Any]) -> Any:
    return openai.OpenAI(
        base_url=server["base"] + "/v1", api_key=server["key"], max_retries=0, timeout=120
    )


def no_end(server: dict[str, Any]) -> dict[str, int]:
    """A logit_bias that keeps the model from ending its reply."""
    tok = server["tokenizer"]
    ends = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} - {None, tok.unk_token_id}
    return {str(t): -100 for t in ends}


def refused(call: Any, **kw: Any) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as e:
        r = call(**kw)
        if kw.get("stream"):
            list(r)
    body: dict[str, Any] = e.value.body
    return body


# -- 1. the context -----------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("n", [1, 2])
def test_a_budget_that_does_not_fit_the_context_is_refused(
    server: dict[str, Any], stream: bool, n: int
) -> None:
    c = client(server)
    chat_p = c.chat.completions.create(model="tiny", messages=ASK, max_tokens=1).usage
    text_p = c.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=1).usage
    room_chat = CONTEXT - chat_p.prompt_tokens
    room_text = CONTEXT - text_p.prompt_tokens
    kw: dict[str, Any] = dict(model="tiny", n=n, stream=stream, temperature=0)
    # one token over: refused before anything is generated, in OpenAI's words
    err = refused(c.chat.completions.create, messages=ASK, max_tokens=room_chat + 1, **kw)
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert err["message"] == (
        f"This model's maximum context length is {CONTEXT} tokens. However, you requested "
        f"{CONTEXT + 1} tokens ({chat_p.prompt_tokens} in the messages, {room_chat + 1} in the "
        "completion). Please reduce the length of the messages or completion."
    )
    err = refused(
        c.chat.completions.create, messages=ASK, max_completion_tokens=room_chat + 5, **kw
    )
    assert err["code"] == "context_length_exceeded"
    err = refused(
        c.completions.create, prompt="The quick brown fox", max_tokens=room_text + 1, **kw
    )
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    assert (
        f"({text_p.prompt_tokens} in your prompt; {room_text + 1} for the completion)"
        in (err["message"])
    )
    # exactly the room left: answered
    r = c.completions.create(prompt="The quick brown fox", max_tokens=room_text, **kw)
    if stream:
        assert [ch for ch in r if ch.choices][-1].choices[0].finish_reason in ("stop", "length")
    else:
        assert len(r.choices) == n and r.usage.completion_tokens <= n * room_text


def test_a_request_that_names_no_budget_gets_the_context_left(server: dict[str, Any]) -> None:
    # the deployment's default (1000) does not fit: the budget is what the context leaves
    c = client(server)
    r = c.completions.create(
        model="tiny", prompt="The quick brown fox", temperature=0, logit_bias=no_end(server)
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens + r.usage.completion_tokens == CONTEXT


# -- 2. logit_bias and the penalties ---------------------------------------------------------------
def test_logit_bias_changes_what_the_engine_generates(server: dict[str, Any]) -> None:
    c = client(server)
    tok = server["tokenizer"]
    kw: dict[str, Any] = dict(model="tiny", prompt="The quick brown fox", max_tokens=6, logprobs=0)
    greedy = c.completions.create(**kw, temperature=0)
    target = tok.convert_tokens_to_ids(tok.tokenize(" data"))[0]
    forced = c.completions.create(**kw, temperature=0, logit_bias={str(target): 100})
    assert forced.choices[0].logprobs.tokens == [tok.decode([target])] * 6
    # sampled too: +100 leaves no other token a chance, whatever the seed
    sampled = c.completions.create(**kw, temperature=1.0, seed=3, logit_bias={str(target): 100})
    assert sampled.choices[0].text == forced.choices[0].text
    # -100 on the greedy first token: another one comes first
    first = greedy.choices[0].logprobs.tokens[0]
    first_id = tok.convert_tokens_to_ids(tok.tokenize(first))[-1]
    banned = c.completions.create(**kw, temperature=0, logit_bias={str(first_id): -100})
    assert banned.choices[0].logprobs.tokens[0] != first
    # chat, streamed: the same bias, the same text as in full
    chat_kw: dict[str, Any] = dict(
        model="tiny", messages=ASK, max_tokens=4, temperature=0, logit_bias={str(target): 100}
    )
    full = c.chat.completions.create(**chat_kw)
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(**chat_kw, stream=True)
        if ch.choices
    )
    assert full.choices[0].message.content == streamed == tok.decode([target] * 4)


def test_penalties_change_a_repetitive_greedy_reply_and_seeds_still_reproduce(
    server: dict[str, Any],
) -> None:
    c = client(server)
    tok = server["tokenizer"]
    kw: dict[str, Any] = dict(model="tiny", prompt="The quick brown fox", max_tokens=24)
    kw["logit_bias"] = no_end(server)  # (a full-length reply to compare)
    plain = c.completions.create(**kw, temperature=0).choices[0].text
    for field in ("frequency_penalty", "presence_penalty"):
        penalised = c.completions.create(**kw, temperature=0, **{field: 2.0}).choices[0].text
        assert penalised != plain, field
        ids = tok(penalised, add_special_tokens=False)["input_ids"]
        assert len(set(ids)) >= len(set(tok(plain, add_special_tokens=False)["input_ids"]))
    # (its effect is checked against transformers' in tests/serve/test_logits.py)
    c.completions.create(**kw, temperature=0, extra_body={"repetition_penalty": 1.5})
    a, b = (
        c.completions.create(**kw, temperature=1.0, seed=11, frequency_penalty=1.0, n=2)
        for _ in range(2)
    )
    assert [x.text for x in a.choices] == [x.text for x in b.choices]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
    ],
)
def test_bad_sampling_fields_are_400s_naming_the_field(
    server: dict[str, Any], fields: dict[str, Any], param: str
) -> None:
    c = client(server)
    for call, kw in [
        (c.chat.completions.create, {"messages": ASK}),
        (c.completions.create, {"prompt": "Hi"}),
    ]:
        err = refused(call, model="tiny", max_tokens=2, **kw, **fields)
        assert err["param"] == param and err["code"] == "invalid_value", err
        assert err["message"].startswith(param)


@pytest.mark.parametrize(
    ("endpoint", "fields", "param"),
    [
        ("completions", {"suffix": " the end."}, "suffix"),
        ("completions", {"best_of": 3}, "best_of"),
        ("completions", {"best_of": 3, "n": 2}, "best_of"),
        ("chat", {"extra_body": {"functions": [{"name": "f", "parameters": {}}]}}, "functions"),
        ("chat", {"extra_body": {"function_call": {"name": "f"}}}, "function_call"),
        ("chat", {"modalities": ["text", "audio"]}, "modalities"),
        ("chat", {"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ("embeddings", {"dimensions": 8}, "dimensions"),
    ],
)
def test_parameters_the_engine_cannot_honour_are_refused_and_an_upstream_gets_them(
    server: dict[str, Any], endpoint: str, fields: dict[str, Any], param: str
) -> None:
    c = client(server)
    call, kw = {
        "completions": (c.completions.create, {"prompt": "Hi", "max_tokens": 2}),
        "chat": (c.chat.completions.create, {"messages": ASK, "max_tokens": 2}),
        "embeddings": (c.embeddings.create, {"input": ["a b"]}),
    }[endpoint]
    err = refused(call, model="tiny", **kw, **fields)
    assert err["param"] == param and err["code"] == "unsupported_parameter", err
    assert err["message"].startswith(param)
    call(model="up", **kw, **fields)  # passed through unchanged
    sent = server["seen"][-1]
    want = fields.get("extra_body", fields)
    assert {k: sent[k] for k in want} == want


def test_no_op_values_are_taken(server: dict[str, Any]) -> None:
    c = client(server)
    r = c.completions.create(model="tiny", prompt="Hi", max_tokens=2, suffix="", best_of=1)
    assert r.choices[0].finish_reason in ("stop", "length")
    r = c.completions.create(model="tiny", prompt="Hi", max_tokens=2, n=2, best_of=2)
    assert len(r.choices) == 2
    err = refused(c.completions.create, model="tiny", prompt="Hi", n=3, best_of=2)
    assert err["param"] == "best_of" and err["code"] == "invalid_value"


def test_sampling_fields_reach_an_upstream_unchanged(server: dict[str, Any]) -> None:
    c = client(server)
    fields: dict[str, Any] = {
        "logit_bias": {"999999": 5},  # the upstream's vocabulary, not ours, decides
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
    }
    c.chat.completions.create(model="up", messages=ASK, max_tokens=2, **fields)
    sent = server["seen"][-1]
    assert {k: sent[k] for k in fields} == fields


# -- 4. stream_options ---------------------------------------------------------------------------
def test_stream_options_need_stream(server: dict[str, Any]) -> None:
    c = client(server)
    for model in ("tiny", "up"):
        err = refused(
            c.chat.completions.create, model=model, messages=ASK, max_tokens=2,
            stream_options={"include_usage": True},
        )  # fmt: skip
        assert err["param"] == "stream_options" and err["code"] == "invalid_value", err
    chunks = list(
        c.chat.completions.create(
            model="tiny",
            messages=ASK,
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
