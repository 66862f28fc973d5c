"""Tool calls in training rows: OpenAI's fields (which TRL's rows share), their checks, and
the other tools' spellings read as them.

lmops's form, OpenAI's fine-tuning format::

    {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null,              # or text said before the calls
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather",
                                      "arguments": "{\\"city\\": \\"Paris\\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
        {"role": "assistant", "content": "It is 21 C."}],
     "tools": [{"type": "function", "function": {"name": "get_weather",
                                                 "description": "...", "parameters": {...}}}]}

``arguments`` is a JSON object or its JSON text (TRL writes objects); ``id``,
``tool_call_id`` and a tool message's ``name`` are optional (what a chat template uses of
them, it renders). A tool object's function has a ``name`` the gateway accepts
(``[A-Za-z0-9_-]``, 1 to 64 characters) and an object ``parameters`` (a JSON schema, draft
2020-12, checked by the gateway's own :func:`schema_problem`) if any; names are unique. A row that calls tools lists
them, and calls only those, by names the gateway accepts: the gateway reports only calls
of the request's tools, so a call of another would teach what it drops. A call's arguments are valid under its tool's
``parameters`` and are trained in the order the gateway's grammar (``models/grammar.py``,
llguidance) makes the model write them, and would reject another. llguidance reads a
schema's keywords in the order they are written (JSON keeps it) and merges what they say
in that order: ``properties`` where written, each ``allOf`` member's where ``allOf`` is,
those of the first ``anyOf``/``oneOf`` branch the arguments are valid under where that
keyword is, a ``$ref``'s where it is; a property keeps the place it was first named (an
``additionalProperties`` written before ``properties`` names them there); keys no schema
names come last, in the row's order; nested objects and array items likewise. A tool without ``parameters`` takes none: its calls' arguments are
``{}`` or absent (read as ``{}``), which is all the grammar lets the model write; so does
one whose ``parameters`` is ``{}``, which the gateway reads as none.

Read as this form by :mod:`lmops.core.shapes`: a ``tools`` value that is the JSON text of
the list (LLaMA-Factory stores it so) or lists bare functions (``{name, description,
parameters}``); a message's ``tool_calls`` stored as JSON text; a call written flat
(``{"name", "arguments"}``); ShareGPT's
``function_call`` turn (its value one call's JSON or a list of them) and ``observation``
turn (the result).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from lmops.core.jsonl import type_name as _type

__all__ = [
    "TOOL_NAME",
    "check_calls",
    "check_tools",
    "has_tool_turns",
    "order_arguments",
    "read_function_call",
    "read_tool_calls",
    "read_tools",
    "schema_problem",
    "tool_object",
    "tool_schemas",
    "uniform_call",
]

# (field, code, reason), as lmops.core.formats's checks return them
Problem = tuple[str, str, str]
# a function name the gateway accepts (serve/protocol.py reads it too)
TOOL_NAME = r"[A-Za-z0-9_-]{1,64}"
_NAME = re.compile(TOOL_NAME)


def _bad_name(at: str, name: Any) -> Problem:
    """The problem of a tool's or a call's ``function.name`` outside :data:`TOOL_NAME`."""
    return (
        f"{at}.function.name",
        "tool",
        f"expected a name of 1 to 64 letters, digits, '_' or '-', got {name!r}",
    )


# the order the gateway hands a function to the chat template (FunctionDef's fields, then
# any others), so that a row's tools render as a request's do
_FUNCTION_KEYS = ("name", "description", "parameters", "strict")


def tool_object(fn: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI tool object of a function, its keys in the gateway's order and without
    nulls (``{"type": "function", "function": {name, description, parameters, ...}}``)."""
    ordered = {k: fn[k] for k in _FUNCTION_KEYS if fn.get(k) is not None}
    ordered.update({k: v for k, v in fn.items() if k not in ordered and v is not None})
    return {"type": "function", "function": ordered}


