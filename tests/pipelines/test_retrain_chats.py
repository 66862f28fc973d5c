"""The chats the closed loop scores (``eval_set`` and the flow-back holdout): rows whose
reference answer is text; a row with tool calls or results is left out, not a crash."""

from __future__ import annotations

import json
from pathlib import Path

from lmops.pipelines.retrain import _chat_rows

ASK = {"role": "user", "content": "Weather in Paris?"}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
TOOLS = [{"type": "function", "function": {"name": "get_weather"}}]


def test_rows_with_tool_turns_are_left_out_of_the_scored_chats(tmp_path: Path) -> None:
    plain = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    }
    rows = [
        plain,
        # ends in a call: no text answer to score
        {"messages": [ASK, {"role": "assistant", "content": None, "tool_calls": [CALL]}],
         "tools": TOOLS},
        # ends in text, but its prompt holds a call (content null) and a result
        {"messages": [ASK, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                      {"role": "tool", "content": "21 C"},
                      {"role": "assistant", "content": "It is 21 C."}],
         "tools": TOOLS},
    ]  # fmt: skip
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    assert _chat_rows(path) == [plain["messages"]]
