"""Structured access logs from a real `lmops serve` (uvicorn on 127.0.0.1) driven by the
official openai client: one JSON line per request with the gateway's numbers, the request
id round-trip, streamed replies logged when they end (disconnects included), errors with
their code, and never a key's secret."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server
from tests.train.tiny import make_model, make_tokenizer

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")


def ready(base: str) -> bool:
    return httpx.get(base + "/readyz", timeout=1).status_code == 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("access")
    log = root / "access.log"
    env = {
        **lmops_env(root / "home"),
        "LMOPS_ACCESS_LOG": "json",
        "LMOPS_ACCESS_LOG_FILE": str(log),
    }
    tok = make_tokenizer(root / "tok")
    model = make_model(root / "tiny", tok, seed=2)
    from lmops.serve.fake import fake_server

    with fake_server(tokens=5) as upstream, fake_server(tokens=200, itl_s=0.02) as slow:
        secret_url = upstream.replace("http://", "http://lm:s3cret@") + "/v1"
        (root / "deployments.yaml").write_text(
            "deployments:\n"
            f"  - {{name: tiny, model: {model}, max_running: 1, max_queue: 0}}\n"
            f"  - {{name: proxied, upstream: {upstream}/v1, upstream_model: fake}}\n"
            f"  - {{name: slow, upstream: {slow}/v1, upstream_model: fake}}\n"
            # two replicas, one of them named with credentials in its URL
            f"  - {{name: pair, upstream: [{upstream}/v1, '{secret_url}'], upstream_model: fake}}\n"
        )
        key = json.loads(lmops_cli(env)("keys", "create", "--name", "app", "--json"))["key"]
        proc, base = start_server(
            env,
            "--deployments",
            str(root / "deployments.yaml"),
            "--log-level",
            "info",
            ready=ready,
        )
        yield {"base": base, "key": key, "log": log, "model": str(model), "env": env,
               "upstream": upstream}  # fmt: skip
        stop_server(proc)


def client(server: dict[str, Any]) -> Any:
    return openai.OpenAI(
        base_url=server["base"] + "/v1", api_key=server["key"], max_retries=0, timeout=60
    )


def lines(log: Path) -> list[dict[str, Any]]:
    """Every line must be one JSON object."""
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def line_for(server: dict[str, Any], request_id: str, timeout: float = 20) -> dict[str, Any]:
    """The line of ``request_id`` (waiting for it: a stream's line comes when it ends)."""
    deadline = time.time() + timeout
    while True:
        found = [x for x in lines(server["log"]) if x["request_id"] == request_id]
        if found or time.time() > deadline:
            assert len(found) == 1, f"{len(found)} lines for {request_id}"
            return found[0]
        time.sleep(0.1)


def test_chat_line_has_the_gateway_numbers_and_the_request_id_round_trips(
    server: dict[str, Any],
) -> None:
    raw = client(server).chat.completions.with_raw_response.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=5,
        temperature=0,
        extra_headers={"x-request-id": "req-abc-123"},
    )
    assert raw.headers["x-request-id"] == "req-abc-123"
    r = raw.parse()
    line = line_for(server, "req-abc-123")
    ts = datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
    assert ts.tzinfo is not None and abs((datetime.now(UTC) - ts).total_seconds()) < 120
    assert line["method"] == "POST" and line["path"] == "/v1/chat/completions"
    assert line["status"] == 200 and line["error_code"] is None
    assert 0 < line["latency_ms"] < 60_000
    assert line["client"].startswith("127.0.0.1:")
    assert line["user_agent"].startswith("OpenAI/Python")
    assert line["key"] == server["key"][:12] and line["key_name"] == "app"
    assert line["deployment"] == "tiny" and line["model_version"] == server["model"]
    assert line["completion_id"] == r.id
    assert line["prompt_tokens"] == r.usage.prompt_tokens
    assert line["completion_tokens"] == r.usage.completion_tokens
    assert line["guardrails"] == [] and "disconnected" not in line


