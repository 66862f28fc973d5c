"""The gateway's request handlers: chat completions, completions and embeddings, each with
a full and a stream path, the same for every backend (engine or upstream) and always under
the policy layer (a null policy where there is no store).

One request, in order::

    parse (bounded body) -> key -> deployment -> backend (A/B pick)
    -> admit: rate limits on a cheap token estimate, before any expensive work
    -> backend.precheck (cheap refusals: a prompt surely longer than the context)
    -> input guardrails (every message, every role; the prompt of a completion)
    -> backend.prepare (tokenize off the event loop when long; context check)
    -> backend.start (engine queue / upstream request: refusals are a status, not a stream);
       a failure before the reply began is tried again, then on the deployment's
       fallbacks (serve/fallbacks.py)
    -> full: output guardrails on every choice's text | stream: a stream guard per choice
    -> finish: the real token counts reconcile the admission estimate; request log, metrics

The completion budget (``max_tokens``) is the same on every path: what the client asked,
refused above the deployment's ``max_tokens_cap``, else the deployment's default; it is
charged at admission and it is what an upstream is sent, so no backend produces more than
was charged.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from lmops.models.types import TokenLogprob
from lmops.monitor.accesslog import ensure_request_id
from lmops.security.moderation.encoder import Deferred, deferred
from lmops.serve import fallbacks, tools
from lmops.serve.backends import Backend, Generation, History, Job, approx_tokens
from lmops.serve.protocol import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIError,
    completion_id,
    parse,
    prompt_items,
    read_json,
    sse,
)
from lmops.serve.replies import (
    EventStream,
    Final,
    Gone,
    Hangup,
    LogprobRelease,
    chat_logprobs,
    completion_logprobs,
    error_event,
    internal_error,
)

__all__ = ["Handlers"]

T = TypeVar("T")

# The request log's error for a client that hung up before its reply was complete.
CLIENT_GONE = "the client disconnected before the reply was complete"

# Prompts with more characters than this are checked by the input guardrails on a worker
# thread (see backends.INLINE_TOKENIZE_CHARS for the same trade-off).
INLINE_GUARD_CHARS = 16_384


async def _off_loop_if_big(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args[:-1])``, on a worker thread when the text it checks (``args[-1]``
    characters) is big enough to delay other requests, inline otherwise (a thread hop costs
    more than checking a short text) unless the moderation encoder must read it. ``fn``
    must record nothing before its last check (see :func:`_inline_unless_deferred`)."""
    *call, chars = args
    if chars > INLINE_GUARD_CHARS:
        return await asyncio.to_thread(fn, *call)
    return await _inline_unless_deferred(fn, *call)


def _checked_output(
    ctx: Any, calls: list[dict[str, Any]]
) -> Callable[[str], Awaitable[tuple[str, bool]]]:
    """``ctx.check_output`` as :func:`tools.guard_calls` asks it for ``calls``: one call's
    arguments at a time, each moved off the event loop on its own where needed, and every
    one on a worker thread when all of them together are big (many mid-size calls)."""
    together = tools.arguments_chars(calls)

    async def check(text: str) -> tuple[str, bool]:
        return await _off_loop_if_big(ctx.check_output, text, max(len(text), together))

    return check


async def _inline_unless_deferred(fn: Callable[..., T], *call: Any) -> T:
    """``fn(*call)`` inline; again on a worker thread where the moderation encoder would
    have read a text (tens of milliseconds that would hold up every other request: see
    :func:`lmops.security.moderation.encoder.deferred`). ``fn`` leaves no trace when it
    is deferred (the guard records its actions once it has decided)."""
    with deferred():
        try:
            return fn(*call)
        except Deferred:
            pass
    return await asyncio.to_thread(fn, *call)


def failed(ctx: Any, e: Exception) -> OpenAIError:
    """The OpenAI error for a request that failed (an upstream failure is a 502, a full
    engine queue a 503), recorded on its policy context, with the context's headers."""
    err = fallbacks.openai_error(e)
    ctx.fail(err.status, err.message)
    err.headers = {**ctx.headers(), **err.headers}
    return err


