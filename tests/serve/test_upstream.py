"""The upstream client against the in-package fake OpenAI server on 127.0.0.1: streams come
in batches that end with the [DONE] flag, keep-alive connections are reused, failures are
``UpstreamError``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from lmops.serve.fake import fake_server
from lmops.serve.upstream import Upstream, UpstreamError

BODY: dict[str, Any] = {
    "messages": [{"role": "user", "content": "one two three"}],
    "max_tokens": 6,
    "stream_options": {"include_usage": True},
}


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    with fake_server(tokens=6, model="up") as url:
        yield url


async def _collect(up: Upstream) -> list[tuple[list[dict[str, Any]], bool]]:
    return [b async for b in up.stream_batches("/chat/completions", BODY)]


def test_stream_batches_end_with_done_and_reuse_one_connection(fake: str) -> None:
    async def run() -> tuple[list[list[tuple[list[dict[str, Any]], bool]]], int]:
        up = Upstream(fake + "/v1", "up")
        try:
            runs = [await _collect(up) for _ in range(5)]
            pool = up.client._transport._pool  # type: ignore[attr-defined]
            return runs, len(pool.connections)
        finally:
            await up.aclose()

    runs, connections = asyncio.run(run())
    for batches in runs:
        chunks = [c for batch, _ in batches for c in batch]
        # role chunk, 6 tokens, the finish chunk, the usage chunk; then [DONE]
        assert len(chunks) == 9
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        assert text == "tok0 tok1 tok2 tok3 tok4 tok5"
        assert chunks[-1]["usage"]["completion_tokens"] == 6
        assert [last for _, last in batches] == [False] * (len(batches) - 1) + [True]
    # each stream was read past [DONE], so its connection went back to the pool
    assert connections == 1


def test_stream_and_request_failures_are_upstream_errors(fake: str) -> None:
    async def run() -> None:
        up = Upstream(fake + "/v1", "no-such-model")
        with pytest.raises(UpstreamError, match="failed with 404"):
            await _collect(up)
        status, body = await up.request("/chat/completions", BODY)
        assert status == 404 and body["error"]["code"] == "model_not_found"
        await up.aclose()
        down = Upstream("http://127.0.0.1:9/v1", "up")  # nothing listens on port 9
        with pytest.raises(UpstreamError, match="unreachable"):
            await down.request("/chat/completions", BODY)
        with pytest.raises(UpstreamError, match="stream broke"):
            await _collect(down)
        await down.aclose()

    asyncio.run(run())


def test_stream_keeps_the_plain_per_chunk_iterator(fake: str) -> None:
    async def run() -> list[dict[str, Any]]:
        up = Upstream(fake + "/v1", "up")
        try:
            return [c async for c in up.stream("/chat/completions", BODY)]
        finally:
            await up.aclose()

    chunks = asyncio.run(run())
    assert len(chunks) == 9 and chunks[0]["model"] == "up"
