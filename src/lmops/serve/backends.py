"""What answers a deployment's requests: the built-in engine or an upstream server, behind
one seam, so the gateway's handlers never branch on which one it is.

    backend = deployment.backend()              # picks the A/B target, if any
    tokens = backend.estimate_prompt(job)       # cheap, before admission
    backend.precheck(job)                       # cheap refusals (a prompt surely too long)
    await backend.prepare(job)                  # tokenize, check the context (engine)
    gen = await backend.start(job)              # queued / sent: refusals raise here
    async for batch in gen.batches(): ...       # ChoiceDelta events, per choice index
    gen.prompt_tokens, gen.completion_tokens    # the real counts once it is over

``start`` raises before any byte of a reply exists: :class:`~lmops.models.engine.
EngineOverloaded` when the engine's queue is full, :class:`~lmops.serve.protocol.OpenAIError`
with the upstream's status when it refuses the request, :class:`~lmops.serve.upstream.
UpstreamError` when it is unreachable. A failure after that arrives in the events
(``finish_reason="error"``) or as an ``UpstreamError`` while iterating.

Both backends produce the same events, :class:`ChoiceDelta`: new text of one choice, its
token logprobs (:class:`~lmops.models.types.TokenLogprob`, with text offsets, so a layer that
rewrites text can tell which tokens went out verbatim), and finally its ``finish_reason``.
An upstream's fields that lmops does not interpret (``refusal``, ``tool_calls``, a
reasoning field...) ride along in ``extra`` and are passed on to the client.

The engine's backend is here; the upstream's is :mod:`lmops.serve.upstream_backend`, the
fake's :mod:`lmops.serve.fake_backend`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from lmops.models.types import Delta, Done, GenRequest, LogitsOptions, TokenLogprob
from lmops.serve.protocol import OpenAIError

__all__ = [
    "Backend",
    "ChoiceDelta",
    "EngineBackend",
    "Generation",
    "History",
    "Job",
    "approx_tokens",
    "fit_context",
]

# Texts longer than this are tokenized on a worker thread (a thread hop costs more than
# tokenizing a usual prompt; a long one would hold up every other request on the loop).
INLINE_TOKENIZE_CHARS = 16_384


def approx_tokens(text: str) -> int:
    """Tokens of ``text`` estimated without a tokenizer, a little on the high side: about
    four characters a token for ASCII, one per three UTF-8 bytes otherwise (a CJK
    character is one token or more)."""
    if not text:
        return 0
    if text.isascii():
        return (len(text) + 3) // 4
    return (len(text.encode("utf-8", "surrogatepass")) + 2) // 3


@dataclass(frozen=True)
class History:
    """A chat job's messages carried from earlier turns (``/v1/responses`` with a
    ``previous_response_id``): ``messages[start:end]``. ``cuts``: ascending indices in
    ``(start, end]`` where the oldest of them may be dropped (``messages[start:cut]``) and
    leave whole turns, no tool call parted from its result. ``truncate``: drop them, the
    oldest first, until the prompt fits the context, rather than refuse it; ``note``: what
    a refusal adds, ``{tokens}`` being the carried messages' tokens."""

    start: int
    end: int
    cuts: tuple[int, ...] = ()
    truncate: bool = False
    note: str = ""

    def without(self, messages: list[dict[str, Any]], cut: int) -> list[dict[str, Any]]:
        return [*messages[: self.start], *messages[cut:]]


