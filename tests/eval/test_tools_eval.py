"""Tool-use tasks in lmops eval (eval/tools.py): a task YAML with ``tools`` puts the tool
instructions in the prompt's system turn and scores the reply's first call for the right
tool, arguments valid under the tool's schema, and the expected arguments."""

from __future__ import annotations

import json
from pathlib import Path

from lmops.eval.lm import FakeEvalModel
from lmops.eval.run import evaluate
from lmops.eval.tasks import load_task_file
from lmops.eval.tools import tool_args_match, tool_args_valid, tool_name

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]
TASK = """\
task: weather_calls
dataset_path: json
dataset_kwargs: {data_files: {test: calls.jsonl}}
test_split: test
output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{expected | tojson}}"
tools: TOOLS
metric_list: [{metric: tool_name}, {metric: tool_args_valid}, {metric: tool_args_match}]
"""


def call(name: str, args: object) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


def test_a_tool_use_task_scores_name_validity_and_match(tmp_path: Path) -> None:
    expected = {"name": "get_weather", "arguments": {"city": "Paris"}}
    rows = [{"question": f"q{i}", "expected": expected} for i in range(4)]
    (tmp_path / "calls.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "task.yaml").write_text(TASK.replace("TOOLS", json.dumps(TOOLS)))
    replies = {
        "q0": call("get_weather", {"city": "Paris"}),  # right, valid, matching
        "q1": call("get_weather", {"city": "Lyon", "days": 2}),  # right, valid, other args
        "q2": call("get_weather", {"town": "Paris"}),  # right tool, invalid arguments
        "q3": "It is sunny in Paris.",  # no call
    }
    prompts: list[str] = []

    def respond(ctx: str) -> str:
        prompts.append(ctx)
        return next(v for k, v in replies.items() if ctx.rstrip().endswith(k))

    task = load_task_file(tmp_path / "task.yaml")
    res = evaluate(FakeEvalModel(respond), [task], progress=False)[0]
    assert res.metrics["tool_name,none"] == 0.75
    assert res.metrics["tool_args_valid,none"] == 0.5
    assert res.metrics["tool_args_match,none"] == 0.25
    assert all("<tools>" in p and '"name": "get_weather"' in p for p in prompts)


def test_tool_metrics_read_bare_calls_and_compare_values() -> None:
    ref = json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "days": 2}})
    bare = '{"name": "get_weather", "arguments": "{\\"days\\": 2, \\"city\\": \\"Paris\\"}"}'
    assert tool_name(bare, ref) == tool_args_match(bare, ref) == 1.0
    assert tool_args_valid(bare, ref, tools=TOOLS) == 1.0
    assert tool_args_valid(call("get_time", {"x": 1}), ref, tools=TOOLS) == 1.0
    assert tool_args_valid(call("unknown", {}), ref, tools=TOOLS) == 0.0
    assert tool_name(call("get_time", {}), ref) == 0.0
