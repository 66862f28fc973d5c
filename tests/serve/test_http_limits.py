"""Slow clients against a real `lmops serve` on 127.0.0.1, over raw sockets.

Half-open connections (part of a request line, then nothing) do not slow a normal request
and are closed by the server once the header deadline passes; trickling bytes does not
extend it; a kept-alive connection that starts a next request is held to it again. With a
connection cap, the connections beyond it are answered 503 and closed, and once the idle
ones go, requests work again. Both the httptools and the h11 protocol are checked.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmops.serve.http import protocol_factory
from tests.serve.conftest import lmops_env, start_server, stop_server

# Generous: a liveness bound for "the server closed it", never a timing assert.
PATIENCE_S = 30.0


def healthy(base: str) -> bool:
    return httpx.get(f"{base}/healthz", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def deadline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two workers with a 1 s header deadline: both must enforce it."""
    home = tmp_path_factory.mktemp("lmops-home")
    proc, base = start_server(
        lmops_env(home), "--header-timeout", "1", "--workers", "2", ready=healthy
    )
    try:
        yield base
    finally:
        stop_server(proc)


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=PATIENCE_S)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as
    closed); fails if it is still open after PATIENCE_S."""
    got = b""
    sock.settimeout(PATIENCE_S)
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {PATIENCE_S:.0f}s")
    return got


def wait_closed(socks: list[socket.socket], at_least: int) -> dict[socket.socket, bytes]:
    """Waits until the server has closed ``at_least`` of ``socks``; returns what each
    closed one received."""
    closed: dict[socket.socket, bytes] = {}
    got = {s: b"" for s in socks}
    deadline = time.monotonic() + PATIENCE_S
    while len(closed) < at_least:
        assert time.monotonic() < deadline, f"only {len(closed)} of {len(socks)} were closed"
        ready, _, _ = select.select([s for s in socks if s not in closed], [], [], 0.05)
        for s in ready:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            got[s] += chunk
            if not chunk:
                closed[s] = got[s]
    return closed


def test_half_open_connections_are_closed_and_do_not_block_requests(
    deadline_server: str,
) -> None:
    half_open = [connect(deadline_server) for _ in range(50)]
    for s in half_open:
        s.sendall(b"GET /healthz HT")
    # a normal request still answers while they hang
    assert httpx.get(f"{deadline_server}/healthz", timeout=PATIENCE_S).status_code == 200
    closed = wait_closed(half_open, at_least=50)  # by the server: the test never closes them
    assert set(closed.values()) == {b""}  # closed without an answer
    for s in half_open:
        s.close()


def test_trickled_headers_do_not_extend_the_deadline(deadline_server: str) -> None:
    sock = connect(deadline_server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    sent = 0
    try:
        while sent < 300:  # a header line every 0.1 s: far past the 1 s deadline
            time.sleep(0.1)
            sock.sendall(b"X-Slow: 1\r\n")
            sent += 1
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert sent < 300, "the server waited for the whole trickle"
    sock.close()


def test_a_kept_alive_connection_is_held_to_the_deadline_again(deadline_server: str) -> None:
    sock = connect(deadline_server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while b"\r\n\r\n" not in first:
        first += sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    # The next request starts but never finishes its headers: that stops the keep-alive
    # timer, so only the header deadline can close this connection.
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost:")
    rest = read_until_closed(sock)
    assert rest.count(b"HTTP/1.1 ") <= 1  # at most the rest of the first answer
    sock.close()


def test_connections_beyond_the_cap_are_refused_until_others_go(lmops_home: Path) -> None:
    proc, base = start_server(
        lmops_env(lmops_home), "--max-connections", "20", "--header-timeout", "60", ready=healthy
    )
    try:
        idle = [connect(base) for _ in range(30)]
        refused = wait_closed(idle, at_least=10)
        # 11 if the readiness probe's connection was still counted when these arrived
        assert len(refused) <= 11
        assert all(got.startswith(b"HTTP/1.1 503") for got in refused.values())
        # while the cap is full, a new client is turned away rather than queued
        with contextlib.suppress(httpx.TransportError):  # closed before it was read
            assert httpx.get(f"{base}/healthz", timeout=PATIENCE_S).status_code == 503
        for s in idle:
            s.close()
        deadline = time.monotonic() + PATIENCE_S
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=PATIENCE_S).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "requests did not work again after the idle left"
            time.sleep(0.05)
    finally:
        stop_server(proc)


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_both_protocols_enforce_both_limits(parser: str) -> None:
    """The same limits over uvicorn's h11 protocol (the fallback where httptools is not)."""
    import asyncio
    import threading

    import uvicorn

    from lmops.core.net import free_port

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=protocol_factory(0.5, 3, parser=parser),  # type: ignore[arg-type]
        lifespan="off",
        log_level="warning",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(srv.serve()), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + PATIENCE_S
        while not srv.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        half = connect(base)
        half.sendall(b"GET / HT")
        assert httpx.get(base, timeout=PATIENCE_S).text == "ok"
        assert read_until_closed(half) == b""
        half.close()
        idle = [connect(base) for _ in range(5)]  # cap 3: two are refused at once
        closed = wait_closed(idle, at_least=5)  # the other three by the deadline
        answers = sorted(got[:12] for got in closed.values())
        assert answers == [b"", b"", b"", b"HTTP/1.1 503", b"HTTP/1.1 503"]
        for s in idle:
            s.close()
    finally:
        srv.should_exit = True
        thread.join(timeout=PATIENCE_S)
