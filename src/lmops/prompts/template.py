"""Prompt templates: ``{{var}}`` variables in a text or a list of chat messages.

The syntax is the one MLflow's and Langfuse's prompt registries share: ``{{ name }}`` is
replaced by the variable ``name`` (letters, digits, ``_``; spaces inside the braces are
allowed), and there is no logic. A template is parsed once into literal and variable parts
(:class:`Template`), so rendering is a join over a few strings (microseconds: the gateway
renders one per request). Jinja was not chosen: it would accept loops and filters that
other registries cannot read, and would need sandboxing before it rendered user templates
inside the gateway.

The one other form is Jinja's own escape, a quoted string: ``{{ '{{' }}`` is the text
``{{`` (single or double quotes; the escapes ``\\ \' \" \n \r \t`` inside). A text prompt
is also an eval task's ``doc_to_text``, which is Jinja, where ``{%`` and ``{#`` open tags
too: :func:`literal` writes any text as template source that both render as that text (how
the optimiser writes demo rows into a prompt).

Contract of :meth:`PromptSpec.render`: every variable of the template must be given and no
other may be; either way it is a ``UserError`` naming them. Values are inserted verbatim
(a value holding ``{{x}}`` is not rendered again). A template that does not parse (``{{``
without ``}}``, ``{{ 1bad }}``) is a ``UserError`` with line and column.

This module imports only ``lmops.core``: the gateway (``serve``) renders through it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from lmops.core.errors import UserError

__all__ = [
    "SAMPLING_PARAMS",
    "ChatMessageSpec",
    "CompiledPrompt",
    "PromptSpec",
    "Template",
    "check_config",
    "literal",
    "parse_template",
]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ROLES = ("system", "user", "assistant", "developer")
# The request fields a prompt's config may set (the gateway fills those a request left unset);
# a config may also name the ``model`` it was written for.
SAMPLING_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
)


class _ModelConfig(BaseModel):
    """A prompt's model parameters with the ranges the gateway accepts in a request (read
    as the gateway reads them: ``"0.7"`` is a number), for :func:`check_config`."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)


def check_config(config: dict[str, Any], where: str) -> None:
    """Refuse (``UserError``) model parameters no request could use, before a version is
    created with them: it would 400 every request naming it, blaming the request. (Only
    at creation: a stored version is read as it was stored.)"""
    try:
        _ModelConfig.model_validate(config)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0])  # (stop: "stop.str" would say which union member)
        raise UserError(f"{where}: config: {field}={config.get(field)!r}: {err['msg']}") from None


# a quoted string right after '{{' (Jinja's string literal), then '}}'
_QUOTED = re.compile(r"""\s*('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\s*\}\}""", re.S)
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def _unquote(quoted: str, where: str, source: str, at: int) -> str:
    """The text of a quoted string as Jinja reads it (its line breaks as ``\\n``), for
    the escapes of ``_ESCAPES``; a ``UserError`` naming line and column for others."""
    inner = re.sub(r"\r\n|\r", "\n", quoted[1:-1])
    out: list[str] = []
    i = 0
    while i < len(inner):
        c = inner[i]
        if c == "\\":
            e = _ESCAPES.get(inner[i + 1])
            if e is None:
                line, col = _where(source, at)
                raise UserError(
                    f"{where}:{line}:{col}: unknown escape '\\{inner[i + 1]}' in a quoted "
                    "string; use \\\\ \\' \\\" \\n \\r or \\t"
                )
            out.append(e)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def literal(text: str) -> str:
    """Template source that renders as ``text`` here and as an eval task's Jinja
    ``doc_to_text`` alike: each ``{`` that would open a tag (before ``{``, ``%``, ``#``, or at
    the end, where a variable may follow) is written ``{{ '{' }}``, and each carriage return
    ``{{ '\\r' }}`` (Jinja reads a bare one as a line break; a ``{`` before one is written
    ``{{ '{' }}`` too, as what follows it then opens a tag). Everything else, ``}}`` and
    backslashes included, is text to both."""
    out: list[str] = []
    for i, c in enumerate(text):
        if c == "{" and (i + 1 == len(text) or text[i + 1] in "{%#\r"):
            out.append("{{ '{' }}")
        elif c == "\r":
            out.append("{{ '\\r' }}")
        else:
            out.append(c)
    return "".join(out)


