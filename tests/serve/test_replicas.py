"""A deployment over several replicas of one upstream (``upstream: [url, url]``): requests
spread to the least busy, a replica that fails sits out its cooldown, a request that never
reached one goes to the next at once. Through ``lmops serve`` (a real uvicorn on 127.0.0.1)
and the official ``openai`` client, with the in-package fake server as the replicas."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmops.core.errors import UserError
from lmops.core.net import free_port
from lmops.serve.deployments import load_deployments
from lmops.serve.fake import fake_server
from lmops.serve.replicas import Replicas
from lmops.serve.upstream import Upstream, UpstreamError
from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")


@contextmanager
def slamming_server() -> Iterator[tuple[str, list[int]]]:
    """A port that accepts each connection and closes it at once (a server crashing as it
    takes requests); yields its base URL and the list of connections it took."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.settimeout(0.2)
    taken: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            taken.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", taken
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


ASK = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}


def test_requests_go_to_the_least_busy_replica_and_ties_take_turns() -> None:
    sent: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    with (
        fake_server(model="m", reply="from a", requests=sent["a"]) as a,
        fake_server(model="m", reply="from b", requests=sent["b"]) as b,
    ):
        reps = Replicas([Upstream(a + "/v1", "m"), Upstream(b + "/v1", "m")])
        body = {"messages": ASK["messages"], "max_tokens": 2}

        async def text() -> str:
            data = (await reps.request("/chat/completions", body))[1]
            return str(data["choices"][0]["message"]["content"])

        async def go() -> tuple[list[str], list[str], str]:
            in_turn = [await text() for _ in range(4)]
            # a stream counts as in flight until it is read to its end: while one is open
            # on a replica, every request goes to the other
            stream = await reps.open_stream("/chat/completions", body)
            held = next(i for i, r in enumerate(reps.state()) if r["in_flight"] == 1)
            while_held = [await text() for _ in range(4)]
            async for _ in stream.batches():
                pass
            assert [r["in_flight"] for r in reps.state()] == [0, 0]
            await reps.aclose()
            return in_turn, while_held, "ab"[held]

        in_turn, while_held, held = asyncio.run(go())
    assert in_turn in (["from a", "from b"] * 2, ["from b", "from a"] * 2)
    other = "b" if held == "a" else "a"
    assert while_held == [f"from {other}"] * 4


