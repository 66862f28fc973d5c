"""Which canary failures are the canary set's or the key's (a setup ``error``, one line
saying what to fix: no alert, no retraining) and which the deployment's availability
(``unanswered``): a key's own rate limit, a canary larger than a limit, a request the
gateway refuses as malformed (400/413/422), and a URL where no HTTP server answers are the
setup's; the deployment's own limit and a server that answers HTTP but drops the model's
requests are the deployment's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lmops.monitor.canary import key_name, load_canaries, run_canaries, setup_error
from lmops.serve.deployments import DeploymentSpec
from lmops.serve.fake import fake_server, serve_app
from lmops.serve.server import gateway_app
from tests.monitor.traffic import banner_server

pytest.importorskip("openai", reason="the official openai client is in the dev extra")

CANARIES = """\
prompts:
  - {id: capital, prompt: "What is the capital of France?", expect: {contains: [Paris]}}
  - {id: hello, prompt: Say hello., expect: {contains: [hello]}}
  - {id: third, prompt: Say hello again., expect: {contains: [hello]}}
"""


def _canaries(tmp_path: Path) -> Any:
    path = tmp_path / "canaries.yaml"
    path.write_text(CANARIES)
    return load_canaries(path)


@contextmanager
def gateway(store: Any, limits: dict[str, int]) -> Iterator[str]:
    """A real gateway (uvicorn) whose deployment ``chat`` has ``limits``, in front of the
    fake model; yields its /v1 URL."""
    with fake_server(model="chat", reply="Paris. hello") as upstream:
        spec = DeploymentSpec(
            name="chat", upstream=f"{upstream}/v1", upstream_model="chat", limits=limits
        )
        with serve_app(gateway_app([spec], store), "gateway") as url:
            yield f"{url}/v1"


@pytest.mark.parametrize(
    ("key_limits", "said"),
    [
        ({"rpm": 1}, "the API key's own limits stopped the canaries"),
        ({"tpm": 5}, "canary 'capital' can never pass a limit"),
    ],
)
def test_a_key_scoped_limit_is_a_setup_error_not_an_availability_failure(
    store: Any, tmp_path: Path, key_limits: dict[str, int], said: str
) -> None:
    """rpm=1 let one canary through and 429'd the rest; tpm=5 refused every canary as too
    large for the key, forever. Both were `unanswered`: an availability page for a key
    setting, and a wrong answer among them never retrained."""
    secret = store.keys.create("canary", **key_limits)[1]
    with gateway(store, {}) as url:
        results = run_canaries(_canaries(tmp_path), base_url=url, model="chat", api_key=secret)
    fix = setup_error(results)
    assert fix is not None and said in fix, [r.model_dump() for r in results]
    assert "key:canary" in fix and "\n" not in fix
    assert all(r.cause is None for r in results)
    assert [r.outcome for r in results][-1] == "error"


def test_the_deployments_own_rate_limit_is_an_availability_failure(
    store: Any, tmp_path: Path
) -> None:
    secret = store.keys.create("canary")[1]
    with gateway(store, {"rpm": 1}) as url:
        results = run_canaries(_canaries(tmp_path), base_url=url, model="chat", api_key=secret)
    assert setup_error(results) is None
    assert [(r.outcome, r.cause) for r in results] == [
        ("pass", None),
        ("fail", "unanswered"),
        ("fail", "unanswered"),
    ]
    assert "dep:chat" in (results[1].error or "")


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_request_the_gateway_refuses_as_malformed_is_the_canary_sets_to_fix(
    tmp_path: Path, status: int
) -> None:
    """A canary whose prompt or max_tokens the deployment refuses is a problem of the set:
    retraining the model or paging about the server fixes nothing."""
    with fake_server(model="chat", fail_first=100, fail_status=status) as url:
        results = run_canaries(_canaries(tmp_path), base_url=f"{url}/v1", model="chat")
    fix = setup_error(results)
    assert fix is not None, [r.model_dump() for r in results]
    assert f"refused canary 'capital' ({status}" in fix and "fix the canary" in fix
    assert [r.outcome for r in results] == ["error"] * 3 and results[1].error == f"not sent: {fix}"


def test_a_url_where_no_http_server_answers_is_a_setup_error(tmp_path: Path) -> None:
    """base_url at an SSH port: a setup error on main ("cannot connect ... check base_url"),
    then `unanswered` (an availability page, exit 0) once lost connections became the
    deployment's. The probe of /v1/models tells the two apart."""
    with banner_server(b"SSH-2.0-OpenSSH_9.6\r\n") as url:
        results = run_canaries(_canaries(tmp_path), base_url=f"{url}/v1", model="chat")
    fix = setup_error(results)
    assert fix is not None and "does not answer HTTP" in fix and "check base_url" in fix, [
        r.model_dump() for r in results
    ]
    assert "b'SSH-2.0-OpenSSH_9.6\\r\\n'" in fix, fix  # what came back, quoted
    assert [r.outcome for r in results] == ["error"] * 3