async def _checked_prompts(ctx: Any, job: Job) -> list[str]:
    """A completions job's prompts through the input guardrails, each as a user turn (a
    refusal names ``prompt[i]`` where there are several), one at a time (see
    :func:`_off_loop_if_big`; all of them on a worker thread when together they are big).
    A prompt of token ids that a guardrail rewrote is encoded again from its new text (the
    request log already holds its decoded text, masked as it is written)."""
    prompts = list(job.prompts or [])
    many = len(prompts) > 1
    together = sum(map(len, prompts))
    checked = [
        await _off_loop_if_big(
            ctx.check_prompt, text, f"prompt[{i}]" if many else "prompt", together
        )
        for i, text in enumerate(prompts)
    ]
    if job.token_ids:
        job.token_ids = [
            ids if ids is not None and new == old else None
            for ids, new, old in zip(job.token_ids, checked, prompts, strict=True)
        ]
    return checked


def _until_rendered(raw: Any, kind: str) -> Any:
    """The body as it is checked before its prompt is applied: a chat request that picks a
    registered prompt may send no messages (the rendered prompt is then the whole request,
    lmops.prompts.binding), so one empty user turn stands in for them until the prompt is
    rendered, and the wrapped body is checked again in full."""
    if (
        kind == "chat"
        and isinstance(raw, dict)
        and isinstance(raw.get("prompt"), str)
        and raw.get("messages") in (None, [])
    ):
        return {**raw, "messages": [{"role": "user", "content": ""}]}
    return raw


def _prompt_shape(value: Any) -> str:
    """What a completions prompt or an embeddings input holds, in a refusal's words."""
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return "a prompt of token ids"
    if isinstance(value, list) and value and isinstance(value[0], list):
        return f"{len(value)} prompt(s) of token ids"
    if isinstance(value, list):
        return f"{len(value)} prompts" if value else "an empty list"
    return type(value).__name__


