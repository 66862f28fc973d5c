"""The OpenAI-compatible API under ``/v1``, mounted on the ``lmops serve`` app.

Errors are ``{"error": {"message", "type", "param", "code"}}`` with the status codes the
official client maps (400 BadRequest, 401 Authentication, 403 PermissionDenied,
404 NotFound, 429 RateLimit, 500/502/503 server errors). Unknown extra fields in a request
are accepted and ignored, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal, cast

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmops.serve.deployments import Registry
from lmops.serve.types import Delta, Done, GenRequest, TokenLogprob

__all__ = ["OpenAIError", "mount_openai"]


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type_,
            param,
            code,
        )
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(
            status_code=self.status,
            content={
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            },
            headers=self.headers,
        )


# -- request bodies (extra fields accepted) -------------------------------------------------------
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if isinstance(p, dict))
        return self.content or ""


class StreamOptions(_Open):
    include_usage: bool = False


class _Sampling(_Open):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    # a 64-bit seed, as OpenAI takes; larger ones would fail inside the sampler
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    user: str | None = None

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > 4:
            raise OpenAIError(400, "stop: at most 4 sequences", param="stop")
        return stops


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"


def _logprob_options(req: ChatRequest | CompletionRequest) -> tuple[bool, int]:
    """Whether token logprobs were asked for, and how many alternatives per token."""
    if isinstance(req, CompletionRequest):
        return req.logprobs is not None, req.logprobs or 0
    if req.top_logprobs is not None and not req.logprobs:
        raise OpenAIError(
            400,
            "top_logprobs: set logprobs to true to use top_logprobs",
            param="top_logprobs",
            code="invalid_value",
        )
    return req.logprobs, (req.top_logprobs or 0) if req.logprobs else 0


class _LogprobRelease:
    """Hands out one choice's token logprobs only once their text went out verbatim.

    Output guardrails may hold text back, mask it or cut the reply; a token's logprob
    entry names the token, so it is released only when the text up to the token's end
    (``TokenLogprob.text_end``) was sent exactly as the model wrote it. After the first
    rewritten character no later entry is released."""

    def __init__(self) -> None:
        self.raw = ""  # what the model produced
        self.out = ""  # what the client was sent
        self.aligned = 0  # length of their common prefix
        self.diverged = False
        self.pending: list[TokenLogprob] = []

    def produced(self, text: str, entry: TokenLogprob | None) -> None:
        self.raw += text
        if entry is not None:
            self.pending.append(entry)

    def sent(self, text: str) -> list[TokenLogprob]:
        self.out += text
        limit = min(len(self.raw), len(self.out))
        while not self.diverged and self.aligned < limit:
            if self.raw[self.aligned] != self.out[self.aligned]:
                self.diverged = True
                break
            self.aligned += 1
        n = 0
        while n < len(self.pending) and self.pending[n].text_end <= self.aligned:
            n += 1
        released, self.pending = self.pending[:n], self.pending[n:]
        return released


def _chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [e.to_openai() for e in entries]}


def _completion_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, alternatives as {token: logprob}."""
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.token: t.logprob for t in e.top_logprobs} for e in entries],
        "text_offset": [e.text_offset for e in entries],
    }


