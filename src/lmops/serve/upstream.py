"""An upstream OpenAI-compatible server (vLLM, llama.cpp server, a hosted provider) behind
a deployment: requests are forwarded, streams are relayed chunk by chunk."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

__all__ = ["Upstream", "UpstreamError"]


class UpstreamError(Exception):
    """The upstream failed (connection, 5xx): the gateway answers 502."""


class Upstream:
    def __init__(
        self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 600.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)

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
        try:
            async with self.client.stream(
                "POST", path, json={**body, "model": self.model, "stream": True}
            ) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise UpstreamError(
                        f"upstream {self.base_url} failed with {r.status_code}: {r.text[:200]}"
                    )
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    yield json.loads(data)
        except httpx.HTTPError as e:
            raise UpstreamError(f"upstream {self.base_url} stream broke: {e}") from None