def test_a_server_that_closes_without_a_byte_is_unanswered_not_a_setup_error(
    tmp_path: Path,
) -> None:
    """A listener that accepts, reads the request and closes, sending nothing, even to GET
    /models: what ``ssh -L``, ``kubectl port-forward`` or a TCP load balancer does while the
    gateway behind it is down. It was called "no HTTP server here", a setup error, so no
    availability alert fired for a gateway that was down."""
    with banner_server(b"") as url:
        results = run_canaries(_canaries(tmp_path), base_url=f"{url}/v1", model="chat")
    assert setup_error(results) is None, [r.model_dump() for r in results]
    assert [(r.outcome, r.cause) for r in results] == [("fail", "unanswered")] * 3
    assert "the connection was lost" in (results[0].error or "")


def test_an_http_server_that_drops_the_model_requests_is_unanswered(tmp_path: Path) -> None:
    with banner_server(b"", models=True) as url:
        results = run_canaries(_canaries(tmp_path), base_url=f"{url}/v1", model="chat")
    assert setup_error(results) is None
    assert [(r.outcome, r.cause) for r in results] == [("fail", "unanswered")] * 3
    assert "the connection was lost" in (results[0].error or "")


def test_a_connect_timeout_is_a_setup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's transport raises ConnectTimeout, as for a host that drops SYNs (a
    firewall, a wrong address): in process, since a real one is slow and flaky to make."""
    import importlib

    import openai

    # the HTTP library the client is built on: httpx, or httpx2 in newer releases
    httpx = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])

    class NoConnection(httpx.BaseTransport):
        def handle_request(self, request: Any) -> Any:
            raise httpx.ConnectTimeout("timed out", request=request)

    made = openai.OpenAI

    def client(**kw: Any) -> Any:
        return made(**kw, http_client=httpx.Client(transport=NoConnection()))

    monkeypatch.setattr(openai, "OpenAI", client)
    results = run_canaries(_canaries(tmp_path), base_url="http://10.255.255.1/v1", model="chat")
    fix = setup_error(results)
    assert fix is not None and "did not answer in time; is the gateway up" in fix
    assert [r.outcome for r in results] == ["error"] * 3


def test_a_deployment_whose_bound_prompt_no_longer_resolves_is_unanswered(
    store: Any, tmp_path: Path
) -> None:
    """Every request to such a deployment gets 400 ``invalid_prompt``: the deployment's
    problem, which callers meet too. It was a setup error ("fix the canary"), so no
    availability alert fired."""
    from lmops.prompts import create, label
    from lmops.prompts.registry import _forget

    secret = store.keys.create("canary")[1]
    create(store, "greet", "Be brief.")
    label(store, "greet:1", "production")
    with fake_server(model="chat", reply="Paris. hello") as upstream:
        spec = DeploymentSpec(
            name="chat", upstream=f"{upstream}/v1", upstream_model="chat", prompt="greet@production"
        )
        with serve_app(gateway_app([spec], store), "gateway") as url:
            store.assets.unalias("greet", "production")  # the label the deployment binds
            _forget("greet")  # as the gateway's prompt cache does within 5 s
            results = run_canaries(
                _canaries(tmp_path), base_url=f"{url}/v1", model="chat", api_key=secret
            )
    assert setup_error(results) is None, [r.model_dump() for r in results]
    assert [(r.outcome, r.cause) for r in results] == [("fail", "unanswered")] * 3
    assert "alias 'production' of asset 'greet' not found" in (results[0].error or "")


@pytest.mark.parametrize("known", [True, False])
def test_an_upstream_gateways_key_limit_passed_on_is_the_deployments(
    store: Any, tmp_path: Path, known: bool
) -> None:
    """A gateway in front of another lmops gateway passes its 429 on word for word: "rate
    limit reached for key:front-gw" named a key, so it was the canaries' setup error and no
    availability alert fired, while every caller of the front gateway was refused. When the
    canaries' key's name was not known (``known``: a gateway with a store of its own), any
    key's limit still counted as theirs; the front's facts now say the upstream's."""
    front_secret = store.keys.create("front-gw", rpm=1)[1]  # the front's key upstream
    secret = store.keys.create("canary")[1]
    with gateway(store, {}) as upstream:
        spec = DeploymentSpec(
            name="front", upstream=upstream, upstream_model="chat", upstream_api_key=front_secret
        )
        with serve_app(gateway_app([spec], store), "front") as url:
            results = run_canaries(
                _canaries(tmp_path),
                base_url=f"{url}/v1",
                model="front",
                api_key=secret,
                key=key_name(store, secret) if known else None,
            )
    assert key_name(store, secret) == "canary" and key_name(store, "sk-unknown") is None
    assert setup_error(results) is None, [r.model_dump() for r in results]
    assert [(r.outcome, r.cause) for r in results] == [
        ("pass", None),
        ("fail", "unanswered"),
        ("fail", "unanswered"),
    ]
    assert "key:front-gw" in (results[1].error or "")


