"""``lmops eval perf`` against the in-package fake upstream on 127.0.0.1.

The fake injects known delays, so each figure is measured from the right events: TTFT
waits for the first content chunk, ITL spans the gaps between chunks, an open loop never
sends early, a cap holds requests back. Only bounds that a loaded machine cannot break are
asserted (a measured delay is never shorter than the injected one); how close the figures
come to the injected delays, how throughput scales and how closely sends keep to the
schedule are timings, printed by ``benchmarks/eval_perf_bench.py``. The official ``openai``
client checks that the fake speaks the API.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest

from lmops.core.errors import UserError
from lmops.eval.perf import DEFAULT_RATE_CAP, PerfReport, arrival_times, format_table, run_perf
from lmops.serve.fake import create_fake_app, fake_server

openai = pytest.importorskip("openai", reason="the openai client is a dev dependency")


@pytest.fixture(scope="module")
def fast_fake() -> Iterator[str]:
    with fake_server(tokens=8, model="fake") as url:
        yield url


# -- figures are measured from the right events ----------------------------------------------------
def test_ttft_itl_tpot_e2el_are_measured_from_the_right_events() -> None:
    ttft, itl, out = 0.2, 0.02, 8
    with fake_server(ttft_s=ttft, itl_s=itl, tokens=1000) as url:
        report = run_perf(url, "fake", concurrency=[1], requests=5, input_len=32, output_len=out)
    (level,) = report.levels
    assert (level.completed, level.failed) == (5, 0)
    assert level.ttft_ms and level.itl_ms and level.tpot_ms and level.e2el_ms
    # The role-only chunk comes at once; TTFT must wait for the first *content* chunk, so
    # it is never shorter than the injected delay (a busy machine only adds to it).
    assert level.ttft_ms.median >= 0.99 * ttft * 1000
    assert level.itl_ms.median >= 0.95 * itl * 1000  # the gaps between content chunks
    assert level.tpot_ms.mean >= 0.95 * itl * 1000
    assert level.itl_ms.count == 5 * (out - 1)  # one gap per content chunk after the first
    assert level.e2el_ms.median >= 0.99 * (ttft + (out - 1) * itl) * 1000
    # Usage counts: prompt tokens are the prompt's words, output tokens what was asked.
    assert level.total_input_tokens == 5 * 32
    assert level.total_output_tokens == 5 * out
    assert level.output_throughput == pytest.approx(5 * out / level.duration_s)
    # TPOT is exactly vLLM's (E2EL - TTFT) / (output_tokens - 1) per request.
    r = level.results[0]
    assert r.tpot_s == pytest.approx((r.e2el_s - r.ttft_s) / (out - 1))


def test_a_concurrency_level_keeps_that_many_requests_in_flight() -> None:
    # The server holds every request at a barrier until `parties` of them are in: a level
    # completes only if the client really had that many in flight at once (the timeout is
    # a guard against a hang, not a measurement).
    def held(parties: int) -> Callable[[int], Script]:
        barrier = threading.Barrier(parties, timeout=30)

        def script(n: int) -> Script:
            barrier.wait()
            return [_sse_head(), b"data: " + _delta("x") + b"\n\ndata: [DONE]\n\n"]

        return script

    for c in (1, 8):
        with raw_server(held(c)) as url:
            report = run_perf(url, "m", concurrency=[c], requests=16, warmup=False, retries=0)
        (level,) = report.levels
        assert (level.concurrency, level.completed, level.failed) == (c, 16, 0), level.errors


def test_output_tokens_from_usage_else_from_content_chunks() -> None:
    # Two tokens per chunk: usage says 8 tokens, the stream has 4 content chunks.
    with fake_server(ttft_s=0.0, itl_s=0.005, tokens=8, chunk_tokens=2) as url:
        with_usage = run_perf(url, "fake", concurrency=[2], requests=4, output_len=8)
        no_usage = run_perf(
            url,
            "fake",
            concurrency=[2],
            requests=4,
            output_len=8,
            chat=False,
            extra_body={"stream_options": {"include_usage": False}},
        )
    assert [r.output_tokens for r in with_usage.levels[0].results] == [8] * 4
    assert [r.output_tokens for r in no_usage.levels[0].results] == [4] * 4
    assert with_usage.levels[0].itl_ms and with_usage.levels[0].itl_ms.count == 4 * 3


# -- failures are counted, never raised -----------------------------------------------------------
def test_failures_are_counted_without_crashing() -> None:
    rate, n = 0.5, 20
    # One draw per request from random.Random(seed): without warm-up or retries, the
    # failures are exactly the first n draws below the rate.
    draws = random.Random(7)
    expected = sum(draws.random() < rate for _ in range(n))
    assert 0 < expected < n
    with fake_server(itl_s=0.001, tokens=4, fail_rate=rate, seed=7) as url:
        report = run_perf(
            url, "fake", concurrency=[4], requests=n, output_len=4, retries=0, warmup=False
        )
    (level,) = report.levels
    assert level.failed == expected and level.completed == n - expected
    assert level.errors == {"HTTP 500: injected failure (fail_rate)": expected}
    assert level.retried == 0
    assert f"c=4: {expected} failed: HTTP 500" in format_table(report)


def test_failures_are_retried() -> None:
    with fake_server(tokens=4, fail_rate=0.5, seed=7) as url:
        report = run_perf(url, "fake", concurrency=[4], requests=20, output_len=4, retries=5)
    (level,) = report.levels
    assert level.retried > 0
    assert level.completed + level.failed == 20
    assert level.completed >= 18  # 0.5**6 per request to fail six times running


def test_timeouts_and_unknown_models_fail_cleanly() -> None:
    with fake_server(ttft_s=5.0, tokens=4) as url:
        slow = run_perf(url, "fake", concurrency=[2], requests=2, timeout_s=0.2, retries=1)
    assert slow.levels[0].failed == 2
    assert slow.levels[0].errors == {"timed out after 0.2 s": 2}
    assert [r.attempts for r in slow.levels[0].results] == [2, 2]
    assert slow.warmup_error == "timed out after 0.2 s"

    with fake_server(tokens=4) as url:
        wrong = run_perf(url + "/v1", "nope", concurrency=[1], requests=2, retries=3)
    (level,) = wrong.levels
    assert level.failed == 2 and level.retried == 0  # a 404 is not worth retrying
    ((message, count),) = level.errors.items()
    assert message.startswith("HTTP 404: The model `nope` does not exist") and count == 2


def test_nothing_listening_counts_failures() -> None:
    with fake_server() as url:
        pass  # the port is free again
    report = run_perf(url, "fake", concurrency=[2], requests=3, retries=1)
    assert report.levels[0].failed == 3
    assert report.levels[0].ttft_ms is None
    assert "ConnectError" in next(iter(report.levels[0].errors))


def test_invalid_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="concurrency"):
        run_perf("http://127.0.0.1:9", "m", concurrency=[0])
    with pytest.raises(UserError, match="endpoint"):
        run_perf("127.0.0.1:9", "m")
    with pytest.raises(UserError, match="requests"):
        run_perf("http://127.0.0.1:9", "m", requests=0)
    with pytest.raises(UserError, match="fail_rate"):
        create_fake_app(fail_rate=2.0)


def test_report_dict_and_table(fast_fake: str) -> None:
    report = run_perf(
        fast_fake, "fake", api_key="sk-secret", concurrency=[1, 2], requests=3, output_len=4
    )
    assert isinstance(report, PerfReport)
    d = report.to_dict()
    text = json.dumps(d)
    assert "sk-secret" not in text
    assert d["url"] == fast_fake + "/v1/chat/completions"
    assert [lv["concurrency"] for lv in d["levels"]] == [1, 2]
    assert set(d["levels"][0]["ttft_ms"]) == {"mean", "median", "std", "p90", "p99", "count"}
    assert "results" not in d["levels"][0]
    rows = report.to_dict(per_request=True)["levels"][0]["results"]
    assert len(rows) == 3 and rows[0]["tpot_s"] > 0
    table = format_table(report)
    assert "c=1" in table and "c=2" in table and "TTFT median (ms)" in table
    # closed loop: no open-loop figures
    assert d["config"]["request_rate"] is None and d["levels"][0]["send_lag_ms"] is None
    assert "send lag" not in table and "cap=" not in table


# -- the SSE stream as servers really write it: a raw HTTP server sends exact bytes -------------
# Each step is bytes to send or seconds to wait; every request gets the same steps.
Script = list[bytes | float]


@contextlib.contextmanager
def raw_server(script: Callable[[int], Script]) -> Iterator[str]:
    """A one-response-per-connection HTTP server; ``script(n)`` answers the n-th request."""
    count = [0]
    lock = threading.Lock()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            length = 0
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self.rfile.read(length)
            with lock:
                n = count[0]
                count[0] += 1
            for step in script(n):
                if isinstance(step, float):
                    time.sleep(step)
                else:
                    self.wfile.write(step)
                    self.wfile.flush()

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _sse_head(chunked: bool = False) -> bytes:
    framing = b"Transfer-Encoding: chunked" if chunked else b"Connection: close"
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + framing + b"\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _delta(text: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode()


def test_sse_lines_split_across_reads_crlf_comments_and_multiline_data() -> None:
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}})
    script: Script = [
        _sse_head(),
        b": keep-alive comment\r\nevent: message\r\nid: 1\r\n",
        b"data: " + _delta("a") + b"\r\n\r\n",
        0.05,
        b"data: " + _delta("b")[:10],  # an event cut in the middle of a line
        0.05,
        _delta("b")[10:] + b"\n\n",
        0.05,
        # one event's data over two lines, joined by a newline: still one JSON value
        b'data: {"choices": [{"index": 0,\ndata: "delta": {"content": "c"}}]}\n\n',
        b"data:" + usage.encode() + b"\n\n",  # no space after the colon
        b"data: " + _delta("d"),  # the last event, cut off by the end of the body
    ]
    with raw_server(lambda n: script) as url:
        report = run_perf(url, "m", concurrency=[1], requests=2, warmup=False, retries=0)
    (level,) = report.levels
    assert level.completed == 2, level.errors
    r = level.results[0]
    assert (r.output_tokens, r.input_tokens) == (9, 3)  # from the usage event
    assert len(r.itl_s) == 3  # content chunks a, b, c, d: three gaps
    assert r.itl_s[0] >= 0.09  # "b" counts when its line is complete, two pauses later
    assert r.e2el_s == pytest.approx(r.ttft_s + sum(r.itl_s))


def test_error_events_are_retried_and_bad_data_is_not() -> None:
    error = b'data: {"error": {"message": "engine overloaded"}}\n\n'
    ok: Script = [_sse_head(), b"data: " + _delta("x") + b"\n\ndata: [DONE]\n\n"]
    with raw_server(lambda n: [_sse_head(), error] if n == 0 else ok) as url:
        retried = run_perf(url, "m", concurrency=[1], requests=1, warmup=False, retries=1)
    assert (retried.levels[0].completed, retried.levels[0].retried) == (1, 1)
    with raw_server(lambda n: [_sse_head(), error]) as url:
        failed = run_perf(url, "m", concurrency=[1], requests=1, warmup=False, retries=1)
    assert failed.levels[0].errors == {"engine overloaded": 1}
    with raw_server(lambda n: [_sse_head(), b"data: {oops\n\n"]) as url:
        bad = run_perf(url, "m", concurrency=[1], requests=1, warmup=False, retries=3)
    assert bad.levels[0].errors == {"bad SSE data: '{oops'": 1}
    assert bad.levels[0].retried == 0


def test_a_stream_held_open_after_done_still_succeeds_quickly() -> None:
    # [DONE] is the end of the measured stream; a server that keeps the connection open
    # (no closing chunk for 3 s) must neither fail the request nor hold it that long.
    body = b"data: " + _delta("x") + b"\n\ndata: " + _delta("y") + b"\n\ndata: [DONE]\n\n"
    script: Script = [_sse_head(chunked=True), _chunk(body), 3.0, b"0\r\n\r\n"]
    with raw_server(lambda n: script) as url:
        # a 2 s timeout against a 3 s hold: waiting for the closing chunk would fail it
        report = run_perf(url, "m", concurrency=[1], requests=1, warmup=False, timeout_s=2.0)
    (level,) = report.levels
    assert (level.completed, level.failed) == (1, 0)
    assert level.results[0].output_tokens == 2


# -- the fake speaks the OpenAI API: the official client is the judge -------------------------------
def test_openai_client_chat_stream_and_completions(fast_fake: str) -> None:
    client = openai.OpenAI(base_url=fast_fake + "/v1", api_key="anything", max_retries=0)
    assert [m.id for m in client.models.list()] == ["fake"]

    chat = client.chat.completions.create(
        model="fake",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "say three words"},
        ],
        max_tokens=3,
    )
    assert chat.choices[0].message.content == "tok0 tok1 tok2"
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (5, 3)

    chunks = list(
        client.chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(f"tok{i}" for i in range(8))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8 and chunks[-1].usage.prompt_tokens == 1

    comp = client.completions.create(model="fake", prompt="one two three four", max_tokens=2)
    assert comp.object == "text_completion"
    assert comp.choices[0].text == "tok0 tok1"
    assert comp.usage is not None and comp.usage.prompt_tokens == 4

    streamed = list(client.completions.create(model="fake", prompt="x", stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text


def test_openai_client_error_shape(fast_fake: str) -> None:
    client = openai.OpenAI(base_url=fast_fake + "/v1", api_key="anything", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="fake", messages=[])
    assert bad.value.status_code == 400
    assert bad.value.body == {
        "message": "'messages' must be a non-empty list",
        "type": "invalid_request_error",
        "param": "messages",
        "code": None,
    }
    with pytest.raises(openai.BadRequestError) as bad_max:
        client.completions.create(model="fake", prompt="x", max_tokens=0)
    assert bad_max.value.param == "max_tokens"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "a"}])
    assert missing.value.code == "model_not_found"

    raw = httpx.post(fast_fake + "/v1/chat/completions", content=b"{not json")
    assert raw.status_code == 400
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(fast_fake + "/v1/nowhere").json()["error"]["message"].startswith("Unknown")


def test_raw_stream_ends_with_done(fast_fake: str) -> None:
    body = {"model": "fake", "prompt": "a b", "max_tokens": 2, "stream": True}
    with httpx.stream("POST", fast_fake + "/v1/completions", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert [json.loads(e[6:])["choices"][0]["text"] for e in events[:2]] == ["tok0", " tok1"]


def test_api_key_is_enforced_when_set() -> None:
    with fake_server(api_key="sk-test", tokens=2) as url:
        denied = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            denied.models.list()
        assert e.value.code == "invalid_api_key"
        ok = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        assert ok.models.list().data[0].id == "fake"
        report = run_perf(url, "fake", api_key="sk-test", concurrency=[1], requests=2)
    assert report.levels[0].completed == 2


def test_eval_perf_cli_against_the_fake_server(cli) -> None:  # type: ignore[no-untyped-def]
    import json as _json

    from lmops.serve.fake import fake_server

    with fake_server(ttft_s=0.05, itl_s=0.005, tokens=8) as base:
        r = cli(
            "eval",
            "perf",
            "--endpoint",
            base,
            "--model",
            "fake",
            "--concurrency",
            "1,4",
            "--requests",
            "8",
            "--output-len",
            "8",
            "--json",
        )
    assert r.code == 0, r.err
    levels = _json.loads(r.out)["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 4]
    assert all(lv["completed"] == 8 and lv["failed"] == 0 for lv in levels)
    assert levels[0]["ttft_ms"]["median"] >= 0.99 * 50  # the injected 0.05 s, at least


# -- open loop: requests arrive at an offered rate, whatever the server does ----------------------
def test_arrival_times_are_seeded_gamma_gaps_scaled_to_the_rate() -> None:
    n, rate = 2000, 50.0
    due = arrival_times(n, rate, seed=3)
    assert due == arrival_times(n, rate, seed=3)
    assert due != arrival_times(n, rate, seed=4)
    # Exactly numpy's gamma draws (shape 1: exponential, mean 1 / rate), summed, then scaled
    # by one factor so that the last request is due at n / rate.
    raw = np.cumsum(np.random.default_rng(3).gamma(1.0, 1 / rate, size=n))
    assert due == pytest.approx((raw * (n / rate) / raw[-1]).tolist(), rel=1e-12)
    assert due[-1] == pytest.approx(n / rate, rel=1e-12)
    gaps = np.diff([0.0, *due])
    assert (gaps >= 0).all()
    assert gaps.mean() == pytest.approx(1 / rate, rel=1e-9)
    assert abs(raw[-1] / (n / rate) - 1) < 0.1  # the scaling is a small correction
    # Burstiness b is the gamma shape: squared coefficient of variation of the gaps = 1 / b.
    for b in (0.25, 1.0, 4.0):
        g = np.diff([0.0, *arrival_times(20000, rate, b, seed=5)])
        assert g.mean() == pytest.approx(1 / rate)
        assert g.var() / g.mean() ** 2 == pytest.approx(1 / b, rel=0.1)
    # Limits: all at once, evenly spaced; a generator advances, so levels differ.
    assert arrival_times(3, math.inf) == [0.0, 0.0, 0.0]
    assert arrival_times(4, 10.0, math.inf) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    rng = np.random.default_rng(0)
    assert arrival_times(5, 10.0, seed=rng) == arrival_times(5, 10.0, seed=0)
    assert arrival_times(5, 10.0, seed=rng) != arrival_times(5, 10.0, seed=0)
    assert arrival_times(0, 10.0) == []
    with pytest.raises(UserError, match="request_rate"):
        arrival_times(5, 0.0)
    with pytest.raises(UserError, match="burstiness"):
        arrival_times(5, 1.0, -1.0)


def test_requests_reach_the_server_on_the_seeded_schedule() -> None:
    rate, n, seed = 50.0, 60, 11  # 1.2 s
    seen: list[float] = []  # when the server read each request

    def script(i: int) -> Script:
        seen.append(time.perf_counter())
        return [_sse_head(), b"data: " + _delta("x") + b"\n\ndata: [DONE]\n\n"]

    with raw_server(script) as url:
        report = run_perf(
            url, "m", request_rate=rate, requests=n, seed=seed, warmup=False, retries=0
        )
    (level,) = report.levels
    assert (level.completed, level.cap_waits, level.request_rate) == (n, 0, rate)
    # The first level draws first from the run's generator: arrival_times with the same seed.
    due = arrival_times(n, rate, seed=seed)
    assert len(seen) == n
    lag = level.send_lag_ms
    assert lag is not None and lag.count == n
    # never sent before it is due (sends aim 0.5 ms early); how late is load, not behaviour
    assert all(r.send_lag_s is not None and r.send_lag_s > -0.001 for r in level.results)
    # the seeded schedule's last request cannot go out before it is due
    assert level.duration_s >= due[-1] - 0.001


def test_open_loop_against_the_fake_keeps_to_the_schedule(fast_fake: str) -> None:
    rate, n = 50.0, 80  # 1.6 s
    report = run_perf(fast_fake, "fake", request_rate=rate, requests=n, output_len=4)
    (level,) = report.levels
    assert level.concurrency == DEFAULT_RATE_CAP  # the default cap: effectively none
    assert (level.completed, level.failed, level.cap_waits) == (n, 0, 0)
    # The schedule's last request is due at n / rate (sends aim 0.5 ms early), so the
    # level cannot end sooner, nor serve more than the offered rate.
    assert level.duration_s >= n / rate - 0.001
    assert level.request_throughput <= rate * 1.001
    assert level.send_lag_ms is not None and level.send_lag_ms.count == n
    d = report.to_dict()
    assert (d["config"]["request_rate"], d["levels"][0]["request_rate"]) == (rate, rate)
    assert set(d["levels"][0]["send_lag_ms"]) == {"mean", "median", "std", "p90", "p99", "count"}
    table = format_table(report)
    assert "open loop: 50 req/s (Poisson arrivals, seed 0)" in table
    assert f"cap={DEFAULT_RATE_CAP}" in table and "send lag median (ms)" in table
    # whether the sends kept up ("not valid" when they lagged) depends on the machine's load:
    # benchmarks/eval_perf_bench.py prints it


def test_the_cap_bounds_requests_in_flight_and_shows_as_send_lag() -> None:
    seen: list[float] = []
    slow: Script = [0.2, _sse_head(), b"data: " + _delta("x") + b"\n\ndata: [DONE]\n\n"]

    def script(i: int) -> Script:
        seen.append(time.perf_counter())
        return slow

    # All 9 due at once, at most 3 in flight: the server sees three waves 0.2 s apart.
    with raw_server(script) as url:
        report = run_perf(
            url, "m", request_rate=math.inf, concurrency=[3], requests=9, warmup=False
        )
    (level,) = report.levels
    assert (level.completed, level.cap_waits) == (9, 6)
    starts = sorted(seen)
    assert all(starts[k + 3] - starts[k] >= 0.19 for k in range(6))
    lags = sorted(r.send_lag_s or 0.0 for r in level.results)
    assert lags[3] >= 0.19 and lags[6] >= 0.38  # the second and third waves waited
    assert level.send_rate is not None and level.send_rate <= 9 / 0.38  # waves
    assert level.lagged  # the cap kept the offered rate from the server: not valid
    d = report.to_dict()
    assert d["config"]["request_rate"] == "inf" and d["levels"][0]["request_rate"] == "inf"
    json.dumps(d, allow_nan=False)  # valid JSON: no Infinity
    table = format_table(report)
    assert "open loop: inf req/s" in table and "cap=3" in table
    assert "cap=3: sends lagged" in table and "not valid" in table


def test_invalid_rate_settings_are_user_errors(cli) -> None:  # type: ignore[no-untyped-def]
    for rate in (0.0, -5.0, math.nan):
        with pytest.raises(UserError, match="request_rate: must be > 0"):
            run_perf("http://127.0.0.1:9", "m", request_rate=rate)
    with pytest.raises(UserError, match="burstiness: must be > 0"):
        run_perf("http://127.0.0.1:9", "m", request_rate=10, burstiness=0)
    r = cli(
        "eval", "perf", "--endpoint", "http://127.0.0.1:9", "--model", "m", "--request-rate", "0"
    )
    assert r.code == 2 and "request_rate" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli(
        "eval",
        "perf",
        "--endpoint",
        "http://127.0.0.1:9",
        "--model",
        "m",
        "--request-rate",
        "10",
        "--burstiness",
        "-1",
    )
    assert r.code == 2 and "burstiness" in r.err and len(r.err.strip().splitlines()) == 1


def test_eval_perf_cli_open_loop(cli, fast_fake: str) -> None:  # type: ignore[no-untyped-def]
    args = ["eval", "perf", "--endpoint", fast_fake, "--model", "fake", "--requests", "20"]
    r = cli(*args, "--request-rate", "40", "--burstiness", "2", "--seed", "3", "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert (out["config"]["request_rate"], out["config"]["burstiness"]) == (40.0, 2.0)
    (level,) = out["levels"]
    assert level["concurrency"] == DEFAULT_RATE_CAP and level["request_rate"] == 40.0
    assert level["completed"] == 20 and level["send_lag_ms"]["count"] == 20
    assert level["duration_s"] >= 0.5 - 0.001  # the last of 20 is due at 0.5 s
    r = cli(*args, "--request-rate", "40", "--concurrency", "2,4")
    assert r.code == 0, r.err
    assert "cap=2" in r.out and "cap=4" in r.out and "gamma" not in r.out
