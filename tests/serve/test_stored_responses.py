"""The Responses API's state through the official ``openai`` client against `lmops serve`
(real uvicorn on 127.0.0.1): ``previous_response_id`` chains turns (a fake deployment that
echoes what it was given shows the history each turn carried), retrieve, delete and input
items, only for the key that created a response (or an admin key), ``store: false``, the
deployment's ``responses_store`` and retention, what is kept (what the model saw, or every
PII type masked with ``responses_mask: all``), a continuation counted against the key's
rpm before its chain is read, ``truncation: "auto"``, a deleted middle turn, streams
stored when they complete and not when the client leaves."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.serve.conftest import lmops_cli, lmops_env, make_key, start_server, stop_server

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")

OFF = "guardrails: {preset: 'off'}"
# the default guardrails' PII masking (every type but IP), without the moderation models
PII = "{preset: 'off', pii_input: mask, pii_output: mask}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("stored")
    home = root / "home"
    env = lmops_env(home)
    (root / "d.yaml").write_text(
        "deployments:\n"
        f"  - {{name: echo, fake: {{echo: true, tokens: 400}}, {OFF}, responses_ttl_days: 2}}\n"
        f"  - {{name: slow, fake: {{tokens: 400, itl_s: 0.05}}, {OFF}}}\n"
        f"  - {{name: nostore, fake: {{echo: true, tokens: 400}}, {OFF}, responses_store: false}}\n"
        f"  - {{name: pii, fake: {{echo: true, tokens: 400}}, guardrails: {PII}}}\n"
        f"  - {{name: allmask, fake: {{echo: true, tokens: 400}}, {OFF}, responses_mask: all}}\n"
        f"  - {{name: small, fake: {{echo: true, tokens: 400, context: 30}}, {OFF}}}\n"
    )
    keys = {
        "a": make_key(home, "a"),
        "lim": make_key(home, "lim", rpm=2),
        "b": make_key(home, "b"),
        "admin": make_key(home, "root", role="admin"),
    }
    proc, base = start_server(env, "--deployments", str(root / "d.yaml"))
    yield {"base": base, "keys": keys, "home": home, "lmops": lmops_cli(env)}
    stop_server(proc)


def client(server: dict[str, Any], who: str = "a") -> Any:
    return openai.OpenAI(
        base_url=server["base"] + "/v1", api_key=server["keys"][who], max_retries=0, timeout=60
    )


def test_three_turns_carry_their_history_and_count_it(server: dict[str, Any]) -> None:
    c = client(server)
    r1 = c.responses.create(model="echo", input="one", instructions="Be brief.")
    assert r1.store is True and r1.previous_response_id is None
    assert r1.output_text == "system: Be brief. | user: one"
    # instructions are not carried over: the next turn has its own, or none
    r2 = c.responses.create(model="echo", input="two", previous_response_id=r1.id)
    assert r2.previous_response_id == r1.id and r2.instructions is None
    assert r2.output_text == ("user: one | assistant: system: Be brief. | user: one | user: two")
    r3 = c.responses.create(
        model="echo",
        previous_response_id=r2.id,
        instructions="Be kind.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "three"}]}],
    )
    assert r3.output_text.startswith("system: Be kind. | user: one | assistant: ")
    assert r3.output_text.endswith(f"user: two | assistant: {r2.output_text} | user: three")
    # the carried history is sent to the model again: input tokens (the fake counts words)
    assert r1.usage.input_tokens == 3  # "Be brief." and "one": the fake counts words
    assert r2.usage.input_tokens == 1 + len(r1.output_text.split()) + 1
    assert r3.usage.input_tokens > r2.usage.input_tokens + r2.usage.output_tokens
    shown = json.loads(server["lmops"]("trace", r3.id, "--json"))
    assert shown["prompt_tokens"] == r3.usage.input_tokens

    # retrieve: the response as it was answered
    got = c.responses.retrieve(r2.id)
    assert got.id == r2.id and got.output_text == r2.output_text and got.store is True
    assert got.previous_response_id == r1.id and got.usage.input_tokens == r2.usage.input_tokens
    # input items: what the request sent (not the carried history), OpenAI's list shape
    items = c.responses.input_items.list(r3.id)
    assert [i.content[0].text for i in items.data] == ["three"]
    page = httpx.get(
        f"{server['base']}/v1/responses/{r1.id}/input_items",
        params={"order": "asc", "limit": 1},
        headers={"Authorization": f"Bearer {server['keys']['a']}"},
    ).json()
    assert page["object"] == "list" and page["has_more"] is False
    assert page["first_id"] == page["last_id"] == page["data"][0]["id"]
    assert page["data"][0]["role"] == "user"
    assert page["data"][0]["content"] == [{"type": "input_text", "text": "one"}]

    # delete: gone for retrieve and for chaining; the later turns stay, without it
    assert c.responses.delete(r2.id) is None
    with pytest.raises(openai.NotFoundError) as e:
        c.responses.retrieve(r2.id)
    assert e.value.body["message"] == f"Response with id '{r2.id}' not found."
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="echo", input="x", previous_response_id=r2.id)
    assert e.value.body["code"] == "previous_response_not_found"
    # a deleted middle turn: the turns before it are still carried, it is not
    r4 = c.responses.create(model="echo", input="four", previous_response_id=r3.id)
    assert r4.output_text == (
        f"user: one | assistant: {r1.output_text} | user: three | assistant: {r3.output_text} "
        "| user: four"
    )


def test_another_key_cannot_read_chain_or_delete(server: dict[str, Any]) -> None:
    mine = client(server).responses.create(model="echo", input="secret plan")
    other = client(server, "b")
    with pytest.raises(openai.NotFoundError) as e:
        other.responses.retrieve(mine.id)
    assert e.value.body["message"] == f"Response with id '{mine.id}' not found."
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(mine.id)
    with pytest.raises(openai.BadRequestError) as e:
        other.responses.create(model="echo", input="hi", previous_response_id=mine.id)
    err = e.value.body
    assert err["code"] == "previous_response_not_found" and err["param"] == "previous_response_id"
    assert err["message"] == f"Previous response with id '{mine.id}' not found."
    # an admin key reads and continues any key's responses
    admin = client(server, "admin")
    assert admin.responses.retrieve(mine.id).output_text == "user: secret plan"
    went_on = admin.responses.create(model="echo", input="ok", previous_response_id=mine.id)
    assert went_on.output_text.startswith("user: secret plan | assistant: ")
    assert client(server).responses.retrieve(mine.id).id == mine.id  # still there


def test_store_false_and_a_deployment_that_keeps_none(server: dict[str, Any]) -> None:
    c = client(server)
    for r in [
        c.responses.create(model="echo", input="hi", store=False),
        c.responses.create(model="nostore", input="hi"),
    ]:
        assert r.store is False
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(r.id)
        with pytest.raises(openai.BadRequestError) as e:
            c.responses.create(model="echo", input="x", previous_response_id=r.id)
        assert e.value.body["code"] == "previous_response_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        c.post("/responses", body={"model": "echo", "input": "x", "store": "yes"}, cast_to=object)
    assert e.value.body["param"] == "store"


def test_what_is_kept_is_what_the_model_saw(server: dict[str, Any]) -> None:
    """Each turn carries the very text the model read before: a deployment that masks the
    default PII types (not IP addresses) keeps the address masked and the IP as it was;
    one whose guardrails are off keeps text, tool call arguments and outputs as sent."""
    c = client(server)
    r = c.responses.create(model="pii", input="mail bob@example.com from 10.1.2.3")
    assert r.output_text == "user: mail <EMAIL> from 10.1.2.3"
    assert c.responses.retrieve(r.id).output_text == r.output_text  # as it was answered
    item = c.responses.input_items.list(r.id).data[0]
    assert item.content[0].text == "mail <EMAIL> from 10.1.2.3"
    nxt = c.responses.create(model="pii", input="again", previous_response_id=r.id)
    assert (
        nxt.output_text
        == f"user: mail <EMAIL> from 10.1.2.3 | assistant: {r.output_text} | user: again"
    )

    said = "My email is alice@example.com"
    call = {
        "type": "function_call",
        "call_id": "c1",
        "name": "look",
        "arguments": '{"to": "alice@example.com"}',
    }
    out = {"type": "function_call_output", "call_id": "c1", "output": "sent to alice@example.com"}
    r = c.responses.create(model="echo", input=[{"role": "user", "content": said}, call, out])
    assert c.responses.retrieve(r.id).output_text == r.output_text
    nxt = c.responses.create(model="echo", input="what is my email?", previous_response_id=r.id)
    assert nxt.output_text.startswith(
        'user: My email is alice@example.com | assistant: look({"to": "alice@example.com"}) '
        "| tool: sent to alice@example.com | assistant: "
    )
    kept = [i.model_dump() for i in c.responses.input_items.list(r.id, order="asc").data]
    assert kept[1]["arguments"] == call["arguments"] and kept[2]["output"] == out["output"]


def test_responses_mask_all_masks_every_pii_type_at_rest(server: dict[str, Any]) -> None:
    """``responses_mask: all``: the model and the reply see the address (guardrails off);
    what is kept, and so what the next turn carries, has every PII type masked, IP too."""
    c = client(server)
    r = c.responses.create(model="allmask", input="mail bob@example.com from 10.1.2.3")
    assert r.output_text == "user: mail bob@example.com from 10.1.2.3"
    assert c.responses.retrieve(r.id).output_text == "user: mail <EMAIL> from <IP>"
    item = c.responses.input_items.list(r.id).data[0]
    assert item.content[0].text == "mail <EMAIL> from <IP>"
    nxt = c.responses.create(model="allmask", input="again", previous_response_id=r.id)
    assert "bob@example.com" not in nxt.output_text and "<EMAIL>" in nxt.output_text


def test_a_continuation_is_counted_once_and_before_its_chain_is_read(
    server: dict[str, Any],
) -> None:
    """A key with rpm 2: a turn and its continuation are two requests (not three); then a
    continuation of an id that does not exist is the key's 429, not a 400 from reading."""
    c = client(server, "lim")
    r = c.responses.create(model="echo", input="hi")
    went_on = c.responses.with_raw_response.create(
        model="echo", input="more", previous_response_id=r.id
    )
    assert went_on.headers["x-ratelimit-limit-requests"] == "2"
    assert went_on.headers["x-ratelimit-remaining-requests"] == "0"
    assert went_on.parse().output_text.startswith("user: hi | assistant: ")
    with pytest.raises(openai.RateLimitError) as e:
        c.responses.create(
            model="echo",
            input="x",
            previous_response_id="resp_nonexistent",
            extra_headers={"x-request-id": "went-on-over"},
        )
    assert e.value.body["code"] == "rate_limit_exceeded"
    # logged as the chat path logs its 429s (it was in no request log, nor in the
    # requests metric): traced by its x-request-id, counted by `lmops usage`
    shown = json.loads(server["lmops"]("trace", "went-on-over", "--json"))
    assert (shown["status"], shown["deployment"], shown["key_name"]) == (429, "echo", "lim")
    assert shown["endpoint"] == "chat" and "rate limit reached" in shown["error"]
    used = json.loads(server["lmops"]("usage", "--key", "lim", "--json"))
    assert used["total"] == {**used["total"], "requests": 3, "errors": 1}
    metrics = httpx.get(server["base"] + "/metrics").text
    assert 'lmops_requests_total{deployment="echo",status="429"} 1.0' in metrics
    assert 'lmops_rate_limited_total{deployment="echo",limit="rpm"} 1.0' in metrics
    assert e.value.body["lmops"] == {
        **e.value.body["lmops"],
        **{"scope": "key", "name": "lim", "limit": "rpm", "too_large": False},
    }