def test_a_failed_replica_sits_out_and_another_is_tried_when_all_rest() -> None:
    clock = [0.0]
    with (
        fake_server(model="m", fail_first=10**6, fail_status=503) as bad,
        fake_server(model="m") as good,
    ):
        reps = Replicas(
            [Upstream(bad + "/v1", "m"), Upstream(good + "/v1", "m")],
            cooldown_s=5,
            clock=lambda: clock[0],
        )
        body = {"messages": ASK["messages"], "max_tokens": 2}

        async def go() -> None:
            errors = 0
            for _ in range(4):
                try:
                    await reps.request("/chat/completions", body)
                except UpstreamError as e:
                    errors += 1
                    assert e.status == 503
            # the 503 reached the client once (a 5xx is not re-sent: retries decide), then
            # the bad replica sat out
            assert errors == 1
            assert reps.state()[0]["cooldown_s"] == 5 and reps.state()[1]["cooldown_s"] == 0
            clock[0] = 6.0  # its cooldown is over: it is tried again
            with pytest.raises(UpstreamError):
                for _ in range(2):
                    await reps.request("/chat/completions", body)
            await reps.aclose()

        asyncio.run(go())


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("replicas")
    home = root / "home"
    env = lmops_env(home)
    sent: dict[str, list[dict[str, Any]]] = {"a": [], "b": [], "failing": []}
    with ExitStack() as stack:
        a = stack.enter_context(fake_server(model="up", reply="A", requests=sent["a"]))
        b = stack.enter_context(fake_server(model="up", reply="B", requests=sent["b"]))
        failing = stack.enter_context(
            fake_server(model="up", fail_first=10**6, fail_status=500, requests=sent["failing"])
        )
        slam, taken = stack.enter_context(slamming_server())
        busy = stack.enter_context(
            fake_server(model="up", fail_first=10**6, fail_status=429, retry_after=30)
        )
        dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
        dead2 = f"http://127.0.0.1:{free_port()}/v1"
        secret_b = b.replace("http://", "http://lm:s3cret@") + "/v1"  # credentials in the URL
        deployments = root / "deployments.yaml"
        deployments.write_text(
            "deployments:\n"
            f"  - {{name: pair, upstream: [{a}/v1, {b}/v1], upstream_model: up}}\n"
            f"  - {{name: crashy, upstream: [{slam}, {a}/v1], upstream_model: up,"
            " upstream_cooldown_s: 600}\n"
            f"  - {{name: sick, upstream: ['{failing}/v1', '{b}/v1'], upstream_model: up,"
            " upstream_cooldown_s: 600, retries: 1, retry_backoff_s: 0.01}\n"
            f"  - {{name: busy, upstream: ['{busy}/v1', '{a}/v1'], upstream_model: up}}\n"
            f"  - {{name: gone, upstream: ['{dead}', '{secret_b}'], upstream_model: up}}\n"
            f"  - {{name: gone-stream, upstream: ['{dead}', '{secret_b}'], upstream_model: up}}\n"
            f"  - {{name: gone-retried, upstream: ['{dead}', '{secret_b}'], upstream_model: up,"
            " retries: 1}\n"
            f"  - {{name: all-gone, upstream: ['{dead}', '{dead2}'], upstream_model: up}}\n"
        )
        lmops = lmops_cli(env)
        key = json.loads(lmops("keys", "create", "--name", "k", "--json"))["key"]
        proc, base = start_server(env, "--deployments", str(deployments))
        stack.callback(stop_server, proc)
        yield {"base": base, "key": key, "sent": sent, "taken": taken, "lmops": lmops,
               "b": b + "/v1", "dead": dead}  # fmt: skip


def _client(gw: dict[str, Any]) -> Any:
    return openai.OpenAI(base_url=gw["base"] + "/v1", api_key=gw["key"], max_retries=0,
                         timeout=60)  # fmt: skip


def test_both_replicas_answer_through_the_gateway(gw: dict[str, Any]) -> None:
    c = _client(gw)
    said = [c.chat.completions.create(model="pair", **ASK).choices[0].message.content
            for _ in range(6)]  # fmt: skip
    assert sorted(set(said)) == ["A", "B"]
    stream = c.chat.completions.create(model="pair", stream=True, **ASK)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) in "AB"
    card = next(m for m in c.models.list().data if m.id == "pair").model_extra["lmops"]
    assert [r["in_flight"] for r in card["replicas"]] == [0, 0]
    assert card["replicas"][0]["url"].endswith("/v1")


def test_a_replica_that_drops_connections_is_skipped_at_once_then_left_out(
    gw: dict[str, Any],
) -> None:
    c = _client(gw)
    for _ in range(6):  # every request answered, none waits for a retry
        assert c.chat.completions.create(model="crashy", **ASK).choices[0].message.content == "A"
    stream = c.chat.completions.create(model="crashy", stream=True, **ASK)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == "A"
    # the crashing replica was asked once (one gateway worker), then sat out its cooldown
    assert len(gw["taken"]) == 1


def test_a_5xx_replica_is_retried_on_the_other_and_left_out(gw: dict[str, Any]) -> None:
    c = _client(gw)
    before = len(gw["sent"]["failing"])
    for _ in range(5):
        raw = c.chat.completions.with_raw_response.create(model="sick", **ASK)
        assert raw.parse().choices[0].message.content == "B"
    # asked once (one gateway worker), answered 500, retried on the other, then left out
    assert len(gw["sent"]["failing"]) - before == 1
    card = next(m for m in c.models.list().data if m.id == "sick").model_extra["lmops"]
    assert card["replicas"][0]["cooldown_s"] > 0 and card["replicas"][1]["cooldown_s"] == 0


