"""An upstream OpenAI-compatible server (vLLM, llama.cpp server, a hosted provider) behind
a deployment: requests are forwarded, streams are relayed chunk by chunk.

One ``httpx.AsyncClient`` per upstream keeps HTTP/1.1 connections alive between requests.
A stream is always read to its end (past ``data: [DONE]``) so that its connection goes back
to the pool: a response left unread is closed, and the next request would pay for a new
TCP connection.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

__all__ = ["Upstream", "UpstreamError"]

# Connections kept open to one upstream; above this, extra concurrent requests still run
# (up to MAX_CONNECTIONS) but their connections are closed afterwards.
KEEPALIVE_CONNECTIONS = 256
MAX_CONNECTIONS = 1024


class UpstreamError(Exception):
    """The upstream failed (connection, 5xx): the gateway answers 502."""


class Upstream:
    def __init__(
        self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 600.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=KEEPALIVE_CONNECTIONS,
                keepalive_expiry=60.0,
            ),
        )

    async def request(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            r = await self.client.post(path, json={**body, "model": self.model})
        except httpx.HTTPError as e:
            raise UpstreamError(f"upstream {self.base_url} unreachable: {e}") from None
        if r.status_code >= 500:
            raise UpstreamError(f"upstream {self.base_url} failed with {r.status_code}")
        try:
            return r.status_code, dict(r.json())
        except ValueError:
            raise UpstreamError(f"upstream {self.base_url} answered non-JSON") from None

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield the upstream's SSE chunks as dicts (stops at [DONE])."""
        async for batch, _last in self.stream_batches(path, body):
            for chunk in batch:
                yield chunk

    async def stream_batches(
        self, path: str, body: dict[str, Any]
    ) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
        """Yield the upstream's SSE chunks (as dicts) in batches, ``(chunks, last)``: a batch
        holds the chunks that arrived in one network read, so a relay can forward them with
        one write instead of one per token; ``last`` is true for the batch that ended with
        ``data: [DONE]`` (its list may be empty), so the relay can send its own ``[DONE]``
        in the same write. Nothing is held back waiting for more data: a batch is yielded
        as soon as its read is parsed. A stream that ends without ``[DONE]`` just ends.
        Raises :class:`UpstreamError` for a refused request or a broken stream."""
        try:
            async with self.client.stream(
                "POST", path, json={**body, "model": self.model, "stream": True}
            ) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise UpstreamError(
                        f"upstream {self.base_url} failed with {r.status_code}: {r.text[:200]}"
                    )
                buf = b""
                done = False
                async for data in r.aiter_bytes():
                    if done:
                        continue  # drain to the end: the connection goes back to the pool
                    lines = (buf + data).split(b"\n")
                    buf = lines.pop()  # an incomplete last line waits for the next read
                    batch: list[dict[str, Any]] = []
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue  # blank separators, comments, event names
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            done = True
                            break
                        batch.append(json.loads(payload))
                    if batch or done:
                        yield batch, done
                if not done and buf.startswith(b"data:"):
                    payload = buf[5:].strip()
                    if payload == b"[DONE]":
                        yield [], True
                    elif payload:
                        yield [json.loads(payload)], False
        except httpx.HTTPError as e:
            raise UpstreamError(f"upstream {self.base_url} stream broke: {e}") from None
        except ValueError as e:  # a data line that is not JSON
            raise UpstreamError(f"upstream {self.base_url} sent a bad chunk: {e}") from None

    async def aclose(self) -> None:
        await self.client.aclose()