def test_truncation_auto_drops_the_oldest_turns_to_fit(server: dict[str, Any]) -> None:
    """A fake model that reads 30 words: the third turn carries 37 of its 39 words; with
    truncation disabled that is the context's 400 saying so, with auto the first turn
    (11 words) is dropped and the rest fits."""
    c = client(server)
    r1 = c.responses.create(model="small", input="w1 w2 w3 w4 w5")
    r2 = c.responses.create(model="small", input="x1 x2 x3 x4 x5", previous_response_id=r1.id)
    assert r2.usage.input_tokens == 16 and r2.truncation == "disabled"
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="small", input="y1 y2", previous_response_id=r2.id)
    err = e.value.body
    assert err["code"] == "context_length_exceeded" and err["param"] == "input"
    assert err["message"] == (
        "This model's maximum context length is 30 tokens; your prompt has 39. 37 of these "
        "tokens are the conversation carried from previous_response_id; send truncation: "
        '"auto" to drop its oldest turns until the rest fits.'
    )
    r3 = c.responses.create(
        model="small", input="y1 y2", previous_response_id=r2.id, truncation="auto"
    )
    assert r3.truncation == "auto" and r3.usage.input_tokens == 28
    assert r3.output_text == f"user: x1 x2 x3 x4 x5 | assistant: {r2.output_text} | user: y1 y2"
    with pytest.raises(openai.BadRequestError) as e:
        c.post(
            "/responses", body={"model": "echo", "input": "x", "truncation": "some"}, cast_to=object
        )
    assert e.value.body["param"] == "truncation"


