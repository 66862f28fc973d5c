"""A fake OpenAI-compatible upstream: timed, deterministic, no model.

It serves what gateways and benchmarks talk to, so they can be tested on 127.0.0.1
without a GPU or weights::

    GET  /v1/models               one model, named ``model``
    GET  /v1/models/{id}          the same model (an id may hold a slash: org/m, org%2Fm)
    POST /v1/chat/completions     streaming (SSE) and non-streaming
    POST /v1/completions          streaming (SSE) and non-streaming
    GET  /health                  200 ``{"status": "ok"}``

Contract:

* Text is deterministic: completion token *i* is ``tok{i}``, joined by single spaces
  (``"tok0 tok1 tok2"``). A streamed reply carries one token per chunk; chat streams open
  with a role-only chunk (``{"role": "assistant", "content": ""}``, sent at once, as
  OpenAI does) and close with an empty-delta chunk holding ``finish_reason``, then, when
  ``stream_options.include_usage`` is true, a chunk with ``choices: []`` and the usage,
  then ``data: [DONE]``.
* ``min(tokens, max_tokens)`` tokens are produced (``max_completion_tokens`` is accepted
  for chat); ``finish_reason`` is ``"length"`` when ``max_tokens`` cut the reply short,
  else ``"stop"``.
* Timing: ``ttft_s`` seconds pass before the first token and ``itl_s`` seconds between
  successive tokens (``asyncio.sleep``, so any number of requests overlap). A
  non-streaming reply waits the same total time before answering.
* ``chunk_tokens > 1`` packs that many tokens into each streamed chunk, as servers with
  speculative decoding or output buffering do: the first chunk comes after ``ttft_s``,
  each later one ``itl_s`` per token it carries after the one before.
* Usage: ``prompt_tokens`` is the number of whitespace-separated words in the prompt (or
  in all messages' text), ``completion_tokens`` the number of tokens produced.
* With probability ``fail_rate`` (drawn from ``random.Random(seed)``, one draw per
  completion request) a request fails with HTTP 500 before any byte of the reply.
* Deterministic failures, for retries and fallbacks: the first ``fail_first`` completion
  requests fail with ``fail_status`` (default 500; a 429 is a ``rate_limit_error``) before
  any byte of the reply, with a ``Retry-After: <retry_after>`` header when that is set;
  ``break_after`` > 0 cuts every streamed reply's connection after that many token chunks
  (no finish chunk, no ``[DONE]``: a stream that broke midway).
* With ``api_key`` set, requests need ``Authorization: Bearer <api_key>`` (else 401).
* ``reply`` replaces the ``tok{i}`` text: every reply is that text, its tokens being its
  whitespace-led words (``"a b"`` is ``"a"``, ``" b"``), cut at ``max_tokens``.
  ``send_usage=False`` leaves usage out of every reply and stream (as some servers do).
  ``requests``, a list, gets each completion request's JSON body appended (in-process
  only: what a gateway test checks the upstream was sent). ``gone``, a list, gets the
  body of each non-streamed request whose client hung up before its reply was ready (the
  fake stops making it, as a server that aborts the generation does).
* Every error has OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``
  (400 bad request, 401 key, 404 unknown model or route, 500 injected failure).

``fake_server(**kw)`` runs the app with uvicorn on a free 127.0.0.1 port in a background
thread and yields its base URL (``http://127.0.0.1:PORT``; the OpenAI client wants
``base_url + "/v1"``); ``run_fake_server`` runs it in the foreground, and
``python -m lmops.serve.fake --port N`` as a process of its own (``--help`` lists the
settings).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmops.core.errors import UserError
from lmops.serve.protocol import error_body

__all__ = ["create_fake_app", "fake_server", "run_fake_server", "serve_app"]


class _BadRequest(Exception):
    """A request the fake refuses; becomes an OpenAI-shaped error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type_ = type_
        self.param = param
        self.code = code


def _error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


def _words(text: str) -> int:
    return len(text.split())


