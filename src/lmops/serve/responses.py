"""OpenAI's Responses API (``POST /v1/responses``) over the gateway's chat path.

A Responses request is translated into the chat request it means (``instructions`` as the
system message, ``input`` items as messages, flat function tools as chat tools,
``text.format`` as ``response_format``, ``max_output_tokens`` as the completion budget) and
answered by the same handler as ``/v1/chat/completions``: the same keys, limits,
guardrails, bound prompts, retries and request log. The chat reply (or its event stream)
is translated back: ``message`` and ``function_call`` output items, ``status``
``completed`` or ``incomplete`` (``max_output_tokens``, ``content_filter``), usage as
``input_tokens``/``output_tokens``; a stream becomes the Responses events
(``response.created`` … ``response.output_text.delta`` … ``response.completed``), each
with its ``sequence_number``.

This module translates; what is kept between requests (``store``,
``previous_response_id``, retrieve, delete, input items) is
:mod:`lmops.serve.stored_responses`, which hands this module the request with the
conversation it continues already in ``input``. ``conversation`` and ``background`` are a
400. The response id is the chat id's (``resp_<hex>`` for ``chatcmpl-<hex>``), so ``lmops
trace`` finds it. ``prompt: {id, version, variables}``
names an lmops registered prompt (``id@label`` or ``id`` with ``version``)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from lmops.serve.protocol import OpenAIError
from lmops.serve.replies import Final

__all__ = ["chat_body", "message_items", "response_id", "to_response", "to_stream"]

# the include values the gateway can honour
_INCLUDES = {"message.output_text.logprobs"}
# Responses fields with no chat counterpart that change nothing here
_IGNORED = {
    "store",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "max_tool_calls",
    "stream_options",
}
# passed on as they are (vLLM's extras and chat's own sampling fields)
_PASSED = {
    "seed",
    "stop",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "repetition_penalty",
    "parallel_tool_calls",
    "metadata",
    "user",
}
# every field a Responses request may carry here (the others are a 400)
_KNOWN = frozenset(
    _PASSED
    | _IGNORED
    | {
        "model", "input", "instructions", "temperature", "top_p", "max_output_tokens",
        "tools", "tool_choice", "text", "include", "top_logprobs", "reasoning", "prompt",
        "stream", "previous_response_id", "conversation", "background", "truncation",
    }
)  # fmt: skip


def _bad(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, f"{param}: {message}", param=param, code=code)


def response_id(chat_id: str) -> str:
    """The Responses id of a chat reply's id (``chatcmpl-<hex>`` -> ``resp_<hex>``)."""
    return "resp_" + chat_id.removeprefix("chatcmpl-")


# ============================================================================ request
def _parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A Responses message's content as chat content (text parts; images as image_url)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(where, "give a string or a list of content parts")
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            out.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            out.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            out.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise _bad(
                f"{where}[{j}]",
                f"content of type {kind!r} is not served here (text, output_text, "
                "refusal and input_image with an image_url are)",
                "unsupported_value",
            )
    return out


