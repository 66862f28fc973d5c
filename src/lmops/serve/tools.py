"""Tool calling and structured outputs for chat completions: the request's plan, the
prompt, the grammar, and the reply's ``tool_calls``.

    plan = plan_request(req)          # 400s naming the field; None: nothing to do
    compile_plan(plan)                # engine only: the grammar, 400 for what it cannot do
    messages, tools = render(messages, plan, native=template_writes_calls(tokenizer))
    ... generate (the engine masks tokens with plan.grammar) ...
    parsed = parse_reply(text, plan)  # content, tool_calls, whether a call was cut off

The model's tool-call format is the Hermes/Qwen one, which the chat templates that take
``tools`` render and their models write::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A template without ``tools`` support gets the same instructions in a system message
(:func:`render`), assistant tool calls as that text and tool results as
``<tool_response>`` user turns, as Qwen's template renders them. So does a template that
names ``tools`` but does not write a call as this parser reads it (a ``{# tools #}``
comment, Llama 3.1's bare JSON): :func:`template_writes_calls` renders a probe call
through it and looks for the call's text, as training does before it teaches a template.

When the grammar applies (``lmops.models.grammar``):

=====================  ===================================================================
``tool_choice``        the engine's output
=====================  ===================================================================
``required``           constrained from the first token: one call (or several, with
                       ``parallel_tool_calls``), each naming a tool, arguments valid
named function         constrained: exactly one call of that function
``auto``               free until the model writes ``<tool_call>``, then the call is
                       constrained; with ``response_format``: that JSON or calls
``none`` / no tools    ``response_format`` (``json_object``, ``json_schema``) only
=====================  ===================================================================

A call is only reported once it is complete, so a client never gets malformed arguments.
A reply that ``max_tokens`` cut ends with ``finish_reason: "length"``, as OpenAI and vLLM
report it: the complete calls are kept, and the unparsed remainder (an unfinished call's
text) is the message's ``content``, with its logprobs, as vLLM's tool parsers return what
they cannot parse (the engine avoids cutting a further call where it can: with too few
tokens left for one, a list of parallel calls ends, with ``"tool_calls"``). Streams send a
call when its closing tag arrives: its id, type and name first, then its arguments in
pieces. An upstream's streamed calls are collected the same way and sent, guarded, when
its choice ends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from lmops.core.toolrows import schema_problem
from lmops.models.chat import render_tools, template_has_tools, template_writes_calls
from lmops.models.toolformat import CLOSE, OPEN, call_text, read_call
from lmops.models.types import TokenLogprob
from lmops.serve.protocol import ChatRequest, NamedToolChoice, OpenAIError

__all__ = [
    "ParsedReply",
    "ToolPlan",
    "ToolStream",
    "arguments_chars",
    "arguments_text",
    "call_deltas",
    "check_tool_messages",
    "collect_call_deltas",
    "collected_calls",
    "compile_plan",
    "finish_reason",
    "guard_calls",
    "guard_tool_arguments",
    "parse_reply",
    "plan_request",
    "render",
    "shifted",
    "template_has_tools",
    "template_writes_calls",
    "without_spans",
]

# characters of an argument string per streamed piece
ARGUMENT_PIECE = 32


@dataclass
class ToolPlan:
    """What a chat request asks for beyond text. ``tools``: the request's tool objects
    (``{"type": "function", "function": {...}}``, as templates take them); ``grammar``:
    the Lark grammar the engine enforces (None: free text), from :func:`compile_plan`;
    ``trigger``: the text from which on it applies (``auto``); ``next_calls``: see below."""

    mode: Literal["none", "auto", "required", "named"]
    tools: list[dict[str, Any]] = field(default_factory=list)
    named: str | None = None
    parallel: bool = True
    schema: dict[str, Any] | None = None  # response_format's, as a JSON schema
    grammar: str | None = None
    trigger: str | None = None
    # the shortest text one more parallel call could be, per tool (arguments ``{}``): where
    # fewer tokens than the fewest of them take are left after a call, the engine ends the
    # list there (per tool: tokens do not follow characters)
    next_calls: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    @property
    def parses_calls(self) -> bool:
        """Whether the reply's text may hold tool calls to parse."""
        return bool(self.tools) and self.mode != "none"