def check_tools(value: Any, name: str = "tools") -> list[Problem]:
    """The problems of a row's ``tools`` (lmops's form: a list of OpenAI tool objects)."""
    if not isinstance(value, list):
        return [(name, "type", f"expected a list of tool objects, got {_type(value)}")]
    seen: set[str] = set()
    for i, tool in enumerate(value):
        where = f"{name}[{i}]"
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping):
            return [
                (
                    where,
                    "tool",
                    'expected {"type": "function", "function": {"name": ..., "parameters": {...}}}',
                )
            ]
        if tool.get("type", "function") != "function":
            return [(f"{where}.type", "tool", f"expected 'function', got {tool['type']!r}")]
        fname = fn.get("name")
        if not isinstance(fname, str) or not _NAME.fullmatch(fname):
            return [_bad_name(where, fname)]
        if fname in seen:
            return [(f"{where}.function.name", "tool", f"the name {fname!r} is used twice")]
        seen.add(fname)
        params = fn.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            return [
                (
                    f"{where}.function.parameters",
                    "tool",
                    f"expected a JSON schema object, got {_type(params)}",
                )
            ]
        if params is not None and (why := schema_problem(params)) is not None:
            return [(f"{where}.function.parameters", "tool", why)]
    return []


def schema_problem(schema: Mapping[str, Any]) -> str | None:
    """Why ``schema`` is not a JSON schema the gateway takes (draft 2020-12, every local
    ``$ref`` resolving), or None: the gateway's check of a request's tools and
    ``response_format``, and training's of a row's tools.

    Answers are kept (the last 128) per SHA-256 of the schema's JSON text, never the text
    itself (a request body may be megabytes), and only when short (a problem may quote the
    schema): checking against the meta-schema takes milliseconds, and a training set or a
    request log repeats the same few tools on every row (a flow-back export of tool chats
    ran at under 200 rows/s without it)."""
    try:
        key = hashlib.sha256(json.dumps(schema).encode()).digest()  # ASCII: ensure_ascii
    except (TypeError, ValueError):  # not JSON (a set, a cycle): checked as it is
        return _schema_problem(schema)
    with _ANSWERS_LOCK:
        if key in _ANSWERS:
            _ANSWERS.move_to_end(key)
            return _ANSWERS[key]
    problem = _schema_problem(schema)
    if problem is None or len(problem) <= _ANSWER_MAX:
        with _ANSWERS_LOCK:
            _ANSWERS[key] = problem
            while len(_ANSWERS) > _ANSWERS_KEPT:
                _ANSWERS.popitem(last=False)
    return problem


# schema_problem's answers by the SHA-256 of the schema's JSON text, oldest first
_ANSWERS: OrderedDict[bytes, str | None] = OrderedDict()
_ANSWERS_LOCK = threading.Lock()  # the gateway checks requests' tools in worker threads
_ANSWERS_KEPT = 128
_ANSWER_MAX = 2048  # a longer problem quotes much of its schema: not kept


def _schema_problem(schema: Mapping[str, Any]) -> str | None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        at = "/".join(str(p) for p in e.path)
        return f"invalid JSON schema{' at ' + at if at else ''}: {e.message}"
    for path, ref in _local_refs(schema, ()):
        if not _resolves(schema, ref):
            where = f" at {'.'.join(path)}" if path else ""
            return (
                f"$ref {ref!r}{where} points at nothing in this schema; define it (under "
                "$defs) or fix the reference"
            )
    return None


