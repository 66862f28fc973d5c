"""A chat as the model reads it: messages and tools through the chat template, the one
rendering that training (``train/data.py``, ``train/preference.py``) and the gateway
(``serve/backends.encode_messages``) share, so that what a model learns to write after a
conversation is what the gateway's tool-call parser reads after the same conversation.

    messages, tools = render_tools(messages, tools, native=template_writes_calls(tokenizer))
    text = tokenizer.apply_chat_template(messages, tools=tools, ...)   # chat_text() does both

A template that renders ``tools`` itself and writes calls as the gateway reads them
(Qwen2.5's, :data:`CHATML_TOOLS`; :func:`template_writes_calls` probes it) gets
the messages as OpenAI writes them, with each call's ``arguments`` as a JSON value (templates
serialise them); one that does not gets the Hermes text of :mod:`lmops.models.toolformat`:
the tools in a system message, calls as ``<tool_call>`` text, results as ``<tool_response>``
user turns (what the gateway does for such a model; training refuses it instead, since a
model is better taught a template that says what it is).

:data:`CHATML_TOOLS` (``chat_template: chatml-tools`` in a training job) is ChatML that
renders tools: exactly ChatML of the Hermes text above, so a chat without tools renders as
plain ChatML does, and with tools as Qwen2.5's template does (less its default system line).

Token ids come from :class:`Literals`, also shared: every caller-written string that holds
one of the tokenizer's special-token strings (``<|im_end|>\n<|im_start|>system``) is
rendered with a mark in its place, and its text is encoded with
``split_special_tokens=True``, so those characters are ordinary text and never a forged
turn: a message's text, and also a tool call's name and ``arguments``, a message's other
fields (a tool result's ``name``) and the ``tools`` (names, descriptions, parameter
schemas, keys included), where the template writes them as they are or as JSON
(``tojson``). The engine's prompt ids
(``Engine.encode_chat``) and every training stage's ids (SFT, DPO/KTO/ORPO, reward, PPO)
are made by it::

    lit = Literals(tokenizer)
    marked = lit.chat(messages, tools, add_generation_prompt=True)   # chat_text(), marked
    ids = lit.encode(marked).ids
"""

from __future__ import annotations

import json
import re
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lmops.core.errors import UserError
from lmops.models.loading import CHATML
from lmops.models.tokens import control_pattern, text_of
from lmops.models.toolformat import call_text, system_prompt

__all__ = [
    "CHATML_TOOLS",
    "NAMED_TEMPLATES",
    "ChatTokens",
    "ControlTokenError",
    "Literals",
    "arguments_object",
    "caller_strings",
    "chat_text",
    "json_strings",
    "render_tools",
    "template_has_tools",
    "template_writes_calls",
]


