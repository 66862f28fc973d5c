"""Every 429 of the gateway says which limit refused it as data, beside OpenAI's four error
fields (``error.lmops``: scope, name, limit, retry_after_s, too_large), so a program (a
canary, a client's backoff) never parses the message. Through a real uvicorn on 127.0.0.1
and the official ``openai`` client, which hands the error object over as ``e.body``."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from lmops.serve.deployments import DeploymentSpec
from lmops.serve.fake import fake_server, serve_app
from lmops.serve.server import gateway_app

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")

ASK: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@contextmanager
def gateway(store: Any, **upstreams: dict[str, Any]) -> Iterator[str]:
    """A gateway (uvicorn) with one deployment per keyword, each in front of a fake of its
    own made with that keyword's ``fake`` settings and the rest as the deployment's spec;
    yields its /v1 URL."""
    with ExitStack() as stack:
        specs = []
        for name, spec in upstreams.items():
            spec = dict(spec)
            url = spec.pop("upstream", None) or stack.enter_context(
                fake_server(model=name, **spec.pop("fake", {}))
            )
            specs.append(
                DeploymentSpec(name=name, upstream=f"{url}/v1", upstream_model=name, **spec)
            )
        url = stack.enter_context(serve_app(gateway_app(specs, store), "gateway"))
        yield f"{url}/v1"


def client(url: str, secret: str) -> Any:
    return openai.OpenAI(base_url=url, api_key=secret, max_retries=0, timeout=60)


def refusal(call: Any) -> Any:
    with pytest.raises(openai.RateLimitError) as e:
        call()
    return e.value


def test_a_429_names_its_limit_as_data_beside_openais_fields(store: Any) -> None:
    """The key's rpm, a request too large for the deployment's tpm, the deployment's
    concurrency cap: each 429 keeps OpenAI's message, type and code, and says the same
    facts the message says in words (it used to say them in words only)."""
    secret = store.keys.create("ci", rpm=2)[1]
    free = store.keys.create("free")[1]
    with gateway(
        store,
        chat={},
        small={"limits": {"tpm": 3}},
        one={"limits": {"max_concurrent": 1}, "fake": {"ttft_s": 1.5}},
    ) as url:
        c = client(url, secret)
        c.chat.completions.create(model="chat", **ASK)
        c.chat.completions.create(model="chat", **ASK)
        over = refusal(lambda: c.with_raw_response.chat.completions.create(model="chat", **ASK))
        facts = over.body["lmops"]
        assert over.body["type"] == "rate_limit_error" and over.code == "rate_limit_exceeded"
        assert over.param is None and "rate limit reached for key:ci" in over.message
        assert {k: v for k, v in facts.items() if k != "retry_after_s"} == {
            "scope": "key",
            "name": "ci",
            "limit": "rpm",
            "too_large": False,
        }
        # the wait as data agrees with the headers (whole seconds there, ms here)
        retry = facts["retry_after_s"]
        assert 0 < retry <= 120 and int(over.response.headers["retry-after"]) == math.ceil(retry)

        f = client(url, free)
        large = refusal(lambda: f.chat.completions.create(model="small", **ASK))
        assert large.body["lmops"] == {
            "scope": "deployment",
            "name": "small",
            "limit": "tpm",
            "retry_after_s": None,
            "too_large": True,
        }

        slow = threading.Thread(target=lambda: f.chat.completions.create(model="one", **ASK))
        slow.start()
        try:
            time.sleep(0.5)  # the slow request holds the one slot
            full = refusal(lambda: f.chat.completions.create(model="one", **ASK))
        finally:
            slow.join()
        assert full.body["lmops"] == {
            "scope": "deployment",
            "name": "one",
            "limit": "max_concurrent",
            "retry_after_s": 1.0,
            "too_large": False,
        }
        # the Responses API says it in its terms, with the same facts
        r = refusal(lambda: client(url, secret).responses.create(model="chat", input="hi"))
        assert r.body["lmops"]["scope"] == "key" and r.body["lmops"]["name"] == "ci"
    # the README's example is such a body
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    (shown,) = re.findall(
        r"```json\n(\{\"error\": \{\"message\": \"rate limit.*?)```", readme, re.S
    )
    error = json.loads(shown)["error"]
    assert error.keys() == over.body.keys() and error["lmops"].keys() == facts.keys()
    assert error["message"].startswith("rate limit reached for key:ci: rpm ")
    assert {k: v for k, v in error.items() if k not in ("message", "lmops")} == {
        k: v for k, v in over.body.items() if k not in ("message", "lmops")
    }


def test_an_upstreams_429_passed_on_is_the_upstreams_not_a_key_here(store: Any) -> None:
    """A gateway in front of another passed the upstream's 429 on as it was: its facts
    would say ``scope: key, name: front-gw``, a key of the client's gateway for all the
    client knows. Now the front says the refusal is its upstream's, of deployment
    ``front``, and keeps the upstream's facts beside; and after fallbacks, the last one's."""
    front_secret = store.keys.create("front-gw", rpm=1)[1]
    secret = store.keys.create("canary")[1]
    with gateway(store, chat={}) as upstream, ExitStack() as stack:
        busy = [
            stack.enter_context(fake_server(model="b", fail_first=10**6, fail_status=429))
            for _ in range(2)
        ]
        specs = [
            DeploymentSpec(name="front", upstream=upstream, upstream_model="chat",
                           upstream_api_key=front_secret),
            DeploymentSpec(name="busy", upstream=f"{busy[0]}/v1", upstream_model="b",
                           fallbacks=["busy2"]),
            DeploymentSpec(name="busy2", upstream=f"{busy[1]}/v1", upstream_model="b"),
        ]  # fmt: skip
        url = stack.enter_context(serve_app(gateway_app(specs, store), "front"))
        c = client(f"{url}/v1", secret)
        c.chat.completions.create(model="front", **ASK)
        over = refusal(lambda: c.chat.completions.create(model="front", **ASK))
        facts = over.body["lmops"]
        assert (facts["scope"], facts["name"], facts["limit"]) == ("upstream", "front", "rpm")
        assert facts["too_large"] is False and facts["retry_after_s"] > 0
        assert facts["upstream"]["scope"] == "key" and facts["upstream"]["name"] == "front-gw"
        assert "key:front-gw" in over.message  # the words are the upstream's, as before

        # a plain server's 429 (no facts of its own), after the fallback refused too
        gave_up = refusal(lambda: c.chat.completions.create(model="busy", **ASK))
        assert "tried 2 times" in gave_up.message
        assert gave_up.body["lmops"] == {
            "scope": "upstream",
            "name": "busy2",
            "limit": None,
            "retry_after_s": None,
            "too_large": False,
            "upstream": None,
        }
