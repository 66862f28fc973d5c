"""Retries and fallbacks of the gateway (``retries:``, ``fallbacks:`` on a deployment):
the file's checks at load time, and, through ``lmops serve`` (a real uvicorn on
127.0.0.1) and the official ``openai`` client, upstreams played by the in-package fake
server failing on purpose."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from lmops.core.errors import UserError
from lmops.serve.backends import Job
from lmops.serve.deployments import DeploymentSpec, Registry, load_deployments
from lmops.serve.fake import fake_server
from lmops.serve.protocol import OpenAIError
from tests.conftest import free_port
from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server


def _load(tmp_path: Path, text: str) -> str:
    path = tmp_path / "deps.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_deployments(path)
    return str(e.value).replace(str(path), "deps.yaml")


def test_an_unknown_fallback_is_refused_at_load_with_its_line(tmp_path: Path) -> None:
    said = _load(
        tmp_path,
        "deployments:\n"
        "  - name: chat\n"
        "    fake: {tokens: 3}\n"
        "    fallbacks: [bakup]\n"
        "  - name: backup\n"
        "    fake: {tokens: 3}\n",
    )
    assert said == (
        "deps.yaml:4: deployments[0].fallbacks[0]: unknown deployment 'bakup'; "
        "did you mean 'backup'?"
    )


def test_a_fallback_cycle_or_itself_is_refused_at_load_with_its_line(tmp_path: Path) -> None:
    said = _load(
        tmp_path,
        "deployments:\n"
        "  - name: chat\n"
        "    fake: {tokens: 3}\n"
        "    fallbacks: [backup]\n"
        "  - name: backup\n"
        "    fake: {tokens: 3}\n"
        "    fallbacks:\n"
        "      - third\n"
        "  - name: third\n"
        "    fake: {tokens: 3}\n"
        "    fallbacks: [chat]\n",
    )
    assert said == (
        "deps.yaml:11: deployments[2].fallbacks[0]: fallbacks form a cycle: "
        "chat -> backup -> third -> chat; remove one of them"
    )
    said = _load(
        tmp_path,
        "deployments:\n  - name: chat\n    fake: {tokens: 3}\n    fallbacks: [chat]\n",
    )
    assert said == (
        "deps.yaml:4: deployments[0].fallbacks[0]: deployment 'chat' falls back to itself; "
        "name another one"
    )
    said = _load(
        tmp_path,
        "deployments:\n  - name: chat\n    fake: {tokens: 3}\n    retries: -1\n",
    )
    assert said == "deps.yaml:4: deployments[0].retries: Input should be greater than or equal to 0"


def test_specs_built_in_code_are_checked_too() -> None:
    specs = [
        DeploymentSpec(name="a", fake={"tokens": 2}, fallbacks=["b"]),
        DeploymentSpec(name="b", fake={"tokens": 2}, fallbacks=["a"]),
    ]
    with pytest.raises(UserError, match=r"fallbacks form a cycle: a -> b -> a"):
        Registry(specs, None)


def test_the_readme_example_loads_and_its_error_is_the_one_shown(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```yaml\n(deployments:\n  - name: big\n.*?)```", readme, re.S)
    path = tmp_path / "deployments.yaml"
    path.write_text(block)
    specs = load_deployments(path)
    assert specs[0].fallbacks == ["big-backup", "chat"] and specs[0].retries == 2
    (shown,) = re.findall(
        r"\(`(deployments\.yaml:\d+: deployments\[0\]\.fallbacks.*?)`\)", readme, re.S
    )
    path.write_text(block.replace("[big-backup, chat]", "[big-backup, chta]"))
    with pytest.raises(UserError) as e:
        load_deployments(path)
    assert str(e.value).replace(str(path), "deployments.yaml") == " ".join(shown.split())


class _Overloaded:
    """A built-in engine's backend whose queue is full."""

    model_ref = "chat:3"
    sampling: ClassVar[dict[str, float]] = {}
    default_max_tokens = 4

    def precheck(self, job: Job) -> None:
        return None

    async def prepare(self, job: Job) -> None:
        return None

    async def start(self, job: Job) -> Any:
        from lmops.models.engine import EngineOverloaded

        raise EngineOverloaded("queue full (1 running, 0 queued)")


