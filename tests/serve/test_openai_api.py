"""The official openai client against `lmops serve` (real uvicorn on 127.0.0.1) serving a
tiny Llama: models, chat, streaming with usage, completions, embeddings, error shapes,
keys and scopes, a disconnect freeing its slot."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server
from tests.train.tiny import make_model, make_tokenizer

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("serve")
    home = root / "home"
    env = lmops_env(home)
    tok = make_tokenizer(root / "tok")
    model = make_model(root / "tiny", tok, seed=2)
    other = make_model(root / "other", tok, seed=3)
    from lmops.serve.fake import fake_server

    upstream_cm = fake_server(tokens=5)
    upstream = upstream_cm.__enter__()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    deployments = root / "deployments.yaml"
    deployments.write_text(
        f"deployments:\n"
        f"  - {{name: tiny, model: {model}, max_tokens_cap: 64}}\n"
        f"  - {{name: solo, model: {model}, max_running: 1, max_queue: 0}}\n"
        f"  - {{name: ab, split: [{{model: {model}, weight: 1}}, {{model: {other}, weight: 1}}]}}\n"
        f"  - {{name: proxied, upstream: {upstream}/v1, upstream_model: fake}}\n"
        f"  - {{name: dead, upstream: {dead}}}\n"
        f"  - {{name: misnamed, upstream: {upstream}/v1, upstream_model: no-such-model}}\n"
    )

    lmops = lmops_cli(env)

    keys = {
        name: json.loads(lmops("keys", "create", "--name", name, *extra, "--json"))["key"]
        for name, extra in [
            ("all", []),
            ("scoped", ["--scope", "solo"]),
            ("revoked", []),
            ("admin", ["--role", "admin"]),
        ]
    }
    lmops("keys", "revoke", "revoked")
    proc, base = start_server(
        env,
        "--deployments",
        str(deployments),
    )
    yield {"base": base, "keys": keys, "home": home}
    stop_server(proc)
    upstream_cm.__exit__(None, None, None)


def client(server: dict[str, Any], key: str = "all") -> Any:
    return openai.OpenAI(
        base_url=server["base"] + "/v1", api_key=server["keys"][key], max_retries=0, timeout=60
    )


def test_models_chat_and_usage(server: dict[str, Any]) -> None:
    c = client(server)
    assert [m.id for m in c.models.list().data] == [
        "ab",
        "dead",
        "misnamed",
        "proxied",
        "solo",
        "tiny",
    ]
    r = c.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "你好, hello"}],
        max_tokens=8,
        temperature=0,
    )
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = c.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "你好, hello"}],
        max_tokens=8,
        temperature=0,
    )
    assert (
        again.choices[0].message.content == r.choices[0].message.content
    )  # greedy is deterministic
    two = c.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        n=2,
        seed=1,
        extra_body={"unknown_field": 1},
    )
    assert [ch.index for ch in two.choices] == [0, 1]


def test_streaming_with_usage_matches_non_streaming(server: dict[str, Any]) -> None:
    c = client(server)
    messages = [{"role": "user", "content": "The quick brown fox"}]
    full = c.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    chunks = list(
        c.chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert (
        chunks[-1].choices == []
        and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    )
    finishes = [
        ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason
    ]
    assert finishes == [full.choices[0].finish_reason]
    raw = httpx.post(
        server["base"] + "/v1/chat/completions",
        headers={"Authorization": "Bearer " + server["keys"]["all"]},
        json={"model": "tiny", "messages": messages, "max_tokens": 3, "stream": True},
        timeout=60,
    )
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_completions_and_embeddings(server: dict[str, Any]) -> None:
    c = client(server)
    r = c.completions.create(model="tiny", prompt="Machine learning", max_tokens=5, temperature=0)
    assert (
        r.object == "text_completion"
        and isinstance(r.choices[0].text, str)
        and r.usage.completion_tokens <= 5
    )
    e = c.embeddings.create(model="tiny", input=["hello", "世界"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 64
    assert abs(sum(x * x for x in e.data[0].embedding) - 1.0) < 1e-3
    raw = httpx.post(
        server["base"] + "/v1/embeddings",
        headers={"Authorization": "Bearer " + server["keys"]["all"]},
        json={"model": "tiny", "input": "hello", "encoding_format": "base64"},
        timeout=60,
    ).json()
    decoded = struct.unpack("<64f", base64.b64decode(raw["data"][0]["embedding"]))
    assert decoded == pytest.approx(e.data[0].embedding, abs=1e-6)
    # token ids (LangChain's OpenAIEmbeddings sends tiktoken's by default): a 400 that
    # says how to make it send text
    with pytest.raises(openai.BadRequestError) as ids:
        c.embeddings.create(model="tiny", input=[[15339, 1917]])
    assert ids.value.body["param"] == "input"
    assert "check_embedding_ctx_length=False" in ids.value.body["message"]


def test_keys_scopes_and_error_shapes(server: dict[str, Any]) -> None:
    msg = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(
            base_url=server["base"] + "/v1", api_key="lmk-wrong", max_retries=0
        ).models.list()
    assert e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client(server, "revoked").models.list()
    scoped = client(server, "scoped")
    assert [m.id for m in scoped.models.list().data] == ["solo"]
    with pytest.raises(openai.PermissionDeniedError):
        scoped.chat.completions.create(model="tiny", messages=msg, max_tokens=2)
    c = client(server)
    with pytest.raises(openai.NotFoundError) as nf:
        c.chat.completions.create(model="nope", messages=msg)
    assert nf.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as br:
        c.chat.completions.create(model="tiny", messages=msg, temperature=5)
    assert br.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="max_tokens is too large"):
        c.chat.completions.create(model="tiny", messages=msg, max_tokens=10**9)
    with pytest.raises(openai.BadRequestError) as long:
        c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "word " * 400}]
        )
    assert long.value.body["code"] == "context_length_exceeded"
    bad = httpx.post(
        server["base"] + "/v1/chat/completions",
        headers={"Authorization": "Bearer " + server["keys"]["all"]},
        content=b"{not json",
        timeout=30,
    )
    assert bad.status_code == 400 and set(bad.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    missing = httpx.post(
        server["base"] + "/v1/chat/completions",
        headers={"Authorization": "Bearer " + server["keys"]["all"]},
        json={"model": "tiny"},
        timeout=30,
    )
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"


def test_message_content_a_model_cannot_read_is_refused(server: dict[str, Any]) -> None:
    """Missing or malformed content is a 400 naming the message; an image part is a 400
    on an engine deployment (a text model) and goes through to an upstream one."""
    c = client(server)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    ask = {"type": "text", "text": "what is in this picture?"}
    cases: list[tuple[list[dict[str, Any]], str, str]] = [
        ([{"role": "user", "content": None}], "messages[0].content", "needs content"),
        ([{"role": "user"}], "messages[0].content", "needs content"),
        ([{"role": "user", "content": 5}], "messages[0].content", "string or a list"),
        ([{"role": "user", "content": [{"text": "hi"}]}], "messages[0].content", "'type'"),
        (
            [{"role": "user", "content": [{"type": "text", "text": 3}]}],
            "messages[0].content",
            "string 'text'",
        ),
        (
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": [ask, image]}],
            "messages[1].content[1].type",
            "'image_url'",
        ),
    ]
    for messages, param, words in cases:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
        body = e.value.body
        assert body["param"] == param and words in body["message"], (messages, body)
    # an assistant turn that only called tools has no content
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": [ask]},
    ]
    assert c.chat.completions.create(model="tiny", messages=history, max_tokens=2).choices
    proxied = c.chat.completions.create(
        model="proxied", messages=[{"role": "user", "content": [ask, image]}], max_tokens=2
    )
    assert proxied.choices[0].message.content


def test_client_disconnect_frees_the_slot(server: dict[str, Any]) -> None:
    headers = {"Authorization": "Bearer " + server["keys"]["all"]}
    body = {
        "model": "solo",
        "messages": [{"role": "user", "content": "tell a long story"}],
        "max_tokens": 60,
        "stream": True,
        "temperature": 1.0,
    }
    with httpx.stream(
        "POST", server["base"] + "/v1/chat/completions", headers=headers, json=body, timeout=60
    ) as r:
        assert r.status_code == 200
        for _line in r.iter_lines():
            break  # read one event, then hang up
    # `solo` runs one sequence with no queue: it only accepts a new request once the
    # abandoned one was cancelled and its slot freed
    deadline = time.time() + 20
    while True:
        r2 = httpx.post(
            server["base"] + "/v1/chat/completions",
            headers=headers,
            json={**body, "stream": False, "max_tokens": 2},
            timeout=60,
        )
        if r2.status_code == 200 or time.time() > deadline:
            break
        assert r2.status_code == 503 and r2.json()["error"]["code"] == "engine_overloaded"
        time.sleep(0.2)
    assert r2.status_code == 200


def test_upstream_proxy_streams_and_reports_upstream_failure(server: dict[str, Any]) -> None:
    c = client(server)
    r = c.chat.completions.create(
        model="proxied", messages=[{"role": "user", "content": "hi there"}], max_tokens=5
    )
    assert r.model == "proxied" and r.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4"
    assert r.usage.completion_tokens == 5
    chunks = list(
        c.chat.completions.create(
            model="proxied",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert (
        "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        == "tok0 tok1 tok2"
    )
    assert chunks[-1].usage.completion_tokens == 3
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(
            model="dead", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert e.value.status_code == 502 and e.value.body["code"] == "upstream_error"


def test_relayed_stream_refused_or_dead_upstream_is_a_status_not_an_event(
    server: dict[str, Any],
) -> None:
    """The upstream stream is opened before the response starts: its 4xx reaches the
    client as that status in OpenAI's shape, a dead upstream as 502, not a 200 stream."""
    c = client(server)
    ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
    with pytest.raises(openai.NotFoundError) as e:
        list(c.chat.completions.create(model="misnamed", **ask))
    assert e.value.body["code"] == "model_not_found" and "no-such-model" in e.value.message
    with pytest.raises(openai.APIStatusError) as e2:
        list(c.chat.completions.create(model="dead", **ask))
    assert e2.value.status_code == 502 and e2.value.body["code"] == "upstream_error"
    # the refusal is in the request log as an error (rows are written in batches)
    lmops = lmops_cli(lmops_env(server["home"]))
    errors = 0
    for _ in range(50):
        usage = json.loads(lmops("usage", "--deployment", "misnamed", "--json"))
        errors = usage["by_deployment"].get("misnamed", {}).get("errors", 0)
        if errors:
            break
        time.sleep(0.1)
    assert errors >= 1


def test_ab_split_serves_both_versions(server: dict[str, Any]) -> None:
    c = client(server)
    seen = set()
    for _ in range(24):
        r = c.chat.completions.create(
            model="ab", messages=[{"role": "user", "content": "hi"}], max_tokens=1, temperature=0
        )
        seen.add(r.system_fingerprint)
    assert len(seen) == 2  # both targets answered (p of missing one: 2 * 0.5**24)