def _messages(
    items: Any, instructions: Any, origins: list[str] | None = None
) -> list[dict[str, Any]]:
    """The chat messages of ``input`` and ``instructions``; ``origins`` gets, per message,
    where it came from (``instructions``, ``input``, ``input[i]``) and, per tool call of an
    assistant message, ``<message's origin>#<call's origin>``."""
    messages: list[dict[str, Any]] = []
    origins = origins if origins is not None else []
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("instructions", "give a string")
        messages.append({"role": "system", "content": instructions})
        origins.append("instructions")
    if isinstance(items, str):
        origins.append("input")
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise _bad("input", "give a string or a non-empty list of input items")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(where, "give an object (a message or a function call item)")
        kind = item.get("type", "message")
        if kind == "function_call":
            name, args, call_id = item.get("name"), item.get("arguments"), item.get("call_id")
            if not (isinstance(name, str) and isinstance(args, str) and isinstance(call_id, str)):
                raise _bad(where, "a function_call item needs call_id, name and arguments")
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": args},
            }
            # calls right after an assistant turn (its text, or other calls) are that turn's
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
                origins[-1] += f"#{where}"
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                origins.append(f"{where}#{where}")
            continue
        if kind == "function_call_output":
            output, call_id = item.get("output"), item.get("call_id")
            if not isinstance(call_id, str):
                raise _bad(where, "a function_call_output item needs the call_id it answers")
            text = output if isinstance(output, str) else _text_of(output, f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
            origins.append(f"{where}.output")
            continue
        if kind == "reasoning":
            continue  # a model's own earlier reasoning: nothing the chat template reads
        if kind != "message":
            raise _bad(
                f"{where}.type",
                f"{kind!r} items are not served here (message, function_call, "
                "function_call_output and reasoning are)",
                "unsupported_value",
            )
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise _bad(f"{where}.role", "give user, assistant, system or developer")
        content = _parts(item.get("content"), f"{where}.content")
        messages.append({"role": "system" if role == "developer" else role, "content": content})
        origins.append(where)
    return messages


def message_items(items: Any, instructions: Any) -> list[int | None]:
    """Per chat message of ``items`` and ``instructions`` (as :func:`chat_body` reads them):
    the index of the input item it begins with (None: the instructions)."""
    origins: list[str] = []
    _messages(items, instructions, origins)
    found = [re.match(r"input\[(\d+)\]", o) for o in origins]
    return [
        int(m.group(1)) if m else (0 if o == "input" else None)
        for m, o in zip(found, origins, strict=True)
    ]


# The chat fields a Responses request was translated to -> its own fields, for errors.
_FIELDS = [
    (re.compile(r"\bmax_completion_tokens\b"), "max_output_tokens"),
    (re.compile(r"\bresponse_format\.json_schema\.schema\b"), "text.format.schema"),
    (re.compile(r"\bresponse_format\b"), "text.format"),
    (re.compile(r"\b(tools\[\d+\])\.function\b"), r"\1"),
    (re.compile(r"\breasoning_effort\b"), "reasoning.effort"),
]
_MESSAGE = re.compile(
    r"\bmessages\[(\d+)\](\.content|\.tool_calls\[(\d+)\](\.function|\.id\b)?|\.tool_call_id)?"
)


def _responses_terms(text: str, origins: list[str] | None, *, param: bool) -> str:
    """``text`` (an error's ``param``, or its message) in the Responses API's field names;
    ``origins``: where each chat message came from (None: unknown, as when a prompt was
    wrapped around them). Only field-shaped words of a message are rewritten."""

    def message(m: re.Match[str]) -> str:
        k = int(m.group(1))
        if origins is None or k >= len(origins):
            return "input"
        head, *calls = origins[k].split("#")
        if m.group(3) is not None:  # an assistant turn's tool call: its function_call item
            j = int(m.group(3))
            if j >= len(calls):
                return head
            # the call's id is the item's call_id (its own id is another field)
            return calls[j] + (".call_id" if m.group(4) == ".id" else "")
        rest = m.group(2) or ""
        if rest == ".tool_call_id":  # a function_call_output item's
            return head.removesuffix(".output") + ".call_id"
        if head == "instructions" or head.endswith(".output"):
            return head  # a string: no content parts
        return head + rest if head != "input" else head

    text = _MESSAGE.sub(message, text)
    for pattern, name in _FIELDS:
        text = pattern.sub(name, text)
    if param:
        text = "prompt.variables" if text == "variables" else text
        return re.sub(r"^messages\b", "input", text)
    return re.sub(r"^messages:", "input:", text)


def _uncarried(origins: list[str], carried: int, text: bool) -> list[str]:
    """``origins`` of a request whose first ``carried`` input items came from its
    ``previous_response_id``: those are that field's, the client's own are numbered as it
    sent them (``input`` where it sent a string)."""

    def own(m: re.Match[str]) -> str:
        j = int(m.group(1))
        if j < carried:
            return "previous_response_id"
        return "input" if text else f"input[{j - carried}]"

    return [re.sub(r"\binput\[(\d+)\]", own, o) for o in origins]


def as_responses_error(
    e: OpenAIError,
    body: dict[str, Any],
    *,
    wrapped: bool = False,
    carried: int = 0,
    text_input: bool = False,
) -> OpenAIError:
    """``e``, raised by the chat path for ``body`` (a Responses request), in the Responses
    API's terms: ``max_output_tokens`` for ``max_completion_tokens``, ``input[2].content``
    for the chat message it became, and so on (param and message). ``wrapped``: a prompt
    (the deployment's, or one the request picked) was put around the messages, so a
    message's index in the chat request no longer says which item it was: ``input``.
    ``carried``: the first input items of ``body`` came from its previous response (and
    ``text_input``: the client sent its own input as a string). A guardrail's refusal text
    is the operator's, kept as written."""
    origins: list[str] | None = None
    if not wrapped:
        origins = []
        try:
            _messages(body.get("input"), body.get("instructions"), origins)
        except OpenAIError:  # pragma: no cover - read once already
            origins = None
        if origins is not None and carried:
            origins = _uncarried(origins, carried, text_input)
    said = (
        e.message
        if e.code == "content_filter"
        else _responses_terms(e.message, origins, param=False)
    )
    out = OpenAIError(
        e.status,
        said,
        type_=e.type,
        param=_responses_terms(e.param, origins, param=True) if e.param else e.param,
        code=e.code,
        headers=e.headers,
        lmops=e.lmops,
    )
    out.retry_after_s = e.retry_after_s
    return out


def _text_of(output: Any, where: str) -> str:
    parts = _parts(output, where)
    if isinstance(parts, str):
        return parts
    return "".join(p.get("text", "") for p in parts)


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools", "give a list of tools")
    out = []
    for i, t in enumerate(tools):
        kind = t.get("type") if isinstance(t, dict) else None
        if kind != "function":
            raise _bad(
                f"tools[{i}].type",
                f"{kind!r} tools are not served here; give function tools (the gateway runs "
                "no hosted tools)",
                "unsupported_value",
            )
        fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad(
        "tool_choice",
        "give auto, none, required or {type: function, name}",
        "unsupported_value",
    )


def _format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("text.format.type", "give text, json_object or json_schema")


def chat_body(body: Any) -> dict[str, Any]:
    """The chat request a Responses request means (a 400 naming the field it cannot
    serve)."""
    if not isinstance(body, dict):
        raise _bad("body", "give a JSON object")
    if body.get("conversation") is not None:
        raise _bad(
            "conversation",
            "conversations are not served here; continue a response with "
            "previous_response_id, or send the whole conversation in input",
            "unsupported_parameter",
        )
    if body.get("background"):
        raise _bad(
            "background", "this gateway answers in the foreground only", "unsupported_parameter"
        )
    include = body.get("include") or []
    bad = (
        [x for x in include if not isinstance(x, str) or x not in _INCLUDES]
        if isinstance(include, list)
        else include
    )
    if bad:
        raise _bad(
            "include", f"{bad!r} is not served here (only {sorted(_INCLUDES)})", "unsupported_value"
        )
    if "model" not in body:
        raise _bad("model", "give the deployment to answer (the model's name)")
    chat: dict[str, Any] = {
        "model": body["model"],
        "messages": _messages(body.get("input"), body.get("instructions")),
    }
    for k in ("temperature", "top_p"):
        if body.get(k) is not None:
            chat[k] = body[k]
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    fmt = _format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    if include or body.get("top_logprobs") is not None:
        chat["logprobs"] = True
        chat["top_logprobs"] = body.get("top_logprobs") or 0
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    prompt = body.get("prompt")
    if prompt is not None:  # an lmops registered prompt, as OpenAI's stored prompts
        if not isinstance(prompt, dict) or not isinstance(prompt.get("id"), str):
            raise _bad("prompt", "give {id, version, variables}; id names a registered prompt")
        ref = prompt["id"]
        if prompt.get("version") is not None and "@" not in ref and ":" not in ref:
            ref = f"{ref}:{prompt['version']}"
        chat["prompt"] = ref
        if prompt.get("variables"):
            chat["variables"] = prompt["variables"]
    for k in _PASSED:
        if k in body:
            chat[k] = body[k]
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise _bad(
            unknown[0],
            "this field is not part of the Responses API served here",
            "unsupported_parameter",
        )
    return chat


# ============================================================================ reply
def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not usage:
        return None
    i, o = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {
        "input_tokens": i,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": o,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": i + o,
    }


def _status(finish: str | None) -> tuple[str, dict[str, str] | None]:
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _skeleton(rid: str, request: dict[str, Any], created: float) -> dict[str, Any]:
    """The response object's fields that echo the request (as OpenAI's do)."""
    text = request.get("text") if isinstance(request.get("text"), dict) else None
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "model": request.get("model"),
        "output": [],
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": request.get("reasoning"),
        "store": request.get("store") is True,  # what the gateway decided, not the ask
        "temperature": request.get("temperature"),
        "text": text or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": "auto" if request.get("truncation") == "auto" else "disabled",
        "usage": None,
        "metadata": request.get("metadata") or {},
        "user": request.get("user"),
    }