def test_an_overloaded_engine_is_retried_then_falls_back() -> None:
    from lmops.serve import fallbacks
    from lmops.serve.policy import NullContext

    registry = Registry(
        [
            DeploymentSpec(name="a", fake={"tokens": 2}, retries=1, fallbacks=["b"]),
            DeploymentSpec(name="b", fake={"tokens": 2}),
            DeploymentSpec(name="c", fake={"tokens": 2}, retries=2),
        ],
        None,
    )
    job = Job(kind="chat", request_id="r", model="a", body={}, messages=[], prompts=None,
              max_tokens=2)  # fmt: skip
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    async def run(name: str) -> tuple[Any, Any, Any]:
        ctx = NullContext(registry.get(name), "r")
        try:
            gen, backend, _ = await fallbacks.start(
                registry, registry.get(name), _Overloaded(), job, ctx, sleep=sleep
            )
        except OpenAIError as e:
            return e, None, ctx
        return [b async for b in gen.batches()], backend, ctx

    batches, backend, ctx = asyncio.run(run("a"))
    assert backend.model_ref == "fake:b" and batches[0][0].text == "tok0"
    assert ctx.headers() == {"x-lmops-tries": "3", "x-lmops-fallback": "b"}
    assert [(t["deployment"], t.get("reason")) for t in ctx.tries] == [
        ("a", "overloaded"),
        ("a", "overloaded"),
        ("b", None),
    ]
    assert len(waits) == 1 and 0.125 <= waits[0] <= 0.25  # half to all of retry_backoff_s
    err, _, ctx = asyncio.run(run("c"))  # nowhere to fall back: the 503 it always was
    assert err.status == 503 and err.code == "engine_overloaded"
    assert err.message.endswith("(tried 3 times: c (overloaded), c (overloaded), c (overloaded))")
    assert len(waits) == 3


class _TooSmall(_Overloaded):
    """A fallback whose context is too small for the request: it refuses it up front."""

    model_ref = "small:1"

    async def prepare(self, job: Job) -> None:
        raise OpenAIError(400, "This model's maximum context length is 512 tokens",
                          code="context_length_exceeded")  # fmt: skip


def test_a_fallback_that_refuses_the_request_passes_it_on_to_the_next() -> None:
    from lmops.serve import fallbacks
    from lmops.serve.policy import NullContext

    registry = Registry(
        [
            DeploymentSpec(name="a", fake={"tokens": 2}, fallbacks=["small", "big"]),
            DeploymentSpec(name="small", fake={"tokens": 2}),
            DeploymentSpec(name="big", fake={"tokens": 2}),
            DeploymentSpec(name="only", fake={"tokens": 2}, fallbacks=["small"]),
        ],
        None,
    )
    registry.get("small").backend = _TooSmall  # type: ignore[method-assign]
    job = Job(kind="chat", request_id="r", model="a", body={}, messages=[], prompts=None,
              max_tokens=2)  # fmt: skip

    async def run(name: str) -> tuple[Any, Any]:
        ctx = NullContext(registry.get(name), "r")
        try:
            _gen, backend, _ = await fallbacks.start(
                registry, registry.get(name), _Overloaded(), job, ctx
            )
        except OpenAIError as e:
            return e, ctx
        return backend, ctx

    backend, ctx = asyncio.run(run("a"))
    assert backend.model_ref == "fake:big"
    assert [(t["deployment"], t.get("reason")) for t in ctx.tries] == [
        ("a", "overloaded"),
        ("small", "refused_400"),
        ("big", None),
    ]
    err, ctx = asyncio.run(run("only"))  # nothing else: the client hears what was tried
    assert err.status == 400 and "tried 2 times: only (overloaded), small (refused_400)" in (
        err.message
    )


# -- through the real server ------------------------------------------------------------------
openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")