@dataclass
class Job:
    """One generation request, as the handler prepared it for a backend."""

    kind: Literal["chat", "completion"]
    request_id: str
    model: str  # the deployment name the client called
    body: dict[str, Any]  # the client's body: an upstream gets its other fields unchanged
    messages: list[dict[str, Any]] | None  # chat, after the input guardrails
    # completions: the prompts' texts, after the input guardrails (one, or a client's batch:
    # prompt p's choice j is choice p * n + j, as OpenAI's and vLLM's)
    prompts: list[str] | None
    max_tokens: int  # the completion budget per choice (capped; charged at admission)
    max_tokens_field: str = "max_tokens"  # the field the client used
    # the client named the budget: one that does not fit the context is refused, where a
    # default budget is cut to the context left
    max_tokens_asked: bool = False
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    # logit_bias and the penalties, for the engine (an upstream reads them in ``body``)
    logits: LogitsOptions | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    stream: bool = False
    include_usage: bool = False  # streams: a last chunk with the usage
    echo: bool = False  # completions: the reply's text starts with the prompt
    control_tokens: str = "escape"
    # completions: a prompt the client sent as token ids (else None), per prompt; its text
    # in ``prompts`` is their decoding (EngineBackend.precheck), and a guardrail that
    # rewrites it sets it back to None so the rewritten text is what is encoded
    token_ids: list[list[int] | None] | None = None
    # the tokens of each prompt (one for chat), set by EngineBackend.prepare
    prompt_ids: list[list[int]] | None = None
    # chat: tools / tool_choice / response_format (serve/tools.ToolPlan), None if none
    tools: Any = None
    # the reply's text holds tool calls for the gateway to parse (the engine's; an
    # upstream parses its own and sends ``tool_calls`` fields)
    parse_tools: bool = False
    # chat: the messages carried from earlier turns, which a backend that counts the
    # prompt's tokens may drop to fit (fit_context), else None
    history: History | None = None

    def text(self) -> str:
        """All the prompt text (for estimates)."""
        if self.messages is not None:
            return "\n".join(_content_text(m.get("content")) for m in self.messages)
        return "\n".join(self.prompts or [])

    def longest(self) -> int:
        """Characters of the longest prompt: each is one sequence of the model's context."""
        if self.messages is not None:
            return len(self.text())
        return max((len(p) for p in self.prompts or []), default=0)

    def choices(self) -> int:
        """Choices in the reply: ``n`` per prompt."""
        return self.n * (len(self.prompts) if self.prompts is not None else 1)

    def estimate(self) -> int:
        """The prompt tokens estimated without a tokenizer (a prompt of token ids counts
        exactly)."""
        if self.messages is not None:
            return approx_tokens(self.text())
        given = self.token_ids or [None] * len(self.prompts or [])
        return sum(  # each prompt is one token at least (an empty one: the model's start)
            len(ids) if ids is not None else max(1, approx_tokens(text))
            for text, ids in zip(self.prompts or [], given, strict=True)
        )


@dataclass
class ChoiceDelta:
    """New text of choice ``index`` (possibly empty), or its end (``finish_reason``)."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None  # with finish_reason "error"
    extra: dict[str, Any] | None = None  # upstream delta/message fields passed on


class Generation(Protocol):
    """A started generation. ``prompt_tokens``/``completion_tokens`` are final once
    :meth:`batches` is exhausted (an upstream that sends no usage is estimated from the
    text it relayed)."""

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...

    def batches(self) -> AsyncIterator[list[ChoiceDelta]]: ...

    async def aclose(self) -> None: ...


class Backend(Protocol):
    """One model behind a deployment (see the module docstring)."""

    model_ref: str  # the concrete version that answers (``name:N``), or the upstream
    sampling: dict[str, float]  # temperature/top_p of a request that sets none
    default_max_tokens: int  # the completion budget of a request that names none

    def estimate_prompt(self, job: Job) -> int: ...

    def precheck(self, job: Job) -> None:
        """Cheap checks before any expensive work (a prompt surely longer than the context,
        options the backend does not take): an :class:`OpenAIError` 400."""

    async def prepare(self, job: Job) -> None:
        """Tokenize and check the context, where the backend tokenizes."""

    async def start(self, job: Job) -> Generation: ...

    async def embed(
        self, texts: list[str], dimensions: int | None = None
    ) -> tuple[list[list[float]] | dict[str, Any], int]:
        """Vectors of ``texts`` (``dimensions`` long where asked: a 400
        ``unsupported_parameter`` where the model cannot shorten them) and the tokens read."""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _text_parts_only(messages: list[dict[str, Any]] | None) -> None:
    """A 400 for a content part a text model cannot read (an image, audio, a file), rather
    than answering as if the message had not held it."""
    for i, m in enumerate(messages or []):
        content = m.get("content")
        for j, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise OpenAIError(
                    400,
                    f"messages[{i}].content[{j}]: this deployment's model reads text only, "
                    f"and this part is of type {kind!r}; send text parts, or use a deployment "
                    "whose upstream model takes it",
                    param=f"messages[{i}].content[{j}].type",
                    code="unsupported_content",
                )


def encode_messages(
    engine: Any,
    messages: list[dict[str, Any]],
    plan: Any,
    control_tokens: str,
    *,
    add_generation_prompt: bool = True,
) -> list[int]:
    """The prompt ids of a chat as the engine reads it: each message's text (content parts
    joined) and the tools of ``plan`` (a :class:`~lmops.serve.tools.ToolPlan` or None)
    through the model's chat template; also what ``/tokenize`` counts. Blocking."""
    from lmops.models.chat import caller_strings
    from lmops.models.engine import ControlTokenError
    from lmops.serve.tools import render, template_writes_calls

    texts = [{**m, "content": _content_text(m.get("content"))} for m in messages]
    tools = plan.tools if plan is not None and plan.tools else None
    if control_tokens == "refuse":  # named by the request's place, before tools are rendered
        for param, text in caller_strings(texts, tools):
            if engine._has_control(text):
                raise ControlTokenError(param)
    # the template's own tools rendering only where it writes calls as the gateway parses
    # them (a probe, cached per template; one that merely mentions "tools" gets the text)
    native = not engine.chat_template_fallback and template_writes_calls(engine.tokenizer)
    rendered, listed = render(texts, plan, native=native)
    return list(
        engine.encode_chat(
            rendered,
            control_tokens=control_tokens,
            tools=listed,
            add_generation_prompt=add_generation_prompt,
        )
    )


