"""Rows written for other tools, read as lmops's own formats; and column mapping.

Datasets made for LLaMA-Factory, TRL or OpenAI fine-tuning train as they are: each row is
recognised by its keys and turned into the :mod:`lmops.core.formats` row it stands for, so
every stage sees one form and one set of checks. A problem is named in the row's own terms
(``conversations[3].from``, ``'gpt' after 'human'``), never in the converted row's.

    shape                keys                                          trains as
    sft_alpaca           instruction, output (input, system)           [system] user assistant
    sft_chat             messages: [{role, content, weight}] (OpenAI)  the chat; weight 0: no loss
    sharegpt             conversations: [{from, value}] (system)       the chat
    (any chat shape)     tools; tool_calls, tool / function_call,      tool calls (see below)
                         observation turns
    prompt_completion    prompt, completion: strings or message lists  prompt, then completion;
                         (TRL)                                         only the completion trains
    pretrain             text                                          every token (SFT mixes it in)
    preference           prompt, chosen, rejected: strings, message    (prompt, chosen, rejected)
                         lists or message objects (TRL)
    preference_implicit  chosen, rejected: whole conversations (TRL)   the turns both begin with
                                                                       are the prompt
    sharegpt_preference  conversations (or messages), chosen,          the chat is the prompt
                         rejected: message objects (LLaMA-Factory)
    alpaca_preference    instruction (input, system), chosen, rejected the instruction is the prompt
    kto                  prompt, completion, label (TRL's unpaired)    one example, desirable or not
    kto_chat             messages or conversations, label              the last turn is the
                         (LLaMA-Factory)                               completion

Stage ``sft`` reads the first five; ``reward``, ``dpo`` and ``orpo`` the preference shapes;
``kto`` those and the two unpaired ones (a pair gives one desirable and one undesirable
example); ``ppo`` any row (its prompt); ``pretrain`` only ``text`` (:data:`STAGE_COLUMNS`).

A message has ``role``/``content`` keys (OpenAI) or ``from``/``value`` (ShareGPT); roles are
``system``, ``user`` (or ``human``) and ``assistant`` (or ``gpt``). ``tags``, LLaMA-Factory's
names (``role_tag``, ``content_tag``, ``user_tag``, ``assistant_tag``, ``system_tag``), set
other keys and role names; a tag set replaces that role's defaults. A ``system`` field is a
system turn before the chat for alpaca and ShareGPT rows (and for any chat row when
``columns`` maps it or ``tags`` are set: LLaMA-Factory's sharegpt formatting).

Tool calls (:mod:`lmops.core.toolrows`): OpenAI's (and TRL's) assistant ``tool_calls`` and
``tool`` turns, ShareGPT's ``function_call`` turn (the call's JSON, read as an assistant
turn's ``tool_calls``) and ``observation`` turn (read as a ``tool`` turn); LLaMA-Factory's
``observation_tag`` and ``function_tag`` name them otherwise. A row's ``tools`` (a list of
functions, or its JSON text) go with any chat it stands for, as ``tools`` of the lmops row.

Column mapping: ``columns`` maps lmops's field names to a file's (``{instruction:
en_instruction}``), as LLaMA-Factory's ``dataset_info`` does: a mapped field is read from its
column only (the row's own ``instruction``, if any, is not read), a field left out is read
under its own name, and a mapped column a row lacks is a problem of that row (but for
``tools``: that row has none).

Every problem is a :class:`RowProblem` (``field``, ``code``, ``reason``); its codes are those
of :mod:`lmops.core.formats`, plus ``undetected`` (no shape the stage reads) and ``stage`` (a
shape of another stage).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lmops.core.errors import name_hint
from lmops.core.formats import check_messages, to_chat, validate_row
from lmops.core.toolrows import (
    check_tools,
    order_arguments,
    read_function_call,
    read_tool_calls,
    read_tools,
    tool_schemas,
    uniform_call,
)

__all__ = [
    "COLUMNS",
    "LLAMA_FACTORY_COLUMNS",
    "STAGE_COLUMNS",
    "TAGS",
    "Read",
    "RowProblem",
    "RowReader",
    "column_problem",
]

# lmops's field names, the keys of ``columns``.
COLUMNS: tuple[str, ...] = (
    "instruction", "input", "output", "system", "messages", "prompt", "completion",
    "chosen", "rejected", "label", "text", "tools",
)  # fmt: skip
_SFT = (
    "instruction", "input", "output", "system", "messages", "prompt", "completion", "text", "tools",
)  # fmt: skip
_PAIRED = ("prompt", "chosen", "rejected", "messages", "instruction", "input", "system", "tools")
# The fields each stage reads (and may map).
STAGE_COLUMNS: dict[str, tuple[str, ...]] = {
    "pretrain": ("text",),
    "sft": _SFT,
    "reward": _PAIRED,
    "dpo": _PAIRED,
    "orpo": _PAIRED,
    "kto": (*_PAIRED, "completion", "label"),
    "ppo": ("prompt", "instruction", "messages", "text"),
}
# LLaMA-Factory's column names that lmops calls otherwise (None: not read by lmops).
LLAMA_FACTORY_COLUMNS: dict[str, str | None] = {
    "query": "input",
    "response": "output",
    "kto_tag": "label",
    "conversations": "messages",
    "history": None,
    "images": None,
    "videos": None,
    "audios": None,
}
TAGS: tuple[str, ...] = (
    "role_tag", "content_tag", "user_tag", "assistant_tag", "system_tag",
    "observation_tag", "function_tag",
)  # fmt: skip
# Role names read without tags: OpenAI's and ShareGPT's (LLaMA-Factory's defaults).
# "function_call" is ShareGPT's assistant turn that calls tools (its value is the calls).
_ROLE_NAMES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function_call": "function_call",
}
# Each role's tag (LLaMA-Factory's name for it), which replaces its default names.
_ROLE_TAGS = {
    "system": "system_tag",
    "user": "user_tag",
    "assistant": "assistant_tag",
    "tool": "observation_tag",
    "function_call": "function_tag",
}
# Other names of a field, for the hint of a row in no shape (the spellings difflib misses).
_SYNONYMS = {
    "instruction": ("question", "query", "problem", "prompt"),
    "output": ("answer", "response", "solution", "completion"),
    "prompt": ("question", "query", "instruction"),
    "completion": ("answer", "response", "output"),
    "messages": ("conversation", "conversations", "dialog", "dialogue", "chat", "turns"),
}
_MISSING: Any = object()  # a field the row does not have
_PAIRWISE = ("reward", "dpo", "orpo", "kto")
# What each stage accepts, for the error about a row in none of its shapes.
_ACCEPTED = {
    "sft": "alpaca (instruction, output), chat (messages), ShareGPT (conversations), "
    "prompt/completion or text",
    "pairwise": "prompt/chosen/rejected, chosen/rejected conversations (the prompt implicit), "
    "conversations or messages with chosen/rejected, or instruction/chosen/rejected",
    "kto": ", prompt/completion/label or messages/label",
}


class RowProblem(Exception):
    """One problem of one row: ``field`` in the row's own terms ("" for the whole row)."""

    def __init__(self, field: str, code: str, reason: str) -> None:
        super().__init__(f"field {field!r}: {reason}" if field else reason)
        self.field, self.code, self.reason = field, code, reason
        self.shape: str | None = None  # the shape the row was read as, once known