def _jinja(text: str) -> str:
    """``text`` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


_HEAD, _TAIL = system_prompt([{"\0": 0}]).split(json.dumps({"\0": 0}))
# ChatML around the Hermes tool text; each piece is what serve/tools' text fallback writes
# (render_tools(native=False)), so that ChatML of that fallback and this template agree: a
# leading system or developer message takes the tool text (under its own role, as there).
CHATML_TOOLS = (
    "{%- set lead = messages and messages[0]['role'] in ['system', 'developer'] -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>' + (messages[0]['role'] if lead else 'system') + '\\n' -}}"
    "{%- if lead -%}{{- messages[0]['content'] + '\\n\\n' -}}{%- endif -%}"
    "{{- " + _jinja(_HEAD) + " -}}"
    "{%- for tool in tools -%}{{- tool | tojson -}}{%- if not loop.last -%}{{- '\\n' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{{- " + _jinja(_TAIL) + " + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and tools and lead -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or loop.previtem['role'] != 'tool' -%}{{- '<|im_start|>user\\n' -}}"
    "{%- else -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_response>\\n' + message['content'] + '\\n</tool_response>' -}}"
    "{%- if loop.last or loop.nextitem['role'] != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if message['content'] -%}{{- message['content'] + '\\n' -}}{%- endif -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{{- '<tool_call>\\n{\"name\": ' + (fn['name'] | tojson) + ', \"arguments\": ' "
    "+ (fn['arguments'] | tojson) + '}\\n</tool_call>' -}}"
    "{%- if not loop.last -%}{{- '\\n' -}}{%- endif -%}{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
# The templates a training job may name (``chat_template: chatml``) instead of giving the text.
NAMED_TEMPLATES: dict[str, str] = {"chatml": CHATML, "chatml-tools": CHATML_TOOLS}


def template_has_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools`` list itself."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tools" in template


# A call and its result, rendered through a template to see that it writes them as the
# gateway reads them (template_writes_calls)
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "lmops_probe",
        "description": "A probe.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
_PROBE_ARGS = {"city": "Probeville"}
_PROBE_RESULT = "lmops probe result 4711"
_PROBE_CHAT: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Probeville?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "lmops_probe", "arguments": json.dumps(_PROBE_ARGS)},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "name": "lmops_probe", "content": _PROBE_RESULT},
]
_probed: dict[str, bool] = {}  # template text -> whether it writes calls as the gateway reads


def template_writes_calls(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders tools itself and writes a call as the
    gateway's parser reads it (:func:`lmops.models.toolformat.call_text`) and its result:
    a probe conversation is rendered and the call's text looked for, since a template can
    name ``tools`` and still drop calls (a ``{# tools #}`` comment) or write them in
    another format (Llama 3.1's JSON without ``<tool_call>``)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template_has_tools(tokenizer):
        return False
    if template not in _probed:
        messages, tools = render_tools(_PROBE_CHAT, [_PROBE_TOOL], native=True)
        try:
            text = str(
                tokenizer.apply_chat_template(
                    messages, tools=tools, tokenize=False, add_generation_prompt=True
                )
            )
        except Exception:  # a template that raises on tool turns renders none
            text = ""
        call = call_text("lmops_probe", _PROBE_ARGS)
        _probed[template] = call in text and _PROBE_RESULT in text
    return _probed[template]


def arguments_object(arguments: Any) -> Any:
    """A call's arguments as a value (they travel as a JSON string)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _call_text(call: Mapping[str, Any]) -> str:
    fn = call.get("function") or {}
    return call_text(str(fn.get("name")), arguments_object(fn.get("arguments")))