ASK = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}
REPLY = "tok0 tok1 tok2 tok3"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A gateway whose upstreams are fake servers in this process, each failing its own
    way (``requests`` lists what each was sent), and one port nothing listens on."""
    root = tmp_path_factory.mktemp("fallbacks")
    home = root / "home"
    env = lmops_env(home)
    sent: dict[str, list[dict[str, Any]]] = {}
    fakes = {
        "ok": {},
        "flaky": {"fail_first": 2, "fail_status": 500},
        "fail503": {"fail_first": 10**6, "fail_status": 503},
        "bad400": {"fail_first": 10**6, "fail_status": 400},
        "spare": {},
        "breaks": {"break_after": 1},
        "slow": {"ttft_s": 3.0},
        "busy": {"fail_first": 10**6, "fail_status": 429, "retry_after": 30},
        "capped": {},
        "email": {"reply": "write to alice@example.com today"},
    }
    with ExitStack() as stack:
        urls = {}
        for name, kw in fakes.items():
            sent[name] = []
            urls[name] = (
                stack.enter_context(fake_server(tokens=4, model="up", requests=sent[name], **kw))
                + "/v1"
            )
        dead = f"http://127.0.0.1:{free_port()}/v1"

        def up(name: str, url: str, extra: str = "") -> str:
            return f"  - {{name: {name}, upstream: {url}, upstream_model: up{extra}}}\n"

        quick = ", retry_backoff_s: 0.01"
        deployments = root / "deployments.yaml"
        deployments.write_text(
            "deployments:\n"
            + up("down", dead, ", fallbacks: [ok]")
            + up("ok", urls["ok"])
            + up("flaky", urls["flaky"], f", retries: 2{quick}, fallbacks: [ok]")
            + up("allfail", dead, f", retries: 1{quick}, fallbacks: [alsodown]")
            + up("alsodown", urls["fail503"])
            + up("refuses", urls["bad400"], f", retries: 2{quick}, fallbacks: [spare]")
            + up("spare", urls["spare"])
            + up("breaks", urls["breaks"], f", retries: 2{quick}, fallbacks: [spare]")
            + up("slow", urls["slow"], ", upstream_timeout_s: 0.5, fallbacks: [ok]")
            + up("busy", urls["busy"], ", retries: 3, retry_max_wait_s: 1, fallbacks: [ok]")
            + up("capfirst", dead, ", fallbacks: [capped, ok]")
            + up("capped", urls["capped"], ", limits: {rpm: 1}")
            + up("masked", dead, ", fallbacks: [leaky]")
            + up("leaky", urls["email"], ", guardrails: {preset: off}")
        )
        lmops = lmops_cli(env)
        keys = {
            name: json.loads(lmops("keys", "create", "--name", name, *extra, "--json"))["key"]
            for name, extra in [
                ("all", []),
                ("capfirst-only", ["--scope", "capfirst"]),
                ("down-only", ["--scope", "down"]),
            ]
        }
        proc, base = start_server(env, "--deployments", str(deployments))
        stack.callback(stop_server, proc)
        yield {"base": base, "keys": keys, "home": home, "sent": sent, "urls": urls}


def _client(gw: dict[str, Any], key: str = "all") -> Any:
    return openai.OpenAI(
        base_url=gw["base"] + "/v1", api_key=gw["keys"][key], max_retries=0, timeout=60
    )


def _logged(gw: dict[str, Any], request_id: str) -> dict[str, Any]:
    """The trace of a logged request (``lmops trace ID --json``), once its row is written
    (rows are written in batches)."""
    from lmops.core.config import Settings
    from lmops.store import Store
    from lmops.store.trace import trace_request

    home = gw["home"]
    store = Store(Settings(home=home, database_url=f"sqlite:///{home / 'lmops.db'}",
                           artifacts=str(home / "artifacts"), shared_datasets=None))  # fmt: skip
    try:
        for _ in range(100):
            if store.requests.get(request_id) is not None:
                return trace_request(store, request_id).model_dump(mode="json")
            time.sleep(0.1)
    finally:
        store.close()
    raise AssertionError(f"{request_id} was never logged")


def test_primary_down_the_fallback_answers(gw: dict[str, Any]) -> None:
    c = _client(gw, "down-only")  # the key may call `down` only: the fallback needs no scope
    raw = c.chat.completions.with_raw_response.create(model="down", **ASK)
    r = raw.parse()
    assert r.model == "down" and r.choices[0].message.content == REPLY
    assert raw.headers["x-lmops-fallback"] == "ok" and raw.headers["x-lmops-tries"] == "2"
    row = _logged(gw, r.id)
    assert row["deployment"] == "down" and row["status"] == 200
    assert row["model_ref"] == gw["urls"]["ok"]  # the version that answered
    assert [(t["deployment"], t.get("reason"), t["status"]) for t in row["tries"]] == [
        ("down", "connect", 502),
        ("ok", None, 200),
    ]
    lmops = lmops_cli(lmops_env(gw["home"]))
    said = lmops("trace", r.id)
    assert "try 1: down (" in said and "failed: connect" in said
    assert f"try 2: ok ({gw['urls']['ok']}) answered" in said
    usage = json.loads(lmops("usage", "--deployment", "down", "--json"))
    stats = usage["by_deployment"]["down"]
    assert stats["retried"] >= 1 and stats["fallback_answers"] >= 1


def test_primary_down_the_fallback_answers_a_stream(gw: dict[str, Any]) -> None:
    c = _client(gw)
    raw = c.chat.completions.with_raw_response.create(
        model="down", stream=True, stream_options={"include_usage": True}, **ASK
    )
    assert raw.headers["x-lmops-fallback"] == "ok" and raw.headers["x-lmops-tries"] == "2"
    chunks = list(raw.parse())
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == REPLY
    assert {ch.model for ch in chunks} == {"down"} and chunks[-1].usage.completion_tokens == 4


def test_500_twice_then_ok_is_answered_by_the_primary_after_two_retries(
    gw: dict[str, Any],
) -> None:
    raw = _client(gw).chat.completions.with_raw_response.create(model="flaky", **ASK)
    assert raw.parse().choices[0].message.content == REPLY
    assert raw.headers["x-lmops-tries"] == "3" and "x-lmops-fallback" not in raw.headers
    assert len(gw["sent"]["flaky"]) == 3
    row = _logged(gw, raw.parse().id)
    assert [(t["deployment"], t.get("reason")) for t in row["tries"]] == [
        ("flaky", "http_500"),
        ("flaky", "http_500"),
        ("flaky", None),
    ]
    assert row["model_ref"] == gw["urls"]["flaky"]
    metrics = httpx.get(gw["base"] + "/metrics").text
    assert 'lmops_retries_total{deployment="flaky",reason="http_500"} 2.0' in metrics
    assert 'lmops_fallbacks_total{deployment="down",fallback="ok",reason="connect"}' in metrics


def test_all_fail_is_one_openai_error_naming_what_was_tried(gw: dict[str, Any]) -> None:
    with pytest.raises(openai.APIStatusError) as e:
        _client(gw).chat.completions.create(model="allfail", **ASK)
    assert e.value.status_code == 502 and e.value.body["code"] == "upstream_error"
    assert e.value.response.headers["x-lmops-tries"] == "3"
    assert e.value.message.endswith(
        "(tried 3 times: allfail (connect), allfail (connect), alsodown (http_503))"
    )
    assert len(gw["sent"]["fail503"]) == 1


def test_a_400_of_the_primary_is_not_retried(gw: dict[str, Any]) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            r = _client(gw).chat.completions.create(model="refuses", stream=stream, **ASK)
            list(r) if stream else None
        assert "injected failure (400)" in e.value.message
        assert "x-lmops-tries" not in e.value.response.headers
    assert len(gw["sent"]["bad400"]) == 2 and gw["sent"]["spare"] == []


def test_a_stream_that_fails_after_its_first_chunk_is_not_retried(gw: dict[str, Any]) -> None:
    headers = {"Authorization": "Bearer " + gw["keys"]["all"]}
    body = {"model": "breaks", "stream": True, **ASK}
    r = httpx.post(gw["base"] + "/v1/chat/completions", headers=headers, json=body, timeout=60)
    assert r.status_code == 200  # the reply had begun: the error is an event in it
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-1])["error"]["code"] == "upstream_error"
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    assert len(gw["sent"]["breaks"]) == 1 and gw["sent"]["spare"] == []


def test_a_timeout_before_the_reply_falls_back(gw: dict[str, Any]) -> None:
    raw = _client(gw).chat.completions.with_raw_response.create(model="slow", **ASK)
    assert raw.parse().choices[0].message.content == REPLY
    assert raw.headers["x-lmops-fallback"] == "ok"
    tries = _logged(gw, raw.parse().id)["tries"]
    assert [t.get("reason") for t in tries] == ["timeout", None]


def test_a_retry_after_past_the_cap_skips_to_the_fallback(gw: dict[str, Any]) -> None:
    started = time.monotonic()
    raw = _client(gw).chat.completions.with_raw_response.create(model="busy", **ASK)
    assert time.monotonic() - started < 10  # did not wait the 30 s the upstream asked
    assert raw.headers["x-lmops-fallback"] == "ok" and raw.headers["x-lmops-tries"] == "2"
    assert len(gw["sent"]["busy"]) == 1  # its 3 retries were skipped


def test_a_fallback_over_its_own_limits_is_skipped(gw: dict[str, Any]) -> None:
    c = _client(gw, "capfirst-only")
    first = c.chat.completions.with_raw_response.create(model="capfirst", **ASK)
    assert first.headers["x-lmops-fallback"] == "capped"
    second = c.chat.completions.with_raw_response.create(model="capfirst", **ASK)
    assert second.headers["x-lmops-fallback"] == "ok"  # capped's rpm 1 is spent
    tries = _logged(gw, second.parse().id)["tries"]
    assert [(t["deployment"], t.get("reason")) for t in tries] == [
        ("capfirst", "connect"),
        ("capped", "limit:rpm"),
        ("ok", None),
    ]


def test_the_named_deployments_guardrails_check_a_fallbacks_reply(gw: dict[str, Any]) -> None:
    r = _client(gw).chat.completions.create(model="masked", **ASK)
    text = r.choices[0].message.content or ""
    assert "alice@example.com" not in text and "today" in text  # masked, as `masked` says


def test_a_fallback_reads_the_guarded_text_never_the_first_models_token_ids() -> None:
    """Token ids are the first model's: a fallback (another tokenizer) that decoded them
    again would read text the input guardrails never saw. It gets the guarded text."""
    from lmops.serve import fallbacks
    from lmops.serve.policy import NullContext

    registry = Registry(
        [
            DeploymentSpec(name="a", fake={"tokens": 2}, fallbacks=["b"]),
            DeploymentSpec(name="b", fake={"tokens": 2}),
        ],
        None,
    )
    seen: list[Job] = []
    real = registry.get("b").backend

    def spy(*a: Any, **kw: Any) -> Any:
        backend = real(*a, **kw)
        prepare = backend.prepare

        async def record(job: Job) -> None:
            seen.append(job)
            await prepare(job)

        backend.prepare = record
        return backend

    registry.get("b").backend = spy  # type: ignore[method-assign]
    job = Job(kind="completion", request_id="r", model="a", body={}, messages=None,
              prompts=["mail <EMAIL>"], token_ids=[[5, 6, 7]], max_tokens=2)  # fmt: skip

    async def run() -> Any:
        ctx = NullContext(registry.get("a"), "r")
        _gen, backend, _ = await fallbacks.start(
            registry, registry.get("a"), _Overloaded(), job, ctx
        )
        return backend

    assert asyncio.run(run()).model_ref == "fake:b"
    assert seen and seen[0].token_ids is None and seen[0].prompts == ["mail <EMAIL>"]
