"""The upstream backend: an OpenAI-compatible server behind a deployment (vLLM, llama.cpp, a
provider), behind the seam of :mod:`lmops.serve.backends`."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

from lmops.core import refusals
from lmops.models.tokens import GENERIC_CONTROL
from lmops.models.types import TokenLogprob
from lmops.serve.backends import ChoiceDelta, Generation, Job, _content_text
from lmops.serve.protocol import OpenAIError

__all__ = ["UpstreamBackend", "upstream_error", "upstream_facts"]


class UpstreamBackend:
    """An OpenAI-compatible server behind a deployment (vLLM, llama.cpp, a provider).
    ``sampling`` fills the fields a request leaves out (else the upstream's own defaults
    apply); ``default_max_tokens`` is the budget of a request that names none."""

    def __init__(
        self,
        upstream: Any,
        model_ref: str,
        *,
        sampling: dict[str, float] | None = None,
        default_max_tokens: int = 1024,
        name: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.model_ref = model_ref
        self.name = name  # the deployment's (what an upstream's 429 names as refused)
        self.sampling = dict(sampling or {})
        self.default_max_tokens = default_max_tokens

    def estimate_prompt(self, job: Job) -> int:
        extra = 4 * len(job.messages) if job.messages is not None else 0  # role framing
        return job.estimate() + extra

    async def prepare(self, job: Job) -> None:
        return None

    def precheck(self, job: Job) -> None:
        if any(ids is not None for ids in job.token_ids or []):
            raise OpenAIError(
                400,
                "prompt: this deployment relays to an upstream server, whose tokenizer the "
                "gateway does not have to read token ids with its guardrails; send the "
                "prompt as text",
                param="prompt",
                code="unsupported_value",
            )
        if job.control_tokens != "refuse" or job.messages is None:
            return
        from lmops.models.chat import caller_strings, json_strings

        # what _body sends, as the client wrote it: its tools (extra keys too, which vLLM
        # keeps and a template's tojson writes) and the fields a template may write besides
        # (RAG documents, the template's own variables); a request's chat_template is not
        # read (it is the template, control tokens and all)
        texts = [{**m, "content": _content_text(m.get("content"))} for m in job.messages]
        tools = job.body.get("tools") or None
        sent = [
            *caller_strings(texts, tools if isinstance(tools, list) else None),
            # every string of a list content (vLLM writes refusal and thinking parts as text)
            *(
                hit
                for i, m in enumerate(job.messages)
                if isinstance(m.get("content"), list)
                for hit in json_strings(m["content"], f"messages[{i}].content")
            ),
            *json_strings(job.body.get("documents"), "documents"),
            *json_strings(job.body.get("chat_template_kwargs"), "chat_template_kwargs"),
        ]
        for param, text in sent:
            if GENERIC_CONTROL.search(text):
                raise OpenAIError(
                    400,
                    f"{param}: contains chat-template control tokens (such as <|im_start|>); "
                    "this deployment refuses them in message text, tool calls and tools",
                    param=param,
                    code="control_tokens",
                )

    def _body(self, job: Job) -> dict[str, Any]:
        body = {**self.sampling, **job.body}
        body.pop("max_tokens", None)
        body.pop("max_completion_tokens", None)
        # the budget the request was charged for: the upstream can never produce more
        body[job.max_tokens_field] = job.max_tokens
        if job.messages is not None:
            body["messages"] = job.messages
        if job.prompts is not None:  # one prompt, or the client's batch as it sent it
            body["prompt"] = job.prompts[0] if len(job.prompts) == 1 else job.prompts
        return body

    async def start(self, job: Job) -> Generation:
        from lmops.serve.upstream import UpstreamRefused

        path = "/chat/completions" if job.kind == "chat" else "/completions"
        body = self._body(job)
        estimate = self.estimate_prompt(job)
        if not job.stream:
            body.pop("stream_options", None)
            try:
                status, data = await self.upstream.request(path, {**body, "stream": False})
            except UpstreamRefused as e:  # a 429
                raise upstream_error(e.status, e.data, e.retry_after_s, self.name) from None
            if status >= 400:
                raise upstream_error(status, data)
            return _UpstreamReply(data, job.kind, estimate)
        body["stream_options"] = {"include_usage": True}
        # opened before the response starts, so an upstream's refusal (a 4xx) reaches the
        # client with its status instead of as an error event inside a 200 stream
        try:
            stream = await self.upstream.open_stream(path, body)
        except UpstreamRefused as e:
            raise upstream_error(e.status, e.data, e.retry_after_s, self.name) from None
        return _UpstreamStream(stream, job.kind, estimate)

    async def embed(
        self, texts: list[str], dimensions: int | None = None
    ) -> tuple[dict[str, Any], int]:
        from lmops.serve.upstream import UpstreamRefused

        body: dict[str, Any] = {"input": texts, "encoding_format": "float"}
        if dimensions is not None:  # the upstream's model says whether it can
            body["dimensions"] = dimensions
        try:
            status, data = await self.upstream.request("/embeddings", body)
        except UpstreamRefused as e:  # a 429
            raise upstream_error(e.status, e.data, e.retry_after_s, self.name) from None
        if status >= 400:
            raise upstream_error(status, data)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return data, int((usage or {}).get("prompt_tokens", 0) or 0)


def upstream_error(
    status: int,
    data: dict[str, Any],
    retry_after_s: float | None = None,
    deployment: str | None = None,
) -> OpenAIError:
    """An upstream's 4xx in OpenAI's shape, whatever shape the upstream's error had; the
    wait it asked for (a 429's ``Retry-After``) is passed on. A 429 says whose it is
    (``error.lmops``, :func:`upstream_facts`): the upstream's, of ``deployment``."""
    err = data.get("error")
    if not isinstance(err, dict):
        err = {"message": err} if isinstance(err, str) else {}
    param, code = err.get("param"), err.get("code")
    out = OpenAIError(
        status,
        str(err.get("message") or data)[:2000],
        type_=str(err.get("type") or "invalid_request_error"),
        param=param if isinstance(param, str) else None,
        code=code if isinstance(code, str) else None,
        lmops=upstream_facts(err, retry_after_s, deployment) if status == 429 else None,
    )
    if retry_after_s is not None:
        out.retry_after_s = retry_after_s
        out.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return out


def upstream_facts(
    err: dict[str, Any], retry_after_s: float | None, deployment: str | None
) -> dict[str, Any]:
    """The facts of an upstream's 429 passed on (``error.lmops``): ``scope: upstream``,
    never the upstream's own scope as it stands (an upstream lmops gateway's ``key`` is the
    gateway's key there, not the client's here: every client of ``deployment`` meets that
    limit); that gateway's facts under ``upstream``: those it sent, checked and cut to the
    five fields (:func:`lmops.core.refusals.clean`), else those its message names, as an
    older lmops gateway said them in words only (:func:`lmops.core.refusals.from_message`);
    ``limit`` and ``too_large`` as they say (a request over its limit never passes here
    either)."""
    theirs = refusals.clean(err.get("lmops"))
    if theirs is None and isinstance(err.get("message"), str):
        theirs = refusals.from_message(err["message"])
        if theirs is not None and not theirs["too_large"]:
            theirs["retry_after_s"] = retry_after_s  # the words have no wait; the header has
    return {
        "scope": "upstream",
        "name": deployment,
        "limit": theirs["limit"] if theirs else None,
        "retry_after_s": retry_after_s,
        "too_large": theirs["too_large"] if theirs else False,
        "upstream": theirs,
    }


class _Choices:
    """Turns an upstream's choices into :class:`ChoiceDelta` events, per choice index:
    text, logprobs (with text offsets counted per choice), passed-on fields."""

    # fields of a chat delta/message and of a completion choice that lmops reads itself
    _OWN = frozenset({"role", "content"})

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.offsets: dict[int, int] = {}
        self.chunks: dict[int, int] = {}  # chunks with text, per choice (a usage floor)
        self.texts: dict[int, int] = {}  # characters of text, per choice

    def event(self, ch: dict[str, Any], part: str) -> ChoiceDelta:
        index = ch.get("index", 0)
        index = index if isinstance(index, int) else 0
        extra = None
        if self.kind == "chat":
            got = ch.get(part)
            delta: dict[str, Any] = got if isinstance(got, dict) else {}
            text = delta.get("content")
            rest = {k: v for k, v in delta.items() if k not in self._OWN and v is not None}
            extra = rest or None
        else:
            text = ch.get("text")
        text = text if isinstance(text, str) else ""
        if text:
            self.chunks[index] = self.chunks.get(index, 0) + 1
            self.texts[index] = self.texts.get(index, 0) + len(text)
        finish = ch.get("finish_reason")
        return ChoiceDelta(
            index,
            text,
            self._logprobs(index, ch.get("logprobs")),
            finish if isinstance(finish, str) else None,
            extra=extra,
        )

    def _logprobs(self, index: int, lp: Any) -> list[TokenLogprob]:
        if not isinstance(lp, dict):
            return []
        entries: list[tuple[str, float, list[int], list[TokenLogprob]]] = []
        if self.kind == "chat":
            for e in lp.get("content") or []:
                if isinstance(e, dict) and isinstance(e.get("token"), str):
                    top = [
                        TokenLogprob(
                            str(t.get("token")), float(t.get("logprob", 0.0)), t.get("bytes") or []
                        )
                        for t in e.get("top_logprobs") or []
                        if isinstance(t, dict)
                    ]
                    entries.append(
                        (e["token"], float(e.get("logprob", 0.0)), e.get("bytes") or [], top)
                    )
        else:
            tokens = lp.get("tokens") or []
            values = lp.get("token_logprobs") or []
            tops = lp.get("top_logprobs") or []
            for j, tok in enumerate(tokens):
                if not isinstance(tok, str):
                    continue
                value = values[j] if j < len(values) and values[j] is not None else 0.0
                alts = tops[j] if j < len(tops) and isinstance(tops[j], dict) else {}
                top = [
                    TokenLogprob(str(t), float(v), list(str(t).encode())) for t, v in alts.items()
                ]
                entries.append((tok, float(value), list(tok.encode()), top))
        out = []
        offset = self.offsets.get(index, 0)
        for tok, value, raw, top in entries:
            out.append(TokenLogprob(tok, value, raw, top, offset, offset + len(tok)))
            offset += len(tok)
        self.offsets[index] = offset
        return out

    def completion_estimate(self) -> int:
        """Completion tokens when the upstream did not count them: the relayed text's
        estimate, at least one token per chunk that carried text."""
        return sum(max(self.chunks.get(i, 0), (self.texts.get(i, 0) + 3) // 4) for i in self.chunks)


class _UpstreamReply:
    """A complete (non-streamed) upstream reply, as one batch of events."""

    def __init__(self, data: dict[str, Any], kind: str, estimate: int) -> None:
        self._data = data
        self._choices = _Choices(kind)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        self.usage_known = usage is not None
        self.prompt_tokens = int((usage or {}).get("prompt_tokens", 0) or 0) if usage else estimate
        self.completion_tokens = int((usage or {}).get("completion_tokens", 0) or 0)
        self.fingerprint = data.get("system_fingerprint")

    async def batches(self) -> AsyncIterator[list[ChoiceDelta]]:
        choices = self._data.get("choices")
        events = []
        part = "message"
        for ch in choices if isinstance(choices, list) else []:
            if not isinstance(ch, dict):
                continue
            ev = self._choices.event(ch, part)
            ev.finish_reason = ev.finish_reason or "stop"
            events.append(ev)
        if not self.usage_known:
            self.completion_tokens = self._choices.completion_estimate()
        yield events

    async def aclose(self) -> None:
        return None


class _UpstreamStream:
    """A relayed upstream stream, as batches of events (one batch per network read)."""

    def __init__(self, stream: Any, kind: str, estimate: int) -> None:
        self._stream = stream
        self._choices = _Choices(kind)
        self.prompt_tokens = estimate
        self.completion_tokens = 0
        self.usage_known = False

    async def batches(self) -> AsyncIterator[list[ChoiceDelta]]:
        async for chunks, _last in self._stream.batches():
            events: list[ChoiceDelta] = []
            for chunk in chunks:
                usage = chunk.get("usage")
                if isinstance(usage, dict):
                    self.usage_known = True
                    self.prompt_tokens = int(usage.get("prompt_tokens", 0) or 0)
                    self.completion_tokens = int(usage.get("completion_tokens", 0) or 0)
                for ch in chunk.get("choices") or []:
                    if isinstance(ch, dict):
                        events.append(self._choices.event(ch, "delta"))
            if events:
                yield events
        if not self.usage_known:
            self.completion_tokens = self._choices.completion_estimate()

    async def aclose(self) -> None:
        await self._stream.aclose()
