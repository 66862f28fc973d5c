"""A client that hangs up, and an error nobody expected, through a real uvicorn on
127.0.0.1 and the official ``openai`` client:

* a non-streamed request whose client gave up stops generating at once (engine sequences
  freed, the upstream call closed, a retry's backoff wait ended), is logged as a 499 and
  gives its rate-limit slot back, as a stream already did;
* an unexpected exception in a ``/v1`` handler is an OpenAI-shaped 500 with the request's
  ``x-request-id``, ends the request (request-log row, lease released) and leaves its
  traceback in the server log, never its text in the reply; a stream that fails after its
  200 was sent is logged with why."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmops.serve.fake import fake_server, serve_app
from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server
from tests.train.tiny import make_tokenizer, tiny_shape

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")

LONG = 6000  # completion tokens of a reply that takes far longer than the client waits


def endless_model(folder: Path, tokenizer_dir: Path) -> Path:
    """A tiny Llama with room for LONG tokens that never picks a special token greedily
    (their tied embedding rows are zero: a logit of 0 against 300 random ones), so a greedy
    reply runs to max_tokens."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    shape = {**tiny_shape(tok), "max_position_embeddings": LONG + 512}
    model = LlamaForCausalLM(
        LlamaConfig(**shape, tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    )
    with torch.no_grad():
        for i in tok.all_special_ids:
            model.get_input_embeddings().weight[i] = 0.0
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hangups")
    home = root / "home"
    env = lmops_env(home)
    model = endless_model(root / "tiny", make_tokenizer(root / "tok"))
    gone: list[dict[str, Any]] = []
    slow_seen: list[dict[str, Any]] = []
    busy_seen: list[dict[str, Any]] = []
    with ExitStack() as stack:
        slow = stack.enter_context(
            fake_server(tokens=1000, itl_s=0.05, gone=gone, requests=slow_seen)
        )
        busy = stack.enter_context(
            fake_server(fail_first=100, fail_status=503, retry_after=30, requests=busy_seen)
        )
        (root / "d.yaml").write_text(
            "deployments:\n"
            f"  - {{name: tiny, model: {model}, max_tokens_cap: {LONG},"
            " guardrails: {preset: 'off'}, limits: {max_concurrent: 1}}\n"
            f"  - {{name: slow, upstream: {slow}/v1, upstream_model: fake,"
            " limits: {max_concurrent: 1}}\n"
            f"  - {{name: busy, upstream: {busy}/v1, upstream_model: fake, retries: 2,"
            " retry_max_wait_s: 60}\n"
        )
        key = json.loads(lmops_cli(env)("keys", "create", "--name", "k", "--json"))["key"]
        proc, base = start_server(env, "--deployments", str(root / "d.yaml"))
        try:
            yield {
                "base": base,
                "key": key,
                "home": home,
                "gone": gone,
                "slow_seen": slow_seen,
                "busy_seen": busy_seen,
            }
        finally:
            stop_server(proc)


def client(g: dict[str, Any], timeout: float = 60) -> Any:
    return openai.OpenAI(
        base_url=g["base"] + "/v1", api_key=g["key"], max_retries=0, timeout=timeout
    )


def wait_for(what: Callable[[], Any], seconds: float, why: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"after {seconds} s: {why}")
        time.sleep(0.1)


def logged(store: Any, **where: str) -> list[Any]:
    """Request-log rows (oldest first) whose columns equal ``where``."""
    from sqlalchemy import select

    from lmops.store.models import RequestLogRow

    q = select(RequestLogRow).filter_by(**where).order_by(RequestLogRow.id)
    with store.db.session() as s:
        return list(s.scalars(q))


def rows(home: Path, deployment: str, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    from lmops.store import Store

    monkeypatch.setenv("LMOPS_HOME", str(home))
    store = Store()
    try:
        return logged(store, deployment=deployment)
    finally:
        store.close()


def running(g: dict[str, Any], deployment: str) -> float:
    text = httpx.get(g["base"] + "/metrics", timeout=10).text
    m = re.search(rf'^lmops_running_sequences\{{deployment="{deployment}"\}} (\S+)$', text, re.M)
    assert m is not None, "no lmops_running_sequences for " + deployment
    return float(m.group(1))


def test_an_engine_reply_whose_client_gave_up_stops_at_once(
    gw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = client(gw, timeout=1.5)
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        c.completions.create(model="tiny", prompt="The quick", max_tokens=LONG, temperature=0)
    # the sequence is freed and the request logged as a 499 within moments, long before
    # its LONG tokens would have been generated
    (row,) = wait_for(
        lambda: rows(gw["home"], "tiny", monkeypatch), 5, "no request-log row for the hangup"
    )
    assert running(gw, "tiny") == 0
    assert row.status == 499 and row.error and "disconnected" in row.error
    assert 0 < row.completion_tokens < LONG and time.monotonic() - t0 < 8
    # its max_concurrent slot (1) was given back: the next request is admitted
    r = client(gw).completions.create(model="tiny", prompt="The quick", max_tokens=2)
    assert r.usage.completion_tokens == 2


def test_an_upstream_call_whose_client_gave_up_is_closed(
    gw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = client(gw, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}])
    # the upstream saw the gateway hang up (its reply was due in 50 s)
    wait_for(lambda: gw["gone"], 5, "the upstream call was not closed")
    (row,) = wait_for(lambda: rows(gw["home"], "slow", monkeypatch), 5, "no request-log row")
    assert row.status == 499
    with pytest.raises(openai.APITimeoutError):  # admitted again: the slot is free
        c.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}])
    wait_for(lambda: len(gw["gone"]) == 2, 5, "the second call was not closed")


