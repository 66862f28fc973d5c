"""``lmops eval perf`` against the in-package fake upstream on 127.0.0.1.

The fake injects known delays, so the measured TTFT / ITL / TPOT must come back as the
injected ones, and the official ``openai`` client checks that the fake speaks the API.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import httpx
import pytest

from lmops.core.errors import UserError
from lmops.eval.perf import PerfReport, format_table, run_perf
from lmops.serve.fake import create_fake_app, fake_server

openai = pytest.importorskip("openai", reason="the openai client is a dev dependency")


@pytest.fixture(scope="module")
def fast_fake() -> Iterator[str]:
    with fake_server(tokens=8, model="fake") as url:
        yield url


# -- measured figures match the injected delays ---------------------------------------------------
def test_ttft_itl_tpot_e2el_match_injected_delays() -> None:
    ttft, itl, out = 0.2, 0.02, 8
    with fake_server(ttft_s=ttft, itl_s=itl, tokens=1000) as url:
        report = run_perf(url, "fake", concurrency=[1], requests=5, input_len=32, output_len=out)
    (level,) = report.levels
    assert (level.completed, level.failed) == (5, 0)
    assert level.ttft_ms and level.itl_ms and level.tpot_ms and level.e2el_ms
    # The role-only chunk comes at once; TTFT must wait for the first *content* chunk.
    assert 0.99 * ttft * 1000 <= level.ttft_ms.median <= 1.10 * ttft * 1000
    assert 0.95 * itl * 1000 <= level.itl_ms.median <= 1.30 * itl * 1000
    assert 0.95 * itl * 1000 <= level.tpot_ms.mean <= 1.30 * itl * 1000
    assert level.itl_ms.count == 5 * (out - 1)  # one gap per content chunk after the first
    expected_e2el = (ttft + (out - 1) * itl) * 1000
    assert 0.99 * expected_e2el <= level.e2el_ms.median <= 1.15 * expected_e2el
    # Usage counts: prompt tokens are the prompt's words, output tokens what was asked.
    assert level.total_input_tokens == 5 * 32
    assert level.total_output_tokens == 5 * out
    assert level.output_throughput == pytest.approx(5 * out / level.duration_s)
    # TPOT is exactly vLLM's (E2EL - TTFT) / (output_tokens - 1) per request.
    r = level.results[0]
    assert r.tpot_s == pytest.approx((r.e2el_s - r.ttft_s) / (out - 1))


def test_throughput_scales_with_concurrency() -> None:
    # delays long against the client's own CPU work, so a loaded machine does not hide the scaling
    with fake_server(ttft_s=0.3, itl_s=0.05, tokens=1000) as url:
        report = run_perf(url, "fake", concurrency=[1, 8], requests=8, input_len=16, output_len=4)
    one, eight = report.levels
    assert one.completed == eight.completed == 8
    assert eight.request_throughput >= 4 * one.request_throughput
    assert eight.output_throughput >= 4 * one.output_throughput


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
    assert 40 <= levels[0]["ttft_ms"]["median"] <= 80
