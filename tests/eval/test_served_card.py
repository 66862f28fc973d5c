"""An evaluation through an endpoint links the model versions the endpoint serves, read from its
``/v1/models`` card as the prompt stage reads it (``core.card.read_card``): a moment's failure
is tried once more, a refusal (404...) is the answer of an endpoint that is not an lmops
gateway, and a card that cannot be read leaves the lineage unknown, said in the report, its
metadata and the command's summary, never silently missing.

The endpoint is a real HTTP server on 127.0.0.1 that fails the first card requests as told (a
503, or a connection closed without an answer) and answers generations."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lmops.core.card import read_card
from lmops.eval.jobs import run_eval, served_model
from lmops.eval.spec import build_spec
from lmops.store import Store
from tests.eval.test_run import write_task


class Card:
    """The card routes (``/v1/models/m``, and the list ``/v1/models``): their first
    ``failures`` requests fail as ``how`` says (``503``, or ``reset``: closed without an
    answer), later ones answer ``status`` (200: an lmops deployment's card serving
    ``versions``)."""

    def __init__(
        self, versions: list[str], how: str = "503", failures: int = 0, name: str = "m"
    ) -> None:
        self.versions, self.how, self.failures, self.name = versions, how, failures, name
        self.status = 200
        self.asked = 0
        self.paths: list[str] = []  # every GET, in order
        # False: a server with only the list (vLLM's, or an lmops gateway whose card route
        # takes no name with a slash): the card route is 404
        self.card_route = True
        # a status the card route answers, a 302 to the card, or anything the server says
        self.card_status: int | None = None


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
            card.paths.append(self.path)
            own = f"/v1/models/{card.name}"
            if self.path == "/v1/models/moved":  # a card moved elsewhere: redirected
                self.send_response(302)
                self.send_header("Location", own)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path == own and card.card_status is not None:
                self._send(card.card_status, {"error": {"message": "a status"}})
                return
            if self.path not in ((own,) if card.card_route else ()) + ("/v1/models",):
                self._send(404, {"error": {"message": "Not Found"}})
                return
            card.asked += 1
            if card.asked <= card.failures:
                if card.how == "reset":
                    self.close_connection = True
                    self.connection.close()
                    return
                self._send(503, {"error": {"message": "warming up"}})
                return
            if card.status != 200:
                self._send(card.status, {"error": {"message": "no such model"}})
                return
            lmops = {"versions": card.versions, "endpoints": ["chat", "completion"]}
            entry = {"id": card.name, "object": "model", "owned_by": "lmops", "lmops": lmops}
            other = {"id": "other", "object": "model", "lmops": {"versions": ["x"]}}
            listed = self.path == "/v1/models"  # the list of every card
            self._send(200, {"object": "list", "data": [other, entry]} if listed else entry)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            choices = [{"index": i, "text": " Paris"} for i in range(len(prompts))]
            self._send(200, {"choices": choices})

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


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    import lmops.core.card as card_module

    monkeypatch.setattr(card_module, "_sleep", lambda s: None)


def _model(store: Store, tmp_path: Path) -> str:
    folder = tmp_path / "served-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}", "utf-8")
    return str(store.assets.register("model", "served", folder).ref)


def _eval(store: Store, url: str, tmp_path: Path) -> Any:
    spec = build_spec(
        None,
        {"model": "m", "endpoint": url, "task_files": [str(write_task(tmp_path))], "retries": 0},
    )
    return run_eval(store, spec, progress=False)


@pytest.mark.parametrize("how", ["503", "reset"])
def test_a_card_that_fails_once_still_links_the_served_version(
    store: Store, tmp_path: Path, how: str
) -> None:
    ref = _model(store, tmp_path)
    card = Card([ref], how=how, failures=1)
    with endpoint(card) as url:
        job = _eval(store, url, tmp_path)
    assert card.asked == 2
    served = job.report["model"]["served"]
    assert served["gateway"] == "lmops" and served["versions"] == [ref]
    assert "warnings" not in job.report
    upstream = store.assets.lineage(job.version.ref).upstream
    assert [e.parent for e in upstream if e.role == "served_model"] == [ref]


def test_a_card_that_cannot_be_read_says_the_lineage_is_unknown(
    cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    s = Store()
    try:
        ref = _model(s, tmp_path)
    finally:
        s.close()
    card = Card([ref], failures=10)
    with endpoint(card) as url:
        r = cli("eval", "run", "--model", "m", "--endpoint", url, "--retries", "0",
                "--task-file", str(write_task(tmp_path)), "--output", "blip")  # fmt: skip
    assert r.code == 0, r.err
    assert card.asked == 2  # one retry, no more
    said = [line for line in r.out.splitlines() if line.startswith("warning: ")]
    assert len(said) == 1 and "card of m at http://127.0.0.1" in said[0]
    assert "could not be read twice (HTTP 503" in said[0] and "not linked" in said[0]
    s = Store()
    try:
        v = s.assets.resolve("blip")
        served = v.metadata["model"]["served"]
        assert served["lineage"] == "unknown" and served["gateway"] is None
        assert v.metadata["warnings"] == [served["warning"]]
        assert not [e for e in s.assets.lineage(v.ref).upstream if e.role == "served_model"]
    finally:
        s.close()


def test_a_refusal_is_the_answer_of_an_endpoint_that_is_not_lmops(
    store: Store, tmp_path: Path
) -> None:
    card = Card([])
    card.status = 404
    with endpoint(card) as url:
        job = _eval(store, url, tmp_path)
    # a verdict, not asked again: the card, then the list (a server without per-model cards)
    assert card.paths == ["/v1/models/m", "/v1/models"]
    assert job.report["model"]["served"] == {"endpoint": url, "gateway": None}
    assert "warnings" not in job.report


def test_a_server_with_only_the_list_still_links_the_served_version() -> None:
    """vLLM's server, or an lmops gateway from before names with a slash had cards: the
    card route is 404, the list names the model."""
    card = Card(["fake:org/m"], name="org/m")
    card.card_route = False
    with endpoint(card) as url:
        served = served_model("org/m", url)
    assert card.paths == ["/v1/models/org/m", "/v1/models"]
    assert served == {
        "endpoint": url,
        "gateway": "lmops",
        "deployment": "org/m",
        "versions": ["fake:org/m"],
    }
    card = Card(["fake:org/m"], name="org/m", failures=1)  # the list fails once, too
    card.card_route = False
    with endpoint(card) as url:
        assert served_model("org/m", url)["versions"] == ["fake:org/m"]
        assert read_card(url, "gone").status == 404  # not in the list either: the answer
    assert card.paths[:3] == ["/v1/models/org/m", "/v1/models", "/v1/models"]


def test_a_gateway_links_a_deployment_named_with_a_slash(store: Store) -> None:
    """A real gateway (uvicorn) serving a fake deployment named org/m."""
    from lmops.serve.deployments import DeploymentSpec
    from lmops.serve.server import gateway_app
    from tests.serve.conftest import serving

    _, key = store.keys.create("t")
    app = gateway_app([DeploymentSpec(name="org/m", fake={"tokens": 2})], store)
    with serving(app) as base:
        served = served_model("org/m", base + "/v1", api_key=key)
    assert served["gateway"] == "lmops" and served["versions"] == ["fake:org/m"]
    assert "warning" not in served


@pytest.mark.parametrize("status", [202, 300, 507, 520, 524])
def test_only_a_200_or_a_4xx_is_an_answer(status: int) -> None:
    """Anything else (a 2xx other than 200, a 3xx that is not a redirect, a 507 or a
    proxy's 52x) is a moment's failure: asked once more, then lineage unknown."""
    card = Card(["x"])
    card.card_status = status
    with endpoint(card) as url:
        found = read_card(url, "m")
        served = served_model("m", url)
    assert found.unknown and found.error.startswith(f"HTTP {status}")
    assert card.paths == ["/v1/models/m"] * 4  # twice each, no more
    assert served["lineage"] == "unknown" and "could not be read twice" in served["warning"]


@pytest.mark.parametrize("status", [401, 403, 410])
def test_a_4xx_is_the_servers_answer(status: int) -> None:
    card = Card(["x"])
    card.card_status = status
    with endpoint(card) as url:
        found = read_card(url, "m")
    assert found.status == status and found.card is None and not found.unknown
    assert card.paths == ["/v1/models/m"]


def test_a_redirect_is_followed_to_the_card() -> None:
    card = Card(["v1"])
    with endpoint(card) as url:
        found = read_card(url, "moved")
    assert card.paths == ["/v1/models/moved", "/v1/models/m"]
    assert found.status == 200 and found.lmops is not None
    assert found.lmops["versions"] == ["v1"]
