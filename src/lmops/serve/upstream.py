"""An upstream OpenAI-compatible server (vLLM, llama.cpp server, a hosted provider) behind
a deployment: requests are forwarded, streams are relayed chunk by chunk.

The client is aiohttp: it costs the gateway about a third less CPU per proxied request
than httpx, and the gateway's CPU per request is what bounds its request rate. One
``aiohttp.ClientSession`` per event loop (a server worker has one loop for its life; a
batch job or a test may run several in turn) keeps HTTP/1.1 connections alive between
requests. A stream is always read to its end (past ``data: [DONE]``) so that its
connection goes back to the pool: a response left unread is closed, and the next request
would pay for a new TCP connection.

A stream is opened in two steps so that a relay can answer with the upstream's status:
:meth:`Upstream.open_stream` sends the request and reads the status line (a 4xx raises
:class:`UpstreamRefused` with the upstream's error body, before any byte went to the
client), then :meth:`UpstreamStream.batches` reads the events.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from lmops.core.config import mask_url
from lmops.core.sse import SSEDecoder

__all__ = ["Upstream", "UpstreamError", "UpstreamRefused", "UpstreamStream", "retry_after"]

# Connections kept open to one upstream per event loop; requests beyond it wait for one.
MAX_CONNECTIONS = 1024
KEEPALIVE_S = 60.0
# A connection not made in this long (at most the deployment's upstream_timeout_s) is a
# host that is down: a retry, a fallback or another replica takes over.
CONNECT_TIMEOUT_S = 10.0


class UpstreamError(Exception):
    """The upstream failed (connection, 5xx, a broken stream): the gateway answers 502.

    ``kind`` says how, for retries (:mod:`lmops.serve.fallbacks`): ``connect`` (no
    connection, or it closed before a reply), ``timeout`` (no data within the timeout),
    ``status`` (an error status: ``status``), ``stream`` (a stream that broke or sent a
    bad chunk) or ``body`` (a reply that is not a JSON object). ``retry_after_s``: the
    upstream's ``Retry-After``, when it sent one."""

    def __init__(
        self,
        message: str,
        *,
        kind: str = "status",
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s


class UpstreamRefused(UpstreamError):
    """The upstream refused the request with a 4xx; ``data`` is its (JSON) error body, so
    the gateway can pass the refusal on in OpenAI's shape with the same status."""

    def __init__(
        self,
        message: str,
        status: int,
        data: dict[str, Any],
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, status=status, retry_after_s=retry_after_s)
        self.status: int = status
        self.data = data


def retry_after(headers: Any) -> float | None:
    """Seconds an HTTP reply asks the client to wait: ``retry-after-ms`` (OpenAI's), else
    ``Retry-After`` in seconds or as an HTTP date; None when it names no wait."""
    ms = headers.get("retry-after-ms")
    try:
        if ms is not None:
            return max(0.0, float(ms) / 1000)
    except ValueError:
        pass
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _unreachable(shown_url: str, e: BaseException) -> UpstreamError:
    # no connection made in time (a host that is down drops the SYN) is no connection
    connect = isinstance(e, aiohttp.ConnectionTimeoutError) or not isinstance(e, TimeoutError)
    kind = "connect" if connect else "timeout"
    return UpstreamError(f"upstream {shown_url} unreachable: {e or type(e).__name__}", kind=kind)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _parse(events: list[bytes]) -> tuple[list[dict[str, Any]], bool]:
    """The JSON chunks of ``events`` up to ``[DONE]``, and whether ``[DONE]`` came."""
    batch: list[dict[str, Any]] = []
    for payload in events:
        if payload.strip() == b"[DONE]":
            return batch, True
        batch.append(json.loads(payload))
    return batch, False


class UpstreamStream:
    """An opened SSE stream whose status was < 400; iterate :meth:`batches` once."""

    def __init__(self, upstream: Upstream, response: aiohttp.ClientResponse) -> None:
        self._up = upstream
        self._r = response

    async def batches(self) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
        """Yield the upstream's SSE chunks (as dicts) in batches, ``(chunks, last)``: a batch
        holds the chunks that arrived in one network read, so a relay can forward them with
        one write instead of one per token; ``last`` is true for the batch that ended with
        ``data: [DONE]`` (its list may be empty), so the relay can send its own ``[DONE]``
        in the same write. Nothing is held back waiting for more data: a batch is yielded
        as soon as its read is parsed. A stream that ends without ``[DONE]`` just ends.
        Raises :class:`UpstreamError` for a broken stream or a chunk that is not JSON."""
        base = self._up.shown_url
        try:
            sse = SSEDecoder()
            done = False
            async for data in self._r.content.iter_any():
                if done:
                    continue  # drain to the end: the connection goes back to the pool
                batch, done = _parse(sse.feed(data))
                if batch or done:
                    yield batch, done
            if not done:  # an event the stream ended without its blank line
                batch, done = _parse(sse.close())
                if batch or done:
                    yield batch, done
        except (TimeoutError, aiohttp.ClientError) as e:
            kind = "timeout" if isinstance(e, TimeoutError) else "stream"
            raise UpstreamError(
                f"upstream {base} stream broke: {e or type(e).__name__}", kind=kind
            ) from None
        except ValueError as e:  # a data line that is not JSON
            raise UpstreamError(f"upstream {base} sent a bad chunk: {e}", kind="stream") from None
        finally:
            self._r.release()

    async def aclose(self) -> None:
        """Give up on the stream (the client left): its connection is closed, not reused."""
        self._r.close()


class Upstream:
    def __init__(
        self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 600.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # what messages name: credentials in the URL (user:pass@host) never reach a client
        self.shown_url = mask_url(self.base_url)
        self.model = model
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._sessions: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, aiohttp.ClientSession
        ] = weakref.WeakKeyDictionary()
        # TCP connections opened so far (all loops): keep-alive shows as a count that stays
        # put while requests go on
        self.connections_opened = 0

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        s = self._sessions.get(loop)
        if s is None or s.closed:
            trace = aiohttp.TraceConfig()
            trace.on_connection_create_end.append(self._on_connection)
            s = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S
                ),
                # no bound on a whole stream, only on connecting and on each wait for data
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=min(self.timeout, CONNECT_TIMEOUT_S),
                    sock_read=self.timeout,
                ),
                headers=self._headers,
                trace_configs=[trace],
            )
            self._sessions[loop] = s
        return s

    async def _on_connection(self, *_: Any) -> None:
        self.connections_opened += 1

    async def request(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST ``body`` (with the upstream's model name); ``(status, JSON object)`` for a
        status below 500 but 429. Raises :class:`UpstreamRefused` for a 429 (with its
        ``Retry-After``), :class:`UpstreamError` for a 5xx, a dead upstream or a body that
        is not a JSON object."""
        url = self.base_url + path
        try:
            async with self._session().post(url, json={**body, "model": self.model}) as r:
                text = await r.text(errors="replace")
                status = r.status
                wait = retry_after(r.headers) if status == 429 or status >= 500 else None
        except (TimeoutError, aiohttp.ClientError) as e:
            raise _unreachable(self.shown_url, e) from None
        message = f"upstream {self.shown_url} failed with {status}: {text[:200]}"
        if status >= 500:
            raise UpstreamError(message, status=status, retry_after_s=wait)
        data = _json_object(text)
        if status == 429:
            data = data or {"error": {"message": text[:2000] or message}}
            raise UpstreamRefused(message, status, data, retry_after_s=wait)
        if data is None:
            raise UpstreamError(
                f"upstream {self.shown_url} answered {status} with a body that is not a JSON "
                f"object: {text[:200]!r}",
                kind="body",
            )
        return status, data

    async def open_stream(self, path: str, body: dict[str, Any]) -> UpstreamStream:
        """Send a streaming request and read its status. Raises :class:`UpstreamRefused`
        for a 4xx (with the upstream's error body) and :class:`UpstreamError` for a 5xx or
        a dead upstream."""
        url = self.base_url + path
        payload = {**body, "model": self.model, "stream": True}
        try:
            r = await self._session().post(url, json=payload)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise _unreachable(self.shown_url, e) from None
        if r.status < 400:
            return UpstreamStream(self, r)
        wait = retry_after(r.headers)
        try:
            text = await r.text(errors="replace")
        except (TimeoutError, aiohttp.ClientError):
            text = ""
        finally:
            r.release()
        message = f"upstream {self.shown_url} failed with {r.status}: {text[:200]}"
        if r.status >= 500:
            raise UpstreamError(message, status=r.status, retry_after_s=wait)
        data = _json_object(text) or {"error": {"message": text[:2000] or message}}
        raise UpstreamRefused(message, r.status, data, retry_after_s=wait)

    async def stream_batches(
        self, path: str, body: dict[str, Any]
    ) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
        """:meth:`open_stream` and :meth:`UpstreamStream.batches` in one; a 4xx is an
        :class:`UpstreamRefused` (an :class:`UpstreamError`)."""
        stream = await self.open_stream(path, body)
        async for batch in stream.batches():
            yield batch

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield the upstream's SSE chunks as dicts (stops at [DONE])."""
        async for batch, _last in self.stream_batches(path, body):
            for chunk in batch:
                yield chunk

    async def aclose(self) -> None:
        """Close the connections of the running loop's session (call it before the loop
        ends; sessions of loops already closed are dropped with their loops)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        s = self._sessions.pop(loop, None)
        if s is not None and not s.closed:
            await s.close()
