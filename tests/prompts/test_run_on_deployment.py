"""Running a prompt version on a deployment that binds another prompt: ``prompts run``,
``prompts compare`` and the console's playground send the version's ref and variables, so
the gateway renders the version once (the bound prompt does not wrap it again) and the
request log names the version that was run; an endpoint that is not lmops is sent the
rendered messages. The real gateway and console on 127.0.0.1 in front of the in-package
fake upstream, called with the official openai client."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lmops.prompts import create, label
from lmops.prompts.lm import OpenAIChat
from lmops.prompts.playground import compare_prompts, run_prompt
from lmops.serve.fake import fake_server, serve_app
from lmops.store import Store
from tests.prompts.test_optimize import rows

pytest.importorskip("openai", reason="the official openai client is in the dev extra")

FR = [{"role": "user", "content": "Translate into French: Good morning"}]


@pytest.fixture
def gateway(store: Store) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """A console + gateway whose deployment ``wrapped`` binds ``fr@production``, ``chat``
    binds ``support@production`` and ``plain`` binds none; (its URL, an admin key, what the
    upstream got)."""
    from lmops.api.app import create_app
    from lmops.serve.deployments import DeploymentSpec
    from lmops.serve.server import mount_gateway

    create(store, "fr", "Translate into French: {{input}}")
    label(store, "fr:1", "production")
    create(store, "support", "Answer about {{product}}: {{input}}")
    label(store, "support:1", "production")
    create(store, "support", "Answer briefly: {{input}}", message="no product")
    label(store, "support:2", "staging")
    _, key = store.keys.create("boss", role="admin")
    sent: list[dict[str, Any]] = []
    with fake_server(requests=sent, reply="Bonjour", model="m") as up:
        specs = [
            DeploymentSpec(
                name="wrapped", upstream=f"{up}/v1", upstream_model="m", prompt="fr@production"
            ),
            DeploymentSpec(
                name="chat", upstream=f"{up}/v1", upstream_model="m", prompt="support@production"
            ),
            DeploymentSpec(name="plain", upstream=f"{up}/v1", upstream_model="m"),
        ]
        app = create_app(store, mounts=[lambda a: mount_gateway(a, specs, store)])
        with serve_app(app, "gateway") as url:
            yield url, key, sent


def _logged(store: Store, n: int) -> list[tuple[str, int, str]]:
    rows: list[tuple[str, int, str]] = []
    for _ in range(100):  # the request log's writer flushes within a second
        rows = [(r.deployment or "", r.status, r.prompt_ref or "") for r in store.requests.scan()]
        if len(rows) >= n:
            break
        time.sleep(0.05)
    return sorted(rows)


def test_run_and_compare_send_the_version_not_its_rendering(
    store: Store, gateway: tuple[str, str, list[dict[str, Any]]]
) -> None:
    url, key, sent = gateway
    model = OpenAIChat(url + "/v1", "wrapped", api_key=key, max_retries=0)
    fr = store_prompt(store, "fr@production")
    assert "".join(run_prompt(fr, model, {"input": "Good morning"})) == "Bonjour"
    assert sent[-1]["messages"] == FR  # once, not inside the bound prompt again
    # the README's example: a version whose variables differ from the bound one's
    chat = OpenAIChat(url + "/v1", "chat", api_key=key, max_retries=0)
    staging = store_prompt(store, "support@staging")
    assert "".join(run_prompt(staging, chat, {"input": "refund?"})) == "Bonjour"
    assert sent[-1]["messages"] == [{"role": "user", "content": "Answer briefly: refund?"}]
    report = compare_prompts(
        store_prompt(store, "support:1"),
        staging,
        chat,
        [("set:1", {"input": "hi", "product": "lmops"})],
    )
    assert [r.a for r in report.rows] == ["Bonjour"]
    assert [m["messages"] for m in sent[-2:]] == [
        [{"role": "user", "content": "Answer about lmops: hi"}],
        [{"role": "user", "content": "Answer briefly: hi"}],
    ]
    assert _logged(store, 4) == [
        ("chat", 200, "support:1"),
        ("chat", 200, "support:2"),
        ("chat", 200, "support:2"),
        ("wrapped", 200, "fr:1"),
    ]


def test_an_endpoint_that_is_not_lmops_gets_rendered_messages(store: Store) -> None:
    create(store, "fr", "Translate into French: {{input}}")
    sent: list[dict[str, Any]] = []
    with fake_server(requests=sent, reply="Bonjour", model="m") as up:
        model = OpenAIChat(up + "/v1", "m", api_key="x", max_retries=0)
        out = "".join(run_prompt(store_prompt(store, "fr:1"), model, {"input": "Good morning"}))
    assert out == "Bonjour"
    assert sent[-1]["messages"] == FR
    assert "prompt" not in sent[-1] and "variables" not in sent[-1]


def test_the_playground_runs_the_version_once(
    store: Store, gateway: tuple[str, str, list[dict[str, Any]]]
) -> None:
    url, key, sent = gateway
    with httpx.Client(base_url=url, timeout=30) as client:
        token = re.search(r'name="token" value="([^"]+)"', client.get("/ui/login").text)
        assert token is not None
        r = client.post("/ui/login", data={"key": key, "token": token.group(1)})
        assert r.status_code == 303, r.text
        page = client.get("/ui/playground").text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert csrf is not None
        r = client.post(
            "/ui/playground/stream",
            json={"deployment": "wrapped", "prompt": "fr@production", "input": "Good morning"},
            headers={"X-CSRF-Token": csrf.group(1)},
        )
        assert r.status_code == 200, r.text
        assert "Bonjour" in r.text
    assert sent[-1]["messages"] == FR
    assert _logged(store, 1) == [("wrapped", 200, "fr:1")]


def test_an_input_for_a_prompt_without_one_is_the_users_message(
    store: Store, gateway: tuple[str, str, list[dict[str, Any]]]
) -> None:
    """A prompt with no {{input}} (a system prompt) run with an input: the input follows it
    as the user's message, as a deployment binding the prompt sends a request, from
    ``prompts run``, ``compare`` and the playground alike, on lmops or any endpoint; it
    was dropped (compare, playground) or refused as an unknown variable (run)."""
    url, key, sent = gateway
    create(store, "terse", "You are a support agent. Answer briefly.")
    asked = [
        {"role": "system", "content": "You are a support agent. Answer briefly."},
        {"role": "user", "content": "Where is my order?"},
    ]
    terse = store_prompt(store, "terse:1")
    chat = OpenAIChat(url + "/v1", "chat", api_key=key, max_retries=0)
    assert "".join(run_prompt(terse, chat, {"input": "Where is my order?"})) == "Bonjour"
    assert sent[-1]["messages"] == asked  # not wrapped in chat's support@production
    report = compare_prompts(
        terse, store_prompt(store, "support:2"), chat, [("set:1", {"input": "Where is my order?"})]
    )
    assert [m["messages"] for m in sent[-2:]] == [
        asked,
        [{"role": "user", "content": "Answer briefly: Where is my order?"}],
    ]
    assert report.rows[0].variables == {"input": "Where is my order?"}
    with fake_server(requests=sent, reply="ok", model="m") as other:  # not lmops
        plain = OpenAIChat(other + "/v1", "m", api_key="x", max_retries=0)
        assert "".join(run_prompt(terse, plain, {"input": "Where is my order?"})) == "ok"
    assert sent[-1]["messages"] == asked
    with httpx.Client(base_url=url, timeout=30) as client:
        token = re.search(r'name="token" value="([^"]+)"', client.get("/ui/login").text)
        assert token is not None
        client.post("/ui/login", data={"key": key, "token": token.group(1)})
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/ui/playground").text)
        assert csrf is not None
        r = client.post(
            "/ui/playground/stream",
            json={"deployment": "chat", "prompt": "terse:1", "input": "Where is my order?"},
            headers={"X-CSRF-Token": csrf.group(1)},
        )
        assert r.status_code == 200, r.text
    assert sent[-1]["messages"] == asked
    assert _logged(store, 4) == [("chat", 200, "support:2")] + [("chat", 200, "terse:1")] * 3


def store_prompt(store: Store, ref: str) -> Any:
    from lmops.prompts import load

    return load(store, ref)


def test_a_gateway_whose_version_differs_refuses_to_run_it(
    store: Store, gateway: tuple[str, str, list[dict[str, Any]]]
) -> None:
    """The client sends the version's content digest with its ref: a gateway on another
    store, holding other text under the same name:N, refuses instead of running it."""
    from lmops.prompts.lm import EndpointError

    url, key, sent = gateway
    model = OpenAIChat(url + "/v1", "wrapped", api_key=key, max_retries=0)
    fr = store_prompt(store, "fr@production")
    fr.version.digest = "0" * 64  # the client's fr:1 holds other bytes than the gateway's
    n = len(sent)
    with pytest.raises(EndpointError, match="fr:1 on this gateway is not the version you"):
        "".join(run_prompt(fr, model, {"input": "Good morning"}))
    assert len(sent) == n  # nothing reached the model


def test_optimize_refuses_a_deployment_that_binds_a_prompt(
    cli: Any, store: Store, gateway: tuple[str, str, list[dict[str, Any]]], tmp_path: Any
) -> None:
    """The optimiser sends candidates it rendered (no registered version yet): a deployment
    that binds a prompt would wrap each one in it and score the pair, so it is refused
    before any request, naming the deployment, its prompt and the way out."""
    url, key, sent = gateway
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(12)))
    (tmp_path / "task.yaml").write_text(
        f"dataset: {tmp_path / 'data.jsonl'}\ninput_field: text\ntarget_field: label\n"
        "train: 4\ndev: 4\ntest: 4\nmax_tokens: 4\n"
    )
    args = ["prompts", "optimize", "fr", "--task", str(tmp_path / "task.yaml"),
            "--endpoint", url + "/v1", "--api-key", key, "--budget", "8",
            "--instructions", "0", "--demo-sets", "1", "-k", "2"]  # fmt: skip
    r = cli(*args, "--model", "wrapped")
    # (the in-process gateway's access-log lines may land in the same captured stderr)
    said = [line for line in r.err.strip().splitlines() if not line.startswith('{"ts": ')]
    assert r.code == 2 and len(said) == 1, r.err
    assert said[0].startswith(f"error: {url}/v1 (wrapped): the target, deployment 'wrapped', ")
    assert "binds prompt fr@production" in r.err and "--local" in r.err
    assert sent == []  # nothing was asked
    # a proposer that binds one is refused too (its request for an instruction is wrapped)
    r = cli(*args, "--model", "plain", "--proposer", f"{url}/v1/chat")
    assert (
        r.code == 2 and "the proposer, deployment 'chat', binds prompt support@production" in r.err
    )
    assert sent == []
    # the same model without a bound prompt is asked the candidates as they are
    assert OpenAIChat(url + "/v1", "wrapped", api_key=key).bound_prompt == "fr@production"
    assert OpenAIChat(url + "/v1", "plain", api_key=key).bound_prompt is None
    r = cli(*args, "--model", "plain")
    assert r.code == 0, r.err
    # a text prompt, and an upstream deployment's card lists no endpoints: one token asked
    # on /v1/completions says it takes plain text, so candidates go there, as an eval's
    # doc_to_text would
    probe, *asked = sent
    assert probe["prompt"] == "Hello" and probe["max_tokens"] == 1
    assert asked and all("messages" not in m and m["stop"] == ["\n\n"] for m in asked)
    first = asked[0]["prompt"]  # the starting prompt on a train row, wrapped in nothing
    assert re.fullmatch(r"Translate into French: item \d+ was (good|bad)", first)