def test_cuts_keep_a_function_call_with_its_output() -> None:
    """The places a carried conversation may be cut: before a turn, or after them all,
    never between a function call and its output (here turn 2 answers turn 1's call)."""
    from lmops.serve.responses import chat_body
    from lmops.serve.stored_responses import history_of

    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    carried = [
        {"role": "user", "content": "q1"},
        call,  # turn 1's output
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"role": "assistant", "content": "it is 42"},  # turn 2's output
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "a3"},
    ]
    body = {
        "model": "m",
        "instructions": "sys",
        "input": [*carried, {"role": "user", "content": "q4"}],
    }
    chat = chat_body(body)
    assert [m["role"] for m in chat["messages"]] == [
        "system", "user", "assistant", "tool", "assistant", "user", "assistant", "user"
    ]  # fmt: skip
    h = history_of(chat, body, len(carried), [2, 4], auto=True)
    assert (h.start, h.end) == (1, 7)
    assert h.cuts == (5, 7)  # before turn 3 and after all; not at 3 (between c1 and 42)


def test_store_null_is_the_default(server: dict[str, Any]) -> None:
    c = client(server)
    r = c.post("/responses", body={"model": "echo", "input": "hi", "store": None}, cast_to=object)
    assert r["store"] is True
    assert c.responses.retrieve(r["id"]).id == r["id"]