def _context_error(kind: str, limit: int, tokens: int | None) -> OpenAIError:
    has = f"your prompt has {tokens}" if tokens is not None else "your prompt is longer"
    return OpenAIError(
        400,
        f"This model's maximum context length is {limit} tokens; {has}.",
        param="messages" if kind == "chat" else "prompt",
        code="context_length_exceeded",
    )


def _budget_error(job: Job, limit: int, prompt: int) -> OpenAIError:
    """OpenAI's refusal of a prompt and an explicit completion budget that together do not
    fit the context (vLLM's too), rather than a reply cut short at the context's end."""
    asked = prompt + job.max_tokens
    if job.kind == "chat":
        parts = f"{prompt} in the messages, {job.max_tokens} in the completion"
        advice = "Please reduce the length of the messages or completion."
    else:
        parts = f"{prompt} in your prompt; {job.max_tokens} for the completion"
        advice = "Please reduce your prompt; or completion length."
    return OpenAIError(
        400,
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{asked} tokens ({parts}). {advice}",
        param="messages" if job.kind == "chat" else "prompt",
        code="context_length_exceeded",
    )


def _fits(job: Job, limit: int, tokens: int) -> bool:
    return tokens < limit and not (job.max_tokens_asked and job.max_tokens > limit - tokens)


def _too_long(job: Job, limit: int, tokens: int) -> OpenAIError:
    if tokens >= limit:
        return _context_error(job.kind, limit, tokens)
    return _budget_error(job, limit, tokens)


def fit_context(
    job: Job, encode: Callable[[list[dict[str, Any]]], Sequence[Any]], limit: int
) -> Sequence[Any]:
    """A chat job's prompt as ``encode`` reads its messages (its tokens), where it fits a
    context of ``limit`` tokens with the completion budget asked: the whole prompt, or,
    where its carried history may be cut (``job.history.truncate``), the prompt without
    the fewest oldest turns that make it fit (``job.messages`` then lose them; a binary
    search over the cuts: a few encodings, not one per turn). Else the context's 400, with
    the history's note saying how many of its tokens were carried."""
    messages, h = job.messages or [], job.history
    ids = encode(messages)
    if _fits(job, limit, len(ids)):
        return ids
    least = ids
    if h is not None and h.truncate and h.cuts:
        lo, hi, best = 0, len(h.cuts) - 1, None
        while lo <= hi:  # the smallest cut that fits (a later cut leaves fewer tokens)
            mid = (lo + hi) // 2
            got = encode(h.without(messages, h.cuts[mid]))
            if _fits(job, limit, len(got)):
                best, hi = (h.cuts[mid], got), mid - 1
            else:
                least, lo = got, mid + 1
        if best is not None:
            cut, got = best
            gone = cut - h.start
            job.messages = h.without(messages, cut)
            job.history = replace(  # what is left of it, for a fallback's context
                h, end=h.end - gone, cuts=tuple(c - gone for c in h.cuts if c > cut)
            )
            return got
    error = _too_long(job, limit, len(least))
    if h is not None and h.note and not h.truncate:
        own = encode(h.without(messages, h.end))
        error.message += " " + h.note.format(tokens=len(ids) - len(own))
    raise error