def test_a_request_too_large_for_an_older_upstream_gateway_is_a_setup_error(
    store: Any, tmp_path: Path
) -> None:
    """Behind a gateway older than ``error.lmops`` ("request too large for dep:chat" in its
    message only), the front passed the 429 on with facts saying ``too_large: false``, and
    the canary, which believes facts over words, paged availability for canaries that can
    never pass. The front reads the older gateway's words as the canary would."""
    from tests.serve.test_refusal_facts import older_gateway

    secret = store.keys.create("canary")[1]
    said = ("request too large for dep:chat: it needs 30 tokens and the limit is tpm 3 per "
            "minute; lower max_tokens or shorten the prompt")  # fmt: skip
    with older_gateway(said) as old:
        spec = DeploymentSpec(name="front", upstream=f"{old}/v1", upstream_model="chat")
        with serve_app(gateway_app([spec], store), "front") as url:
            results = run_canaries(_canaries(tmp_path), base_url=f"{url}/v1", model="front",
                                   api_key=secret, key="canary")  # fmt: skip
    fix = setup_error(results)
    assert fix is not None and "can never pass a limit of the upstream of front" in fix, [
        r.model_dump() for r in results
    ]


def _refused(message: str, facts: dict[str, Any] | None = None) -> Any:
    import httpx
    import openai

    request = httpx.Request("POST", "http://gw/v1/chat/completions")
    body: dict[str, Any] = {
        "message": message,
        "type": "rate_limit_error",
        "code": "rate_limit_exceeded",
    }
    if facts is not None:
        body["lmops"] = facts
    return openai.RateLimitError(message, response=httpx.Response(429, request=request), body=body)


def _facts(scope: str, name: str, limit: str | None = "rpm", **more: Any) -> dict[str, Any]:
    return {"scope": scope, "name": name, "limit": limit, "retry_after_s": 2.0,
            "too_large": False, **more}  # fmt: skip


@pytest.mark.parametrize(
    ("facts", "key", "said"),
    [
        (_facts("key", "canary"), "canary", "give the canaries a key whose rpm and tpm allow"),
        (_facts("key", "canary"), None, "give the canaries a key whose rpm and tpm allow"),
        (_facts("key", "canary", "max_concurrent"), "canary", "give the canaries a key of their own"),
        (_facts("key", "other"), "canary", None),
        (_facts("deployment", "chat"), "canary", None),
        (_facts("deployment", "chat", "tpm", retry_after_s=None, too_large=True), "canary",
         "can never pass a limit of deployment:chat"),
        # an upstream gateway's, passed on: the deployment's, whether the key is known or not
        (_facts("upstream", "chat", upstream=_facts("key", "canary")), None, None),
        (_facts("upstream", "chat", too_large=True), "canary",
         "can never pass a limit of the upstream of chat"),
    ],
)  # fmt: skip
def test_a_429s_facts_say_whose_limit_it_was_whatever_its_message(
    facts: dict[str, Any], key: str | None, said: str | None
) -> None:
    """The canary read the scope out of the 429's message ("rate limit reached for
    key:NAME"), so a reworded message made a key's limit look like the deployment's: it
    reads the facts (``error.lmops``) now, here under a message that names nothing."""
    from lmops.monitor.canary import Canary, _setup_fix

    e = _refused("Too many requests, slow down.", facts)
    fix = _setup_fix(e, Canary(id="c", prompt="p"), "http://gw/v1", "chat", None, key)
    assert (fix is None) if said is None else (fix is not None and said in fix), fix


@pytest.mark.parametrize(
    ("message", "key", "said"),
    [
        ("rate limit reached for key:canary: rpm 1 requests per minute; ...", "canary",
         "give the canaries a key whose rpm and tpm allow a whole run"),
        ("too many concurrent requests for key:canary: 2 in flight, max_concurrent 2; ...",
         "canary", "give the canaries a key of their own, or raise its max_concurrent"),
        # another key's, passed on by a gateway in front: the deployment's
        ("rate limit reached for key:front-gw: rpm 1 requests per minute; ...", "canary", None),
        # the canaries' key not known (a gateway with a store of its own): any key's
        ("rate limit reached for key:front-gw: rpm 1 requests per minute; ...", None,
         "the API key's own limits stopped the canaries"),
        ("rate limit reached for dep:chat: rpm 1 requests per minute; ...", "canary", None),
    ],
)  # fmt: skip
def test_which_429_is_the_canaries_key_s(message: str, key: str | None, said: str | None) -> None:
    """The key-concurrency 429 was given rpm/tpm advice, though canaries go one at a time:
    other requests with the same key hold its slots."""
    from lmops.monitor.canary import Canary, _setup_fix

    fix = _setup_fix(_refused(message), Canary(id="c", prompt="p"), "http://gw/v1", "chat",
                     None, key)  # fmt: skip
    assert (fix is None) if said is None else (fix is not None and said in fix), fix
