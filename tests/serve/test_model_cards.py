"""``GET /v1/models/{name}`` answers a deployment whose name holds a slash (``org/m``, as
Hugging Face names models): asked with the slash as it is, or as ``%2F`` (what the official
openai client sends), on a real uvicorn; the routes beside it are not shadowed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lmops.serve.deployments import DeploymentSpec
from tests.serve.conftest import serving

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")


@pytest.fixture
def gateway(store: Any) -> Iterator[tuple[str, str]]:
    """A gateway serving fakes named ``org/m`` and ``plain``: (base URL, a key)."""
    from lmops.serve.server import gateway_app

    specs = [
        DeploymentSpec(name="org/m", fake={"tokens": 2}),
        DeploymentSpec(name="plain", fake={"tokens": 2}),
    ]
    _, key = store.keys.create("t")
    with serving(gateway_app(specs, store)) as base:
        yield base, key


def test_a_name_with_a_slash_has_a_card(gateway: tuple[str, str]) -> None:
    base, key = gateway
    c = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)
    card = c.models.retrieve("org/m")  # sent as /v1/models/org%2Fm
    assert card.id == "org/m"
    assert (card.model_extra or {})["lmops"]["versions"] == ["fake:org/m"]
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as h:
        for path in ("/v1/models/org/m", "/v1/models/org%2Fm"):
            r = h.get(path)
            assert r.status_code == 200 and r.json()["id"] == "org/m", (path, r.text)
        # the routes beside it answer as before
        assert [m["id"] for m in h.get("/v1/models").json()["data"]] == ["org/m", "plain"]
        assert h.get("/v1/models/plain").json()["id"] == "plain"
        assert h.get("/v1/models/org").status_code == 404
        assert h.get("/v1/models/org/m/x").status_code == 404
        listed = h.get("/v1/models/", follow_redirects=True)
        assert [m["id"] for m in listed.json()["data"]] == ["org/m", "plain"]
    assert (
        c.chat.completions.create(model="org/m", messages=[{"role": "user", "content": "hi"}])
        .choices[0]
        .message.content
    )
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("org/nope")


def test_the_fake_server_takes_a_name_with_a_slash_as_the_gateway_does() -> None:
    """The fake's card route took one path segment: a fake named ``org/m`` (standing in
    for a server that names models as Hugging Face does) answered its card with a 404,
    raw or as the client's %2F, where the gateway's own route answers it."""
    from lmops.serve.fake import fake_server

    with fake_server(model="org/m", tokens=2, api_key="sk-f") as base:
        c = openai.OpenAI(base_url=base + "/v1", api_key="sk-f", max_retries=0, timeout=30)
        assert c.models.retrieve("org/m").id == "org/m"  # sent as /v1/models/org%2Fm
        with httpx.Client(base_url=base, timeout=30) as h:
            auth = {"Authorization": "Bearer sk-f"}
            for path in ("/v1/models/org/m", "/v1/models/org%2Fm"):
                r = h.get(path, headers=auth)
                assert r.status_code == 200 and r.json()["id"] == "org/m", (path, r.text)
            listed = h.get("/v1/models/", headers=auth, follow_redirects=True)
            assert [m["id"] for m in listed.json()["data"]] == ["org/m"]
            for path in ("/v1/models/org", "/v1/models/org/m/x"):
                r = h.get(path, headers=auth)
                assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            assert h.get("/v1/models/org/m").status_code == 401  # the key still applies
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("org/nope")