def _local_refs(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    """(where, ref) of every ``$ref`` that is a JSON pointer into the schema itself."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
            yield path, ref
        for k, v in node.items():
            yield from _local_refs(v, (*path, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _local_refs(v, (*path, str(i)))


def _resolves(schema: Any, ref: str) -> bool:
    from urllib.parse import unquote

    node = schema
    for raw in ref[2:].split("/") if ref != "#" else []:
        key = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return False
    return True


def tool_schemas(tools: Any) -> dict[str, Any] | None:
    """Each function of a (checked) ``tools`` list by name, its ``parameters`` (None where
    it has none, or ``{}``: the gateway reads an empty schema as no arguments too); None
    without a list."""
    if not isinstance(tools, list) or not tools:
        return None
    return {t["function"]["name"]: t["function"].get("parameters") or None for t in tools}


def check_calls(calls: Any, where: str, tools: Mapping[str, Any] | None) -> list[Problem]:
    """The problems of an assistant message's ``tool_calls`` (``where``: the message);
    ``tools``: the row's tools, their ``parameters`` by name (:func:`tool_schemas`; None:
    the row lists none)."""
    field = f"{where}.tool_calls"
    if not isinstance(calls, list):
        return [(field, "type", f"expected a list of calls, got {_type(calls)}")]
    for j, call in enumerate(calls):
        at = f"{field}[{j}]"
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping):
            return [
                (at, "tool", 'expected {"type": "function", "function": {"name", "arguments"}}')
            ]
        if call.get("type", "function") != "function":
            return [(f"{at}.type", "tool", f"expected 'function', got {call['type']!r}")]
        if "id" in call and call["id"] is not None and not isinstance(call["id"], str):
            return [(f"{at}.id", "type", f"expected a string, got {_type(call['id'])}")]
        fname = fn.get("name")
        if not isinstance(fname, str) or not _NAME.fullmatch(fname):
            return [_bad_name(at, fname)]
        if tools is None:
            return [
                (
                    f"{at}.function.name",
                    "tool",
                    f"the row calls {fname} but lists no tools; add a tools column (columns.tools)",
                )
            ]
        if fname not in tools:
            listed = ", ".join(sorted(tools))
            return [
                (
                    f"{at}.function.name",
                    "tool",
                    f"calls {fname!r}, which the row's tools do not list ({listed}); the "
                    "gateway reports calls of the request's tools only",
                )
            ]
        args = fn.get("arguments")
        if args is None:  # absent: no arguments (the gateway's grammar writes {})
            args = {}
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError as e:
                return [(f"{at}.function.arguments", "tool", f"not valid JSON ({e})")]
        if not isinstance(args, Mapping):
            return [
                (
                    f"{at}.function.arguments",
                    "tool",
                    f"expected a JSON object (or its JSON text), got {_type(args)}",
                )
            ]
        schema = tools.get(fname)
        if schema is None and args:
            return [
                (
                    f"{at}.function.arguments",
                    "tool",
                    f"{fname} has no parameters, so its arguments must be {{}}, got "
                    f"{json.dumps(args, ensure_ascii=False)[:80]}; the gateway's grammar makes the "
                    "model write {} for it: drop the arguments or give the tool parameters",
                )
            ]
        if schema is not None and (why := _arguments_error(args, schema, fname)) is not None:
            return [(f"{at}.function.arguments", "tool", why)]
    return []


def _arguments_error(args: Mapping[str, Any], schema: Mapping[str, Any], name: str) -> str | None:
    """Why ``args`` are not valid under the ``parameters`` of ``name``, or None."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(schema).iter_errors(args))
    if error is None:
        return None
    at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    where = f" at {at.lstrip('.')}" if at else ""
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    return (
        f"not valid under {name}'s parameters{where}: {message}; the gateway's grammar "
        "makes the model write arguments its schema accepts"
    )