@pytest.mark.parametrize(
    ("upstream", "said"),
    [
        ("[]", "deployments[0].upstream: an empty list; give one base URL or several"),
        ("[http://a:1/v1, gpu1:8000]", "deployments[0].upstream: [1] 'gpu1:8000' is not an http(s) URL"),
        ("[http://a:1/v1, http://a:1/v1]", "'http://a:1/v1' is listed twice; list each replica once"),
    ],
)  # fmt: skip
def test_a_bad_replica_list_is_refused_with_its_line(
    tmp_path: Path, upstream: str, said: str
) -> None:
    path = tmp_path / "deps.yaml"
    path.write_text(f"deployments:\n  - name: big\n    upstream: {upstream}\n")
    with pytest.raises(UserError) as e:
        load_deployments(path)
    assert str(e.value).startswith(f"{path}:3: ") and said in str(e.value)


def test_a_replica_that_answers_429_sends_the_request_on_without_its_wait(
    gw: dict[str, Any],
) -> None:
    # one replica rate-limited for 30 s, no retries: the other answers at once, and the
    # deployment is never held for the busy replica's Retry-After
    c = _client(gw)
    tries = []
    for _ in range(3):
        raw = c.chat.completions.with_raw_response.create(model="busy", **ASK)
        assert raw.parse().choices[0].message.content == "A"
        tries.append(raw.headers.get("x-lmops-tries"))
    # the first went to the busy replica and on at once (two tries, no wait); then the busy
    # one sat out its Retry-After and the other answered alone
    assert tries == ["2", None, None]


def _logged(gw: dict[str, Any], xid: str) -> dict[str, Any]:
    """``lmops trace XID --json``, once the gateway's request-log writer has written it."""
    for _ in range(50):
        try:
            out: dict[str, Any] = json.loads(gw["lmops"]("trace", xid, "--json"))
            return out
        except AssertionError:  # not written yet (the writer runs a few ms after the reply)
            time.sleep(0.1)
    raise AssertionError(f"request {xid} never logged")


@pytest.mark.parametrize("stream", [False, True])
def test_the_request_log_names_the_replica_and_counts_a_resend_as_a_try(
    gw: dict[str, Any], stream: bool
) -> None:
    # replica 1 refuses the connection: the request goes on to replica 2 at once; the log
    # names replica 2 (its credentials masked) and keeps both tries, as x-lmops-tries says
    c = _client(gw)
    name = "gone-stream" if stream else "gone"
    raw = c.chat.completions.with_raw_response.create(model=name, stream=stream, **ASK)
    if stream:
        said = "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
    else:
        said = raw.parse().choices[0].message.content
    headers = raw.headers
    assert said == "B" and headers["x-lmops-tries"] == "2"
    shown = gw["b"].replace("http://", "http://***@")
    t = _logged(gw, headers["x-request-id"])
    assert t["replica"] == shown and "s3cret" not in json.dumps(t)
    assert t["model_ref"] == f"{gw['dead']}, {shown}"
    assert [(x["replica"], x["status"], x.get("reason")) for x in t["tries"]] == [
        (gw["dead"], 502, "connect"),
        (shown, 200, None),
    ]
    # the refusing replica now sits out its cooldown: the next request goes to replica 2
    # alone, one try, which the log does not list
    again = c.chat.completions.with_raw_response.create(model=name, **ASK)
    t = _logged(gw, again.headers["x-request-id"])
    assert t["replica"] == shown and t["tries"] == []
    assert "x-lmops-tries" not in again.headers
    text = gw["lmops"]("trace", again.headers["x-request-id"])
    assert f"(replica {shown})" in text
    # the re-send is a retry in the metrics and in lmops usage (one request of the two)
    metrics = httpx.get(gw["base"] + "/metrics").text
    assert f'lmops_retries_total{{deployment="{name}",reason="connect"}} 1.0' in metrics
    usage = json.loads(gw["lmops"]("usage", "--deployment", name, "--json"))
    assert usage["by_deployment"][name]["requests"] == 2
    assert usage["by_deployment"][name]["retried"] == 1


def test_a_resend_is_a_try_beside_the_deployments_own_retries(gw: dict[str, Any]) -> None:
    c = _client(gw)
    raw = c.chat.completions.with_raw_response.create(model="gone-retried", **ASK)
    assert raw.parse().choices[0].message.content == "B"
    t = _logged(gw, raw.headers["x-request-id"])
    assert [x.get("reason") for x in t["tries"]] == ["connect", None]
    assert raw.headers["x-lmops-tries"] == "2"


