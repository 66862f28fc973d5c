"""A moment's failure reading an endpoint's ``/v1/models`` card is not a verdict: it is
tried once more, and if that fails too, the one call goes as to an endpoint that is not
lmops and the next call asks again. A refusal (404, 401...) is the server's answer, kept.

The endpoint is a real HTTP server on 127.0.0.1 that serves an lmops deployment's card
after failing the first requests for it as told (a 503, a connection closed without an
answer, an answer later than the client waits), and records what chat requests carry:
a version's ref for the gateway to render (an lmops deployment), or messages rendered
on the client (any other endpoint)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lmops.prompts import create, load
from lmops.prompts.lm import OpenAIChat
from lmops.prompts.playground import run_prompt
from lmops.store import Store

pytest.importorskip("openai", reason="the official openai client is in the dev extra")

CARD = {"versions": ["m:1"], "endpoints": ["chat", "completion", "embeddings"]}


class Card:
    """How the card route answers: its first ``failures`` requests fail as ``how`` says
    (``503``, ``reset``: the connection closed with no answer, ``slow``: an answer after
    ``slow_s``), later ones with ``status`` (200: the lmops card)."""

    def __init__(self, how: str = "503", failures: int = 0, status: int = 200) -> None:
        self.how, self.failures, self.status = how, failures, status
        self.slow_s = 1.5
        self.asked = 0  # card requests that arrived
        self.chats: list[dict[str, Any]] = []


@contextmanager
def endpoint(card: Card) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            card.asked += 1
            if card.asked <= card.failures:
                if card.how == "reset":
                    self.close_connection = True
                    self.connection.close()
                    return
                if card.how == "slow":
                    time.sleep(card.slow_s)
                else:
                    self._send(503, {"error": {"message": "busy"}})
                    return
            if card.status != 200:
                self._send(card.status, {"error": {"message": "no"}})
                return
            self._send(200, {"id": "m", "object": "model", "created": 0, "owned_by": "lmops",
                             "lmops": CARD})  # fmt: skip

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            card.chats.append(body)
            delta = {"role": "assistant", "content": "Bonjour"}
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": "stop"}]}  # fmt: skip
            data = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def as_sent(body: dict[str, Any]) -> str:
    """``ref``: the version's ref for the gateway to render; ``rendered``: messages."""
    return "ref" if body.get("prompt") == "fr:1" and not body["messages"] else "rendered"


def run(store: Store, model: OpenAIChat) -> str:
    return "".join(run_prompt(load(store, "fr:1"), model, {"input": "Good morning"}))


@pytest.mark.parametrize("how", ["503", "reset", "slow"])
def test_a_card_that_fails_once_is_asked_again_at_once(store: Store, how: str) -> None:
    create(store, "fr", "Translate into French: {{input}}")
    card = Card(how, failures=1)
    with endpoint(card) as url:
        model = OpenAIChat(url, "m", api_key="x", max_retries=0, timeout_s=0.5)
        assert run(store, model) == "Bonjour"
    assert card.asked == 2
    assert [as_sent(b) for b in card.chats] == ["ref"]  # an lmops deployment after all


def test_a_card_that_fails_twice_is_left_a_while_then_asked_again(
    store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmops.core.card as card_module
    import lmops.prompts.lm as lm

    create(store, "fr", "Translate into French: {{input}}")
    card = Card("503", failures=2)
    clock = [1000.0]
    monkeypatch.setattr(lm, "_now", lambda: clock[0])
    monkeypatch.setattr(card_module, "_sleep", lambda s: None)
    with endpoint(card) as url, caplog.at_level(logging.WARNING, "lmops.prompts"):
        model = OpenAIChat(url, "m", api_key="x", max_retries=0)
        for _ in range(2):
            assert run(store, model) == "Bonjour"
        assert card.asked == 2  # the second call did not ask: a failing card costs once
        clock[0] += lm.CARD_FORGET_S
        for _ in range(2):
            assert run(store, model) == "Bonjour"
    # the first two calls could not tell and sent rendered messages; a minute later the card
    # was read (and kept: the fourth call did not ask)
    assert [as_sent(b) for b in card.chats] == ["rendered", "rendered", "ref", "ref"]
    assert card.asked == 3
    said = [r.getMessage() for r in caplog.records if r.name == "lmops.prompts"]
    assert len(said) == 1 and said[0].startswith(
        f"{url} (m): its /v1/models card could not be read twice (HTTP 503 "
    )
    assert said[0].endswith(
        "for 60 s it is treated as an endpoint that is not lmops, then asked again"
    )


def test_the_optimiser_refuses_when_it_cannot_tell_whether_a_prompt_is_bound(
    store: Store,
) -> None:
    from lmops.core.errors import UserError
    from lmops.prompts.optimize import _refuse_bound

    with endpoint(Card("503", failures=10)) as url:
        model = OpenAIChat(url, "m", api_key="x", max_retries=0)
        with pytest.raises(
            UserError, match="card could not be read, so whether the deployment binds"
        ):
            _refuse_bound(model, "the target")


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refusal_is_the_servers_answer_and_is_kept(store: Store, status: int) -> None:
    create(store, "fr", "Translate into French: {{input}}")
    card = Card(status=status)
    with endpoint(card) as url:
        model = OpenAIChat(url, "m", api_key="x", max_retries=0)
        for _ in range(3):
            assert run(store, model) == "Bonjour"
    # once for the three calls (a 404 card is also looked for in the list, /v1/models)
    assert card.asked == (2 if status == 404 else 1)
    assert [as_sent(b) for b in card.chats] == ["rendered"] * 3


def test_an_empty_lmops_part_is_still_an_lmops_card(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway whose card says nothing more of the deployment (``"lmops": {}``) still
    renders a prompt picked by ref."""
    import tests.prompts.test_card_probe as here

    monkeypatch.setattr(here, "CARD", {})
    create(store, "fr", "Translate into French: {{input}}")
    card = Card()
    with endpoint(card) as url:
        model = OpenAIChat(url, "m", api_key="x", max_retries=0)
        assert model.renders_prompts and model.bound_prompt is None
        assert run(store, model) == "Bonjour"
    assert [as_sent(b) for b in card.chats] == ["ref"]