def order_arguments(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` (a checked lmops row) with each call's arguments in the order the gateway's
    grammar writes them: the properties its tool's schema names, in the order llguidance
    merges them (its keywords ``properties``, ``allOf``, ``anyOf``/``oneOf``, ``$ref`` in
    the order they are written), then the others, in the row's (in nested objects and
    array items too). Arguments given as JSON text stay text."""
    schemas = tool_schemas(row.get("tools"))
    if not schemas:
        return row
    out = dict(row)
    for key in ("messages", "prompt", "completion", "chosen", "rejected"):
        if isinstance(row.get(key), list):
            out[key] = [_ordered_message(m, schemas) for m in row[key]]
    return out


def _ordered_message(m: Any, schemas: Mapping[str, Any]) -> Any:
    if not isinstance(m, Mapping) or not isinstance(m.get("tool_calls"), list):
        return m
    calls = []
    for call in m["tool_calls"]:
        fn = call["function"]
        schema = schemas.get(fn["name"])
        args = fn.get("arguments")
        if args is None:  # none, as the gateway's grammar writes them
            args = {}
        if schema is not None:
            text = isinstance(args, str)
            value = _ordered(json.loads(args) if text else args, [schema], schema)
            args = json.dumps(value, ensure_ascii=False) if text else value
        calls.append({**call, "function": {**fn, "arguments": args}})
    return {**m, "tool_calls": calls}


def _ordered(value: Any, schemas: list[Any], root: Mapping[str, Any]) -> Any:
    """``value`` with its objects' keys in the order llguidance's JSON grammar writes them
    under ``schemas`` (every schema that applies to it, in the order the grammar merges
    them; ``$ref``s into ``root`` followed); arrays item by item."""
    if not isinstance(value, Mapping | list):
        return value
    groups = [g for s in schemas for g in _groups(value, s, root, 0)]
    if isinstance(value, list):
        return [_ordered(v, _item_schemas(groups, i), root) for i, v in enumerate(value)]
    named: dict[str, None] = {}  # the properties the schemas name, first named first
    for g in groups:
        props = g.get("properties")
        named.update(dict.fromkeys(props if isinstance(props, Mapping) else ()))
    keys = [*(k for k in named if k in value), *(k for k in value if k not in named)]
    return {k: _ordered(value[k], _property_schemas(groups, k), root) for k in keys}


# keywords llguidance applies in place, where they are written: the keywords before one are
# merged (as one schema) first, those after it later
_APPLICATORS = ("allOf", "anyOf", "oneOf", "$ref", "const", "enum")


def _groups(
    value: Any, schema: Any, root: Mapping[str, Any], depth: int
) -> list[Mapping[str, Any]]:
    """The plain keyword groups (``properties``, ``items``, ...) of ``schema`` that apply to
    ``value``, in the order llguidance merges them: it reads a schema's keywords as written
    (JSON keeps the order), merging the plain keywords read so far as one schema at each
    ``allOf``/``anyOf``/``oneOf``/``$ref``/``const``/``enum``, then what that keyword
    applies (each ``allOf`` member; the first ``anyOf``/``oneOf`` branch ``value`` is
    valid under; the schema referred to; the ``const``/``enum`` value); an object's
    properties go in the order the merged schemas first name them."""
    if not isinstance(schema, Mapping) or depth > 32:  # true/false; a chain, not a cycle
        return []
    out: list[Mapping[str, Any]] = []
    group: dict[str, Any] = {}
    for k, v in schema.items():
        if k not in _APPLICATORS:
            group[k] = v
            if k == "additionalProperties" and "properties" not in group:
                # llguidance puts the names of the properties written later here (so
                # additionalProperties knows them): their order is fixed at this group
                named = schema.get("properties")
                if isinstance(named, Mapping):
                    group["properties"] = dict.fromkeys(named, True)
            continue
        if group:
            out.append(group)
            group = {}
        if k == "allOf" and isinstance(v, list):
            for member in v:
                out += _groups(value, member, root, depth + 1)
        elif k in ("anyOf", "oneOf") and isinstance(v, list):
            out += _groups(value, _branch(value, v, root), root, depth + 1)
        elif k == "$ref" and isinstance(v, str):
            out += _groups(value, _referred(v, root), root, depth + 1)
        elif k in ("const", "enum") and isinstance(value, Mapping):
            # a constant object is written in its own key order
            same = [v] if k == "const" else v if isinstance(v, list) else []
            const = next((c for c in same if isinstance(c, Mapping) and c == value), None)
            if const is not None:
                out.append({"properties": {key: {"const": x} for key, x in const.items()}})
    if group:
        out.append(group)
    return out


def _branch(value: Any, branches: list[Any], root: Mapping[str, Any]) -> Any:
    """The first of ``anyOf``/``oneOf``'s ``branches`` that ``value`` is valid under."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(root)  # its resolver reads the branches' $refs
    return next((b for b in branches if validator.evolve(schema=b).is_valid(value)), None)


def _referred(ref: str, root: Mapping[str, Any]) -> Any:
    """The schema a local ``$ref`` points at in ``root`` (None for another document's)."""
    from urllib.parse import unquote

    if not (ref == "#" or ref.startswith("#/")):
        return None
    node: Any = root
    for raw in ref[2:].split("/") if ref != "#" else []:
        key = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            node = node.get(key)
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def _property_schemas(groups: list[Mapping[str, Any]], key: str) -> list[Any]:
    """The schemas of property ``key`` in each group that has one, in the groups' order (as
    llguidance merges a property's schemas: ``properties``, else a matching
    ``patternProperties``, else ``additionalProperties``)."""
    out = []
    for g in groups:
        props, patterns = g.get("properties"), g.get("patternProperties")
        if isinstance(props, Mapping) and key in props:
            out.append(props[key])
        elif isinstance(patterns, Mapping) and any(re.search(p, key) for p in patterns):
            out.append(next(s for p, s in patterns.items() if re.search(p, key)))
        elif "additionalProperties" in g:
            out.append(g["additionalProperties"])
    return out


def _item_schemas(groups: list[Mapping[str, Any]], i: int) -> list[Any]:
    """The schemas of item ``i`` of an array in each group (``prefixItems[i]``, else
    ``items``)."""
    out = []
    for g in groups:
        prefix = g.get("prefixItems")
        if isinstance(prefix, list) and i < len(prefix):
            out.append(prefix[i])
        elif "items" in g:
            out.append(g["items"])
    return out


def has_tool_turns(messages: Any) -> bool:
    """Whether a message list has tool calls or tool results."""
    return isinstance(messages, list) and any(
        isinstance(m, Mapping) and (m.get("role") == "tool" or bool(m.get("tool_calls")))
        for m in messages
    )


# -- other spellings ---------------------------------------------------------------------------
def read_tools(value: Any) -> tuple[Any, str | None]:
    """A ``tools`` value in lmops's form: ``(tools, None)``, or ``(value, why)`` when it is
    not one (``why`` says so in one line). JSON text is decoded; bare functions wrapped."""
    if isinstance(value, str):
        if not value.strip():
            return [], None
        try:
            value = json.loads(value)
        except ValueError as e:
            return value, f"not valid JSON ({e}); expected a list of functions"
    if isinstance(value, Mapping):  # one tool
        value = [value]
    if not isinstance(value, list):
        return value, f"expected a list of functions, got {_type(value)}"
    out = []
    for tool in value:
        if isinstance(tool, Mapping) and "function" not in tool and "name" in tool:
            tool = {"type": "function", "function": tool}
        if (
            isinstance(tool, Mapping)
            and tool.get("type", "function") == "function"
            and isinstance(tool.get("function"), Mapping)
        ):
            tool = tool_object(tool["function"])
        out.append(tool)
    return out, None


def uniform_call(call: Any) -> Any:
    """A call in OpenAI's form: one written flat (``{"name", "arguments"}``) is wrapped,
    and one without a ``type`` gets ``function``, as a client sends it."""
    if isinstance(call, Mapping) and "function" not in call and "name" in call:
        inner = {k: call[k] for k in ("name", "arguments") if k in call}
        rest = {k: v for k, v in call.items() if k not in ("name", "arguments", "type")}
        return {**rest, "type": "function", "function": inner}
    if isinstance(call, Mapping) and call.get("type") is None:
        return {**call, "type": "function"}
    return call


def read_tool_calls(value: str) -> tuple[list[Any] | None, str | None]:
    """A message's ``tool_calls`` stored as JSON text (LLaMA-Factory and some exports do) as
    a list of calls in OpenAI's form: ``(calls, None)`` or ``(None, why)``."""
    try:
        calls = json.loads(value) if value.strip() else []
    except ValueError as e:
        return None, f"not valid JSON ({e}); expected a list of calls (or its JSON text)"
    if isinstance(calls, Mapping):
        calls = [calls]
    if not isinstance(calls, list):
        return None, f"expected a list of calls (or its JSON text), got {_type(calls)}"
    return [uniform_call(c) for c in calls], None


def read_function_call(value: Any) -> tuple[list[Any] | None, str | None]:
    """ShareGPT's ``function_call`` value (one call's JSON ``{"name", "arguments"}``, or a
    list of them) as ``tool_calls``: ``(calls, None)`` or ``(None, why)``."""
    want = 'expected the JSON of a call, {"name": ..., "arguments": {...}}, or a list of them'
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            return None, f"not valid JSON ({e}); {want}"
    calls = value if isinstance(value, list) else [value]
    if not calls or not all(isinstance(c, Mapping) and "name" in c for c in calls):
        return None, want
    return [uniform_call(c) for c in calls], None
