"""Scoring tool use: did the model call the right tool, with valid arguments, with the
expected arguments?

A task YAML lists its tools (OpenAI tool objects) under ``tools:``; the prompt's system
turn then gets the tool instructions (lmops.models.toolformat), and the target is the
expected call as JSON::

    task: weather_calls
    dataset_path: json
    dataset_kwargs: {data_files: {test: calls.jsonl}}
    test_split: test
    output_type: generate_until
    doc_to_text: "{{question}}"
    doc_to_target: "{{expected | tojson}}"      # {"name": ..., "arguments": {...}}
    tools: [{type: function, function: {name: get_weather, parameters: {...}}}]
    metric_list: [{metric: tool_name}, {metric: tool_args_valid}, {metric: tool_args_match}]

Each metric reads the reply's first call (``<tool_call>`` text, or a bare
``{"name", "arguments"}`` object):

* ``tool_name``: 1 when it names the expected tool;
* ``tool_args_valid``: 1 when it names one of the task's tools and its arguments validate
  against that tool's ``parameters`` schema;
* ``tool_args_match``: 1 when it names the expected tool and its arguments equal the
  expected ones (as JSON values: key order and spacing do not matter).

A reply without a call scores 0 on all three. Several acceptable calls are a list target
(``doc_to_target: calls``, a column of call objects): each is scored as its JSON, the best
kept (eval/run.py). The task's tools reach the metrics as their
``tools`` option (eval/tasks.py sets it).
"""

from __future__ import annotations

import json
from typing import Any

from lmops.models.toolformat import find_calls

__all__ = ["TOOL_METRICS", "tool_args_match", "tool_args_valid", "tool_name"]

TOOL_METRICS = ("tool_name", "tool_args_valid", "tool_args_match")


def _first_call(pred: str) -> tuple[str, Any] | None:
    calls = find_calls(pred or "")
    return calls[0] if calls else None


def _expected(ref: str) -> tuple[str, Any]:
    """The expected call in a target: ``{"name", "arguments"}`` as JSON."""
    from lmops.core.errors import UserError

    try:
        obj = json.loads(ref)
    except ValueError:
        obj = None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise UserError(
            f"a tool-use target must be a JSON object with name and arguments, got {ref[:80]!r}"
        )
    return obj["name"], obj.get("arguments", {})


def tool_name(pred: str, ref: str, *, tools: list[dict[str, Any]] | None = None) -> float:
    """1.0 when the reply's first call names the expected tool."""
    call = _first_call(pred)
    return float(call is not None and call[0] == _expected(ref)[0])


def tool_args_valid(pred: str, ref: str, *, tools: list[dict[str, Any]] | None = None) -> float:
    """1.0 when the first call names one of ``tools`` and its arguments validate against
    that tool's parameters schema (a tool without one takes any object)."""
    from jsonschema import Draft202012Validator

    call = _first_call(pred)
    if call is None:
        return 0.0
    schemas = {
        t["function"]["name"]: t["function"].get("parameters") or {"type": "object"}
        for t in tools or []
        if isinstance(t.get("function"), dict)
    }
    schema = schemas.get(call[0])
    if schema is None:
        return 0.0
    return float(Draft202012Validator(schema).is_valid(call[1]))


def tool_args_match(pred: str, ref: str, *, tools: list[dict[str, Any]] | None = None) -> float:
    """1.0 when the first call is the expected tool with exactly the expected arguments."""
    call = _first_call(pred)
    return float(call is not None and call == _expected(ref))