def test_a_line_names_the_replica_that_answered_as_the_request_log_does(
    server: dict[str, Any],
) -> None:
    """The request log kept the replica that answered (``replica``), the access log line
    did not: a line could not say which replica a slow or failed request went to. It does
    now, the same value, credentials masked."""
    from tests.serve.conftest import lmops_cli

    seen = set()
    for i in range(2):  # two replicas at rest take turns: one request each
        rid = f"pair-{i}"
        client(server).chat.completions.create(
            model="pair",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            extra_headers={"x-request-id": rid},
        )
        line = line_for(server, rid)
        logged = json.loads(lmops_cli(server["env"])("trace", rid, "--json"))["replica"]
        assert line["replica"] == logged and logged is not None
        seen.add(line["replica"])
    port = server["upstream"].rsplit(":", 1)[1]
    assert seen == {f"http://127.0.0.1:{port}/v1", f"http://***@127.0.0.1:{port}/v1"}
    assert "s3cret" not in server["log"].read_text(encoding="utf-8")
    # a deployment with one upstream (or an engine) has none
    client(server).chat.completions.create(
        model="proxied",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
        extra_headers={"x-request-id": "one-upstream"},
    )
    assert line_for(server, "one-upstream")["replica"] is None


def test_request_ids_are_generated_when_missing_or_unsafe(server: dict[str, Any]) -> None:
    plain = httpx.get(server["base"] + "/healthz", timeout=10)
    rid = plain.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    line = line_for(server, rid)
    assert line["path"] == "/healthz" and line["status"] == 200
    assert "key" not in line and "deployment" not in line  # not a /v1 request
    api = httpx.get(
        server["base"] + "/api/info",
        headers={"Authorization": "Bearer " + server["key"], "x-request-id": "api-1"},
        timeout=10,
    )
    assert api.status_code == 200
    line = line_for(server, "api-1")
    assert line["key"] == server["key"][:12] and line["key_name"] == "app"
    unsafe = httpx.get(
        server["base"] + "/healthz", headers={"x-request-id": "a b\tc" + "x" * 200}, timeout=10
    )
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])


def test_streamed_reply_is_logged_when_it_ends(server: dict[str, Any]) -> None:
    c = client(server)
    for model in ("tiny", "proxied"):
        raw = c.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": "tell me"}],
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(raw.parse())
        usage = chunks[-1].usage
        line = line_for(server, raw.headers["x-request-id"])
        assert line["status"] == 200 and line["deployment"] == model
        assert line["prompt_tokens"] == usage.prompt_tokens
        assert line["completion_tokens"] == usage.completion_tokens == 4
        assert line["ttft_ms"] is not None and 0 < line["ttft_ms"] <= line["latency_ms"]
        if model == "tiny":
            assert line["model_version"] == server["model"]
        else:  # an upstream deployment answers as its upstream's URL
            assert line["model_version"].startswith("http://127.0.0.1:")