def test_a_limit_of_other_digits_is_a_400(server: dict[str, Any]) -> None:
    r = client(server).responses.create(model="echo", input="hi")
    got = httpx.get(
        f"{server['base']}/v1/responses/{r.id}/input_items",
        params={"limit": "²"},  # "²".isdigit() is true; int() refuses it
        headers={"Authorization": f"Bearer {server['keys']['a']}"},
    )
    assert got.status_code == 400 and got.json()["error"]["param"] == "limit"


def test_responses_ttl_days_is_bounded() -> None:
    from pydantic import ValidationError

    from lmops.serve.deployments import DeploymentSpec

    assert DeploymentSpec(name="x", fake={}, responses_ttl_days=36500).responses_ttl_days == 36500
    with pytest.raises(ValidationError, match="responses_ttl_days"):
        DeploymentSpec(name="x", fake={}, responses_ttl_days=1e7)  # past datetime's range


def test_retention_and_gc(server: dict[str, Any]) -> None:
    from lmops.core.config import Settings
    from lmops.store import Store
    from lmops.store._time import utcnow

    c = client(server)
    r = c.responses.create(model="echo", input="hi")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMOPS_HOME", str(server["home"]))
        store = Store(Settings.from_env())
        try:
            row = store.responses.get(r.id)
            assert row is not None and row.key_name == "a" and row.deployment == "echo"
            assert row.expires_at - row.created_at == timedelta(days=2)  # responses_ttl_days
            # two days later (moved back rather than waited for): gone for readers, then gc
            store.db.write(
                lambda s: s.execute(
                    __import__("sqlalchemy")
                    .text("UPDATE responses SET expires_at = :t WHERE id = :id")
                    .bindparams(t=utcnow() - timedelta(seconds=1), id=r.id)
                )
            )
        finally:
            store.close()
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    rep = json.loads(server["lmops"]("gc", "--json"))
    assert rep["responses_expired"] == 1
    assert json.loads(server["lmops"]("gc", "--json"))["responses_expired"] == 0


