"""A registered prompt in the gateway: a deployment binds one (``prompt:`` in the
deployments YAML), a chat request picks another through ``extra_body``, the upstream
receives the wrapped request, and the request log records the version that served it.
A real ``lmops serve`` (uvicorn) in front of the in-package fake upstream, called with the
official openai client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lmops.prompts import create, label
from lmops.prompts.lm import EndpointError, OpenAIChat
from lmops.serve.fake import fake_server
from lmops.store import Store
from tests.serve.conftest import lmops_env, start_server, stop_server

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")


ASK = [{"role": "user", "content": "hi"}]


def test_bound_and_requested_prompts_wrap_requests_and_are_logged(
    store: Store, lmops_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(
        store, "support", "You are a support agent. Answer briefly.", config={"temperature": 0.1}
    )
    label(store, "support:1", "production")
    create(
        store,
        "support",
        [
            {"role": "system", "content": "You support {{product}}."},
            {"role": "user", "content": "Question: {{input}}"},
        ],
        message="per product",
    )
    _, key = store.keys.create("app")
    sent: list[dict[str, Any]] = []
    with fake_server(requests=sent, reply="ok", model="model") as up:
        deployments = tmp_path / "d.yaml"
        deployments.write_text(
            "deployments:\n"
            f"  - {{name: support, upstream: '{up}/v1', upstream_model: model, "
            "prompt: support@production}\n"
            f"  - {{name: plain, upstream: '{up}/v1', upstream_model: model}}\n"
        )
        proc, base = start_server(
            lmops_env(lmops_home),
            "--deployments",
            str(deployments),
        )
        try:
            c = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)
            # 1. the deployment's bound prompt: a text prompt is the system message, and
            # its config fills what the request left unset
            r = c.chat.completions.create(
                model="support", messages=[{"role": "user", "content": "my bill?"}]
            )
            assert r.choices[0].message.content == "ok"
            assert sent[-1]["messages"] == [
                {"role": "system", "content": "You are a support agent. Answer briefly."},
                {"role": "user", "content": "my bill?"},
            ]
            assert sent[-1]["temperature"] == 0.1
            # 2. a request picks a version and gives its variables; {{input}} is the
            # last user message; neither field reaches the upstream
            streamed = "".join(
                ch.choices[0].delta.content or ""
                for ch in c.chat.completions.create(
                    model="plain",
                    messages=[{"role": "user", "content": "how do I log in?"}],
                    stream=True,
                    extra_body={"prompt": "support:2", "variables": {"product": "lmops"}},
                )
                if ch.choices
            )
            assert streamed == "ok"
            assert sent[-1]["messages"] == [
                {"role": "system", "content": "You support lmops."},
                {"role": "user", "content": "Question: how do I log in?"},
            ]
            assert "prompt" not in sent[-1] and "variables" not in sent[-1]
            # 3. an unknown variable is a 400 naming it; nothing reaches the upstream
            n = len(sent)
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(
                    model="plain",
                    messages=[{"role": "user", "content": "x"}],
                    extra_body={"prompt": "support:2", "variables": {"product": "a", "colour": 1}},
                )
            assert "unknown variable(s) colour" in str(e.value) and len(sent) == n
            # 4. the prompts stage's client without a key: the error says how to give one
            monkeypatch.delenv("LMOPS_API_KEY", raising=False)
            with pytest.raises(EndpointError, match="no API key was given: pass --api-key"):
                OpenAIChat(base + "/v1", "plain", max_retries=0).complete(ASK)
            with pytest.raises(EndpointError, match="invalid") as wrong:
                OpenAIChat(base + "/v1", "plain", api_key="sk-wrong", max_retries=0).complete(ASK)
            assert "no API key was given" not in str(wrong.value)
        finally:
            stop_server(proc)  # flushes the request log
    logged = sorted(
        (r.deployment or "", r.status, r.prompt_ref or "") for r in store.requests.scan()
    )
    assert logged == [
        ("plain", 200, "support:2"),
        ("plain", 400, ""),  # refused before anything was served
        ("support", 200, "support:1"),
    ]