def _logprobs(entries: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [
        {
            "token": e["token"],
            "bytes": e.get("bytes") or [],
            "logprob": e["logprob"],
            "top_logprobs": [
                {"token": t["token"], "bytes": t.get("bytes") or [], "logprob": t["logprob"]}
                for t in e.get("top_logprobs") or []
            ],
        }
        for e in entries or []
    ]


def _message_item(hexid: str, text: str, status: str, logprobs: list[Any]) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{hexid}",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}],
    }


def _call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    fn = call.get("function") or {}
    return {
        "type": "function_call",
        "id": f"fc_{call.get('id', '')}",
        "call_id": call.get("id", ""),
        "name": fn.get("name", ""),
        "arguments": fn.get("arguments", ""),
        "status": status,
    }


def to_response(reply: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """A chat reply as the Responses object."""
    rid = response_id(str(reply.get("id", "")))
    out = _skeleton(rid, request, float(reply.get("created", time.time())))
    choice = (reply.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    status, incomplete = _status(choice.get("finish_reason"))
    items = []
    text = message.get("content")
    calls = message.get("tool_calls") or []
    if text or not calls:
        lp = _logprobs((choice.get("logprobs") or {}).get("content"))
        items.append(_message_item(rid.removeprefix("resp_"), text or "", status, lp))
    items += [_call_item(c) for c in calls]
    out.update(
        status=status, incomplete_details=incomplete, output=items, usage=_usage(reply.get("usage"))
    )
    return out


# ============================================================================ stream
class _Events:
    """The Responses events of one chat event stream (see :func:`to_stream`)."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        self.seq = 0
        self.response: dict[str, Any] | None = None
        self.items: list[dict[str, Any]] = []
        self.text: dict[str, Any] | None = None  # the open message item
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool index -> its open item
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None

    def event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    def start(self, chunk: dict[str, Any]) -> list[str]:
        rid = response_id(str(chunk.get("id", "")))
        self.response = _skeleton(rid, self.request, float(chunk.get("created", time.time())))
        return [
            self.event("response.created", response=dict(self.response)),
            self.event("response.in_progress", response=dict(self.response)),
        ]

    def at(self, item: dict[str, Any]) -> int:
        """``item``'s output index (by identity: two items may be equal)."""
        return next(i for i, x in enumerate(self.items) if x is item)

    def _open_text(self) -> list[str]:
        assert self.response is not None
        hexid = self.response["id"].removeprefix("resp_")
        texts = sum(1 for x in self.items if x["type"] == "message")
        # text after a tool call is a message item of its own, with an id of its own
        item = _message_item(f"{hexid}_{texts}" if texts else hexid, "", "in_progress", [])
        self.text = item
        self.items.append(item)
        at = len(self.items) - 1
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self.event("response.output_item.added", output_index=at, item={**item, "content": []}),
            self.event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=at,
                content_index=0,
                part=part,
            ),
        ]

    def _close_text(self, status: str) -> list[str]:
        item, self.text = self.text, None
        if item is None:
            return []
        at = self.at(item)
        part = item["content"][0]
        item["status"] = status
        return [
            self.event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=at,
                content_index=0,
                text=part["text"],
                logprobs=part["logprobs"],
            ),
            self.event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=at,
                content_index=0,
                part=part,
            ),
            self.event("response.output_item.done", output_index=at, item=item),
        ]

    def chunk(self, chunk: dict[str, Any]) -> list[str]:
        out = self.start(chunk) if self.response is None else []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            entries = _logprobs((choice.get("logprobs") or {}).get("content"))
            if content or entries:
                if self.text is None:
                    out += self._open_text()
                item = self.text
                assert item is not None
                item["content"][0]["text"] += content or ""
                item["content"][0]["logprobs"] += entries
                out.append(
                    self.event(
                        "response.output_text.delta",
                        item_id=item["id"],
                        output_index=self.at(item),
                        content_index=0,
                        delta=content or "",
                        logprobs=entries,
                    )
                )
            for call in delta.get("tool_calls") or []:
                out += self._call(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _call(self, call: dict[str, Any]) -> list[str]:
        out = self._close_text("completed")  # text before a call ends there
        index = int(call.get("index", 0))
        fn = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            item = _call_item(
                {"id": call.get("id", ""), "function": {"name": fn.get("name", "")}}, "in_progress"
            )
            self.calls[index] = item
            self.items.append(item)
            out.append(
                self.event(
                    "response.output_item.added", output_index=len(self.items) - 1, item=dict(item)
                )
            )
        args = fn.get("arguments") or ""
        if args:
            item["arguments"] += args
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self.at(item),
                    delta=args,
                )
            )
        return out

    def end(self) -> list[str]:
        return [*self.close(), *self.last()]

    def close(self) -> list[str]:
        """The events that close the open items; the response gets its final state."""
        if self.response is None:
            return []
        status, incomplete = _status(self.finish)
        out = self._close_text(status)
        for item in self.calls.values():
            at = self.at(item)
            item["status"] = "completed"
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=at,
                    arguments=item["arguments"],
                )
            )
            out.append(self.event("response.output_item.done", output_index=at, item=item))
        self.response.update(
            status=status,
            incomplete_details=incomplete,
            output=self.items,
            usage=_usage(self.usage),
        )
        return out

    def last(self) -> list[str]:
        """The event that ends the stream with the whole response."""
        if self.response is None:
            return []
        done = self.response["status"] == "completed"
        kind = "response.completed" if done else "response.incomplete"
        return [self.event(kind, response=self.response)]

    def failed(self, error: dict[str, Any]) -> list[str]:
        out = [] if self.response is not None else self.start({})
        assert self.response is not None
        message = str(error.get("message", "the reply failed"))
        code = str(error.get("code") or "server_error")
        self.response.update(  # a failed response is not kept
            status="failed", output=self.items, error={"code": code, "message": message}
        )
        self.response["store"] = False
        return [
            *out,
            self.event("error", code=code, message=message, param=None),
            self.event("response.failed", response=self.response),
        ]