def test_a_stream_is_stored_when_it_completes_and_not_when_left(server: dict[str, Any]) -> None:
    c = client(server)
    events = list(c.responses.create(model="echo", input="streamed", stream=True))
    done = events[-1].response
    assert events[-1].type == "response.completed" and done.store is True
    # continued at once: it was stored before the event that ended the stream
    nxt = c.responses.create(model="echo", input="next", previous_response_id=done.id)
    assert nxt.output_text == "user: streamed | assistant: user: streamed | user: next"
    assert c.responses.retrieve(done.id).output_text == "user: streamed"

    # a client that leaves mid-stream: nothing is kept
    with c.responses.create(model="slow", input="hi", stream=True) as stream:
        rid = next(iter(stream)).response.id
    for _ in range(100):  # the request log says when the gateway saw it go (499)
        shown = json.loads(server["lmops"]("trace", rid, "--json"))
        if shown.get("status"):
            break
    assert shown["status"] == 499
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(rid)


def test_fit_context_drops_the_fewest_oldest_turns() -> None:
    """The backend's side (the engine's and the fake's): a binary search over the cuts
    keeps as much history as fits; what is left is described again for a fallback; a
    budget asked counts; the note goes with a refusal only where nothing is dropped."""
    from lmops.serve.backends import History, Job, fit_context
    from lmops.serve.protocol import OpenAIError

    def words(messages: list[dict[str, Any]]) -> list[str]:
        return " ".join(m["content"] for m in messages).split()

    def job(truncate: bool, max_tokens: int = 5, asked: bool = False) -> Job:
        messages = [{"role": "system", "content": "s"}]  # 1 word, then 4 turns of 4 words
        messages += [{"role": r, "content": "w w"} for _ in range(4) for r in ("user", "assistant")]
        messages.append({"role": "user", "content": "q"})  # the request's own: 1 word
        h = History(1, 9, (3, 5, 7, 9), truncate=truncate, note="{tokens} carried")
        return Job("chat", "r", "m", {}, messages, None, max_tokens, max_tokens_asked=asked,
                   history=h)  # fmt: skip

    j = job(True)
    assert len(fit_context(j, words, 11)) == 10  # 18 words; one turn dropped is 14, two 10
    assert [m["content"] for m in j.messages or []] == ["s", "w w", "w w", "w w", "w w", "q"]
    assert j.history is not None and (j.history.end, j.history.cuts) == (5, (3, 5))
    assert len(fit_context(j, words, 11)) == 10  # a fallback with the same context: no change
    with pytest.raises(OpenAIError) as e:  # a budget asked counts: 2 + 5 do not fit 6
        fit_context(job(True, asked=True), words, 6)
    assert "However, you requested 7 tokens" in e.value.message
    with pytest.raises(OpenAIError) as e:
        fit_context(job(False), words, 11)
    assert e.value.message.endswith("your prompt has 18. 16 carried")
    assert e.value.code == "context_length_exceeded"