def _bad(message: str, param: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, f"{param}: {message}", param=param, code=code)


def _check_schema(schema: Any, param: str) -> None:
    """A 400 naming ``param`` unless ``schema`` is a valid JSON schema (draft 2020-12) whose
    local ``$ref``s resolve (:func:`~lmops.core.toolrows.schema_problem`, which training
    rows are checked with too)."""
    if not isinstance(schema, dict):
        raise _bad("a JSON schema must be an object", param, "invalid_json_schema")
    problem = schema_problem(schema)
    if problem is not None:
        raise _bad(problem, param, "invalid_json_schema")


def check_tool_messages(req: ChatRequest) -> None:
    """A 400 naming ``messages[i]`` for a ``tool`` message without a ``tool_call_id``, or
    whose id no earlier assistant message's ``tool_calls`` has, as OpenAI refuses it (a
    result the model never asked for)."""
    called: set[str] = set()
    for i, m in enumerate(req.messages):
        if m.role == "assistant":
            calls = getattr(m, "tool_calls", None)
            for c in calls if isinstance(calls, list) else []:
                if isinstance(c, dict) and isinstance(c.get("id"), str):
                    called.add(c["id"])
        elif m.role == "tool":
            if m.tool_call_id is None:
                raise _bad(
                    "a tool message needs the tool_call_id of the call it answers",
                    f"messages[{i}].tool_call_id",
                )
            if m.tool_call_id not in called:
                raise _bad(
                    f"a tool message must answer a call of an earlier assistant message's "
                    f"tool_calls; none has the id {m.tool_call_id!r}",
                    f"messages[{i}].tool_call_id",
                )


def plan_request(req: ChatRequest) -> ToolPlan | None:
    """The plan of ``req`` (None when it asks for plain text), or a 400 naming the field:
    ``tool_choice`` without ``tools``, a named tool that is not among them, duplicate tool
    names, an invalid JSON schema (a tool's ``parameters``, ``response_format``'s), a
    ``tool`` message that answers no call (:func:`check_tool_messages`)."""
    check_tool_messages(req)
    choice = req.tool_choice
    if choice is not None and not req.tools:
        raise _bad("tool_choice is only allowed when tools are specified", "tool_choice")
    tools: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, t in enumerate(req.tools or []):
        fn = t.function
        if fn.name in seen:
            raise _bad(f"the function name {fn.name!r} is used twice", f"tools[{i}].function.name")
        seen.add(fn.name)
        if fn.parameters is not None:
            _check_schema(fn.parameters, f"tools[{i}].function.parameters")
        tools.append({"type": "function", "function": fn.model_dump(exclude_none=True)})
    schema = None
    rf = req.response_format
    if rf is not None and rf.type == "json_object":
        schema = {"type": "object"}
    elif rf is not None and rf.type == "json_schema":
        if rf.json_schema is None:
            raise _bad("json_schema is required with type json_schema", "response_format")
        if rf.json_schema.json_schema is None:
            raise _bad("a schema is required", "response_format.json_schema.schema")
        schema = rf.json_schema.json_schema
        _check_schema(schema, "response_format.json_schema.schema")
    named = None
    if isinstance(choice, NamedToolChoice):
        named = choice.function.name
        if named not in seen:
            raise _bad(
                f"no tool named {named!r} in tools (has: {', '.join(sorted(seen))})",
                "tool_choice",
            )
        mode: Literal["none", "auto", "required", "named"] = "named"
    else:
        mode = choice or ("auto" if tools else "none")
    if not tools and schema is None:
        return None
    return ToolPlan(
        mode=mode,
        tools=tools,
        named=named,
        parallel=req.parallel_tool_calls is not False,
        schema=schema,
    )


# -- the grammar ------------------------------------------------------------------------------------
def _lark(s: str) -> str:
    """``s`` as a Lark string literal."""
    return json.dumps(s)


