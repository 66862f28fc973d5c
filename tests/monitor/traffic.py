"""Helpers of the monitor tests: literal prompt templates logged into the request log, a
local webhook receiver on 127.0.0.1, and a server that does not answer chat requests."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lmops.monitor.metering import log_request

DISHES = ["soup", "rice", "bread", "salad", "pasta", "curry", "stew", "pie", "cake", "tacos"]
THINGS = ["garlic", "onions", "butter", "tomatoes", "beans", "cheese", "lemon", "herbs"]
VERBS = ["cook", "bake", "season", "serve", "store", "reheat", "prepare"]


def cooking(i: int) -> str:
    return (
        f"How do I {VERBS[i % 7]} {DISHES[i % 10]} with {THINGS[(i * 3) % 8]} "
        f"for {2 + i % 5} people?"
    )


def maths_zh(i: int) -> str:
    return f"小明有{i % 17 + 3}个苹果，又买了{i % 13 + 2}个，一共有多少个苹果？"


def log_chat(
    store: Any,
    deployment: str,
    prompt: str,
    answer: str,
    *,
    at: datetime,
    model_ref: str | None = None,
    status: int = 200,
    latency_ms: float = 100.0,
    i: int = 0,
) -> None:
    body = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
    log_request(
        store,
        at=at,
        request_id=f"{deployment}-{at.timestamp()}-{i}",
        endpoint="/v1/chat/completions",
        status=status,
        deployment=deployment,
        model_ref=model_ref,
        prompt_tokens=len(prompt.split()),
        completion_tokens=len(answer.split()) if status < 400 else 0,
        latency_ms=latency_ms,
        request_body={"model": deployment, "messages": [{"role": "user", "content": prompt}]},
        response_body=body if status < 400 else None,
    )


def plant_traffic(
    store: Any, deployment: str, *, model_ref: str | None, n: int = 120, drift: bool
) -> tuple[datetime, datetime]:
    """``n`` cooking chats two hours ago, then ``n`` recent ones: with ``drift`` half of the
    recent prompts are Chinese maths, a fifth fail and a fifth are refused. Returns the
    start of the old window and of the recent one."""
    old = datetime.now(UTC) - timedelta(hours=2)
    new = datetime.now(UTC) - timedelta(minutes=30)
    for i in range(n):
        log_chat(
            store,
            deployment,
            cooking(i),
            f"Use {THINGS[i % 8]}.",
            at=old + timedelta(seconds=i),
            model_ref=model_ref,
            i=i,
        )
    for i in range(n):
        prompt, answer, status = cooking(i + 7), f"Try {THINGS[i % 8]}.", 200
        if drift and i % 2 == 0:
            prompt = maths_zh(i)
        if drift and i % 5 == 1:
            answer = "I'm sorry, but I can't help with that."
        if drift and i % 5 == 3:
            status = 500
        log_chat(
            store,
            deployment,
            prompt,
            answer,
            at=new + timedelta(seconds=i),
            model_ref=model_ref,
            status=status,
            i=n + i,
        )
    return old, new


class Receiver:
    """A webhook receiver on 127.0.0.1 that records JSON bodies; ``delay_s`` makes it slow."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                time.sleep(delay_s)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def banner_server(banner: bytes, *, models: bool = False) -> Iterator[str]:
    """A server on 127.0.0.1 that reads each request and answers ``banner`` then closes;
    with ``models``, a GET of /v1/models gets a real HTTP answer (a gateway alive whose
    model requests die). Yields its base URL."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()
    models_body = json.dumps({"object": "list", "data": [{"id": "chat", "object": "model"}]})
    listing = (
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(models_body)}\r\n\r\n{models_body}"
    ).encode()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    head = conn.recv(65536)
                    conn.sendall(listing if models and head.startswith(b"GET ") else banner)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        sock.close()
