"""The last gaps of tool rows: a tool without ``parameters`` takes no arguments (``{}`` or
none, as the gateway's grammar writes them); arguments train in the order the grammar
writes them under ``anyOf``/``oneOf``/``allOf`` too (the grammar of the same tools accepts
the call token by token); and ``tool_calls`` stored as JSON text read as the calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.train.data import load_training_rows
from tests.train.test_tool_rows import ANSWER, ASK, OPENAI, calls, learned, result, sft, write
from tests.train.test_tool_rows import tok as tok

NOW_FN = {"name": "get_time", "description": "The time now"}  # no parameters
NOW = {"type": "function", "function": NOW_FN}


def _now_call(arguments: Any = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": "get_time"}
    if arguments is not None:
        fn["arguments"] = arguments
    return {"id": "call_1", "type": "function", "function": fn}


@pytest.mark.parametrize("arguments", [None, "{}", {}], ids=["absent", "text", "object"])
def test_a_tool_without_parameters_trains_a_call_with_no_arguments(
    tok: Any, tmp_path: Path, arguments: Any
) -> None:
    row = {"messages": [ASK, calls(_now_call(arguments)), result("9:00"), ANSWER], "tools": [NOW]}
    ((ids, labels),) = sft(tok, tmp_path / "rows.jsonl", [row])
    assert '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>' in learned(
        tok, (ids, labels)
    )


# the gateway reads empty parameters as none (serve/tools.py: ``parameters or NO_ARGUMENTS``)
EMPTY = {"type": "function", "function": {**NOW_FN, "parameters": {}}}


@pytest.mark.parametrize("tool", [NOW, EMPTY], ids=["no_parameters", "empty_parameters"])
@pytest.mark.parametrize("arguments", ['{"tz": "UTC"}', {"tz": "UTC"}], ids=["text", "object"])
def test_arguments_for_a_tool_without_parameters_are_refused_in_one_line(
    tmp_path: Path, arguments: Any, tool: dict[str, Any]
) -> None:
    row = {"messages": [ASK, calls(_now_call(arguments)), result("9:00"), ANSWER], "tools": [tool]}
    path = write(tmp_path / "rows.jsonl", [row])
    with pytest.raises(UserError) as e:
        load_training_rows([path], "sft")
    want = (
        f"{path}:1: field 'messages[1].tool_calls[0].function.arguments': get_time has no "
        'parameters, so its arguments must be {}, got {"tz": "UTC"}'
    )
    assert str(e.value).startswith(want), str(e.value)
    assert "\n" not in str(e.value)


S = {"type": "string"}
PLACE = {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
         "required": ["lat", "lon"]}  # fmt: skip
# own properties, then allOf's members in order, then the branch of anyOf the value takes
# (a $ref, an array of objects inside), each in its schema's order
COMBINED_FN = {
    "name": "find",
    "parameters": {
        "type": "object",
        "$defs": {"place": PLACE},
        "properties": {"query": S},
        "allOf": [
            {"properties": {"limit": {"type": "integer"}}},
            {"properties": {"sort": S, "order": S}},
        ],
        "anyOf": [
            {"properties": {"city": S}, "required": ["city"]},
            {"properties": {"near": {"$ref": "#/$defs/place"},
                            "stops": {"type": "array", "items": {"$ref": "#/$defs/place"}}},
             "required": ["near"]},
        ],
    },
}  # fmt: skip
SHUFFLED = {
    "stops": [{"lon": 2.3, "lat": 48.8}],
    "near": {"lon": 2.35, "lat": 48.85},
    "order": "asc",
    "sort": "name",
    "limit": 3,
    "query": "cafes",
}
WANT = (
    '{"query": "cafes", "limit": 3, "sort": "name", "order": "asc", '
    '"near": {"lat": 48.85, "lon": 2.35}, "stops": [{"lat": 48.8, "lon": 2.3}]}'
)


def test_arguments_train_in_the_grammars_order_under_all_of_and_any_of(
    tok: Any, tmp_path: Path
) -> None:
    pytest.importorskip("llguidance", reason="the gateway's grammar is llguidance")
    from llguidance import LLMatcher
    from llguidance.hf import from_tokenizer

    from lmops.serve.tools import ToolPlan, compile_plan

    fn = {"name": "find", "arguments": json.dumps(SHUFFLED)}
    row = {
        "messages": [ASK, calls({"type": "function", "function": fn})],
        "tools": [{"type": "function", "function": COMBINED_FN}],
    }
    (example,) = sft(tok, tmp_path / "rows.jsonl", [row])
    text = f'<tool_call>\n{{"name": "find", "arguments": {WANT}}}\n</tool_call>'
    assert learned(tok, example) == text + "<|im_end|>"
    plan = ToolPlan(mode="required", tools=[{"type": "function", "function": COMBINED_FN}])
    compile_plan(plan)
    matcher = LLMatcher(from_tokenizer(tok), plan.grammar, log_level=0)
    assert all(matcher.consume_token(t) for t in tok(text, add_special_tokens=False)["input_ids"])
    assert matcher.is_accepting(), matcher.get_error()


def test_tool_calls_stored_as_json_text_read_as_the_calls(tok: Any, tmp_path: Path) -> None:
    stored = json.loads(json.dumps(OPENAI))
    stored["messages"][2]["tool_calls"] = json.dumps(stored["messages"][2]["tool_calls"])
    assert sft(tok, tmp_path / "a.jsonl", [stored]) == sft(tok, tmp_path / "b.jsonl", [OPENAI])


def test_tool_calls_text_that_is_not_json_is_refused_in_one_line(tmp_path: Path) -> None:
    stored = json.loads(json.dumps(OPENAI))
    stored["messages"][2]["tool_calls"] = "[{oops"
    path = write(tmp_path / "rows.jsonl", [stored])
    with pytest.raises(UserError) as e:
        load_training_rows([path], "sft")
    assert str(e.value).startswith(f"{path}:1: field 'messages[2].tool_calls': not valid JSON")
    assert "\n" not in str(e.value)


def _object(*keywords: tuple[str, Any]) -> dict[str, Any]:
    """A parameters schema of ``keywords`` in this order (the order llguidance reads)."""
    return {"type": "object", **dict(keywords)}


def _one(key: str) -> dict[str, Any]:
    return {"properties": {key: S}, "required": [key]}


# (parameters, the row's arguments, the arguments as the grammar writes them): llguidance
# merges properties, allOf, anyOf, oneOf and $ref in the order they are written
WRITTEN_ORDER = {
    "allOf_before_properties": (
        _object(("allOf", [{"properties": {"z": S}}]), ("properties", {"a": S})),
        {"a": "1", "z": "2"},
        '{"z": "2", "a": "1"}',
    ),
    "anyOf_before_properties": (
        _object(("anyOf", [_one("z")]), ("properties", {"a": S})),
        {"a": "1", "z": "2"},
        '{"z": "2", "a": "1"}',
    ),
    "anyOf_in_allOf": (
        _object(
            ("properties", {"a": S}),
            ("allOf", [{"anyOf": [_one("z")], "properties": {"m": S}}]),
        ),
        {"m": "3", "z": "2", "a": "1"},
        '{"a": "1", "z": "2", "m": "3"}',
    ),
    "anyOf_then_allOf": (
        _object(
            ("properties", {"a": S}),
            ("anyOf", [_one("z")]),
            ("allOf", [{"properties": {"m": S}}]),
        ),
        {"m": "3", "z": "2", "a": "1"},
        '{"a": "1", "z": "2", "m": "3"}',
    ),
    "oneOf_and_anyOf": (
        _object(("properties", {"a": S}), ("oneOf", [_one("o")]), ("anyOf", [_one("n")])),
        {"n": "3", "o": "2", "a": "1"},
        '{"a": "1", "o": "2", "n": "3"}',
    ),
    "properties_then_ref": (
        _object(
            ("$defs", {"more": {"properties": {"z": S}}}),
            ("properties", {"a": S}),
            ("$ref", "#/$defs/more"),
        ),
        {"z": "2", "a": "1"},
        '{"a": "1", "z": "2"}',
    ),
    # additionalProperties fixes the order of the properties written after it
    "additionalProperties_before_allOf": (
        _object(
            ("additionalProperties", S),
            ("allOf", [{"properties": {"z": S}}]),
            ("properties", {"a": S}),
        ),
        {"z": "2", "a": "1"},
        '{"a": "1", "z": "2"}',
    ),
    "nested_properties_merged": (
        _object(
            ("properties", {"p": {"type": "object", "properties": {"x": S}}}),
            ("allOf", [{"properties": {"p": {"properties": {"y": S, "z": S}}}}]),
        ),
        {"p": {"z": "3", "y": "2", "x": "1"}},
        '{"p": {"x": "1", "y": "2", "z": "3"}}',
    ),
}


@pytest.mark.parametrize("case", list(WRITTEN_ORDER))
def test_arguments_train_in_the_order_the_schemas_keywords_are_written(
    tok: Any, tmp_path: Path, case: str
) -> None:
    """llguidance reads a schema's keywords in the order they are written: the call the
    model learns is the one the gateway's grammar of the same tool accepts, token by
    token."""
    pytest.importorskip("llguidance", reason="the gateway's grammar is llguidance")
    from llguidance import LLMatcher
    from llguidance.hf import from_tokenizer

    from lmops.serve.tools import ToolPlan, compile_plan

    params, args, want = WRITTEN_ORDER[case]
    tool = {"type": "function", "function": {"name": "f", "parameters": params}}
    fn = {"name": "f", "arguments": json.dumps(args)}
    row = {"messages": [ASK, calls({"type": "function", "function": fn})], "tools": [tool]}
    (example,) = sft(tok, tmp_path / "rows.jsonl", [row])
    text = f'<tool_call>\n{{"name": "f", "arguments": {want}}}\n</tool_call>'
    assert learned(tok, example) == text + "<|im_end|>"
    plan = ToolPlan(mode="required", tools=[json.loads(json.dumps(tool))])
    compile_plan(plan)
    matcher = LLMatcher(from_tokenizer(tok), plan.grammar, log_level=0)
    assert all(matcher.consume_token(t) for t in tok(text, add_special_tokens=False)["input_ids"])
    assert matcher.is_accepting(), matcher.get_error()