def test_a_backoff_wait_ends_when_the_client_hangs_up(
    gw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream asks for 30 s before a retry; the client leaves after 1 s: the tries
    stop there (no second call, ever) and the request is logged as a 499 with its try."""
    with pytest.raises(openai.APITimeoutError):
        client(gw, timeout=1.0).chat.completions.create(
            model="busy", messages=[{"role": "user", "content": "hi"}]
        )
    (row,) = wait_for(lambda: rows(gw["home"], "busy", monkeypatch), 5, "no request-log row")
    assert row.status == 499 and len(gw["busy_seen"]) == 1


# -- errors nobody expected ------------------------------------------------------------------------
class Boom(RuntimeError):
    pass


SECRET = "sk-live-do-not-show"


@pytest.fixture
def gateway(store: Any) -> Iterator[dict[str, Any]]:
    """The gateway in this process (so a test can plant a bug), on uvicorn on 127.0.0.1;
    its server log is captured."""
    from lmops.serve.deployments import DeploymentSpec
    from lmops.serve.server import gateway_app

    specs = [
        DeploymentSpec(
            name="fake",
            fake={"tokens": 6},
            limits={"max_concurrent": 1, "tpm": 500},
        )
    ]
    _, secret = store.keys.create("t")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.ERROR)
    app = gateway_app(specs, store)
    with serve_app(app, "gateway") as url:
        # (added once uvicorn configured its loggers, which drops their handlers)
        logging.getLogger("uvicorn.error").addHandler(handler)
        try:
            yield {"base": url, "key": secret, "store": store, "log": records, "app": app}
        finally:
            logging.getLogger("uvicorn.error").removeHandler(handler)


def flushed_rows(g: dict[str, Any], **where: str) -> list[Any]:
    """The logged rows matching ``where``, waiting (10 s at most) for at least one: a
    stream's row is queued by its generator's ``finally``, which may run after the client
    read the error event."""
    deadline = time.monotonic() + 10
    while True:
        g["app"].state.gateway.hooks.log.flush(10)
        rows = logged(g["store"], **where)
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_an_unexpected_error_is_an_openai_500_that_ends_the_request(
    gateway: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmops.security.guard import Guardrails

    check = Guardrails.check_output

    def broken(self: Any, text: str) -> Any:
        raise Boom(f"bad state near {SECRET}")

    monkeypatch.setattr(Guardrails, "check_output", broken)
    c = openai.OpenAI(base_url=gateway["base"] + "/v1", api_key=gateway["key"], max_retries=0)
    for _ in range(2):  # twice: the first one's concurrency slot and tokens were given back
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(
                model="fake",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=400,
                extra_headers={"x-request-id": "req-boom-1"},
            )
        err = e.value
        assert err.status_code == 500 and err.response.headers["x-request-id"] == "req-boom-1"
        assert err.body["type"] == "server_error" and err.body["code"] == "internal_error"
        assert "Boom" in err.body["message"] and "req-boom-1" in err.body["message"]
        assert SECRET not in err.response.text
    failed = flushed_rows(gateway, x_request_id="req-boom-1")
    assert len(failed) == 2 and all(r.status == 500 and "Boom" in (r.error or "") for r in failed)
    assert all(SECRET not in (r.error or "") for r in failed)
    # the server log has the traceback
    traced = [r for r in gateway["log"] if r.exc_info and r.exc_info[0] is Boom]
    assert len(traced) == 2 and "req-boom-1" in traced[0].getMessage()
    monkeypatch.setattr(Guardrails, "check_output", check)
    r = c.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=400
    )
    assert r.choices[0].message.content


def test_a_stream_that_fails_midway_is_logged_with_why(
    gateway: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmops.security.stream import StreamGuard

    feed = StreamGuard.feed
    calls = {"n": 0}

    def breaks_on_the_third(self: Any, delta: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom(f"stream state near {SECRET}")
        return feed(self, delta)

    monkeypatch.setattr(StreamGuard, "feed", breaks_on_the_third)
    c = openai.OpenAI(base_url=gateway["base"] + "/v1", api_key=gateway["key"], max_retries=0)
    stream = c.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as e:
        for _ in stream:
            pass
    assert "Boom" in str(e.value.message) and SECRET not in str(e.value.message)
    (row,) = flushed_rows(gateway, endpoint="chat")
    assert row.status == 500 and row.error and "Boom" in row.error


def test_a_relayed_stream_that_breaks_is_logged_with_why(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmops.serve.deployments import DeploymentSpec
    from lmops.serve.server import gateway_app

    with fake_server(tokens=10, break_after=2) as up:
        spec = DeploymentSpec(name="up", upstream=f"{up}/v1", upstream_model="fake")
        _, secret = store.keys.create("t")
        app = gateway_app([spec], store)
        with serve_app(app, "gateway") as url:
            c = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
            with pytest.raises(openai.APIError):
                for _ in c.chat.completions.create(
                    model="up", messages=[{"role": "user", "content": "hi"}], stream=True
                ):
                    pass
            (row,) = flushed_rows({"app": app, "store": store}, deployment="up")
    assert row.status == 502 and row.error and "upstream" in row.error