async def to_stream(
    chat: AsyncIterator[str],
    request: dict[str, Any],
    on_end: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> AsyncIterator[str]:
    """The Responses events of a chat event stream's body (``data: {...}`` events, ``[DONE]``
    last); closing this closes the chat stream (its request is logged then). ``on_end``
    gets the finished response (``completed`` or ``incomplete``) before the event that
    ends the stream is written, so it may still change it (it is stored there); a stream
    that fails or that the client leaves never reaches it."""
    ev = _Events(request)
    ended = False

    async def end() -> list[str]:
        out = ev.close()
        if on_end is not None and ev.response is not None:
            await on_end(ev.response)
        return [*out, *ev.last()]

    try:
        async for piece in chat:
            out: list[str] = []
            for block in piece.split("\n\n"):
                if not block.startswith("data: "):
                    continue
                data = block[len("data: ") :]
                if data == "[DONE]":
                    out += await end()
                    ended = True
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    out += ev.failed(chunk["error"])
                    ended = True
                else:
                    out += ev.chunk(chunk)
            if isinstance(piece, Final):
                async for _ in chat:  # it ends normally (its request is logged as answered)
                    pass
                yield Final("".join(out))
                return
            if out:
                yield "".join(out)
        if not ended:
            yield Final("".join(await end()))
    finally:
        await chat.aclose()  # type: ignore[attr-defined]
