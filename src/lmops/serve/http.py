"""uvicorn's HTTP protocols with a header deadline and a connection cap.

uvicorn closes a connection that idles *between* requests (``timeout_keep_alive``) but never
one that is slow to send a request: a client that opens a socket and trickles half a
request line holds a connection, its buffers and a file descriptor for as long as it likes
(slowloris; 3000 such sockets were held for over a minute). Two limits, per worker process:

- **header deadline**: a connection must deliver complete request headers within
  ``header_timeout`` seconds of connecting, or of the first byte of its next request on a
  kept-alive connection; otherwise it is closed. The deadline is absolute: trickling bytes
  does not extend it. Between requests uvicorn's keep-alive timeout applies as before, and
  while a response is in progress (a long stream included) no deadline runs.
- **connection cap**: beyond ``max_connections`` open connections, a new connection is
  answered ``503`` with ``connection: close`` at once, before anything is read, so a flood
  costs one small write per socket and never reaches the app.

Both are subclasses of uvicorn's protocol classes, handed to ``uvicorn.Config(http=...)``
by :func:`protocol_factory` (a ``functools.partial``, so it pickles to every worker that
uvicorn spawns). ``lmops serve`` sets them (``--header-timeout``, default 10 s;
``--max-connections``, default 2048).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

__all__ = ["LimitedH11Protocol", "LimitedHttpToolsProtocol", "protocol_factory"]

log = logging.getLogger("uvicorn.error")


@functools.lru_cache(maxsize=8)
def _busy_response(limit: int) -> bytes:
    """The whole 503 answer to a connection beyond the cap (built once per limit)."""
    body = json.dumps(
        {
            "error": {
                "message": f"the server is at its limit of {limit} connections; retry shortly",
                "type": "server_busy",
                "param": None,
                "code": "too_many_connections",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "retry-after: 1\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Throttled:
    """A warning logged at most once per ``every_s`` seconds, with how many it stands for:
    under a flood, one line per refused socket would be a second flood."""

    def __init__(self, message: str, every_s: float = 10.0) -> None:
        self.message, self.every_s = message, every_s
        self.count, self.last = 0, float("-inf")

    def __call__(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            log.warning("%s (%d since the last warning)", self.message, self.count)
            self.count, self.last = 0, now


class _Limits(asyncio.Protocol):
    """The two limits over a uvicorn protocol (first base of the concrete classes below,
    whose second base provides ``transport``, ``connections``, ``cycle`` and ``loop``)."""

    # set by uvicorn's protocol classes
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    connections: set[Any]
    cycle: Any

    header_timeout: float
    max_connections: int | None
    _header_timer: asyncio.TimerHandle | None
    _busy_bytes: bytes

    def _init_limits(self, header_timeout: float, max_connections: int | None) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self._header_timer = None
        self._busy_bytes = _busy_response(max_connections or 0)

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # uvicorn adds this connection to the set
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            _REFUSED()
            self.transport.write(self._busy_bytes)
            self.transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            self._disarm()  # closed, or handed over to a websocket protocol
        elif self._responding():
            self._disarm()  # headers are complete: the request is the app's now
        else:
            self._arm()  # bytes of a request whose headers are not complete yet

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        t = self.transport
        if t.is_closing() or t.get_protocol() is not self or self._responding():
            return
        _TIMED_OUT()
        t.close()


_REFUSED = _Throttled("connection limit reached: new connections are answered 503 and closed")
_TIMED_OUT = _Throttled("closed connections that sent no complete request headers in time")


class LimitedH11Protocol(_Limits, H11Protocol):
    """uvicorn's h11 protocol with the header deadline and the connection cap."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout: float,
        max_connections: int | None,
    ) -> None:
        H11Protocol.__init__(self, config, server_state, app_state, _loop)
        self._init_limits(header_timeout, max_connections)


class LimitedHttpToolsProtocol(_Limits, HttpToolsProtocol):
    """uvicorn's httptools protocol with the header deadline and the connection cap."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout: float,
        max_connections: int | None,
    ) -> None:
        HttpToolsProtocol.__init__(self, config, server_state, app_state, _loop)
        self._init_limits(header_timeout, max_connections)


def protocol_factory(
    header_timeout: float,
    max_connections: int | None,
    *,
    parser: str = "httptools",
) -> Callable[..., asyncio.Protocol]:
    """What to pass as ``uvicorn.Config(http=...)`` (or ``uvicorn.run(http=...)``): a
    protocol class bound to the limits; ``parser`` is ``httptools`` (what uvicorn's
    ``auto`` picks, installed with ``uvicorn[standard]``) or ``h11``."""
    classes: dict[str, Callable[..., asyncio.Protocol]] = {
        "httptools": LimitedHttpToolsProtocol,
        "h11": LimitedH11Protocol,
    }
    return functools.partial(
        classes[parser], header_timeout=header_timeout, max_connections=max_connections
    )