def _unsupported(param: str, why: str) -> OpenAIError:
    return OpenAIError(
        400,
        f"{param}: unsupported parameter: {why}; leave it out, or call a deployment whose "
        "upstream supports it",
        param=param,
        code="unsupported_parameter",
    )


def _engine_options(job: Job, vocab: int) -> None:
    """A 400 for an OpenAI parameter the built-in engine cannot honour, or a ``logit_bias``
    token that is not in its vocabulary (an upstream checks its own)."""
    body = job.body
    if body.get("suffix"):  # "" asks for nothing
        raise _unsupported("suffix", "the built-in engine does not insert text")
    best_of = body.get("best_of")
    if isinstance(best_of, int) and best_of > job.n:
        raise _unsupported("best_of", f"the built-in engine generates n ({job.n}) choices only")
    if body.get("functions"):
        raise _unsupported("functions", "the built-in engine takes tools (send tools instead)")
    if body.get("function_call") not in (None, "none", "auto"):  # those two change nothing
        raise _unsupported(
            "function_call", "the built-in engine takes tool_choice (send tool_choice instead)"
        )
    modalities = body.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise _unsupported("modalities", "the built-in engine's models write text only")
    if body.get("audio") is not None:
        raise _unsupported("audio", "the built-in engine's models write text only")
    bad = sorted(t for t in (job.logits.logit_bias if job.logits else {}) if t >= vocab)
    if bad:
        raise OpenAIError(
            400,
            f"logit_bias: token id {bad[0]} is not in this model's vocabulary (token ids 0 to "
            f"{vocab - 1})",
            param="logit_bias",
            code="invalid_value",
        )