def hang_up_after_one_event(server: dict[str, Any], model: str, request_id: str) -> None:
    """Start a long stream, read one event, then close the connection."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "tell a long story"}],
        "max_tokens": 200,
        "stream": True,
        "temperature": 1.0,
    }
    headers = {"Authorization": "Bearer " + server["key"], "x-request-id": request_id}
    with httpx.stream(
        "POST", server["base"] + "/v1/chat/completions", headers=headers, json=body, timeout=60
    ) as r:
        assert r.status_code == 200
        for _line in r.iter_lines():
            break


def test_client_disconnect_is_logged_as_499(server: dict[str, Any]) -> None:
    hang_up_after_one_event(server, "tiny", "gone-1")
    line = line_for(server, "gone-1")
    assert line["status"] == 499 and line["disconnected"] is True
    assert line["error_code"] == "client_disconnected"
    assert line["deployment"] == "tiny" and line["completion_tokens"] < 200


def test_client_leaving_a_relayed_stream_is_499_in_both_logs(server: dict[str, Any]) -> None:
    hang_up_after_one_event(server, "slow", "gone-relay")
    line = line_for(server, "gone-relay")
    assert line["status"] == 499 and line["deployment"] == "slow"
    # the request log (lmops usage) records the same outcome, not a 200
    lmops = lmops_cli(server["env"])
    for _ in range(50):
        usage = json.loads(lmops("usage", "--deployment", "slow", "--json"))
        if usage["by_deployment"].get("slow", {}).get("requests"):
            break
        time.sleep(0.1)
    assert usage["by_deployment"]["slow"]["errors"] == usage["by_deployment"]["slow"]["requests"]


def test_errors_carry_their_code_and_guardrail_actions_are_logged(
    server: dict[str, Any],
) -> None:
    msg = [{"role": "user", "content": "hi"}]
    auth = {"Authorization": "Bearer " + server["key"]}
    cases: list[tuple[str, dict[str, str], dict[str, Any] | None, int, str]] = [
        ("e-404", auth, {"model": "nope", "messages": msg}, 404, "model_not_found"),
        ("e-400", auth, {"model": "tiny", "messages": msg, "temperature": 9}, 400, "invalid_value"),
        ("e-401", {"Authorization": "Bearer lmk-not-a-real-key"}, None, 401, "invalid_api_key"),
    ]
    for rid, headers, body, status, code in cases:
        headers = {**headers, "x-request-id": rid}
        if body is None:
            r = httpx.get(server["base"] + "/v1/models", headers=headers, timeout=30)
        else:
            r = httpx.post(
                server["base"] + "/v1/chat/completions", headers=headers, json=body, timeout=30
            )
        assert r.status_code == status and r.headers["x-request-id"] == rid
        line = line_for(server, rid)
        assert line["status"] == status and line["error_code"] == code
        assert ("key" in line) == (rid != "e-401")
    c = client(server)
    c.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "mail me at jane.doe@example.com"}],
        max_tokens=2,
        extra_headers={"x-request-id": "pii-1"},
    )
    line = line_for(server, "pii-1")
    assert {"type": "pii_mask", "pii_type": "EMAIL", "count": 1, "direction": "input"} in line[
        "guardrails"
    ]
    # the secret never reaches the log, only its 12-character prefix
    text = server["log"].read_text(encoding="utf-8")
    assert server["key"] not in text and server["key"][:12] in text
    assert "jane.doe@example.com" not in text


def test_default_goes_to_stderr_as_json(tmp_path: Path) -> None:
    env = lmops_env(tmp_path / "home")
    env.pop("LMOPS_ACCESS_LOG_FILE", None)
    env.pop("LMOPS_ACCESS_LOG", None)
    proc, base = start_server(env, "--log-level", "info", ready=ready)
    try:
        r = httpx.get(base + "/healthz", headers={"x-request-id": "stderr-1"}, timeout=10)
        assert r.headers["x-request-id"] == "stderr-1"
    finally:
        stop_server(proc)
    assert proc.stderr is not None
    ours = [json.loads(x) for x in proc.stderr.read().splitlines() if x.startswith('{"ts"')]
    assert any(x["request_id"] == "stderr-1" and x["status"] == 200 for x in ours)


def test_off_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi import FastAPI

    from lmops.core.errors import UserError
    from lmops.monitor.accesslog import AccessLogMiddleware, install_access_log

    app = FastAPI()
    monkeypatch.setenv("LMOPS_ACCESS_LOG", "off")
    assert install_access_log(app) is False and not app.user_middleware
    monkeypatch.setenv("LMOPS_ACCESS_LOG", "yaml")
    with pytest.raises(UserError, match="LMOPS_ACCESS_LOG"):
        install_access_log(app)
    monkeypatch.setenv("LMOPS_ACCESS_LOG", "json")
    assert install_access_log(app) is True
    assert [m.cls for m in app.user_middleware] == [AccessLogMiddleware]