def compile_plan(plan: ToolPlan) -> None:
    """Set ``plan.grammar`` (and ``plan.trigger``) for the engine; a 400 naming the field
    whose schema uses what the grammar engine does not support."""
    from lmops.models.grammar import call_schema, grammar_error, json_rule, tool_grammar_error

    parts: list[tuple[str, str]] = []  # (param, rule)
    tools = [t for t in plan.tools if plan.mode != "named" or t["function"]["name"] == plan.named]
    if plan.mode != "none":
        for t in tools:
            i = plan.names.index(t["function"]["name"])
            parts.append((f"tools[{i}].function.parameters", json_rule(call_schema(t))))
            err = tool_grammar_error(t)  # checked one by one, to name the tool
            if err:
                raise _bad(f"unsupported JSON schema: {err}", parts[-1][0], "unsupported_schema")
    content = None
    if plan.schema is not None:
        content = json_rule(plan.schema)
        err = grammar_error(f"start: {content}")
        if err:
            raise _bad(
                f"unsupported JSON schema: {err}",
                "response_format.json_schema.schema",
                "unsupported_schema",
            )
    body = " | ".join(rule for _, rule in parts)
    call = f"{_lark(OPEN + chr(10))} ({body}) {_lark(chr(10) + CLOSE)}"
    more = f" ({_lark(chr(10))} call)*" if plan.parallel and plan.mode != "named" else ""
    if plan.mode in ("required", "named"):
        plan.grammar = f"start: call{more}\ncall: {call}\n"
    elif plan.mode == "auto" and content is not None:
        plan.grammar = (
            f"start: content | calls\ncontent: {content}\ncalls: call{more}\ncall: {call}\n"
        )
    elif plan.mode == "auto":
        # constrained from the trigger on: the rest of the first call, then more calls
        first = f"{_lark(chr(10))} ({body}) {_lark(chr(10) + CLOSE)}"
        plan.grammar = f"start: first{more}\nfirst: {first}\ncall: {call}\n"
        plan.trigger = OPEN
    elif content is not None:
        plan.grammar = f"start: {content}\n"
    if more and content is None and plan.mode in ("required", "auto"):
        # the grammar can only end between calls there (a content schema could end inside
        # a number, which must not be cut short)
        plan.next_calls = tuple("\n" + call_text(t["function"]["name"], {}) for t in tools)


# -- the prompt -------------------------------------------------------------------------------------
def render(
    messages: list[dict[str, Any]], plan: ToolPlan | None, *, native: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages (and ``tools``) of a request to hand the chat template: the plan's
    tools through :func:`lmops.models.chat.render_tools`, the rendering training shares."""
    tools = plan.tools if plan is not None and plan.tools else None
    return render_tools(messages, tools, native=native)


def arguments_text(fn: Any) -> str | None:
    """The ``arguments`` of a call's ``function`` as the JSON string OpenAI sends; a JSON
    value sent instead (an object: some clients and upstreams do) is serialised, so that
    the guardrails read it too. ``None`` where there are none."""
    args = fn.get("arguments") if isinstance(fn, dict) else None
    if args is None or isinstance(args, str):
        return args
    return json.dumps(args, ensure_ascii=False)


def guard_tool_arguments(check: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with the arguments of earlier assistant tool calls passed through the
    input guardrails (``check``: ``ctx.check_input``) like any message text (arguments
    sent as a JSON value go on as the checked JSON string)."""
    where = [
        (i, j, text)
        for i, m in enumerate(messages)
        if m.get("role") == "assistant" and isinstance(m.get("tool_calls"), list)
        for j, c in enumerate(m["tool_calls"])
        if isinstance(c, dict) and (text := arguments_text(c.get("function"))) is not None
    ]
    if not where:
        return messages
    checked = check([{"role": "assistant", "content": text} for _, _, text in where])
    out = [dict(m) for m in messages]
    for (i, j, _), m in zip(where, checked, strict=True):
        calls = out[i]["tool_calls"] = [dict(c) for c in out[i]["tool_calls"]]
        calls[j]["function"] = {**calls[j]["function"], "arguments": m["content"]}
    return out


# -- the reply --------------------------------------------------------------------------------------
@dataclass
class ParsedReply:
    """A reply's text split into ``content`` (None when empty beside calls) and complete
    ``calls`` (OpenAI ``tool_calls`` entries); ``cut``: a call was begun and not finished
    (its text is at the end of ``content``); ``hidden``: the (start, end) character spans
    of the reply that are not content (see :attr:`ToolStream.hidden`)."""

    content: str | None
    calls: list[dict[str, Any]]
    cut: bool = False
    hidden: list[tuple[int, int]] = field(default_factory=list)


def _tool_call(block: str, names: list[str]) -> dict[str, Any] | None:
    """The OpenAI ``tool_calls`` entry of one ``<tool_call>`` block's JSON, or None."""
    call = read_call(block)
    if call is None or call[0] not in names:
        return None
    return {
        "id": "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": call[0], "arguments": json.dumps(call[1], ensure_ascii=False)},
    }


