"""The upstream client against the in-package fake OpenAI server on 127.0.0.1: streams come
in batches that end with the [DONE] flag, keep-alive connections are reused, failures are
``UpstreamError``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from lmops.serve.fake import fake_server
from lmops.serve.upstream import Upstream, UpstreamError, UpstreamRefused

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
            return runs, up.connections_opened
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
        with pytest.raises(UpstreamRefused, match="failed with 404") as refused:
            await _collect(up)
        assert refused.value.status == 404
        assert refused.value.data["error"]["code"] == "model_not_found"
        status, body = await up.request("/chat/completions", BODY)
        assert status == 404 and body["error"]["code"] == "model_not_found"
        await up.aclose()
        down = Upstream("http://127.0.0.1:9/v1", "up")  # nothing listens on port 9
        with pytest.raises(UpstreamError, match="unreachable"):
            await down.request("/chat/completions", BODY)
        with pytest.raises(UpstreamError, match="unreachable"):
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


@pytest.mark.parametrize(
    ("body", "match"),
    [(b"[1, 2]", "not a JSON object"), (b"<html>oops</html>", "not a JSON object")],
)
def test_a_body_that_is_not_a_json_object_is_an_upstream_error(body: bytes, match: str) -> None:
    """A misbehaving upstream (a JSON list, an HTML error page) is a clean UpstreamError
    (the gateway's 502), never a crash in the gateway."""

    async def run() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        up = Upstream(f"http://127.0.0.1:{port}/v1", "up")
        try:
            with pytest.raises(UpstreamError, match=match):
                await up.request("/chat/completions", BODY)
        finally:
            await up.aclose()
            server.close()

    asyncio.run(run())


def test_stream_framing_is_read_as_server_sent_events() -> None:
    """CRLF line ends, comments, an event name, an event split across network reads and a
    last event without its blank line: the relay reads them as SSE does."""
    chunks = [
        b': keep-alive\r\n\r\nevent: chunk\r\ndata: {"n": 1}\r\n\r\ndata: {"n"',
        b": 2}\r\n\r\n",
        b"data: [DONE]",
    ]

    async def run() -> list[tuple[list[dict[str, Any]], bool]]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            )
            for c in chunks:
                writer.write(c)
                await writer.drain()
                await asyncio.sleep(0.02)  # separate reads
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        up = Upstream(f"http://127.0.0.1:{port}/v1", "up")
        try:
            return [b async for b in up.stream_batches("/chat/completions", BODY)]
        finally:
            await up.aclose()
            server.close()

    batches = asyncio.run(run())
    assert [c for batch, _ in batches for c in batch] == [{"n": 1}, {"n": 2}]
    assert batches[-1] == ([], True)


def test_upstream_errors_never_show_the_url_credentials() -> None:
    """An upstream URL with credentials (user:pass@host) is masked in every message a
    client can see (issue #12 item 10)."""
    from tests.conftest import free_port

    async def run() -> list[str]:
        up = Upstream(f"http://svc:s3cr3t@w0rd@127.0.0.1:{free_port()}/v1", "up")
        messages = []
        try:
            for call in (
                up.request("/chat/completions", BODY),
                up.open_stream("/chat/completions", BODY),
            ):
                with pytest.raises(UpstreamError) as e:
                    await call
                messages.append(str(e.value))
        finally:
            await up.aclose()
        return messages

    for message in asyncio.run(run()):
        assert "s3cr3t" not in message and "w0rd" not in message and "***@127.0.0.1" in message


def test_an_upstreams_credentials_never_reach_the_request_log_or_traces() -> None:
    """``model_ref`` of an upstream deployment is what the request log, the access log and
    ``/api/trace`` (readable by user keys, for their own requests) name: the URL without
    the user and password it may carry."""
    from lmops.serve.deployments import DeploymentSpec, Registry

    registry = Registry(
        [DeploymentSpec(name="u", upstream="http://svc:hunter2@127.0.0.1:9/v1")], None
    )
    ref = registry.get("u").backend().model_ref
    assert ref == "http://***@127.0.0.1:9/v1" and "hunter2" not in ref