def test_every_replica_refusing_is_one_error_naming_what_was_tried(gw: dict[str, Any]) -> None:
    # no retries (the one-try path): after a re-send the error says what was tried, as it
    # does when retries or fallbacks were tried
    with pytest.raises(openai.APIStatusError) as e:
        _client(gw).chat.completions.create(model="all-gone", **ASK)
    assert e.value.status_code == 502
    assert e.value.message.endswith("(tried 2 times: all-gone (connect), all-gone (connect))")
    assert e.value.response.headers["x-lmops-tries"] == "2"


def test_a_connection_not_made_in_time_is_no_connection() -> None:
    import aiohttp

    from lmops.serve.upstream import _unreachable

    assert _unreachable("u", aiohttp.ConnectionTimeoutError()).kind == "connect"
    assert _unreachable("u", TimeoutError()).kind == "timeout"  # a reply not begun in time


class _Stub:
    """A replica for :class:`Replicas` without a server: one that refuses the connection
    (``dead``) or one that takes the request and never answers (it sets ``entered``)."""

    model = "m"
    connections_opened = 0

    def __init__(self, url: str, entered: asyncio.Event | None = None) -> None:
        self.base_url = self.shown_url = url
        self._entered = entered

    async def _wait(self) -> Any:
        if self._entered is None:
            raise UpstreamError(f"upstream {self.shown_url} unreachable", kind="connect")
        self._entered.set()
        await asyncio.sleep(3600)

    async def request(self, path: str, body: dict[str, Any]) -> Any:
        return await self._wait()

    async def open_stream(self, path: str, body: dict[str, Any]) -> Any:
        return await self._wait()

    async def aclose(self) -> None:
        return None


class _OnReplicas:
    """A backend whose start is one request (or stream) to ``reps``."""

    model_ref = "http://dead, http://slow"

    def __init__(self, reps: Replicas, stream: bool) -> None:
        self.reps, self.stream = reps, stream

    def precheck(self, job: Any) -> None:
        return None

    async def prepare(self, job: Any) -> None:
        return None

    async def start(self, job: Any) -> Any:
        if self.stream:
            return await self.reps.open_stream("/chat/completions", {})
        return await self.reps.request("/chat/completions", {})


@pytest.mark.parametrize(
    ("path", "stream"), [("once", False), ("once", True), ("retries", False), ("retries", True)]
)
def test_a_hangup_after_a_resend_names_the_replica_that_had_it_and_keeps_the_tries(
    path: str, stream: bool
) -> None:
    # replica 1 refuses the connection, replica 2 takes the request and the client hangs
    # up while it works: the request was replica 2's (not the refusing one's), and both
    # tries are kept, on the fast path (no retries) and the retry loop's alike
    from lmops.serve import fallbacks
    from lmops.serve.backends import Job
    from lmops.serve.deployments import DeploymentSpec, Registry
    from lmops.serve.policy import NullContext

    registry = Registry([DeploymentSpec(name="d", fake={"tokens": 2}, retries=1)], None)
    job = Job(kind="chat", request_id="r", model="d", body={}, messages=[], prompts=None,
              max_tokens=2, stream=stream)  # fmt: skip

    async def go() -> NullContext:
        entered = asyncio.Event()
        reps = Replicas([_Stub("http://dead"), _Stub("http://slow", entered)])
        backend = _OnReplicas(reps, stream)
        ctx = NullContext(registry.get("d"), "r")
        if path == "once":
            call = fallbacks.once(ctx, "d", backend.model_ref, backend.start(job))
        else:
            call = fallbacks.start(registry, registry.get("d"), backend, job, ctx)
        task = asyncio.ensure_future(call)
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [r["in_flight"] for r in reps.state()] == [0, 0]
        return ctx

    ctx = asyncio.run(go())
    assert ctx.replica == "http://slow"
    assert [(t["replica"], t["status"], t.get("reason")) for t in ctx.tries] == [
        ("http://dead", 502, "connect"),
        ("http://slow", 499, "hangup"),
    ]
