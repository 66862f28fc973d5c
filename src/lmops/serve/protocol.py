"""The OpenAI protocol as the gateway speaks it: request models, the one error shape, and
reading a request body with bounds.

Errors are ``{"error": {"message", "type", "param", "code"}}`` with the status codes the
official client maps (400 BadRequest, 401 Authentication, 403 PermissionDenied,
404 NotFound, 413 request too large, 429 RateLimit, 500/502/503 server errors). Unknown
extra fields in a request are accepted and ignored, as OpenAI does; OpenAI's own
parameters are validated as OpenAI does, and one that a backend cannot honour (``suffix``
or ``best_of`` on the built-in engine, ``dimensions`` on a model that is not matryoshka) is
a 400 ``unsupported_parameter`` naming it, never silently ignored.

A body is bounded before anything expensive happens (:func:`read_json`): its size
(``max_body_bytes``, a 413 as soon as the declared or received length passes it), its JSON
nesting (:data:`MAX_JSON_DEPTH` levels, a 400; Python's own parser would otherwise recurse
until it fails with an internal error) and its strings (a lone UTF-16 surrogate such as
``"\\ud800"`` is valid JSON but no text: a 400 naming the field, where it used to break
the tokenizer). Bodies over :data:`INLINE_PARSE_BYTES` are parsed on a worker thread, so
one large request never holds up the event loop that answers the others.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from lmops.core.toolrows import TOOL_NAME
from lmops.core.yamlcfg import format_loc, shown_error
from lmops.models.types import LogitsOptions

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "OpenAIError",
    "error_body",
    "openapi_body",
    "parse",
    "read_json",
]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_JSON_DEPTH = 64
# Bodies up to this size are parsed on the event loop (a thread hop costs more than the
# parse); larger ones on a worker thread.
INLINE_PARSE_BYTES = 64 * 1024


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    lmops: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """OpenAI's error object, the one shape every error of the gateway (and its fake) has;
    ``lmops``: the gateway's own facts about it, as a member of its own beside OpenAI's
    four (a 429's limit: :meth:`lmops.serve.limits.RateLimited.facts`), which clients
    pass through (the ``openai`` client's ``e.body["lmops"]``)."""
    error: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    if lmops is not None:
        error["lmops"] = lmops
    return {"error": error}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape with ``status`` (and ``headers``)."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        lmops: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.lmops = lmops  # the error object's "lmops" member (see error_body)
        # the wait an upstream asked for with a 429 it passed on (for retries)
        self.retry_after_s: float | None = None

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code, self.lmops)

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=self.body(), headers=self.headers)


# -- request bodies (extra fields accepted) -------------------------------------------------------
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = Field(default=None, validate_default=True)
    # a tool result names the call it answers (serve/tools.check_tool_messages)
    tool_call_id: str | None = None

    @field_validator("content", mode="wrap")
    @classmethod
    def _content_shape(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        """A string or a list of typed parts, as OpenAI takes; only an assistant message
        may leave it out (a turn that only called tools). Which part types a deployment
        can use is the backend's to say (an upstream may take images)."""
        try:
            content = handler(value)
        except ValidationError:
            raise ValueError("must be a string or a list of content parts") from None
        role = info.data.get("role")
        if content is None and role not in ("assistant", None):
            raise ValueError(f"a {role} message needs content (a string or a list of parts)")
        for j, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type")
            if not isinstance(kind, str):
                raise ValueError(f"part [{j}] needs a 'type' (e.g. \"text\")")
            if kind == "text" and not isinstance(part.get("text"), str):
                raise ValueError(f"part [{j}] is of type text and needs a string 'text'")
        return content

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if isinstance(p, dict))
        return self.content or ""


class StreamOptions(_Open):
    include_usage: bool = False


