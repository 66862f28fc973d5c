"""The Responses API's state through the official ``openai`` client against `lmops serve`
(real uvicorn on 127.0.0.1): ``previous_response_id`` chains turns (a fake deployment that
echoes what it was given shows the history each turn carried), retrieve, delete and input
items, only for the key that created a response (or an admin key), ``store: false``, the
deployment's ``responses_store`` and retention, masking of what is kept, streams stored
when they complete and not when the client leaves."""

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
    )
    keys = {
        "a": make_key(home, "a"),
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
    r4 = c.responses.create(model="echo", input="four", previous_response_id=r3.id)
    assert r4.output_text.startswith("user: three | assistant: ")


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


def test_what_is_kept_is_masked_as_the_request_log(server: dict[str, Any]) -> None:
    """Guardrails are off: the model and the reply see the address; what is kept, and so
    what the next turn carries, has it masked."""
    c = client(server)
    r = c.responses.create(model="echo", input="mail bob@example.com or call 13812345678")
    assert r.output_text == "user: mail bob@example.com or call 13812345678"
    kept = c.responses.retrieve(r.id)
    assert kept.output_text == "user: mail <EMAIL> or call <PHONE>"
    item = c.responses.input_items.list(r.id).data[0]
    assert item.content[0].text == "mail <EMAIL> or call <PHONE>"
    nxt = c.responses.create(model="echo", input="again", previous_response_id=r.id)
    assert "bob@example.com" not in nxt.output_text and "<EMAIL>" in nxt.output_text


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