def parse_reply(text: str, plan: ToolPlan, reason: str = "stop") -> ParsedReply:
    """Split a whole reply that ended with ``reason`` (see :class:`ParsedReply`)."""
    stream = ToolStream(plan)
    content, calls = stream.feed(text)
    tail, more = stream.finish(reason)
    calls += more
    content += tail
    return ParsedReply(
        content if content or not calls else None, calls, stream.cut, stream.take_hidden()
    )


def _held(text: str) -> int:
    """Characters at the end of ``text`` that could begin ``<tool_call>``."""
    for k in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-k:]):
            return k
    return 0


class ToolStream:
    """Splits a reply as it arrives: ``feed(text) -> (content, complete calls)``, then
    ``finish()``. Content is passed on except a tail that could begin ``<tool_call>``;
    from the first call on, text is kept until each call's closing tag.

    ``hidden`` lists the spans of the reply that went out as calls (a call's text and
    what lies between calls), each as (start, end) characters once the spans before it
    are taken out, so that taking them out in order leaves the content: a layer that
    follows the reply's text (logprobs) takes them with :meth:`take_hidden`."""

    def __init__(self, plan: ToolPlan) -> None:
        self.names = plan.names
        self.buf = ""
        self.in_calls = False
        self.cut = False
        self.hidden: list[tuple[int, int]] = []
        self._kept = 0  # characters fed and not hidden (``buf`` is their end)

    def take_hidden(self) -> list[tuple[int, int]]:
        spans, self.hidden = self.hidden, []
        return spans

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        self.buf += text
        self._kept += len(text)
        content = ""
        if not self.in_calls:
            at = self.buf.find(OPEN)
            if at == -1:
                keep = _held(self.buf)
                content, self.buf = (
                    self.buf[: len(self.buf) - keep],
                    self.buf[len(self.buf) - keep :],
                )
                return content, []
            content, self.buf, self.in_calls = self.buf[:at], self.buf[at:], True
        calls = []
        while True:
            start = self.buf.find(OPEN)
            end = self.buf.find(CLOSE, start + 1) if start != -1 else -1
            if end == -1:
                break
            call = _tool_call(self.buf[start + len(OPEN) : end].strip(), self.names)
            if call is not None:
                calls.append(call)
            # the call and the text before it (between calls) are not content
            width = end + len(CLOSE)
            at = self._kept - len(self.buf)
            self.hidden.append((at, at + width))
            self._kept -= width
            self.buf = self.buf[width:]
        return content, calls

    def finish(self, reason: str = "stop") -> tuple[str, list[dict[str, Any]]]:
        """What is left once the reply ended with ``reason``, as content: held-back text,
        or the text after the last complete call: a call it cut (``cut``; also one cut
        inside its opening tag), which is not a call to report, or text the model wrote
        after its calls."""
        tail, self.buf = self.buf, ""
        if self.in_calls:  # the space after the last call is not content either
            lead = len(tail) - len(tail.lstrip())
            at = self._kept - len(tail)
            if lead:
                self.hidden.append((at, at + lead))
                self._kept -= lead
            tail = tail[lead:]
            self.cut = OPEN in tail or (bool(tail) and reason == "length")
        elif tail and reason == "length":  # the tail is a prefix of the opening tag
            self.cut = True
        return tail, []


