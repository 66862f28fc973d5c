"""The chats the closed loop scores (``eval_set`` and the flow-back holdout): rows whose
answer is text or a tool call. A tool conversation is scored with its tools, rendered as
the gateway renders them: the logged call (its name and arguments) is the answer whose
likelihood counts, so a model that calls the wrong tool or with other arguments scores
worse on it."""

from __future__ import annotations

import json
from pathlib import Path

from lmops.pipelines.retrain import _chat_rows, _nll_per_char
from tests.train.tiny import make_model, make_tokenizer

ASK = {"role": "user", "content": "Weather in Paris?"}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": CITY}}]
PLAIN = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
CALLING = {"messages": [ASK, {"role": "assistant", "content": None, "tool_calls": [CALL]}],
           "tools": TOOLS}  # fmt: skip
CALL_ID = {**CALL, "id": "c1"}
ANSWERED = {"messages": [ASK, {"role": "assistant", "content": None, "tool_calls": [CALL_ID]},
                         {"role": "tool", "tool_call_id": "c1", "content": "21 C"},
                         {"role": "assistant", "content": "It is 21 C."}],
            "tools": TOOLS}  # fmt: skip


def _write(path: Path, rows: list[dict]) -> Path:  # type: ignore[type-arg]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def test_tool_conversations_are_scored_chats_with_their_tools(tmp_path: Path) -> None:
    chats = _chat_rows(_write(tmp_path / "eval.jsonl", [PLAIN, CALLING, ANSWERED]))
    assert [len(m) for m, _ in chats] == [2, 2, 4]
    assert [t for _, t in chats] == [None, TOOLS, TOOLS]
    assert chats[1][0][-1]["tool_calls"][0]["function"] == CALL["function"]


def test_the_logged_call_is_the_answer_scored(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m", make_tokenizer(tmp_path / "tok"))
    calling = _chat_rows(_write(tmp_path / "a.jsonl", [CALLING]))
    nll = _nll_per_char(model, calling, "cpu")
    assert nll > 0  # scored, not left out (no chat: the mean of nothing is 0)
    other = json.loads(json.dumps(CALLING))
    other["messages"][-1]["tool_calls"][0]["function"]["arguments"] = '{"city": "Lyon"}'
    assert _nll_per_char(model, _chat_rows(_write(tmp_path / "b.jsonl", [other])), "cpu") != nll
    both = _chat_rows(_write(tmp_path / "c.jsonl", [PLAIN, CALLING, ANSWERED]))
    assert _nll_per_char(model, both, "cpu") > 0
