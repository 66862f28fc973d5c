"""An unknown prompt or asset is explained per skin: the gateway and the REST API name the
route that lists them, the CLI the command (core.errors: ``cli=`` / ``api=`` hints)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from lmops.serve.deployments import DeploymentSpec
from lmops.serve.fake import fake_server

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")


def test_the_gateway_and_the_api_point_at_routes_not_commands(store: Any) -> None:
    from lmops.api.app import create_app
    from lmops.serve.server import gateway_app

    _, secret = store.keys.create("t", role="admin")
    with fake_server(reply="ok", model="m") as up:
        spec = DeploymentSpec(name="plain", upstream=f"{up}/v1", upstream_model="m")
        with TestClient(gateway_app([spec], store)) as tc:
            c = openai.OpenAI(
                base_url="http://testserver/v1", api_key=secret, http_client=tc, max_retries=0
            )
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(
                    model="plain",
                    messages=[{"role": "user", "content": "hi"}],
                    extra_body={"prompt": "nope@production"},
                )
    message = e.value.body["message"]
    assert message == "prompt 'nope' not found; GET /api/prompts lists them", message
    with TestClient(create_app(store)) as api:
        headers = {"Authorization": f"Bearer {secret}"}
        r = api.get("/api/assets/nope", headers=headers)
        assert r.status_code == 404
        assert r.json()["error"]["message"] == "asset 'nope' not found; GET /api/assets lists them"
        r = api.get("/api/runs/abc", headers=headers)
        assert "GET /api/runs lists them" in r.json()["error"]["message"]
        assert "`lmops" not in r.json()["error"]["message"]


def test_the_cli_keeps_its_command_hints(cli: Any) -> None:
    r = cli("assets", "show", "nope")
    assert r.code == 2 and "asset 'nope' not found; see `lmops assets list`" in r.err
    r = cli("prompts", "show", "nope")
    assert r.code == 2 and "prompt 'nope' not found; see `lmops prompts list`" in r.err