def _prompt_words(prompt: Any) -> int:
    """Words in a completions ``prompt``: a string, a list of strings or of token ids."""
    if isinstance(prompt, str):
        return _words(prompt)
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return sum(_words(p) for p in prompt)
    if isinstance(prompt, list) and all(isinstance(p, int) for p in prompt):
        return len(prompt)  # already token ids
    raise _BadRequest(
        400, "'prompt' must be a string, a list of strings or a list of token ids", param="prompt"
    )


def _message_words(messages: Any) -> int:
    """Words in the text of chat ``messages`` (string content or ``text`` parts)."""
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(400, "'messages' must be a non-empty list", param="messages")
    total = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _BadRequest(
                400, f"messages[{i}] must be an object with a 'role'", param=f"messages[{i}]"
            )
        content = m.get("content")
        if isinstance(content, str):
            total += _words(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += _words(part["text"])
        elif content is not None:
            raise _BadRequest(
                400,
                f"messages[{i}].content must be a string or a list of parts",
                param=f"messages[{i}].content",
            )
    return total


def _max_tokens(body: dict[str, Any], *, chat: bool) -> int | None:
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _BadRequest(400, f"'{name}' must be an integer >= 1", param=name)
        return value
    return None


class _Fake:
    """State shared by the routes of one app: settings, the failure RNG, an id counter."""

    def __init__(
        self,
        *,
        ttft_s: float,
        itl_s: float,
        tokens: int,
        model: str,
        fail_rate: float,
        seed: int,
        api_key: str | None,
        chunk_tokens: int,
        fail_first: int = 0,
        fail_status: int = 500,
    ) -> None:
        if ttft_s < 0 or itl_s < 0:
            raise UserError(f"ttft_s and itl_s must be >= 0, got {ttft_s} and {itl_s}")
        if tokens < 1 or chunk_tokens < 1:
            raise UserError(f"tokens and chunk_tokens must be >= 1, got {tokens}, {chunk_tokens}")
        if not 0.0 <= fail_rate <= 1.0:
            raise UserError(f"fail_rate must be in [0, 1], got {fail_rate}")
        if fail_first < 0 or not 400 <= fail_status <= 599:
            raise UserError(
                f"fail_first must be >= 0 and fail_status an HTTP error status, got "
                f"{fail_first} and {fail_status}"
            )
        self.ttft_s = ttft_s
        self.itl_s = itl_s
        self.tokens = tokens
        self.model = model
        self.fail_rate = fail_rate
        self.api_key = api_key
        self.chunk_tokens = chunk_tokens
        self._rng = random.Random(seed)
        self.fail_first = fail_first
        self.fail_status = fail_status
        self._failed = 0
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def next_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}-fake-{next(self._ids)}"

    def failure(self) -> tuple[int, str] | None:
        """The status this completion request fails with and why (None: it is answered):
        one of the first ``fail_first``, else one drawn at ``fail_rate`` (a 500)."""
        with self._lock:
            if self._failed < self.fail_first:
                self._failed += 1
                return self.fail_status, str(self.fail_status)
            return (500, "fail_rate") if self._rng.random() < self.fail_rate else None

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            raise _BadRequest(
                401,
                "Incorrect API key provided.",
                type_="authentication_error",
                code="invalid_api_key",
            )

    async def parse(self, request: Request) -> dict[str, Any]:
        self.check_key(request)
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _BadRequest(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _BadRequest(400, "The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest(400, "'model' is required", param="model")
        if model != self.model:
            raise _BadRequest(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        n = body.get("n", 1)
        if n not in (None, 1):
            raise _BadRequest(400, "this fake server supports only n=1", param="n")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise _BadRequest(400, "'stream' must be a boolean", param="stream")
        return body


def create_fake_app(
    *,
    ttft_s: float = 0.0,
    itl_s: float = 0.0,
    tokens: int = 16,
    model: str = "fake",
    fail_rate: float = 0.0,
    seed: int = 0,
    api_key: str | None = None,
    chunk_tokens: int = 1,
    reply: str | None = None,
    send_usage: bool = True,
    requests: list[dict[str, Any]] | None = None,
    fail_first: int = 0,
    fail_status: int = 500,
    retry_after: float | None = None,
    break_after: int = 0,
    gone: list[dict[str, Any]] | None = None,
) -> FastAPI:
    """Build the fake upstream (see the module docstring for its contract)."""
    words = re.findall(r"\s*\S+", reply) if reply is not None else None
    if words is not None and not words:
        raise UserError("reply must hold at least one word")
    fake = _Fake(
        ttft_s=ttft_s,
        itl_s=itl_s,
        tokens=tokens,
        model=model,
        fail_rate=fail_rate,
        seed=seed,
        api_key=api_key,
        chunk_tokens=chunk_tokens,
        fail_first=fail_first,
        fail_status=fail_status,
    )
    app = FastAPI(title="lmops fake OpenAI upstream", docs_url=None, redoc_url=None)

    @app.exception_handler(_BadRequest)
    async def _bad_request(request: Request, exc: _BadRequest) -> JSONResponse:
        return _error(exc.status, exc.message, exc.type_, exc.param, exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(404, f"Unknown route {request.method} {request.url.path}")
        return _error(exc.status_code, str(exc.detail))

    def model_card() -> dict[str, Any]:
        return {"id": fake.model, "object": "model", "created": 0, "owned_by": "lmops"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        fake.check_key(request)
        return {"object": "list", "data": [model_card()]}

    # ``path``, as the gateway's own route: a model named as Hugging Face names them
    # (``org/m``), asked with the slash as it is or as %2F (the openai client's way);
    # ``/v1/models/`` is the list
    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        if not model_id:
            return await list_models(request)
        fake.check_key(request)
        if model_id != fake.model:
            raise _BadRequest(
                404,
                f"The model `{model_id}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return model_card()

    async def complete(request: Request, *, chat: bool) -> Response:
        body = await fake.parse(request)
        if requests is not None:
            requests.append(body)
        if chat:
            prompt_tokens = _message_words(body.get("messages"))
        else:
            if "prompt" not in body:
                raise _BadRequest(400, "'prompt' is required", param="prompt")
            prompt_tokens = _prompt_words(body["prompt"])
        limit = _max_tokens(body, chat=chat)
        total = fake.tokens if words is None else len(words)
        n_out = total if limit is None else min(total, limit)
        finish = "length" if limit is not None and limit < total else "stop"
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise _BadRequest(400, "'stream_options' must be an object", param="stream_options")
        failure = fake.failure()
        if failure is not None:
            status, why = failure
            kind = "rate_limit_error" if status == 429 else "server_error"
            failed = _error(status, f"injected failure ({why})", kind)
            if retry_after is not None:
                failed.headers["Retry-After"] = f"{retry_after:g}"
            return failed
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n_out,
            "total_tokens": prompt_tokens + n_out,
        }
        rid = fake.next_id("chatcmpl" if chat else "cmpl")
        created = int(time.time())
        if words is not None:
            texts = words[:n_out]
        else:
            texts = [f"tok{i}" if i == 0 else f" tok{i}" for i in range(n_out)]
        if not send_usage:
            usage = {}
        if body.get("stream"):
            events = _stream(
                fake,
                rid=rid,
                created=created,
                chat=chat,
                texts=texts,
                finish=finish,
                usage=usage if options.get("include_usage") and send_usage else None,
                break_after=break_after,
            )
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        if await _hung_up(request, fake.ttft_s + fake.itl_s * max(n_out - 1, 0)):
            if gone is not None:
                gone.append(body)
            return Response(status_code=499)  # sent to nobody
        text = "".join(texts)
        choice: dict[str, Any]
        if chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        reply_body: dict[str, Any] = {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": fake.model,
            "choices": [choice],
        }
        if usage:
            reply_body["usage"] = usage
        return JSONResponse(reply_body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(request, chat=False)

    return app


async def _hung_up(request: Request, seconds: float) -> bool:
    """Wait ``seconds`` (a non-streamed reply being made); True, at once, when the client
    hangs up meanwhile (its body was read: only a disconnect can arrive)."""

    async def disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnect())
    try:
        await asyncio.wait([watcher], timeout=seconds)
        return watcher.done()
    finally:
        watcher.cancel()


async def _stream(
    fake: _Fake,
    *,
    rid: str,
    created: int,
    chat: bool,
    texts: list[str],
    finish: str,
    usage: dict[str, int] | None,
    break_after: int = 0,
) -> AsyncIterator[str]:
    base = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": fake.model,
    }
    # OpenAI sets "usage": null on every chunk but the last when usage was asked for.
    extra: dict[str, Any] = {"usage": None} if usage is not None else {}

    def event(choices: list[dict[str, Any]]) -> str:
        return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n"

    def choice(text: str, finish_reason: str | None, *, role: bool = False) -> dict[str, Any]:
        if chat:
            # role chunk: role + empty content; token chunk: content; closing chunk: {}
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    if chat:
        yield event([choice("", None, role=True)])
    k = fake.chunk_tokens
    for start in range(0, len(texts), k):
        piece = texts[start : start + k]
        await asyncio.sleep(fake.ttft_s if start == 0 else fake.itl_s * len(piece))
        yield event([choice("".join(piece), None)])
        if break_after and start // k + 1 >= break_after:
            # uvicorn drops the connection of a body that raised: the client's read breaks
            raise ConnectionAbortedError("break_after: the stream broke on purpose")
    yield event([choice("", finish)])
    if usage is not None:
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"


def run_fake_server(host: str = "127.0.0.1", port: int = 8000, **kw: Any) -> None:
    """Serve ``create_fake_app(**kw)`` on ``host:port`` in the foreground until interrupted."""
    uvicorn.run(create_fake_app(**kw), host=host, port=port, log_level="warning")


@contextmanager
def serve_app(app: Any, name: str = "server") -> Iterator[str]:
    """Run the ASGI ``app`` on a free 127.0.0.1 port in a background thread; yield its base
    URL (``http://127.0.0.1:PORT``).

    The socket is bound before the thread starts (no race for the port) and the server is
    stopped, and the thread joined, on exit.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"{name}-{port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10.0
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {name} did not start on 127.0.0.1:{port}")
            time.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)
        sock.close()


@contextmanager
def fake_server(**kw: Any) -> Iterator[str]:
    """Run the fake on a free 127.0.0.1 port in a background thread; yield its base URL
    (see :func:`serve_app`)."""
    with serve_app(create_fake_app(**kw), "fake OpenAI server") as url:
        yield url


def main(argv: list[str] | None = None) -> None:
    """``python -m lmops.serve.fake --port N [--model NAME] ...``: the fake as its own
    process, e.g. as the stand-in for vLLM in ``vllm.command``. As vLLM does, it takes its
    API key from ``VLLM_API_KEY`` when ``--api-key`` is not given."""
    import argparse
    import os

    p = argparse.ArgumentParser(prog="python -m lmops.serve.fake", description=main.__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default="fake", help="the one model name served")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--ttft-s", type=float, default=0.0)
    p.add_argument("--itl-s", type=float, default=0.0)
    p.add_argument("--chunk-tokens", type=int, default=1)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--fail-first", type=int, default=0, help="fail the first N requests")
    p.add_argument("--fail-status", type=int, default=500, help="their status (e.g. 429, 503)")
    p.add_argument("--retry-after", type=float, default=None, help="their Retry-After (s)")
    p.add_argument("--break-after", type=int, default=0, help="cut streams after N chunks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY") or None)
    a = p.parse_args(argv)
    run_fake_server(
        a.host,
        a.port,
        model=a.model,
        tokens=a.tokens,
        ttft_s=a.ttft_s,
        itl_s=a.itl_s,
        chunk_tokens=a.chunk_tokens,
        fail_rate=a.fail_rate,
        seed=a.seed,
        api_key=a.api_key,
        fail_first=a.fail_first,
        fail_status=a.fail_status,
        retry_after=a.retry_after,
        break_after=a.break_after,
    )


if __name__ == "__main__":
    main()