def _where(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of ``offset`` in ``text``."""
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


class Template:
    """One parsed template string: ``parts`` alternate literal text (even indexes) and
    variable names (odd indexes)."""

    __slots__ = ("parts", "source", "variables")

    def __init__(self, source: str, *, where: str = "template") -> None:
        self.source = source
        parts: list[str] = []
        text = ""  # literal text since the last variable
        pos = 0
        while True:
            start = source.find("{{", pos)
            if start < 0:  # a lone '}}' is text (JSON in an instruction has them)
                parts.append(text + source[pos:])
                break
            text += source[pos:start]
            quoted = _QUOTED.match(source, start + 2)
            if quoted:  # {{ '...' }}: text (a literal '{{' or '{%')
                text += _unquote(quoted.group(1), where, source, start)
                pos = quoted.end()
                continue
            end = source.find("}}", start + 2)
            if end < 0:
                line, col = _where(source, start)
                raise UserError(f"{where}:{line}:{col}: '{{{{' is never closed; add '}}}}'")
            name = source[start + 2 : end].strip()
            if not _NAME.match(name):
                line, col = _where(source, start)
                raise UserError(
                    f"{where}:{line}:{col}: {{{{{source[start + 2 : end]}}}}} is not a variable; "
                    "use {{name}} with letters, digits and '_'"
                )
            parts += [text, name]
            text = ""
            pos = end + 2
        self.parts = parts
        self.variables: tuple[str, ...] = tuple(dict.fromkeys(parts[1::2]))

    def render(self, values: dict[str, Any]) -> str:
        """The text with each variable replaced (values must hold every variable)."""
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            out.append(str(values[parts[i]]))
            out.append(parts[i + 1])
        return "".join(out)


def parse_template(source: str, where: str = "template") -> Template:
    """Parse ``source``; a ``UserError`` with ``where:line:col`` when it does not parse."""
    return Template(source, where=where)


class ChatMessageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "developer"]
    content: str


_MESSAGES = TypeAdapter(list[ChatMessageSpec])


class PromptSpec(BaseModel):
    """What one prompt version holds (the YAML file stored as the version's bytes).

    ``template`` is a string (``type: text``) or a list of role messages (``type: chat``);
    ``config`` is the model-parameter config sent with it (temperature, max_tokens...);
    ``message`` is the commit message of the version.
    """

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "chat"] = "text"
    template: str | list[ChatMessageSpec]
    config: dict[str, Any] = Field(default_factory=dict)
    message: str = ""
    # a few-shot prompt's demos are part of its template; these are kept for reading back
    # (which dataset rows were chosen), never rendered separately
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _infer_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and "type" not in data and isinstance(data.get("template"), list):
            return {**data, "type": "chat"}
        return data

    @model_validator(mode="after")
    def _type_matches(self) -> PromptSpec:
        if self.type == "chat" and not isinstance(self.template, list):
            raise ValueError("type chat needs template: a list of {role, content} messages")
        if self.type == "text" and not isinstance(self.template, str):
            raise ValueError("type text needs template: a string")
        if isinstance(self.template, list) and not self.template:
            raise ValueError("template: a chat prompt needs at least one message")
        return self

    @field_validator("template", mode="wrap")
    @classmethod
    def _template_by_shape(cls, value: Any, handler: Any) -> Any:
        # validated as the member its shape picks, so a bad message names its own field
        # (template[0].nmae), not the other member of the union (template.str)
        if isinstance(value, list):
            return _MESSAGES.validate_python(value)
        if not isinstance(value, str):
            raise ValueError(
                "a string (type: text) or a list of {role, content} messages (type: chat)"
            )
        return handler(value)

    @field_validator("config")
    @classmethod
    def _config_values(cls, v: dict[str, Any]) -> dict[str, Any]:
        allowed = {*SAMPLING_PARAMS, "model"}
        unknown = sorted(set(v) - allowed)
        if unknown:
            raise ValueError(f"unknown model parameter(s) {unknown}; allowed: {sorted(allowed)}")
        return v

    def compiled(self) -> list[tuple[str | None, Template]]:
        """(role or None for text, parsed template) per part; parse errors name the part."""
        if isinstance(self.template, str):
            return [(None, Template(self.template, where="template"))]
        return [
            (m.role, Template(m.content, where=f"template[{i}].content"))
            for i, m in enumerate(self.template)
        ]


class CompiledPrompt:
    """A :class:`PromptSpec` parsed once: what the gateway and ``render`` use."""

    __slots__ = ("parts", "spec", "variables")

    def __init__(self, spec: PromptSpec) -> None:
        self.spec = spec
        self.parts = spec.compiled()
        self.variables: tuple[str, ...] = tuple(
            dict.fromkeys(v for _, t in self.parts for v in t.variables)
        )

    def check(self, values: dict[str, Any], *, what: str = "prompt") -> None:
        """A one-line ``UserError`` naming the missing and the unknown variables."""
        missing = [v for v in self.variables if v not in values]
        unknown = [k for k in values if k not in self.variables]
        if missing or unknown:
            bits = []
            if missing:
                bits.append(f"missing variable(s) {', '.join(missing)}")
            if unknown:
                bits.append(f"unknown variable(s) {', '.join(unknown)}")
            known = ", ".join(self.variables) or "none"
            raise UserError(f"{what}: {'; '.join(bits)} (its variables: {known})")

    def render_text(self, values: dict[str, Any], *, what: str = "prompt") -> str:
        """A text prompt rendered (a chat prompt's messages joined by blank lines)."""
        self.check(values, what=what)
        return "\n\n".join(t.render(values) for _, t in self.parts)

    def render_messages(
        self, values: dict[str, Any], *, what: str = "prompt"
    ) -> list[dict[str, str]]:
        """Chat messages: a chat prompt's messages, or a text prompt as one user message."""
        self.check(values, what=what)
        return [{"role": role or "user", "content": t.render(values)} for role, t in self.parts]