@dataclass(frozen=True, slots=True)
class Read:
    """A row as a stage trains on it: ``row`` in the lmops form of its ``shape``
    (``{"messages"}`` or ``{"text"}`` for SFT, ``{"prompt", "chosen", "rejected"}`` or
    ``{"prompt", "completion", "label"}`` with message lists for the preference stages,
    the row itself for PPO)."""

    shape: str
    row: dict[str, Any]


def column_problem(name: str, stage: str) -> str | None:
    """Why ``name`` cannot be a key of ``columns`` for ``stage`` (None: it can)."""
    if name not in COLUMNS:
        if name in LLAMA_FACTORY_COLUMNS:
            ours = LLAMA_FACTORY_COLUMNS[name]
            if ours is None:
                return f"LLaMA-Factory's {name!r} column is not read by lmops"
            return f"LLaMA-Factory's {name!r} is lmops's {ours!r}: write {ours}: <column>"
        close = difflib.get_close_matches(name, COLUMNS, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "lmops's names: " + ", ".join(COLUMNS)
        return f"unknown field name ({hint})"
    reads = STAGE_COLUMNS.get(stage, COLUMNS)
    if name not in reads:
        return f"stage {stage} reads no {name!r}; it reads {', '.join(reads)}"
    return None


# Where a converted message came from: its place in the row ("conversations[3]", or a
# field such as "system" for a message made of a string), its role and content keys (None
# for a string).
Origin = tuple[str, str | None, str | None]


@dataclass
class _Built:
    """A converted row and where each of its parts came from, to name problems."""

    row: dict[str, Any]
    origins: dict[str, list[Origin]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # lmops field -> the row's field
    roles: dict[str, str] = field(default_factory=dict)  # lmops role -> the row's name for it
    calls_from: set[str] = field(default_factory=set)  # ShareGPT function_call turns (where)

    def field_of(self, path: str) -> str:
        """``messages[2].role`` -> ``conversations[1].from`` (where it came from)."""
        m = re.fullmatch(r"(\w+)\[(\d+)\](?:\.(\w+)(.*))?", path)
        if m and m[1] in self.origins and int(m[2]) < len(self.origins[m[1]]):
            where, role_key, content_key = self.origins[m[1]][int(m[2])]
            if m[3] is None or role_key is None:
                return where
            if m[3] == "tool_calls" and where in self.calls_from:
                return f"{where}.{content_key}"  # the calls are the turn's value
            key = {"role": role_key, "content": content_key}.get(m[3], m[3])
            return f"{where}.{key}{m[4]}"
        head = re.match(r"\w*", path)[0]  # type: ignore[index]
        return self.names.get(head, head) + path[len(head) :]

    def problem(self, field: str, code: str, reason: str) -> RowProblem:
        """A converted row's problem in the row's terms (role names included)."""
        reason = re.sub(
            r"'(system|user|assistant|tool)'", lambda m: repr(self.roles.get(m[1], m[1])), reason
        )
        return RowProblem(self.field_of(field), code, reason)


@dataclass(frozen=True)
class RowReader:
    """Reads rows for one stage: ``columns`` maps lmops's field names to the file's,
    ``tags`` (LLaMA-Factory's names, :data:`TAGS`) a chat's message keys and role names.
    Both are checked by the job spec; :meth:`read` takes one row's values."""

    stage: str
    columns: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    def read(self, values: Mapping[str, Any]) -> Read:
        """The row as the stage trains on it; raises :class:`RowProblem`."""
        view = self._view(values)
        if self.stage == "ppo":
            return Read("any", view)
        shape = self.shape(view)
        convert = {
            "sft_chat": self._chat_row,
            "sharegpt": self._chat_row,
            "sft_alpaca": self._alpaca,
            "prompt_completion": self._prompt_completion,
            "pretrain": self._text,
            "preference": self._preference,
            "preference_implicit": lambda v: self._preference(v, "implicit"),
            "sharegpt_preference": lambda v: self._preference(v, "chat"),
            "alpaca_preference": lambda v: self._preference(v, "instruction"),
            "kto": self._kto,
            "kto_chat": self._kto_chat,
        }[shape]
        try:
            return Read(shape, order_arguments(convert(view)))
        except RowProblem as e:
            e.shape = shape
            raise

    def shape(self, view: Mapping[str, Any]) -> str:
        """The shape a row's keys (lmops's names, after ``columns``) say it has; raises
        :class:`RowProblem` for a row of no shape the stage reads, or of two at once."""
        chat = _chat_key(view)
        kinds = _kinds(view)
        if len(kinds) > 1:  # which one the row means is a guess: say so instead
            fields = " and ".join(
                "/".join(self.source(k) for k in kind if view.get(k) not in _EMPTY)
                for kind in kinds
            )
            raise RowProblem(
                "",
                "ambiguous",
                f"the row has the fields of two shapes ({fields}); keep one of them, or "
                "name the fields to read with columns:",
            )
        if self.stage == "sft":
            if isinstance(view.get("label"), bool) and (chat or "prompt" in view):
                raise RowProblem(
                    self.source("label"),
                    "stage",
                    "a row with a true/false label is a KTO "
                    "row (stage kto); leave label out to train it with sft",
                )
            if chat is not None:
                return "sft_chat" if not self._reads_system(view, chat) else "sharegpt"
            if "instruction" in view or "output" in view:
                return "sft_alpaca"
            if "chosen" in view or "rejected" in view:
                raise RowProblem(
                    "",
                    "stage",
                    "a preference row (chosen/rejected) trains stages reward, "
                    "dpo, kto and orpo, not sft",
                )
            if "prompt" in view or "completion" in view:
                return "prompt_completion"
            if "text" in view:
                return "pretrain"
        elif self.stage in _PAIRWISE:
            if "chosen" in view or "rejected" in view:
                if chat is not None:
                    return "sharegpt_preference"
                if "prompt" in view:
                    return "preference"
                return "alpaca_preference" if "instruction" in view else "preference_implicit"
            if self.stage == "kto" and "label" in view:
                return "kto_chat" if chat is not None else "kto"
            if "label" in view and ("prompt" in view or "completion" in view):
                raise RowProblem(
                    "",
                    "stage",
                    f"an unpaired row (prompt/completion/label) trains stage kto, "
                    f"not {self.stage}: {self.stage} needs chosen and rejected answers",
                )
        else:
            raise ValueError(f"stage {self.stage} reads no rows through shapes")
        raise self._undetected(view)

    def source(self, name: str) -> str:
        """The file's name for lmops's field ``name``."""
        return self.columns.get(name, name)

    def unmapped(self, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        """Fields read under their own name beside mapped ones of the same shape (with
        ``{instruction: en_instruction, output: en_output}``, a non-empty ``input`` is still
        read from ``input``): one line each, for a warning."""
        groups = [
            ("instruction", "input", "output", "system"),
            ("prompt", "completion", "chosen", "rejected", "label", "system"),
        ]
        out: list[str] = []
        seen: set[str] = set()
        for row in rows:
            for group in groups:
                mapped = [k for k in group if k in self.columns]
                if not mapped:
                    continue
                for k in group:
                    if k in self.columns or k in seen or k in self.columns.values():
                        continue
                    if row.get(k) not in (None, "", []):
                        seen.add(k)
                        others = [
                            c for c in row if c != k and k in c and c not in self.columns.values()
                        ]
                        hint = f" (e.g. columns.{k}: {others[0]})" if others else ""
                        out.append(
                            f"columns maps {', '.join(mapped)} but not {k}: {k} is read from the "
                            f"rows' own {k!r} column; map it to read another{hint}"
                        )
        return out

    # -- the view: lmops's names over the file's ------------------------------------------------
    def _view(self, values: Mapping[str, Any]) -> dict[str, Any]:
        if not self.columns:
            return dict(values)
        sources = set(self.columns.values())
        view = {k: v for k, v in values.items() if k not in sources and k not in self.columns}
        for name, column in self.columns.items():
            if column not in values and name == "tools":
                continue  # a row without tools (a set of chats, some with tools)
            if column not in values:
                hint = name_hint(column, list(values), "the row has")
                raise RowProblem(column, "missing", f"missing (columns.{name} reads it); {hint}")
            view[name] = values[column]
        return view

    # -- conversions, one per shape: the view -> the lmops row -------------------------------
    def _chat_row(self, view: dict[str, Any]) -> dict[str, Any]:
        built = self._chat(view, _chat_key(view) or "messages")
        self._add_tools(view, built)
        self._check(built, "sft_chat")
        return built.row

    def _alpaca(self, view: dict[str, Any]) -> dict[str, Any]:
        self._check(_Built(view, names={k: self.source(k) for k in view}), "sft_alpaca")
        built = _Built({"messages": to_chat(view, "sft_alpaca")})
        self._add_tools(view, built)
        return built.row

    def _text(self, view: dict[str, Any]) -> dict[str, Any]:
        built = _Built({"text": view["text"]}, names={"text": self.source("text")})
        self._check(built, "pretrain")
        return built.row

    def _prompt_completion(self, view: dict[str, Any]) -> dict[str, Any]:
        built = _Built({})
        prompt = self._turns(view, "prompt", "user", built)
        completion = self._turns(view, "completion", "assistant", built)
        built.row = _present(prompt=prompt, completion=completion)
        tools = self._add_tools(view, built)
        self._check_unpaired(built)
        # TRL trains the completion only: assistant turns of a conversational prompt are
        # context, so they carry weight 0 (OpenAI's way of saying "no loss on this turn").
        messages = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in prompt]
        return _present(messages=messages + completion, tools=tools)

    def _preference(self, view: dict[str, Any], prompt_from: str = "prompt") -> dict[str, Any]:
        """A pair, its prompt read ``prompt_from``: the ``prompt`` field, the ``chat``
        (``conversations`` / ``messages``), the ``instruction`` (and input, system), or
        ``implicit`` in the turns both answers begin with."""
        built = _Built({})
        prompt: Any = []
        if prompt_from == "prompt":
            prompt = self._turns(view, "prompt", "user", built)
        elif prompt_from == "chat":
            prompt = self._chat(view, _chat_key(view) or "messages", built, "prompt").row["prompt"]
        elif prompt_from == "instruction":
            prompt = self._instruction(view, built)
        chosen = self._turns(view, "chosen", "assistant", built)
        rejected = self._turns(view, "rejected", "assistant", built)
        if prompt_from == "implicit":
            prompt, chosen, rejected = self._implicit(view, built, chosen, rejected)
        built.row = _present(prompt=prompt, chosen=chosen, rejected=rejected)
        self._add_tools(view, built)
        self._check(built, "preference")
        return built.row

    def _implicit(
        self, view: dict[str, Any], built: _Built, chosen: Any, rejected: Any
    ) -> tuple[list[Any], list[Any], list[Any]]:
        """TRL's implicit prompt: the turns both conversations begin with, through the last
        user turn among them."""
        for name in ("chosen", "rejected"):
            if name not in view:
                raise RowProblem(self.source(name), "missing", "required field is missing")
        if not (isinstance(view.get("chosen"), list) and isinstance(view.get("rejected"), list)):
            raise RowProblem(
                self.source("prompt"),
                "missing",
                "required field is missing (without a prompt, "
                "chosen and rejected must be whole conversations that begin with the same turns)",
            )
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        k = max((i + 1 for i in range(shared) if _role(chosen[i]) == "user"), default=0)
        if k == 0:
            raise RowProblem(
                self.source("chosen"),
                "missing",
                "no prompt: chosen and rejected must begin "
                "with the same turns, ending with a user turn (or give a prompt)",
            )
        c_src, r_src = built.origins["chosen"], built.origins["rejected"]
        built.origins.update(prompt=c_src[:k], chosen=c_src[k:], rejected=r_src[k:])
        return chosen[:k], chosen[k:], rejected[k:]

    def _kto(self, view: dict[str, Any]) -> dict[str, Any]:
        built = _Built({})
        prompt = self._turns(view, "prompt", "user", built)
        completion = self._turns(view, "completion", "assistant", built)
        return self._labelled(view, built, prompt, completion)

    def _kto_chat(self, view: dict[str, Any]) -> dict[str, Any]:
        """LLaMA-Factory's KTO rows: a chat whose last (assistant) turn is the completion."""
        built = self._chat(view, _chat_key(view) or "messages")
        self._add_tools(view, built)
        self._check(built, "sft_chat")
        messages, src = built.row["messages"], built.origins.pop("messages")
        built.origins.update(prompt=src[:-1], completion=src[-1:])
        return self._labelled(view, built, messages[:-1], messages[-1:])

    def _labelled(
        self, view: dict[str, Any], built: _Built, prompt: Any, completion: Any
    ) -> dict[str, Any]:
        built.row = _present(prompt=prompt, completion=completion)
        self._add_tools(view, built)
        self._check_unpaired(built)
        label = view["label"]
        if not isinstance(label, bool):
            raise RowProblem(self.source("label"), "type", f"expected true or false, got {label!r}")
        return {**built.row, "label": label}

    # -- conversions ----------------------------------------------------------------------------
    def _chat(
        self, view: dict[str, Any], key: str, built: _Built | None = None, native: str = "messages"
    ) -> _Built:
        """A chat (``messages`` / ``conversations``) as ``built.row[native]``, with the
        row's system prompt first where it has one."""
        built = built if built is not None else _Built({})
        messages = self._messages(view[key], key, built, native)
        system = view.get("system")
        if system is not None and self._reads_system(view, key):
            src = self.source("system")
            if not isinstance(system, str):
                raise RowProblem(src, "type", f"expected a string, got {type(system).__name__}")
            if system.strip() and isinstance(messages, list):
                if messages and _role(messages[0]) == "system":
                    first = built.field_of(f"{native}[0].role")
                    raise RowProblem(
                        src,
                        "role_order",
                        f"a system prompt here and a system turn in {first}: keep one",
                    )
                messages = [{"role": "system", "content": system}, *messages]
                built.origins[native].insert(0, (src, None, None))
        built.row = {native: messages}
        return built

    def _add_tools(self, view: Mapping[str, Any], built: _Built) -> Any:
        """The row's ``tools`` in lmops's form, added to ``built.row`` (``_MISSING`` where
        the row has none: no field, null, an empty list or string)."""
        value = view.get("tools")
        if value in _EMPTY:
            return _MISSING
        src = built.names["tools"] = self.source("tools")
        tools, why = read_tools(value)
        if why is not None:
            raise RowProblem(src, "tool", why)
        for f, code, reason in check_tools(tools, "tools"):
            raise built.problem(f, code, reason)
        built.row["tools"] = tools
        return tools

    def _reads_system(self, view: Mapping[str, Any], key: str) -> bool:
        """ShareGPT rows have a system field (LLaMA-Factory's example); OpenAI's have the
        system turn only, unless ``columns`` maps one."""
        if "system" in self.columns or key == "conversations" or self.tags:
            return True
        value = view[key]
        return isinstance(value, list) and any(
            isinstance(m, Mapping) and "from" in m for m in value
        )

    def _instruction(self, view: dict[str, Any], built: _Built) -> list[dict[str, Any]]:
        """LLaMA-Factory's alpaca preference prompt: instruction (+ input), system first."""
        probe: dict[str, Any] = {
            k: view[k] for k in ("instruction", "input", "system") if k in view
        }
        check = _Built(probe, names={k: self.source(k) for k in probe})
        self._check(check, "sft_alpaca", skip=("output",))
        messages = to_chat({**probe, "output": "-"}, "sft_alpaca")[:-1]
        srcs: list[Origin] = [
            (self.source(k), None, None) for k in ("system", "instruction") if k in probe
        ]
        built.origins["prompt"] = srcs[-len(messages) :]
        return messages

    def _turns(self, view: dict[str, Any], name: str, role: str, built: _Built) -> Any:
        """A prompt or an answer: a string is one turn of ``role``, a message object one
        message, a list the messages; anything else stays as it is (the checks say so)."""
        src = self.source(name)
        if name not in view:
            built.names[name] = src
            return _MISSING
        value = view[name]
        if isinstance(value, str):
            built.origins[name] = [(src, None, None)]
            return [{"role": role, "content": value}]
        if isinstance(value, Mapping):
            messages = self._messages([value], name, built, name)
            key_role, key_content = built.origins[name][0][1:]
            built.origins[name] = [(src, key_role, key_content)]
            return messages
        if isinstance(value, list):
            return self._messages(value, name, built, name)
        built.names[name] = src
        return value

    def _messages(self, value: Any, name: str, built: _Built, native: str) -> Any:
        """Messages in OpenAI's form (role, content, and weight where given), with where
        each came from in ``built.origins[native]``."""
        src = self.source(name)
        built.names[native] = src
        if not isinstance(value, list):
            return value
        out: list[Any] = []
        origins: list[Origin] = []
        for i, msg in enumerate(value):
            where = f"{src}[{i}]"
            if not isinstance(msg, Mapping):
                out.append(msg)
                origins.append((where, None, None))
                continue
            role_key, content_key = self._keys(msg)
            origins.append((where, role_key, content_key))
            converted: dict[str, Any] = {}
            if role_key in msg:
                converted["role"] = self._role(msg[role_key], f"{where}.{role_key}", built)
            if converted.get("role") == "function_call":  # ShareGPT's: the value is the calls
                calls, why = read_function_call(msg.get(content_key))
                if calls is None:
                    raise RowProblem(f"{where}.{content_key}", "tool", str(why))
                converted = {"role": "assistant", "tool_calls": calls}
                built.calls_from.add(where)
            elif content_key in msg:
                converted["content"] = msg[content_key]
            listed = msg.get("tool_calls")
            if isinstance(listed, str) and "tool_calls" not in converted:  # stored as JSON text
                listed, why = read_tool_calls(listed)
                if listed is None:
                    raise RowProblem(f"{where}.tool_calls", "tool", str(why))
            if isinstance(listed, list) and "tool_calls" not in converted:
                converted["tool_calls"] = [uniform_call(c) for c in listed]
            for key in ("tool_calls", "tool_call_id", "name", "weight"):
                if key in msg and key not in converted:
                    converted[key] = msg[key]
            out.append(converted)
        built.origins[native] = origins
        if any(key not in (None, "role") for _, key, _ in origins) or self.tags:
            for role, tag in (
                ("user", "human"), ("assistant", "gpt"), ("system", "system"),
                ("tool", "observation"),
            ):  # fmt: skip
                built.roles.setdefault(role, self.tags.get(_ROLE_TAGS[role]) or tag)
        return out

    def _keys(self, msg: Mapping[str, Any]) -> tuple[str, str]:
        role = self.tags.get("role_tag")
        content = self.tags.get("content_tag")
        sharegpt = "from" in msg or "value" in msg
        return (
            role or ("from" if sharegpt and "role" not in msg else "role"),
            content or ("value" if sharegpt and "content" not in msg else "content"),
        )

    def _role(self, name: Any, where: str, built: _Built) -> Any:
        names = dict(_ROLE_NAMES)
        for role, tag_key in _ROLE_TAGS.items():
            tag = self.tags.get(tag_key)
            if tag is not None:
                names = {k: v for k, v in names.items() if v != role}
                names[tag] = role
        if isinstance(name, str) and name in names:
            built.roles.setdefault(names[name], name)
            return names[name]
        if name == "function":
            raise RowProblem(
                where,
                "role",
                "'function' is OpenAI's retired role for a function's result: write it as a "
                "'tool' turn, and the call as the assistant turn's tool_calls",
            )
        known = ", ".join(repr(k) for k in names)
        raise RowProblem(
            where, "role", f"expected one of {known} (set tags: to name yours), got {name!r}"
        )

    # -- checks -----------------------------------------------------------------------------------
    def _check(self, built: _Built, fmt: str, skip: tuple[str, ...] = ()) -> None:
        for e in validate_row(built.row, fmt):
            if e.field.split("[")[0].split(".")[0] not in skip:
                raise built.problem(e.field, e.code, e.reason)

    def _check_unpaired(self, built: _Built) -> None:
        row = built.row
        names = tool_schemas(row.get("tools"))
        for name, first in (("prompt", "user"), ("completion", "assistant")):
            value = row.get(name, _MISSING)
            if value is _MISSING:
                raise RowProblem(
                    built.names.get(name, name), "missing", "required field is missing"
                )
            for f, code, reason in check_messages(
                value, name, first=first, last=first, system=name == "prompt", names=names
            ):
                if f == name and code == "type":
                    reason = reason.replace("a list of messages", "a string or a list of messages")
                raise built.problem(f, code, reason)

    def _undetected(self, view: Mapping[str, Any]) -> RowProblem:
        keys = sorted(view)
        group = "sft" if self.stage == "sft" else "pairwise"
        accepted = _ACCEPTED[group] + (_ACCEPTED["kto"] if self.stage == "kto" else "")
        reads = STAGE_COLUMNS[self.stage]
        pairs: list[str] = []
        free = [k for k in keys if k not in COLUMNS]
        for name in reads:
            close = difflib.get_close_matches(name, free, n=1, cutoff=0.7)
            close = close or [k for k in free if k.lower() in _SYNONYMS.get(name, ())][:1]
            if close and name not in view:
                pairs.append(f"{name}: {close[0]}")
                free.remove(close[0])
        hint = (
            f"; did you mean columns: {{{', '.join(pairs)}}}?"
            if pairs
            else "; other names are mapped with the job's columns"
        )
        return RowProblem(
            "",
            "undetected",
            f"not a row stage {self.stage} reads: it has {keys}; expected {accepted}{hint}",
        )


def _present(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not _MISSING}


_EMPTY: tuple[Any, ...] = (None, "", [])
# The fields each shape is recognised by; a row with non-empty fields of two is ambiguous
# (chosen/rejected, label and system go with any of them).
_KINDS = (("messages",), ("conversations",), ("instruction", "output"), ("prompt", "completion"))


def _kinds(view: Mapping[str, Any]) -> list[tuple[str, ...]]:
    return [kind for kind in _KINDS if any(view.get(k) not in _EMPTY for k in kind)]


def _chat_key(view: Mapping[str, Any]) -> str | None:
    return next((k for k in ("messages", "conversations") if k in view), None)


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, Mapping) else None