class Handlers:
    """The handlers of one gateway (``gw``: keys, deployments; ``policy``: the layer)."""

    def __init__(self, gw: Any, policy: Any, *, max_body_bytes: int) -> None:
        self.gw = gw
        self.policy = policy
        self.max_body_bytes = max_body_bytes

    # -- chat and completions ------------------------------------------------------------------
    def _job(
        self,
        req: ChatRequest | CompletionRequest,
        body: dict[str, Any],
        kind: str,
        rid: str,
        dep: Any,
        backend: Backend,
    ) -> Job:
        spec = dep.spec
        asked = req.asked_max_tokens()
        if asked is not None and asked[1] > spec.max_tokens_cap:
            raise OpenAIError(
                400,
                f"{asked[0]} is too large: {asked[1]} (this deployment allows "
                f"{spec.max_tokens_cap})",
                param=asked[0],
                code="invalid_value",
            )
        budget = asked[1] if asked is not None else backend.default_max_tokens
        echo = isinstance(req, CompletionRequest) and req.echo
        if budget == 0 and not echo:
            raise OpenAIError(
                400,
                "max_tokens: 0 generates nothing; it is only useful with echo (to score the "
                "prompt)",
                param="max_tokens",
                code="invalid_value",
            )
        logprobs, top = req.logprob_options()
        messages = prompts = token_ids = plan = None
        if isinstance(req, ChatRequest):
            messages = [m.model_dump(exclude_none=True) for m in req.messages]
            plan = tools.plan_request(req)
        else:
            items = prompt_items(req.prompt)
            # a prompt of token ids gets its text from the backend (precheck) that reads them
            prompts = [p if isinstance(p, str) else "" for p in items]
            if any(not isinstance(p, str) for p in items):
                token_ids = [None if isinstance(p, str) else p for p in items]
        return Job(
            kind="chat" if kind == "chat" else "completion",
            request_id=rid,
            model=req.model,
            body={k: v for k, v in body.items() if k != "model"},
            messages=messages,
            prompts=prompts,
            token_ids=token_ids,
            max_tokens=min(budget, spec.max_tokens_cap),
            max_tokens_field=asked[0] if asked is not None else "max_tokens",
            max_tokens_asked=asked is not None,
            n=req.n,
            temperature=req.temperature
            if req.temperature is not None
            else float(backend.sampling.get("temperature", 1.0)),
            top_p=req.top_p if req.top_p is not None else float(backend.sampling.get("top_p", 1.0)),
            seed=req.seed,
            stop=req.stops(),
            logits=req.logits_options(),
            logprobs=logprobs,
            top_logprobs=top,
            stream=req.stream,
            include_usage=req.include_usage(),
            echo=echo,
            control_tokens=spec.control_tokens,
            tools=plan,
        )

    async def _check_input(self, ctx: Any, job: Job) -> None:
        chars = len(job.text())
        if job.messages is not None:
            job.messages = await _off_loop_if_big(ctx.check_input, job.messages, chars)
            # earlier tool calls' arguments are message text too
            job.messages = await _off_loop_if_big(
                tools.guard_tool_arguments,
                ctx.check_input,
                list(job.messages or []),
                sum(tools.arguments_chars(m.get("tool_calls")) for m in job.messages or []),
            )
        else:
            job.prompts = await _checked_prompts(ctx, job)

    async def generate(
        self,
        request: Request,
        kind: Literal["chat", "completion"],
        *,
        key: Any = None,
        body: Any = None,
        counted: dict[str, str] | None = None,
        history: History | None = None,
    ) -> Response:
        """A chat or completions request (``body``: already read, as ``/v1/responses``
        translated it, lmops.serve.stored_responses; ``key``: already authenticated;
        ``counted``: the key's rate headers where its request was counted already;
        ``history``: the messages it carried from earlier turns)."""
        from lmops.models.engine import EngineOverloaded
        from lmops.serve.upstream import UpstreamError

        started = time.perf_counter()
        xid = ensure_request_id(request.scope)  # the response's x-request-id
        key = key if key is not None else self.gw.authenticate(request)
        raw = body if body is not None else await read_json(request, max_bytes=self.max_body_bytes)
        rid = completion_id(kind)
        with self._refusal_logged(request, key, raw, kind, rid, xid):
            req: ChatRequest | CompletionRequest = parse(
                ChatRequest if kind == "chat" else CompletionRequest, _until_rendered(raw, kind)
            )
        dep = self.gw.deployment(key, req.model)
        ctx = self.policy.begin(key, dep, kind, raw, rid, x_request_id=xid, counted=counted)
        request.state.lmops_ctx = ctx  # the access log reads the outcome from it
        gen: Generation | None = None
        stream = False
        # the client hanging up cancels this task: whatever it waits on (a retry's backoff,
        # the engine, an upstream call) stops, and the finally below frees the generation
        hangup = Hangup(request.receive)
        try:
            backend = dep.backend()
            ctx.model_ref = backend.model_ref  # what would answer, also if it is refused
            dep.refuse_unless(kind)  # a 400 for generation on an encoder-only model
            if dep.spec.prompt is not None or (kind == "chat" and "prompt" in raw):
                raw, req = self._apply_prompt(raw, kind, dep, ctx)
            job = self._job(req, raw, kind, rid, dep, backend)
            job.history, stream = history, job.stream
            if kind == "chat" and getattr(backend, "chat_template_fallback", False):
                ctx.warnings.append("chat_template_fallback")
            # flow control first, on an estimate: a key over its limit costs nothing more
            ctx.admit(
                backend.estimate_prompt(job),
                job.max_tokens * job.choices(),
                model_ref=backend.model_ref,
            )
            backend.precheck(job)
            if job.token_ids and ctx.body is not None:  # the decoded text, masked when logged
                many = len(job.prompts or []) > 1
                ctx.body = {**ctx.body, "prompt": job.prompts if many else (job.prompts or [""])[0]}
            await self._check_input(ctx, job)
            # prepare and start, tried again and on the fallbacks where the spec says so
            gen, backend, job = await fallbacks.start(self.gw.registry, dep, backend, job, ctx)
            if job.stream:
                hangup.stop()  # the event stream watches on its own
                return EventStream(self._stream(job, gen, ctx, started), headers=ctx.headers())
            body = await self._full(job, gen, ctx, backend.model_ref)
            ctx.finish(200, gen.prompt_tokens, gen.completion_tokens, response=body)
            return JSONResponse(body, headers=ctx.headers())
        except (EngineOverloaded, UpstreamError, OpenAIError) as e:
            raise failed(ctx, e) from None
        except asyncio.CancelledError:
            if not hangup.absorb():
                raise
            stream = False  # nothing of it will be sent: free it below
            if gen is None:
                ctx.fail(499, CLIENT_GONE)
            else:  # charged what it generated until then, as a stream the client left
                ctx.finish(499, gen.prompt_tokens, gen.completion_tokens, error=CLIENT_GONE)
            return Gone()
        except Exception as e:
            raise failed(ctx, internal_error(e, xid)) from None
        finally:
            hangup.stop()
            if gen is not None and not stream:
                await gen.aclose()

    @contextmanager
    def _refusal_logged(
        self, request: Request, key: Any, raw: Any, kind: str, rid: str, xid: str
    ) -> Iterator[None]:
        """A body that does not parse is refused before its deployment is looked up; it is
        logged (so its x-request-id finds it) under the deployment its ``model`` names when
        the key may call that one, and not at all otherwise (there is none to log it
        under)."""
        try:
            yield
        except OpenAIError as err:
            name = raw.get("model") if isinstance(raw, dict) else None
            if not isinstance(name, str):
                raise
            try:
                dep = self.gw.deployment(key, name)
            except OpenAIError:
                raise err from None
            ctx = self.policy.begin(key, dep, kind, raw, rid, x_request_id=xid)
            request.state.lmops_ctx = ctx
            if not dep.spec.split:  # one model would have answered (a split had not picked)
                ctx.model_ref = dep.backend().model_ref
            raise failed(ctx, err) from None

    def _apply_prompt(
        self, raw: dict[str, Any], kind: str, dep: Any, ctx: Any
    ) -> tuple[dict[str, Any], ChatRequest | CompletionRequest]:
        """The body wrapped by its registered prompt (lmops.prompts.binding), parsed again;
        the version goes on the request log (``ctx.prompt_ref``)."""
        from lmops.core.errors import UserError, api_message
        from lmops.prompts.binding import apply_prompt

        try:
            raw, ctx.prompt_ref = apply_prompt(raw, dep.spec.prompt, kind, dep.store)
        except UserError as e:
            raise OpenAIError(400, api_message(e), param="prompt", code="invalid_prompt") from None
        return raw, parse(ChatRequest if kind == "chat" else CompletionRequest, raw)

    async def _full(self, job: Job, gen: Generation, ctx: Any, model_ref: str) -> dict[str, Any]:
        texts: dict[int, list[str]] = {}
        finish: dict[int, str] = {}
        extras: dict[int, dict[str, Any]] = {}
        releases: dict[int, LogprobRelease] = {}
        async for batch in gen.batches():
            for ev in batch:
                i = ev.index
                texts.setdefault(i, []).append(ev.text)
                if job.logprobs:
                    releases.setdefault(i, LogprobRelease()).produced(ev.text, ev.logprobs)
                if ev.extra:
                    extras.setdefault(i, {}).update(ev.extra)
                if ev.finish_reason == "error":
                    raise OpenAIError(
                        500,
                        f"The model failed while generating: {ev.error}",
                        type_="server_error",
                        code="engine_error",
                    )
                if ev.finish_reason is not None:
                    finish[i] = ev.finish_reason
        choices = []
        for i in sorted(texts):
            raw = "".join(texts[i])
            parsed = (
                tools.parse_reply(raw, job.tools, finish.get(i, "stop"))
                if job.parse_tools
                else None
            )
            content = raw if parsed is None else parsed.content or ""
            calls = parsed.calls if parsed is not None else extras.get(i, {}).get("tool_calls")
            text, filtered = await _off_loop_if_big(ctx.check_output, content, len(content))
            if calls and not filtered:  # arguments are output like any text
                calls, filtered = await tools.guard_calls(_checked_output(ctx, calls), calls)
            reason = "content_filter" if filtered else finish.get(i, "stop")
            if parsed is not None:
                reason = tools.finish_reason(reason, calls or [])
            if parsed is not None and i in releases:
                releases[i].hide(parsed.hidden)  # the calls' text is not content
            entries = releases[i].sent(text, final=True) if i in releases else []
            choice: dict[str, Any] = {"index": i, "finish_reason": reason}
            if job.kind == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if not filtered:
                    message.update(extras.get(i, {}))
                    if calls:
                        message["tool_calls"] = calls
                        message["content"] = text or None
                choice["message"] = message
                choice["logprobs"] = chat_logprobs(entries) if job.logprobs else None
            else:
                choice["text"] = text
                choice["logprobs"] = completion_logprobs(entries) if job.logprobs else None
            choices.append(choice)
        prompt, completion = gen.prompt_tokens, gen.completion_tokens
        return {
            "id": job.request_id,
            "object": "chat.completion" if job.kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": job.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
            "system_fingerprint": f"lmops-{model_ref}",
        }

    async def _stream(
        self, job: Job, gen: Generation, ctx: Any, started: float
    ) -> AsyncIterator[str]:
        from lmops.serve.upstream import UpstreamError

        chat = job.kind == "chat"
        created = int(time.time())
        head = {
            "id": job.request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": job.model,
        }
        status = 200
        error: str | None = None  # why a stream that began did not end well (request log)
        guards: dict[int, Any] = {}
        releases: dict[int, LogprobRelease] = {}
        done: set[int] = set()
        filtered = False
        first_token: float | None = None
        # with body logging, the reply is logged as the completion it assembles to
        keep_body = bool(getattr(ctx.dep.spec, "log_bodies", False))
        sent: dict[int, list[str]] = {}
        reasons: dict[int, str] = {}
        # tool calls: each choice's reply split into content and complete calls
        splitters: dict[int, tools.ToolStream] = {}
        calls_sent: dict[int, list[dict[str, Any]]] = {}
        # an upstream's streamed calls, held until their choice ends: arguments are
        # guarded whole, as any text (a value split across pieces would slip through)
        relayed: dict[int, dict[int, dict[str, Any]]] = {}

        def split(i: int, text: str, end: str | None = None) -> tuple[str, list[dict[str, Any]]]:
            """Choice ``i``'s new text as (content, complete calls); ``end``: its finish
            reason, once it is over."""
            if not job.parse_tools:
                return text, []
            splitter = splitters.get(i) or splitters.setdefault(i, tools.ToolStream(job.tools))
            content, calls = splitter.feed(text)
            if end is not None:
                tail, _ = splitter.finish(end)
                content += tail
            return content, calls

        async def call_chunks(i: int, calls: list[dict[str, Any]], out: list[str]) -> bool:
            """Send complete calls of choice ``i``; False if the guardrails stopped one."""
            checked, stopped = await tools.guard_calls(_checked_output(ctx, calls), calls)
            if stopped:
                return False
            done_calls = calls_sent.setdefault(i, [])
            for call in checked:
                for extra in tools.call_deltas(len(done_calls), call):
                    out.append(chunk(i, None, None, extra=extra))
                done_calls.append(call)
            return True

        def chunk(
            i: int,
            text: str | None,
            finish: str | None,
            entries: list[TokenLogprob] | None = None,
            extra: dict[str, Any] | None = None,
            first: bool = False,
        ) -> str:
            logprobs = None
            if job.logprobs and entries is not None:
                logprobs = chat_logprobs(entries) if chat else completion_logprobs(entries)
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if first else {}
                if text is not None:
                    delta["content"] = text
                if extra:
                    delta.update(extra)
                choice = {"index": i, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
            else:
                choice = {
                    "index": i,
                    "text": text or "",
                    "finish_reason": finish,
                    "logprobs": logprobs,
                }
            return sse({**head, "choices": [choice]})

        def emitted(text: str, i: int) -> None:
            nonlocal first_token
            if keep_body and text:
                sent.setdefault(i, []).append(text)
            if text and first_token is None:
                first_token = time.perf_counter()
                ctx.first_token(first_token - started)

        def cut(i: int, text: str, final: bool = False) -> tuple[str, list[TokenLogprob]]:
            """What to send of the text choice ``i``'s guard released, and its logprobs:
            with logprobs, cut at a token boundary (see :meth:`LogprobRelease.chunk`)."""
            if not job.logprobs:
                return text, []
            return releases.setdefault(i, LogprobRelease()).chunk(text, final)

        async def close(i: int, reason: str, out: list[str]) -> None:
            """End choice ``i``: what its guard held back, then its finish reason."""
            guard = guards.get(i) or guards.setdefault(i, ctx.stream_guard())
            # content held back as a possible call start, or a call max_tokens cut
            held, _ = split(i, "", end=reason)
            if i in releases and i in splitters:
                releases[i].hide(splitters[i].take_hidden())
            if relayed.get(i) and not await call_chunks(
                i, tools.collected_calls(relayed.pop(i)), out
            ):
                reason = "content_filter"
            text = ""
            if held:
                text, stop_now = await _inline_unless_deferred(guard.feed, held)
                if stop_now:
                    reason = "content_filter"
            text += await _inline_unless_deferred(guard.finish)
            text, entries = cut(i, text, final=not guard.stopped)
            emitted(text, i)
            if text or entries:
                out.append(chunk(i, text, None, entries))
            done.add(i)
            reason = tools.finish_reason(reason, calls_sent.get(i, []))
            reasons[i] = "content_filter" if guard.stopped else reason
            out.append(chunk(i, None, reasons[i]))

        try:
            if chat:
                yield "".join(chunk(i, "", None, first=True) for i in range(job.choices()))
            async for batch in gen.batches():
                out: list[str] = []
                for ev in batch:
                    i = ev.index
                    if i in done:
                        continue  # a choice the content filter ended
                    guard = guards.get(i) or guards.setdefault(i, ctx.stream_guard())
                    if ev.text or ev.logprobs or ev.extra:
                        piece, calls = split(i, ev.text)
                        text, stop_now = (
                            await _inline_unless_deferred(guard.feed, piece)
                            if piece
                            else ("", False)
                        )
                        if job.logprobs:
                            release = releases.setdefault(i, LogprobRelease())
                            release.produced(ev.text, ev.logprobs)
                            if i in splitters:  # the calls' text is not content
                                release.hide(splitters[i].take_hidden())
                        text, entries = cut(i, text)
                        emitted(text, i)
                        extra = None if stop_now else ev.extra
                        if extra and "tool_calls" in extra:
                            acc = relayed.setdefault(i, {})
                            tools.collect_call_deltas(acc, extra["tool_calls"])
                            extra = {k: v for k, v in extra.items() if k != "tool_calls"} or None
                        if text or entries or extra:
                            out.append(chunk(i, text, None, entries, extra))
                        if calls and not stop_now and not await call_chunks(i, calls, out):
                            stop_now = True
                        if stop_now:
                            done.add(i)
                            filtered = True
                            reasons[i] = "content_filter"
                            out.append(chunk(i, None, "content_filter"))
                            continue
                    if ev.finish_reason == "error":
                        status = 500  # the reply has begun: the error goes in-band, as OpenAI's
                        error = f"The model failed while generating: {ev.error}"
                        out.append(error_event(error, "engine_error"))
                        yield "".join(out)
                        return
                    if ev.finish_reason is not None:
                        await close(i, ev.finish_reason, out)
                        filtered = filtered or guard.stopped
                if out:
                    yield "".join(out)
                if filtered and len(done) >= job.choices():
                    break  # every choice is over; stop what still generates
            out = []
            for i in range(job.choices()):  # a stream that ended without a choice's last word
                if i not in done:
                    await close(i, "stop", out)
            if job.include_usage:
                prompt, completion = gen.prompt_tokens, gen.completion_tokens
                usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                }
                out.append(sse({**head, "choices": [], "usage": usage}))
            yield Final("".join(out) + "data: [DONE]\n\n")
        except UpstreamError as e:
            status, error = 502, str(e)
            yield error_event(error, "upstream_error")
        except (asyncio.CancelledError, GeneratorExit):
            status, error = 499, CLIENT_GONE  # engine slots are freed by aclose below
            raise
        except Exception as e:  # a bug: the stream ends with an error, the log has why
            err = internal_error(e, ctx.x_request_id or job.request_id)
            status, error = 500, err.message
            yield error_event(err.message, "internal_error")
        finally:
            await gen.aclose()
            body = None
            if keep_body:
                body = {
                    "object": "chat.completion" if chat else "text_completion",
                    "model": job.model,
                    "choices": [
                        {
                            "index": i,
                            **(
                                {
                                    "message": {
                                        "role": "assistant",
                                        "content": "".join(sent.get(i, [])),
                                        **(
                                            {"tool_calls": calls_sent[i]}
                                            if calls_sent.get(i)
                                            else {}
                                        ),
                                    }
                                }
                                if chat
                                else {"text": "".join(sent.get(i, []))}
                            ),
                            "finish_reason": reasons.get(i),
                        }
                        for i in range(job.choices())
                    ],
                }
            ctx.finish(status, gen.prompt_tokens, gen.completion_tokens, response=body, error=error)

    # -- embeddings -----------------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        from lmops.serve.upstream import UpstreamError

        xid = ensure_request_id(request.scope)  # the response's x-request-id
        key = self.gw.authenticate(request)
        raw = await read_json(request, max_bytes=self.max_body_bytes)
        rid = "emb-" + uuid.uuid4().hex[:24]
        with self._refusal_logged(request, key, raw, "embeddings", rid, xid):
            req: EmbeddingRequest = parse(EmbeddingRequest, raw)
        dep = self.gw.deployment(key, req.model)
        # the same policy as generation: limits on the input tokens, input guardrails (PII
        # masked before the model, moderation), metering; vectors are never logged
        ctx = self.policy.begin(key, dep, "embeddings", raw, rid, x_request_id=xid)
        request.state.lmops_ctx = ctx
        try:
            backend = dep.backend()
            ctx.model_ref = backend.model_ref
            given = [req.input] if isinstance(req.input, str) else list(req.input)
            texts = [t for t in given if isinstance(t, str)]
            if not texts or len(texts) != len(given):
                # token ids from a client that tokenized for OpenAI's models (tiktoken)
                # would mean other words to this model
                hint = (
                    "; LangChain's OpenAIEmbeddings sends token ids unless it is given "
                    "check_embedding_ctx_length=False"
                    if given and not isinstance(given[0], str)
                    else ""
                )
                raise OpenAIError(
                    400,
                    "input: this gateway embeds text (a string or a list of strings), not "
                    f"{_prompt_shape(req.input)}{hint}",
                    param="input",
                    code="unsupported_value",
                )
            ctx.admit(sum(approx_tokens(t) for t in texts), 0, model_ref=backend.model_ref)
            # one text at a time: a deferred check is run again whole, and a list's earlier
            # texts would have recorded their actions already
            texts = [await _off_loop_if_big(ctx.check_prompt, t, "input", len(t)) for t in texts]
            result, tokens = await fallbacks.once(
                ctx, dep.name, backend.model_ref, backend.embed(texts, req.dimensions)
            )
            if isinstance(result, dict):  # an upstream's answer, passed on
                ctx.finish(200, tokens, 0)
                return JSONResponse({**result, "model": req.model}, headers=ctx.headers())
            rows = []
            for i, v in enumerate(result):
                emb: Any = (
                    base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
                    if req.encoding_format == "base64"
                    else v
                )
                rows.append({"object": "embedding", "index": i, "embedding": emb})
            ctx.finish(200, tokens, 0)
            return JSONResponse(
                {
                    "object": "list",
                    "data": rows,
                    "model": req.model,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                },
                headers=ctx.headers(),
            )
        except (UpstreamError, OpenAIError) as e:
            raise failed(ctx, e) from None
        except Exception as e:
            raise failed(ctx, internal_error(e, xid)) from None