# ============================================================================ engine
class EngineBackend:
    """A model served by the built-in engine (one target of a deployment). ``sampling``:
    the temperature/top_p of a request that sets none (the deployment's, over the
    model's generation config); ``default_max_tokens``: its completion budget."""

    def __init__(
        self,
        target: Any,
        *,
        sampling: dict[str, float] | None = None,
        default_max_tokens: int = 256,
        embeddings_truncate: bool = False,
    ) -> None:
        self.target = target
        self.embeddings_truncate = embeddings_truncate  # else a too-long input is a 400
        self.engine = target.engine
        self.model_ref = str(target.version)
        self.sampling = dict(sampling or {})
        self.default_max_tokens = default_max_tokens
        self.chat_template_fallback = bool(self.engine.chat_template_fallback)

    def estimate_prompt(self, job: Job) -> int:
        return job.estimate()

    def precheck(self, job: Job) -> None:
        engine = self.engine
        if engine.surely_too_long(job.longest()):
            raise _context_error(job.kind, engine.max_context, None)
        longest_ids = max((len(ids) for ids in job.token_ids or [] if ids is not None), default=0)
        if longest_ids >= engine.max_context:  # before reading them
            raise _context_error(job.kind, engine.max_context, longest_ids)
        capacity = engine.max_running + engine.max_queue
        if job.choices() > capacity:  # a batch that can never be queued whole
            raise OpenAIError(
                400,
                f"prompt: {job.choices()} sequences ({len(job.prompts or [])} prompt(s) x n "
                f"{job.n}) are more than this deployment ever takes at once ({capacity}: its "
                "max_running + max_queue); send fewer prompts per request",
                param="prompt",
                code="invalid_value",
            )
        _engine_options(job, _vocab(engine))
        if job.token_ids:
            self._decode_token_prompts(job)
        if job.tools is not None:
            from lmops.serve.tools import compile_plan

            compile_plan(job.tools)  # a 400 for a schema the grammar cannot enforce

    def _decode_token_prompts(self, job: Job) -> None:
        """The text of each prompt sent as token ids (what the input guardrails read and
        ``echo`` returns); a 400 naming an id the model's vocabulary does not have."""
        vocab = _vocab(self.engine)
        prompts = list(job.prompts or [])
        for p, ids in enumerate(job.token_ids or []):
            if ids is None:
                continue
            bad = next((i for i, t in enumerate(ids) if not 0 <= t < vocab), None)
            if bad is not None:
                where = f"prompt[{p}][{bad}]" if len(prompts) > 1 else f"prompt[{bad}]"
                raise OpenAIError(
                    400,
                    f"{where}: token id {ids[bad]} is not in this model's vocabulary (token "
                    f"ids 0 to {vocab - 1})",
                    param="prompt",
                    code="invalid_value",
                )
            prompts[p] = self.engine.tokenizer.decode(ids, skip_special_tokens=False)
        job.prompts = prompts

    async def prepare(self, job: Job) -> None:
        from lmops.models.engine import ControlTokenError

        engine = self.engine
        chars = len(job.text())
        _text_parts_only(job.messages)

        def encode() -> list[list[int]]:
            if job.messages is not None:
                return [
                    list(
                        fit_context(
                            job,
                            lambda m: encode_messages(engine, m, job.tools, job.control_tokens),
                            engine.max_context,
                        )
                    )
                ]
            given = job.token_ids or [None] * len(job.prompts or [])
            return [
                list(ids) if ids is not None else engine.encode(text) or [empty]
                for text, ids in zip(job.prompts or [], given, strict=True)
            ]

        empty = engine.tokenizer.eos_token_id or 0  # an empty prompt: the model's start

        try:
            encoded = await asyncio.to_thread(encode) if chars > INLINE_TOKENIZE_CHARS else encode()
        except ControlTokenError as e:
            raise OpenAIError(
                400,
                str(e),
                param=e.param,
                code="control_tokens",
            ) from None
        longest = max(len(ids) for ids in encoded)
        room = engine.max_context - longest
        if room <= 0:
            raise _context_error(job.kind, engine.max_context, longest)
        if job.max_tokens_asked and job.max_tokens > room:
            raise _budget_error(job, engine.max_context, longest)
        job.prompt_ids = encoded
        job.max_tokens = min(job.max_tokens, room)
        job.parse_tools = job.tools is not None and job.tools.parses_calls

    async def start(self, job: Job) -> Generation:
        assert job.prompt_ids is not None, "prepare() first"
        n = job.n
        reqs = [
            GenRequest(
                request_id=f"{job.request_id}-{i}",
                prompt_ids=job.prompt_ids[i // n],
                max_tokens=job.max_tokens,
                temperature=job.temperature,
                top_p=job.top_p,
                seed=None if job.seed is None else job.seed + i,
                stop=job.stop,
                logits=job.logits,
                logprobs=job.logprobs,
                top_logprobs=job.top_logprobs,
                # scored when asked, and always for max_tokens=0 (nothing is generated)
                prompt_logprobs=(job.top_logprobs if job.logprobs else 0)
                if job.echo and (job.logprobs or job.max_tokens == 0)
                else None,
                constraint=self._constraint(job),
                whole_chars=True,  # no U+FFFD for a character max_tokens cut in two
                eos_logprob=job.kind == "completion",
            )
            for i in range(n * len(job.prompt_ids))
        ]
        echoes = [(job.prompts or [])[i // n] if job.echo else None for i in range(len(reqs))]
        # all the prompts' sequences are queued, or none is (a full queue: a 503)
        streams = self.engine.submit_all(reqs)
        return _EngineGeneration(streams, sum(map(len, job.prompt_ids)), echoes)

    def _constraint(self, job: Job) -> Any:
        """A fresh grammar constraint for one choice of ``job`` (None: free text)."""
        plan = job.tools
        if plan is None or plan.grammar is None:
            return None
        from lmops.models.grammar import grammars_for

        engine = self.engine
        grammars = grammars_for(engine.tokenizer, _vocab(engine), sorted(engine.eos_ids))
        # tokens one more parallel call takes at least (models/grammar.py: the reserve)
        reserve = min((len(engine.encode(c)) for c in plan.next_calls), default=0)
        try:
            return grammars.constraint(plan.grammar, trigger=plan.trigger, reserve=reserve)
        except ValueError as e:
            raise OpenAIError(
                400,
                f"the requested output format cannot be enforced: {e}",
                code="unsupported_schema",
            ) from None

    async def embed(
        self, texts: list[str], dimensions: int | None = None
    ) -> tuple[list[list[float]], int]:
        if dimensions is not None:  # a pooled hidden state: not matryoshka
            raise _unsupported(
                "dimensions", "this deployment's model cannot shorten its embeddings"
            )
        # encoded with the special tokens and pooled as the model's folder says; the count
        # is the tokens the model read (models/encoder.py)
        from lmops.models.encoder import InputTooLong

        try:
            vectors, tokens = await asyncio.to_thread(
                self.target.embed, texts, truncate=self.embeddings_truncate
            )
        except InputTooLong as e:  # OpenAI's refusal, naming the input
            where = f"input[{e.index}]"
            raise OpenAIError(
                400,
                f"This model's maximum context length is {e.limit} tokens, however you "
                f"requested {e.tokens} tokens in {where}. Please reduce the length of {where}.",
                param="input",
                code="context_length_exceeded",
            ) from None
        return vectors, tokens


def _vocab(engine: Any) -> int:
    """The rows of the engine's logits: its model's vocabulary."""
    return int(getattr(engine.model.config, "vocab_size", 0) or len(engine.tokenizer))


class _EngineGeneration:
    usage_known = True

    def __init__(
        self, streams: list[Any], prompt_tokens: int, echoes: list[str | None] | None = None
    ) -> None:
        self._streams = streams
        self.prompt_tokens = prompt_tokens
        # tokens per choice: one per delta while it runs (a choice cut short by a content
        # filter still counts what it generated), the engine's own count once it is done
        self._tokens = [0] * len(streams)
        # completions with echo: each choice's text starts with the prompt (and its token
        # logprobs, when asked, which the engine sends first)
        self._echoes = echoes or [None] * len(streams)
        self._echoed = [e is None for e in self._echoes]

    @property
    def completion_tokens(self) -> int:
        return sum(self._tokens)

    def _events(self, i: int, batch: list[Delta | Done]) -> list[ChoiceDelta]:
        out = []
        if not self._echoed[i]:
            self._echoed[i] = True
            first = batch[0]
            scores = first.prompt_logprobs if isinstance(first, Delta) else None
            out.append(ChoiceDelta(i, self._echoes[i] or "", list(scores or [])))
        for ev in batch:
            if isinstance(ev, Delta):
                if ev.prompt_logprobs is not None:
                    continue  # sent with the echoed prompt above
                if ev.token_id is not None:
                    self._tokens[i] += 1
                entry = ev.logprobs
                if entry is not None and self._echoes[i]:  # offsets into the whole text
                    at = len(self._echoes[i] or "")
                    entry = replace(
                        entry, text_offset=entry.text_offset + at, text_end=entry.text_end + at
                    )
                out.append(ChoiceDelta(i, ev.text, [entry] if entry else []))
            else:
                self._tokens[i] = ev.completion_tokens
                out.append(ChoiceDelta(i, finish_reason=ev.finish_reason, error=ev.error))
        return out

    async def batches(self) -> AsyncIterator[list[ChoiceDelta]]:
        if len(self._streams) == 1:  # the usual case: no task and no queue in between
            async for batch in self._streams[0]:
                yield self._events(0, batch)
            return
        queue: asyncio.Queue[tuple[int, list[Delta | Done]] | BaseException] = asyncio.Queue()

        async def pump(i: int) -> None:
            try:
                async for batch in self._streams[i]:
                    await queue.put((i, batch))
            except Exception as e:  # pragma: no cover - the engine reports errors as events
                await queue.put(e)

        tasks = [asyncio.create_task(pump(i)) for i in range(len(self._streams))]
        try:
            left = len(self._streams)
            while left:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                i, batch = item
                if isinstance(batch[-1], Done):
                    left -= 1
                yield self._events(i, batch)
        finally:
            for t in tasks:
                t.cancel()

    async def aclose(self) -> None:
        for s in self._streams:
            await s.aclose()