def without_spans(
    text: str, entries: list[TokenLogprob], spans: list[tuple[int, int]]
) -> tuple[str, list[TokenLogprob]]:
    """``text`` without the ``spans`` (each (start, end) counted after the ones before it
    are out, as :attr:`ToolStream.hidden` gives them), and its tokens' logprob ``entries``
    without those inside a span, the later ones' offsets moved back to match."""
    for start, end in spans:
        width = end - start
        text = text[:start] + text[end:]

        def moved(at: int, start: int = start, width: int = width) -> int:
            return at if at <= start else max(start, at - width)

        entries = [
            replace(e, text_offset=moved(e.text_offset), text_end=moved(e.text_end))
            for e in entries
            if not (start <= e.text_offset and e.text_end <= end)
        ]
    return text, entries


def shifted(entries: list[TokenLogprob], by: int) -> list[TokenLogprob]:
    """``entries`` with their offsets moved back ``by`` characters (the text of calls
    :func:`without_spans` took out before them)."""
    return [replace(e, text_offset=e.text_offset - by, text_end=e.text_end - by) for e in entries]


def call_deltas(index: int, call: dict[str, Any]) -> list[dict[str, Any]]:
    """The streamed ``delta`` fields of one complete call: id, type and name (with empty
    arguments) first, then the arguments in pieces."""
    fn = call["function"]
    out: list[dict[str, Any]] = [
        {
            "tool_calls": [
                {
                    "index": index,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": fn["name"], "arguments": ""},
                }
            ]
        }
    ]
    args = fn["arguments"]
    for k in range(0, len(args), ARGUMENT_PIECE):
        piece = args[k : k + ARGUMENT_PIECE]
        out.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    return out


def collect_call_deltas(acc: dict[int, dict[str, Any]], pieces: Any) -> None:
    """Add an upstream's streamed ``delta.tool_calls`` pieces to ``acc`` (call index ->
    the call so far: id, type, name, arguments concatenated)."""
    for piece in pieces if isinstance(pieces, list) else []:
        if not isinstance(piece, dict):
            continue
        k = piece.get("index", 0)
        call = acc.setdefault(k if isinstance(k, int) else 0, {"type": "function"})
        for key in ("id", "type"):
            if isinstance(piece.get(key), str):
                call[key] = piece[key]
        got = piece.get("function")
        fn: dict[str, Any] = got if isinstance(got, dict) else {}
        f = call.setdefault("function", {"name": "", "arguments": ""})
        if isinstance(fn.get("name"), str):
            f["name"] += fn["name"]
        if isinstance(fn.get("arguments"), str):
            f["arguments"] += fn["arguments"]


def collected_calls(acc: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls :func:`collect_call_deltas` assembled, in index order (ids kept)."""
    return [
        {"id": c.get("id") or "call_" + uuid.uuid4().hex[:24], **c} for _, c in sorted(acc.items())
    ]


def finish_reason(reason: str, calls: list[dict[str, Any]]) -> str:
    """``tool_calls`` for a reply with calls that ended normally; any other reason stays:
    a reply that ``max_tokens`` cut is ``length`` whatever calls it completed first, as
    OpenAI and vLLM report it."""
    if calls and reason == "stop":
        return "tool_calls"
    return reason


def arguments_chars(calls: Any) -> int:
    """Characters of the ``arguments`` of ``calls`` (OpenAI ``tool_calls`` entries, see
    :func:`arguments_text`; anything else counts 0)."""
    if not isinstance(calls, list):
        return 0
    return sum(
        len(text)
        for c in calls
        if isinstance(c, dict) and (text := arguments_text(c.get("function"))) is not None
    )


async def guard_calls(
    check: Callable[[str], Awaitable[tuple[str, bool]]], calls: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], bool]:
    """``calls`` with their arguments through the output guardrails (``check``: an async
    ``ctx.check_output``, one call's arguments at a time, so that each check may move to a
    worker thread on its own), and whether one was blocked (then no call goes out).
    Arguments sent as a JSON value go on as the checked JSON string."""
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        args = arguments_text(fn)
        if not isinstance(fn, dict) or args is None:
            out.append(call)
            continue
        text, blocked = await check(args)
        if blocked:
            return [], True
        out.append({**call, "function": {**fn, "arguments": text}})
    return out, False