def render_tools(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *, native: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages (and ``tools``, OpenAI tool objects) to hand the chat template.
    ``native``: the template renders tools, assistant ``tool_calls`` and ``tool`` messages
    itself (arguments are handed over as objects, which templates serialise); otherwise
    the Hermes text, and no ``tools``."""
    tools = tools or None
    if native:
        out = []
        for m in messages:
            if m.get("role") == "assistant" and m.get("tool_calls"):
                calls = [
                    {
                        **c,
                        "function": {
                            **(c.get("function") or {}),
                            "arguments": arguments_object(
                                (c.get("function") or {}).get("arguments")
                            ),
                        },
                    }
                    for c in m["tool_calls"]
                ]
                m = {**m, "tool_calls": calls, "content": m.get("content") or ""}
            out.append(m)
        return out, tools
    out = []
    for m in messages:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            text = "\n".join(_call_text(c) for c in m["tool_calls"])
            content = _plain(m.get("content"))
            out.append({"role": "assistant", "content": f"{content}\n{text}" if content else text})
        elif role == "tool":
            piece = f"<tool_response>\n{_plain(m.get('content'))}\n</tool_response>"
            if out and out[-1].get("role") == "user" and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + piece  # consecutive results: one turn
            else:
                out.append({"role": "user", "content": piece, "_tool": True})
        else:
            out.append({k: v for k, v in m.items() if k != "tool_calls"})
    out = [{k: v for k, v in m.items() if k != "_tool"} for m in out]
    if tools:
        system = system_prompt(tools)
        if out and out[0].get("role") in ("system", "developer"):
            out[0] = {**out[0], "content": f"{_plain(out[0].get('content'))}\n\n{system}"}
        else:
            out.insert(0, {"role": "system", "content": system})
    return out, None


_Chat = tuple[list[dict[str, Any]], list[dict[str, Any]] | None]


def chat_text(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = False,
    mark: Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], _Chat] | None = None,
) -> str:
    """The text of a chat (and its ``tools``) through the tokenizer's chat template, as the
    gateway renders it for a model whose template is its own (:func:`render_tools`);
    ``mark``: applied to the template-ready messages and tools (:meth:`Literals.mark_chat`)."""
    rendered, listed = render_tools(messages, tools, native=template_writes_calls(tokenizer))
    if mark is not None:
        rendered, listed = mark(rendered, listed)
    return str(
        tokenizer.apply_chat_template(
            rendered,
            tools=listed,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    )


def _key(k: Any) -> str:
    """A key as a path names it: ``.name``, else its repr, cut to 20 characters (a key that
    forges a turn is not repeated whole in the error naming it)."""
    if isinstance(k, str) and k.isidentifier():
        return f".{k}"
    shown = k[:20] + "…" if isinstance(k, str) and len(k) > 20 else k
    return f"[{shown!r}]"


def json_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON value (keys too) with the path of the value it is or names."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            at = path + _key(k)
            if isinstance(k, str):
                yield at, k
            yield from json_strings(v, at)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from json_strings(v, f"{path}[{i}]")


def _collect(value: Any, into: list[str]) -> None:
    """Every string of a JSON value (keys too) appended to ``into``: :func:`json_strings`
    without the paths, for a search that runs on every chat."""
    if isinstance(value, str):
        into.append(value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str):
                into.append(k)
            _collect(v, into)
    elif isinstance(value, list | tuple):
        for v in value:
            _collect(v, into)


def caller_strings(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> Iterator[tuple[str, str]]:
    """Every string a caller wrote that a chat template may write into the prompt, with
    its place in an OpenAI request (``messages[2].tool_calls[0].function.arguments``,
    ``tools[0].function.description``): each message's text (content parts joined) and
    every string of its other fields but ``role`` (a call's name and arguments, a tool
    result's name), and every string of ``tools``. What ``control_tokens: refuse`` reads."""
    for i, m in enumerate(messages):
        for key, value in m.items():
            if key == "content":
                yield f"messages[{i}].content", text_of(value)
            elif key != "role":
                at = f"messages[{i}]{_key(key)}"
                yield at, key
                yield from json_strings(value, at)
        # arguments sent as JSON text are rendered as the value they decode to (an object,
        # or a string: the JSON text of one), whose strings may hold what the text escapes
        # ("\u003c|im_start|>"); an upstream vLLM decodes them before templating too
        for j, c in enumerate(m.get("tool_calls") or []):
            fn = c.get("function") if isinstance(c, Mapping) else None
            args = fn.get("arguments") if isinstance(fn, Mapping) else None
            if isinstance(args, str) and (value := arguments_object(args)) != args:
                yield from json_strings(value, f"messages[{i}].tool_calls[{j}].function.arguments")
    yield from json_strings(tools or [], "tools")


@dataclass(frozen=True, slots=True)
class ChatTokens:
    """A rendered chat's text (messages' text as written) and its token ids; ``starts``:
    where each token begins in ``text`` (characters), when asked for."""

    text: str
    ids: list[int]
    starts: list[int] | None = None


_UNSET: Any = object()
# each tokenizer's special-token pattern while its vocabulary keeps its size (reading the
# special tokens and compiling the pattern take about 1 ms with 250 of them: once per
# tokenizer, not once per row; adding a token, as a pad token is added, changes the size)
_CONTROL: weakref.WeakKeyDictionary[Any, tuple[int, Any]] = weakref.WeakKeyDictionary()


def _control_of(tokenizer: Any) -> Any:
    """:func:`control_pattern` of ``tokenizer``, compiled again when tokens are added."""
    try:
        key = len(tokenizer)
        kept = _CONTROL.get(tokenizer)
    except TypeError:  # a tokenizer that cannot be weakly referred to
        return control_pattern(tokenizer)
    if kept is None or kept[0] != key:
        kept = (key, control_pattern(tokenizer))
        _CONTROL[tokenizer] = kept
    return kept[1]


class Literals:
    """The caller-written strings of a chat that hold the tokenizer's special-token strings
    (:func:`caller_strings`: message text, tool calls, tools), each rendered as a mark
    (private-use characters around a salt unique to this object, so no text can forge one)
    and encoded as ordinary text.

    A mark holds a ``"``, so that where a template writes it as JSON (``tojson``: a call's
    arguments, a tool's schema) it reads differently from where it writes it as it is: the
    escaped form stands for the string's own JSON escaping, and each is encoded as the
    template would have written the string.

    A template that writes a string in some other form (its Python repr, its JSON text
    JSON-escaped again) writes a mark this object does not know: that mark shows in the
    prompt as text (private-use characters and the salt, in the caller's string's place),
    never as a control token.

    One object serves several renderings of one chat (a conversation and its prefixes):
    the same text gets the same mark. Only strings holding such a string are marked: a
    mark in an empty content (a tool-call turn's) would make a template render it as text.
    Without any, :meth:`encode` is one tokenizer call on the whole text, as a plain
    ``tokenizer(text)``.
    """

    def __init__(self, tokenizer: Any, control: Any = _UNSET) -> None:
        """``control``: a compiled pattern of the special tokens (the engine keeps one), or
        None for none; by default read from ``tokenizer`` (once per tokenizer)."""
        self.tokenizer = tokenizer
        self._control = _control_of(tokenizer) if control is _UNSET else control
        self._salt = uuid.uuid4().hex
        self.texts: dict[str, str] = {}  # a mark as rendered -> the text it stands for there
        self._marks: dict[str, str] = {}  # text -> mark
        self._pattern: Any = None  # the marks of self.texts, longest first (None: stale)

    def holds(self, content: Any) -> bool:
        """Whether a message content's text (or a string) holds a special-token string."""
        text = text_of(content)
        return bool(text) and self._control is not None and self._control.search(text) is not None

    def _mark(self, text: str) -> str:
        if text not in self._marks:
            mark = f'\ue000lmops{self._salt}.{len(self._marks)}"\ue001'
            self._marks[text] = mark
            self.texts[mark] = text
            # as json.dumps writes it (tojson's default, and with ensure_ascii)
            for ascii_ in (False, True):
                self.texts[json.dumps(mark, ensure_ascii=ascii_)[1:-1]] = json.dumps(
                    text, ensure_ascii=ascii_
                )[1:-1]
            self._pattern = None
        return self._marks[text]

    def _value(self, value: Any) -> Any:
        """A JSON value with each string (key or value) that holds a special-token string
        swapped for its mark; ``value`` itself where none does."""
        if isinstance(value, str):  # (the search inline: this runs on every string)
            return self._mark(value) if value and self._control.search(value) else value
        if isinstance(value, Mapping):
            items = [(self._value(k), self._value(v)) for k, v in value.items()]
            if all(a is k and b is v for (a, b), (k, v) in zip(items, value.items(), strict=True)):
                return value
            return dict(items)
        if isinstance(value, list):
            out = [self._value(v) for v in value]
            return value if all(a is b for a, b in zip(out, value, strict=True)) else out
        return value

    def _forged(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> bool:
        """Whether any string :meth:`mark_chat` would look at holds a special-token string:
        one search over them all, joined by a character no special token holds (so no
        match spans two), instead of one per string: the path of nearly every chat."""
        if self._control is None:
            return False
        found: list[str] = []
        for m in messages:
            for key, value in m.items():
                if key == "content":
                    found.append(text_of(value))
                elif key != "role":
                    found.append(key)
                    _collect(value, found)
        if tools:
            _collect(tools, found)
        return self._control.search("\x00".join(found)) is not None

    def mark(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` (template-ready: :func:`render_tools`'s) with each content that
        holds a special-token string swapped for its mark, and each such string of its
        other fields but ``role`` (a call's name and arguments, a tool result's name)."""
        return self._marked(messages) if self._forged(messages) else messages

    def _marked(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for m in messages:
            if self.holds(m.get("content")):
                m = {**m, "content": self._mark(text_of(m.get("content")))}
            rest = {k: v for k, v in m.items() if k not in ("role", "content")}
            if rest and (marked := self._value(rest)) is not rest:
                # the message's keys in their order, each marked one in its raw one's place
                swapped = iter(marked.items())
                m = dict(kv if kv[0] in ("role", "content") else next(swapped) for kv in m.items())
            out.append(m)
        return out

    def mark_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """:meth:`mark` of the messages, and the ``tools`` with each string holding a
        special-token string (a name, a description, a schema's key or value) marked."""
        if not self._forged(messages, tools):
            return messages, tools
        return self._marked(messages), self._value(tools) if tools else tools

    def template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = False,
    ) -> str:
        """The chat template's text of template-ready messages (:func:`render_tools`'s),
        marked."""
        messages, tools = self.mark_chat(messages, tools)
        return str(
            self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        )

    def chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = False,
    ) -> str:
        """:func:`chat_text` of a chat in OpenAI's form, marked."""
        return chat_text(
            self.tokenizer,
            messages,
            tools,
            add_generation_prompt=add_generation_prompt,
            mark=self.mark_chat,
        )

    def _marks_pattern(self) -> Any:
        if self._pattern is None:
            forms = sorted(self.texts, key=len, reverse=True)
            self._pattern = re.compile("(" + ("|".join(map(re.escape, forms)) or "(?!)") + ")")
        return self._pattern

    def _split(self, marked: str) -> list[str]:
        if not self.texts:
            return [marked]
        return self._marks_pattern().split(marked)

    def encode(self, marked: str, *, offsets: bool = False) -> ChatTokens:
        """The ids of a marked text: the template's text with the tokenizer's special
        tokens, each mark's message text with them split (ordinary text). ``offsets``:
        also where each token starts in the text (a fast tokenizer's offsets)."""
        tok = self.tokenizer
        text, ids, starts = "", [], []
        for piece in self._split(marked):
            if not piece:
                continue
            literal = piece in self.texts
            piece = self.texts.get(piece, piece)
            kw: dict[str, Any] = {"split_special_tokens": True} if literal else {}
            enc = tok(piece, add_special_tokens=False, return_offsets_mapping=offsets, **kw)
            ids += enc["input_ids"]
            if offsets:
                starts += [len(text) + a for a, _b in enc["offset_mapping"]]
            text += piece
        return ChatTokens(text, list(ids), starts if offsets else None)

    def position(self, marked: str, at: int) -> int:
        """Where character ``at`` of a marked text is in its text as written (a position
        inside a mark: where that message's text begins)."""
        shift = 0
        for found in self._marks_pattern().finditer(marked):
            if found.start() >= at:
                break
            if at < found.end():
                return found.start() + shift
            shift += len(self.texts[found.group()]) - len(found.group())
        return at + shift

    def boundary(self, marked: str, at: int) -> int:
        """``at``, or the start of the mark it falls inside (a text cut there keeps whole
        marks)."""
        for found in self._marks_pattern().finditer(marked):
            if found.start() < at < found.end():
                return found.start()
        return at

    def plain(self, marked: str) -> str:
        """A marked text as written."""
        return "".join(self.texts.get(p, p) for p in self._split(marked))


class ControlTokenError(UserError):
    """A caller-written string of a chat (a message's text, a tool call, a tool's
    definition: :func:`lmops.models.chat.caller_strings`) holds the tokenizer's special
    tokens and the deployment refuses them (``control_tokens: refuse``); ``param``: its
    place in the request (``messages[1].content``, ``tools[0].function.description``)."""

    def __init__(self, param: str) -> None:
        super().__init__(
            f"{param}: contains the model's control tokens (such as <|im_start|>); this "
            "deployment refuses them in message text, tool calls and tools"
        )
        self.param = param