class _Sampling(_Open):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    # None: the deployment's default (the model's generation config, else 1.0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    # a 64-bit seed, as OpenAI takes; larger ones would fail inside the sampler
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    user: str | None = None
    # logits processors (models/logits.py), with OpenAI's bounds; repetition_penalty is
    # vLLM's extra (multiplicative, over the prompt's and the reply's tokens), in (0, 2]
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    # token id (a string, as JSON keys are) -> a bias in [-100, 100] added to its logit;
    # whether the ids are in the vocabulary is the backend's to say (it has the tokenizer)
    logit_bias: dict[str, float] | None = None

    @field_validator("stream_options")
    @classmethod
    def _only_with_stream(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_shape(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not (key.isascii() and key.isdigit()):
                raise ValueError(f"invalid key {key!r}: keys are token ids (non-negative integers)")
            if not -100 <= bias <= 100:
                raise ValueError(f"the bias of token {key} is {bias}; it must be in [-100, 100]")
        return value

    def logits_options(self) -> LogitsOptions | None:
        """What the request asks to change in each row of logits (None: nothing)."""
        options = LogitsOptions(
            logit_bias={int(k): float(v) for k, v in (self.logit_bias or {}).items() if v},
            frequency_penalty=self.frequency_penalty or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
        )
        return options if options.active else None

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if len(stops) > 4:
            raise OpenAIError(400, "stop: at most 4 sequences", param="stop")
        return stops

    def asked_max_tokens(self) -> tuple[str, int] | None:
        """The completion bound the client asked for, and the field it used."""
        return ("max_tokens", self.max_tokens) if self.max_tokens is not None else None

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class FunctionDef(_Open):
    name: str = Field(pattern=f"^{TOOL_NAME}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema (serve/tools.py checks it)
    strict: bool | None = None


class ToolDef(_Open):
    type: Literal["function"]
    function: FunctionDef


class ToolChoiceFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: ToolChoiceFunction


class JsonSchemaFormat(_Open):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = Field(pattern=f"^{TOOL_NAME}$")
    description: str | None = None
    # "schema" would shadow a BaseModel attribute: the field has another name
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # tool calling and structured outputs (checked and planned by serve/tools.py)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @field_validator("tool_choice", mode="wrap")
    @classmethod
    def _one_tool_choice(cls, value: Any, handler: Any) -> Any:
        # one message naming the field, not one per member of the union
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(
                'tool_choice must be "none", "auto", "required" or '
                '{"type": "function", "function": {"name": ...}}'
            ) from None

    def asked_max_tokens(self) -> tuple[str, int] | None:
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return super().asked_max_tokens()

    def logprob_options(self) -> tuple[bool, int]:
        """Whether token logprobs were asked for, and how many alternatives per token."""
        if self.top_logprobs is not None and not self.logprobs:
            raise OpenAIError(
                400,
                "top_logprobs: set logprobs to true to use top_logprobs",
                param="top_logprobs",
                code="invalid_value",
            )
        return self.logprobs, (self.top_logprobs or 0) if self.logprobs else 0


class CompletionRequest(_Sampling):
    # OpenAI's shapes; the handler says which of them the gateway serves
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    # 0 with echo: only the prompt's logprobs (log-likelihood scoring, as vLLM takes it)
    max_tokens: int | None = Field(default=None, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    # the built-in engine takes neither beyond their no-op values (backends.precheck); an
    # upstream gets them unchanged
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=20)

    @field_validator("best_of")
    @classmethod
    def _best_of_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n", 1)
        if value is not None and value < n:
            raise ValueError(f"best_of ({value}) must be greater than or equal to n ({n})")
        return value

    def logprob_options(self) -> tuple[bool, int]:
        return self.logprobs is not None, self.logprobs or 0


def prompt_items(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """A completions ``prompt`` as its prompts: each a text or a list of token ids (a list
    of ints is one prompt of token ids; a list of lists, one prompt each). A 400 for an
    empty list, as OpenAI's."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise OpenAIError(
            400,
            "prompt: an empty list; give a string, a list of strings, a list of token ids "
            "or a list of lists of token ids",
            param="prompt",
            code="invalid_value",
        )
    items: list[str | list[int]] = []
    if all(isinstance(t, int) for t in prompt):
        items.append([t for t in prompt if isinstance(t, int)])
    else:
        items.extend(p if isinstance(p, str) else list(p) for p in prompt if not isinstance(p, int))
    for i, item in enumerate(items):
        if isinstance(item, list) and not item:
            raise OpenAIError(
                400,
                f"prompt[{i}]: an empty list of token ids",
                param="prompt",
                code="invalid_value",
            )
    return items


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]  # the handler says what it serves
    encoding_format: Literal["float", "base64"] = "float"
    # shorter vectors: only an upstream's matryoshka model can honour it (Backend.embed)
    dimensions: int | None = Field(default=None, ge=1)


def parse(model: type[BaseModel], body: Any) -> Any:
    """``body`` validated as ``model``; the first problem is a 400 naming its field."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        # ``messages[0].content``, as the tools errors write it, in the body's own terms
        # (not pydantic's names for a union's members), worded as config errors are
        loc, message = shown_error(e, body, model)
        param = format_loc(loc) if loc else None
        raise OpenAIError(
            400, f"{param or 'body'}: {message}", param=param, code="invalid_value"
        ) from None


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
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


# -- reading a body with bounds --------------------------------------------------------------------
def _too_large(size: int | str, limit: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"The request body is {size} bytes; this server accepts at most {limit} "
        "(lmops serve --max-body-mb).",
        code="request_too_large",
    )


async def read_json(request: Request, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Any:
    """The request's JSON body, bounded (see the module docstring)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(declared, max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(f"more than {max_bytes}", max_bytes)
        chunks.append(chunk)
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(raw) > INLINE_PARSE_BYTES:
        return await asyncio.to_thread(decode_json, raw)
    return decode_json(raw)


# An escaped UTF-16 surrogate (\uD800-\uDFFF) somewhere in the raw body: only then can a
# decoded string hold a lone one (a valid pair decodes to one character).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def decode_json(raw: bytes) -> Any:
    """Parse ``raw`` and check its depth and strings; a 400 for anything unusable."""
    try:
        data = json.loads(raw or b"null")
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise OpenAIError(
            400, "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None
    check_depth(data)
    if _SURROGATE_ESCAPE.search(raw):
        _check_text(data)
    return data


def _too_deep() -> OpenAIError:
    return OpenAIError(
        400,
        f"The JSON body is nested more than {MAX_JSON_DEPTH} levels deep.",
        code="invalid_json",
    )


def check_depth(data: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise a 400 if ``data`` nests objects/arrays more than ``limit`` levels."""
    if not isinstance(data, dict | list):
        return
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            raise _too_deep()
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))


def _bad_text(path: str) -> OpenAIError:
    return OpenAIError(
        400,
        f"{path or 'body'}: the string holds a lone UTF-16 surrogate (an unpaired \\ud800-"
        "\\udfff escape), which is not text; send valid Unicode",
        param=path or None,
        code="invalid_value",
    )


def _check_text(data: Any, path: str = "") -> None:
    """Raise a 400 naming the first string (or key) that is not valid Unicode text."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad_text(path) from None
    elif isinstance(data, dict):
        for k, v in data.items():
            where = f"{path}.{k}" if path else str(k)
            _check_text(k, where)
            _check_text(v, where)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _check_text(v, f"{path}[{i}]" if path else f"[{i}]")


def completion_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def sse(obj: Any) -> str:
    """One server-sent event holding ``obj`` as JSON."""
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"