def _openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """The request body of a route that parses its JSON itself (to keep OpenAI's error
    shapes), described for ``/openapi.json`` with the model's JSON schema inlined."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline(schema)}},
        }
    }


def _parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise OpenAIError(
            400, f"{param or 'body'}: {err['msg']}", param=param, code="invalid_value"
        ) from None


# -- the gateway ------------------------------------------------------------------------------------
# A key that authenticated is trusted again for this long without reading the database (a
# read per request costs more than the rest of admission): revoking a key takes effect in
# every worker within this time; an expiry date is checked on every request.
KEY_CACHE_S = 1.0
_KEY_CACHE_MAX = 10_000


class Gateway:
    def __init__(self, registry: Registry, store: Any, *, hooks: Any = None) -> None:
        self.registry = registry
        self.store = store
        self.hooks = (
            hooks  # policy layer (limits, guardrails, metering, metrics); see lmops.serve.policy
        )
        self._keys: dict[str, tuple[float, Any]] = {}  # sha256(secret) -> (until, ApiKey)

    def _key(self, token: str) -> Any:
        """The key for ``token``, from the cache while it is fresh (see ``KEY_CACHE_S``)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._keys.get(digest)
        if hit is not None and hit[0] > now:
            key = hit[1]
            if key.expires_at is None or key.expires_at > datetime.now(UTC):
                return key
        key = self.store.keys.authenticate(token)  # PermissionDenied: never cached
        if len(self._keys) >= _KEY_CACHE_MAX:
            self._keys.clear()
        self._keys[digest] = (now + KEY_CACHE_S, key)
        return key

    # auth --------------------------------------------------------------------------------------------
    def authenticate(self, request: Request) -> Any:
        from lmops.core.errors import PermissionDenied

        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise OpenAIError(
                401,
                "You didn't provide an API key. Send 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )
        try:
            key = self._key(token.strip())
        except PermissionDenied as e:
            raise OpenAIError(401, str(e), code="invalid_api_key") from None
        request.state.lmops_key = key  # for the access log (prefix and name only)
        return key

    def deployment(self, key: Any, name: str) -> Any:
        from lmops.core.errors import NotFoundError

        if key.scopes is not None and name not in key.scopes:
            raise OpenAIError(
                403,
                f"key {key.name!r} may not call model {name!r}",
                type_="permission_error",
                param="model",
                code="model_not_allowed",
            )
        try:
            return self.registry.get(name)
        except NotFoundError:
            raise OpenAIError(
                404, f"The model '{name}' does not exist", param="model", code="model_not_found"
            ) from None


class _Final(str):
    """The last piece of an event stream's body: it goes out in the same write as the end
    of the chunked body (one write per response less). The generator must yield nothing
    after it; it is still run to its end, so its ``finally`` sees a normal finish."""


class _EventStream(Response):
    """A ``text/event-stream`` response for the gateway's streams, leaner than Starlette's
    ``StreamingResponse`` (which runs an anyio task group per response under uvicorn):

    * a disconnect is watched by one plain task, which cancels the streaming task while it
      waits for the next chunk: the body generator sees ``CancelledError`` at its ``await``
      (a 499; engine slots are freed);
    * the body generator is always closed before the response is over, also when the
      client left, so its ``finally`` (metering, freeing slots, the figures the access log
      reads) runs now rather than whenever the garbage collector gets to it;
    * a :class:`_Final` chunk is sent together with the end of the body."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[str], headers: dict[str, str] | None = None) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = {"complete": False, "gone": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["complete"]:  # (a finished response also reads as a disconnect)
                state["gone"] = True
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                final = isinstance(chunk, _Final)
                if final:
                    state["complete"] = True
                await send(
                    {"type": "http.response.body", "body": chunk.encode(), "more_body": not final}
                )
            if not state["complete"]:
                state["complete"] = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            task.uncancel()  # the client left: a normal end for this response
        finally:
            watcher.cancel()
            await cast(Any, self.body_iterator).aclose()


def _failed(ctx: Any, e: Exception) -> OpenAIError:
    """The OpenAI error for a request that failed (an upstream failure is a 502), recorded
    on its policy context, with the context's rate-limit headers."""
    err = (
        e
        if isinstance(e, OpenAIError)
        else OpenAIError(502, str(e), type_="server_error", code="upstream_error")
    )
    if ctx is not None:
        ctx.fail(err.status, err.message)
        err.headers = {**ctx.headers(), **err.headers}
    return err


def _upstream_error(status: int, data: dict[str, Any]) -> OpenAIError:
    """An upstream's 4xx in OpenAI's shape, whatever shape the upstream's error had."""
    err = data.get("error")
    if not isinstance(err, dict):
        err = {"message": err} if isinstance(err, str) else {}
    param, code = err.get("param"), err.get("code")
    return OpenAIError(
        status,
        str(err.get("message") or data)[:2000],
        type_=str(err.get("type") or "invalid_request_error"),
        param=param if isinstance(param, str) else None,
        code=code if isinstance(code, str) else None,
    )


def _chunk_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def _sse(obj: Any) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


async def _run_engine(
    dep: Any,
    req: ChatRequest | CompletionRequest,
    prompt_ids: list[int],
    stops: list[str],
    max_tokens: int,
    target: Any,
    rid: str,
    i: int,
    seed: int | None,
) -> AsyncIterator[list[Delta | Done]]:
    """The events of choice ``i``, in batches (see ``Engine.generate_batches``)."""
    logprobs, top_logprobs = _logprob_options(req)
    gen = GenRequest(
        request_id=f"{rid}-{i}",
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=None if seed is None else seed + i,
        stop=stops,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )
    async for batch in target.engine.generate_batches(gen):
        yield batch


async def _flat(batches: AsyncIterator[list[Delta | Done]]) -> AsyncIterator[Delta | Done]:
    async for batch in batches:
        for ev in batch:
            yield ev


def mount_openai(app: FastAPI, registry: Registry, store: Any, *, hooks: Any = None) -> Gateway:
    """Add ``/v1`` routes to ``app``; returns the gateway (for tests and shutdown)."""
    from lmops.serve.engine import EngineOverloaded
    from lmops.serve.upstream import UpstreamError, UpstreamRefused

    gw = Gateway(registry, store, hooks=hooks)
    router = APIRouter(prefix="/v1")

    @app.exception_handler(OpenAIError)
    def _openai_error(_req: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OpenAIError)
        return exc.response()

    async def body_json(request: Request) -> Any:
        try:
            return json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise OpenAIError(
                400, "We could not parse the JSON body of your request.", code="invalid_json"
            ) from None

    @router.get("/models")
    def models(request: Request) -> dict[str, Any]:
        key = gw.authenticate(request)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "lmops"}
            for name in sorted(registry.deployments)
            if key.scopes is None or name in key.scopes
        ]
        return {"object": "list", "data": data}

    @router.get("/models/{name}")
    def model(request: Request, name: str) -> dict[str, Any]:
        key = gw.authenticate(request)
        gw.deployment(key, name)
        return {"id": name, "object": "model", "created": 0, "owned_by": "lmops"}

    async def _generate(request: Request, kind: Literal["chat", "completion"]) -> Response:
        started = time.perf_counter()
        key = gw.authenticate(request)
        raw = await body_json(request)
        req: ChatRequest | CompletionRequest = _parse(
            ChatRequest if kind == "chat" else CompletionRequest, raw
        )
        dep = gw.deployment(key, req.model)
        rid = _chunk_id() if kind == "chat" else "cmpl-" + uuid.uuid4().hex[:24]
        stops = req.stops()
        want_logprobs = _logprob_options(req)[0]
        ctx = hooks.begin(key, dep, kind, raw, rid) if hooks else None
        request.state.lmops_ctx = ctx  # the access log reads the outcome from it
        try:
            if dep.upstream is not None:
                return await _upstream(dep, req, raw, kind, rid, ctx, started)
            if isinstance(req, CompletionRequest) and req.echo:
                raise OpenAIError(400, "echo is not supported by the built-in engine", param="echo")
            target = dep.pick()
            engine = target.engine
            messages = (
                [{"role": m.role, "content": m.text()} for m in req.messages]
                if isinstance(req, ChatRequest)
                else None
            )
            if ctx is not None and messages is not None:
                messages = ctx.check_input(messages)
            if messages is not None:
                prompt_ids = engine.encode_chat(messages)
            else:
                assert isinstance(req, CompletionRequest)
                prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
                if len(prompts) != 1:
                    raise OpenAIError(
                        400, "prompt: a list of prompts is not supported; send one", param="prompt"
                    )
                prompt_text = ctx.check_prompt(prompts[0]) if ctx is not None else prompts[0]
                prompt_ids = engine.encode(prompt_text) or [engine.tokenizer.eos_token_id or 0]
            asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
            room = engine.max_context - len(prompt_ids)
            if room <= 0:
                raise OpenAIError(
                    400,
                    f"This model's maximum context length is {engine.max_context} tokens; your prompt has {len(prompt_ids)}.",
                    param="messages" if kind == "chat" else "prompt",
                    code="context_length_exceeded",
                )
            if asked is not None and asked > dep.spec.max_tokens_cap:
                raise OpenAIError(
                    400,
                    f"max_tokens is too large: {asked} (this deployment allows {dep.spec.max_tokens_cap})",
                    param="max_tokens",
                    code="invalid_value",
                )
            # the deployment's cap bounds the default as well as what a client asks for
            max_tokens = min(asked or min(256, room, dep.spec.max_tokens_cap), room)
            if ctx is not None:
                ctx.admit(len(prompt_ids), max_tokens * req.n, model_ref=target.version)
            if req.stream:
                return _EventStream(
                    _stream_engine(
                        dep, req, prompt_ids, stops, max_tokens, target, rid, kind, ctx, started
                    ),
                    headers=ctx.headers() if ctx else {},
                )
            outs = await asyncio.gather(
                *(
                    _collect(
                        _flat(
                            _run_engine(
                                dep, req, prompt_ids, stops, max_tokens, target, rid, i, req.seed
                            )
                        )
                    )
                    for i in range(req.n)
                )
            )
            failed = next((d for _t, d, _l in outs if d.finish_reason == "error"), None)
            if failed is not None:
                raise OpenAIError(
                    500,
                    f"The model failed while generating: {failed.error}",
                    type_="server_error",
                    code="engine_error",
                )
            completion = sum(d.completion_tokens for _t, d, _l in outs)
            choices = []
            for i, (text, done, release) in enumerate(outs):
                if ctx is not None:
                    text, filtered = ctx.check_output(text)
                    if filtered:
                        done.finish_reason = "content_filter"
                entries = release.sent(text)
                choice: dict[str, Any] = {"index": i, "finish_reason": done.finish_reason}
                if kind == "chat":
                    choice["message"] = {"role": "assistant", "content": text}
                    choice["logprobs"] = _chat_logprobs(entries) if want_logprobs else None
                else:
                    choice["text"] = text
                    choice["logprobs"] = _completion_logprobs(entries) if want_logprobs else None
                choices.append(choice)
            usage = {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": completion,
                "total_tokens": len(prompt_ids) + completion,
            }
            body = {
                "id": rid,
                "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": int(time.time()),
                "model": req.model,
                "choices": choices,
                "usage": usage,
                "system_fingerprint": f"lmops-{target.version}",
            }
            if ctx is not None:
                ctx.finish(200, len(prompt_ids), completion, response=body)
            return JSONResponse(body, headers=ctx.headers() if ctx else {})
        except EngineOverloaded as e:
            err = OpenAIError(
                503,
                f"The engine is currently overloaded ({e}); please retry",
                type_="server_error",
                code="engine_overloaded",
            )
            if ctx is not None:
                ctx.fail(503, str(e))
            return err.response()
        except (UpstreamError, OpenAIError) as e:
            raise _failed(ctx, e) from None

    async def _collect(
        events: AsyncIterator[Delta | Done],
    ) -> tuple[str, Done, _LogprobRelease]:
        release = _LogprobRelease()
        async for ev in events:
            if isinstance(ev, Delta):
                release.produced(ev.text, ev.logprobs)
            else:
                return release.raw, ev, release
        raise RuntimeError("engine stream ended without Done")

    async def _stream_engine(
        dep: Any,
        req: Any,
        prompt_ids: list[int],
        stops: list[str],
        max_tokens: int,
        target: Any,
        rid: str,
        kind: str,
        ctx: Any,
        started: float,
    ) -> AsyncIterator[str]:
        created = int(time.time())
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        completion = 0
        status = 200
        queue: asyncio.Queue[tuple[int, list[Delta | Done]]] = asyncio.Queue()
        guards: list[Any] = [ctx.stream_guard() if ctx is not None else None for _ in range(req.n)]
        want_logprobs = _logprob_options(req)[0]
        releases = [_LogprobRelease() for _ in range(req.n)]

        async def pump(i: int) -> None:
            async for batch in _run_engine(
                dep, req, prompt_ids, stops, max_tokens, target, rid, i, req.seed
            ):
                await queue.put((i, batch))

        async def merged() -> AsyncGenerator[tuple[int, list[Delta | Done]], None]:
            while True:
                yield await queue.get()

        async def single() -> AsyncGenerator[tuple[int, list[Delta | Done]], None]:
            # one choice (the usual case): no task and no second queue in between
            async for batch in _run_engine(
                dep, req, prompt_ids, stops, max_tokens, target, rid, 0, req.seed
            ):
                yield 0, batch

        def chunk(
            i: int,
            text: str | None,
            finish: str | None,
            first: bool = False,
            entries: list[TokenLogprob] | None = None,
        ) -> dict[str, Any]:
            logprobs = None
            if want_logprobs and entries is not None:
                logprobs = (
                    _chat_logprobs(entries) if kind == "chat" else _completion_logprobs(entries)
                )
            if kind == "chat":
                delta: dict[str, Any] = {}
                if first:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                return {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": req.model,
                    "choices": [
                        {"index": i, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
                    ],
                }
            return {
                "id": rid,
                "object": obj,
                "created": created,
                "model": req.model,
                "choices": [
                    {"index": i, "text": text or "", "finish_reason": finish, "logprobs": logprobs}
                ],
            }

        # Each engine wake-up's events go out in one write: one token per step while the
        # client keeps up, several when this loop fell behind (a write per token would then
        # cost more than the token).
        tasks = [asyncio.create_task(pump(i)) for i in range(req.n)] if req.n > 1 else []
        source = merged() if req.n > 1 else single()
        try:
            if kind == "chat":
                yield "".join(_sse(chunk(i, "", None, first=True)) for i in range(req.n))
            open_ = set(range(req.n))
            first_token = None
            async for i, batch in source:
                out: list[str] = []
                guard = guards[i]
                for ev in batch:
                    if i not in open_:
                        break
                    if isinstance(ev, Delta):
                        text, stop_now = (
                            guard.feed(ev.text) if guard is not None else (ev.text, False)
                        )
                        entries: list[TokenLogprob] = []
                        if want_logprobs:
                            releases[i].produced(ev.text, ev.logprobs)
                            entries = releases[i].sent(text)
                        if text and first_token is None:
                            first_token = time.perf_counter()
                            if ctx is not None:
                                ctx.first_token(first_token - started)
                        if text or entries:
                            out.append(_sse(chunk(i, text, None, entries=entries)))
                        if stop_now:
                            open_.discard(i)
                            out.append(_sse(chunk(i, None, "content_filter")))
                    elif ev.finish_reason == "error":
                        status = 500  # the reply has begun: the error goes in-band, as OpenAI's
                        out.append(
                            _sse(
                                {
                                    "error": {
                                        "message": "The model failed while generating: "
                                        + str(ev.error),
                                        "type": "server_error",
                                        "param": None,
                                        "code": "engine_error",
                                    }
                                }
                            )
                        )
                        yield "".join(out)
                        return
                    else:
                        tail = guard.finish() if guard is not None else ""
                        entries = releases[i].sent(tail) if want_logprobs else []
                        if tail and first_token is None:  # a short reply the guard held whole
                            first_token = time.perf_counter()
                            if ctx is not None:
                                ctx.first_token(first_token - started)
                        if tail or entries:
                            out.append(_sse(chunk(i, tail, None, entries=entries)))
                        completion += ev.completion_tokens
                        open_.discard(i)
                        # a blocked term at the very end is only judged by finish()
                        stopped = guard is not None and getattr(guard, "stopped", False)
                        reason = "content_filter" if stopped else ev.finish_reason
                        out.append(_sse(chunk(i, None, reason)))
                if out:
                    yield "".join(out)
                if not open_:
                    break
            tail_events = ""
            if req.stream_options is not None and req.stream_options.include_usage:
                tail_events = _sse(
                    {
                        "id": rid,
                        "object": obj,
                        "created": created,
                        "model": req.model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": len(prompt_ids),
                            "completion_tokens": completion,
                            "total_tokens": len(prompt_ids) + completion,
                        },
                    }
                )
            yield _Final(tail_events + "data: [DONE]\n\n")
        except (asyncio.CancelledError, GeneratorExit):
            status = 499  # the client went away: engine slots are freed by the cancelled tasks
            raise
        finally:
            for t in tasks:
                t.cancel()
            await source.aclose()  # a choice still generating (content filter) is cancelled
            if ctx is not None:
                ctx.finish(status, len(prompt_ids), completion)

    async def _upstream(
        dep: Any, req: Any, raw: dict[str, Any], kind: str, rid: str, ctx: Any, started: float
    ) -> Response:
        path = "/chat/completions" if kind == "chat" else "/completions"
        body = dict(raw)
        if ctx is not None and kind == "chat":
            body["messages"] = ctx.check_input(
                [{"role": m.role, "content": m.text()} for m in req.messages]
            )
        if ctx is not None:
            est = (
                sum(len(str(m.get("content", ""))) // 3 for m in body.get("messages", []))
                if kind == "chat"
                else len(str(body.get("prompt", ""))) // 3
            )
            ctx.admit(est, (req.max_tokens or 256) * req.n, model_ref=dep.spec.upstream)
        if not req.stream:
            status, data = await dep.upstream.request(path, body)
            if status >= 400:
                raise _upstream_error(status, data)
            data["model"] = req.model
            usage = data.get("usage") or {}
            if ctx is not None:
                for ch in data.get("choices", []):
                    if "message" in ch and isinstance(ch["message"].get("content"), str):
                        ch["message"]["content"], filtered = ctx.check_output(
                            ch["message"]["content"]
                        )
                        if filtered:
                            ch["finish_reason"] = "content_filter"
                ctx.finish(
                    200,
                    int(usage.get("prompt_tokens", 0)),
                    int(usage.get("completion_tokens", 0)),
                    response=data,
                )
            return JSONResponse(data, headers=ctx.headers() if ctx else {})
        want_usage = req.stream_options is not None and req.stream_options.include_usage
        body["stream_options"] = {"include_usage": True}
        # opened before the response starts, so an upstream's refusal (a 4xx) reaches the
        # client with its status instead of as an error event inside a 200 stream
        try:
            stream = await dep.upstream.open_stream(path, body)
        except UpstreamRefused as e:
            raise _upstream_error(e.status, e.data) from None

        async def relay() -> AsyncIterator[str]:
            # The chunks of one upstream read go out in one write: a fast upstream sends
            # many tokens per read, and one ASGI send per token would cost more than the
            # tokens themselves. Nothing waits for more data, so latency is unchanged.
            prompt_t = completion_t = 0
            status = 200
            guard = ctx.stream_guard() if ctx is not None else None
            first = True
            done_sent = False
            try:
                async for batch, last in stream.batches():
                    out: list[str] = []
                    stop_now = False
                    for chunk in batch:
                        chunk["model"] = req.model
                        if chunk.get("usage"):
                            prompt_t = int(chunk["usage"].get("prompt_tokens", 0))
                            completion_t = int(chunk["usage"].get("completion_tokens", 0))
                            if not want_usage and not chunk.get("choices"):
                                continue
                        for ch in chunk.get("choices", []):
                            delta = ch.get("delta") or {}
                            if guard is not None and isinstance(delta.get("content"), str):
                                delta["content"], stop_now = guard.feed(delta["content"])
                                if stop_now:
                                    ch["finish_reason"] = "content_filter"
                            if guard is not None and ch.get("finish_reason") and not stop_now:
                                # flush what the guard held back before the stream's last word
                                tail = guard.finish()
                                if tail:
                                    extra = {
                                        **chunk,
                                        "choices": [
                                            {
                                                "index": ch.get("index", 0),
                                                "delta": {"content": tail},
                                                "finish_reason": None,
                                            }
                                        ],
                                    }
                                    extra.pop("usage", None)
                                    out.append(_sse(extra))
                                    if first and ctx is not None:  # the guard held it all
                                        ctx.first_token(time.perf_counter() - started)
                                        first = False
                                if getattr(guard, "stopped", False):
                                    ch["finish_reason"] = "content_filter"
                            if (
                                first
                                and (delta.get("content") or ch.get("text"))
                                and ctx is not None
                            ):
                                ctx.first_token(time.perf_counter() - started)
                                first = False
                        out.append(_sse(chunk))
                        if stop_now:
                            break
                    if last or stop_now:
                        out.append("data: [DONE]\n\n")
                        done_sent = True
                    if out:
                        yield _Final("".join(out)) if done_sent else "".join(out)
                    if stop_now:
                        break
                if not done_sent:
                    yield _Final("data: [DONE]\n\n")
            except UpstreamError as e:
                status = 502
                yield _sse(
                    {
                        "error": {
                            "message": str(e),
                            "type": "server_error",
                            "param": None,
                            "code": "upstream_error",
                        }
                    }
                )
            except (asyncio.CancelledError, GeneratorExit):
                status = 499  # the client went away
                await stream.aclose()
                raise
            finally:
                if ctx is not None:
                    ctx.finish(status, prompt_t, completion_t)

        return _EventStream(relay(), headers=ctx.headers() if ctx else {})

    @router.post("/chat/completions", openapi_extra=_openapi_body(ChatRequest))
    async def chat(request: Request) -> Response:
        return await _generate(request, "chat")

    @router.post("/completions", openapi_extra=_openapi_body(CompletionRequest))
    async def completions(request: Request) -> Response:
        return await _generate(request, "completion")

    @router.post("/embeddings", openapi_extra=_openapi_body(EmbeddingRequest))
    async def embeddings(request: Request) -> Response:
        key = gw.authenticate(request)
        raw = await body_json(request)
        req: EmbeddingRequest = _parse(EmbeddingRequest, raw)
        dep = gw.deployment(key, req.model)
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if not texts or any(not isinstance(t, str) for t in texts):
            raise OpenAIError(400, "input: a string or a list of strings", param="input")
        # the same policy as generation: input guardrails (PII masked before the model,
        # moderation), limits on the input tokens, metering; vectors are never logged
        ctx = (
            hooks.begin(key, dep, "embeddings", raw, "emb-" + uuid.uuid4().hex[:24])
            if hooks
            else None
        )
        request.state.lmops_ctx = ctx
        try:
            if ctx is not None:
                texts = [ctx.check_prompt(t) for t in texts]
            if dep.upstream is not None:
                if ctx is not None:
                    est = sum(len(t) // 3 for t in texts)
                    ctx.admit(est, 0, model_ref=dep.spec.upstream)
                status, data = await dep.upstream.request(
                    "/embeddings", {"input": texts, "encoding_format": req.encoding_format}
                )
                if status >= 400:
                    raise _upstream_error(status, data)
                usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
                if ctx is not None:
                    ctx.finish(status, int(usage.get("prompt_tokens", 0) or 0), 0)
                return JSONResponse(
                    {**data, "model": req.model},
                    status_code=status,
                    headers=ctx.headers() if ctx else {},
                )
            target = dep.pick()
            tokens = sum(len(target.engine.encode(t)) for t in texts)
            if ctx is not None:
                ctx.admit(tokens, 0, model_ref=target.version)
            vectors = await asyncio.to_thread(target.engine.embed, texts)
            data_rows = []
            for i, v in enumerate(vectors):
                emb: Any = (
                    base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
                    if req.encoding_format == "base64"
                    else v
                )
                data_rows.append({"object": "embedding", "index": i, "embedding": emb})
            if ctx is not None:
                ctx.finish(200, tokens, 0)
            return JSONResponse(
                {
                    "object": "list",
                    "data": data_rows,
                    "model": req.model,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                },
                headers=ctx.headers() if ctx else {},
            )
        except (UpstreamError, OpenAIError) as e:
            raise _failed(ctx, e) from None

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        if hooks is None:
            return Response("", media_type="text/plain")
        return Response(hooks.metrics.render(), media_type="text/plain; version=0.0.4")

    app.include_router(router)
    app.state.gateway = gw
    return gw
