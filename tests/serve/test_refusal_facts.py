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

from lmops.core import refusals
from lmops.serve.deployments import DeploymentSpec
from lmops.serve.fake import fake_server, serve_app
from lmops.serve.server import gateway_app
from lmops.serve.upstream_backend import upstream_error

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


@contextmanager
def older_gateway(message: str, retry_after: int | None = None) -> Iterator[str]:
    """A server answering every chat request as an lmops gateway older than ``error.lmops``
    refused one: a 429 of OpenAI's four fields, ``message`` its only word on the limit;
    yields its base URL (``/v1`` goes after it)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> JSONResponse:
        error = {"message": message, "type": "rate_limit_error", "param": None,
                 "code": "rate_limit_exceeded"}  # fmt: skip
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return JSONResponse({"error": error}, status_code=429, headers=headers)

    with serve_app(app, "older") as url:
        yield url


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


def test_the_gateways_words_read_back_as_its_facts(store: Any) -> None:
    """An older gateway says a 429's facts in words only; the reader of those words
    (lmops.core.refusals.from_message) reads what the gateway writes today, limit by limit,
    so a rewording in the limiter cannot pass unnoticed."""
    secret = store.keys.create("ci", rpm=1)[1]
    free = store.keys.create("free")[1]
    with gateway(store, chat={}, small={"limits": {"tokens_per_day": 3}},
                 one={"limits": {"max_concurrent": 1}, "fake": {"ttft_s": 1.5}}) as url:  # fmt: skip
        c, f = client(url, secret), client(url, free)
        c.chat.completions.create(model="chat", **ASK)
        said = [refusal(lambda: c.chat.completions.create(model="chat", **ASK))]
        said.append(refusal(lambda: f.chat.completions.create(model="small", **ASK)))
        slow = threading.Thread(target=lambda: f.chat.completions.create(model="one", **ASK))
        slow.start()
        try:
            time.sleep(0.5)
            said.append(refusal(lambda: f.chat.completions.create(model="one", **ASK)))
        finally:
            slow.join()
    for e in said:
        facts = {**e.body["lmops"], "retry_after_s": None}
        assert refusals.from_message(e.message) == facts, e.message
    assert [e.body["lmops"]["limit"] for e in said] == ["rpm", "tokens_per_day", "max_concurrent"]


@pytest.mark.parametrize(
    ("message", "retry_after", "upstream"),
    [
        ("request too large for dep:chat: it needs 30 tokens and the limit is tpm 3 per "
         "minute; lower max_tokens or shorten the prompt", None,
         {"scope": "deployment", "name": "chat", "limit": "tpm", "retry_after_s": None,
          "too_large": True}),
        ("rate limit reached for key:front-gw: rpm 1 requests per minute; 1 used in the "
         "last minute and this request needs 1; retry in 40s", 40,
         {"scope": "key", "name": "front-gw", "limit": "rpm", "retry_after_s": 40.0,
          "too_large": False}),
        ("too many concurrent requests for dep:chat: 2 in flight, max_concurrent 2; retry "
         "in 1s", 1,
         {"scope": "deployment", "name": "chat", "limit": "max_concurrent",
          "retry_after_s": 1.0, "too_large": False}),
    ],
)  # fmt: skip
def test_an_older_gateways_429_passed_on_is_read_by_its_words(
    store: Any, message: str, retry_after: int | None, upstream: dict[str, Any]
) -> None:
    """In front of an lmops gateway older than ``error.lmops``, the front's facts said
    ``too_large: false, upstream: null`` even for "request too large": a canary, which reads
    facts where there are some, took a request that can never pass for the deployment's
    availability. The front reads that gateway's words now, as the canary does."""
    secret = store.keys.create("canary")[1]
    with older_gateway(message, retry_after) as old, gateway(store, front={"upstream": old}) as url:
        e = refusal(lambda: client(url, secret).chat.completions.create(model="front", **ASK))
    assert e.body["message"] == message  # its words, passed on as they were
    assert e.body["lmops"] == {
        "scope": "upstream",
        "name": "front",
        "limit": upstream["limit"],
        "retry_after_s": None if retry_after is None else float(retry_after),
        "too_large": upstream["too_large"],
        "upstream": upstream,
    }


def test_an_upstreams_facts_are_checked_and_cut_to_the_five_fields() -> None:
    """An upstream's ``error.lmops`` was passed on as it came: any keys, any nesting and
    size, ``limit`` of any type, and ``too_large: "false"`` read as true. Only the five
    fields pass now, each of its type."""
    hostile = {
        "scope": "key",
        "name": "front-gw",
        "limit": "rpm",
        "retry_after_s": 2.5,
        "too_large": "false",
        "upstream": {"scope": "key", "deep": ["x" * 10_000]},
        "secret": "sk-123",
    }
    facts = upstream_error(429, {"error": {"message": "no", "lmops": hostile}}, 2.5, "dep").lmops
    assert facts is not None and facts["too_large"] is False and facts["limit"] == "rpm"
    assert facts["upstream"] == {"scope": "key", "name": "front-gw", "limit": "rpm",
                                 "retry_after_s": 2.5, "too_large": False}  # fmt: skip
    odd = {"scope": ["key"], "name": {"a": 1}, "limit": 5, "retry_after_s": math.inf,
           "too_large": 1}  # fmt: skip
    for wait in (math.inf, math.nan, -1, True, "3"):
        got = refusals.clean({**odd, "retry_after_s": wait})
        assert got == {"scope": None, "name": None, "limit": None, "retry_after_s": None,
                       "too_large": False}, wait  # fmt: skip
    assert refusals.clean("rpm") is None and refusals.clean({"too_large": True})["too_large"]
    facts = upstream_error(429, {"error": {"message": "no", "lmops": "rpm"}}, None, "d").lmops
    assert facts is not None and facts["upstream"] is None and facts["too_large"] is False
