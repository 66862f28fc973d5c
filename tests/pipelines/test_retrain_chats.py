"""The chats the closed loop scores (``eval_set`` and the flow-back holdout): rows whose
answer is text or a tool call. A tool conversation is scored with its tools, rendered as
the gateway renders them: the logged call (its name and arguments) is the answer whose
likelihood counts, so a model that calls the wrong tool or with other arguments scores
worse on it. Both models are scored on the chats both templates can render, never on
different subsets, and a set with none left fails the evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.models.loading import CHATML
from lmops.pipelines.retrain import _chat_rows, _compare, _nll_per_char, _render
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


# ChatML that refuses a system turn as Gemma's and old Mistral's templates do: tools go to a
# system message where a template cannot render them (the Hermes text), so it refuses them
REFUSES_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}" + CHATML
)


def _models(store: Any, tmp_path: Path) -> dict[str, str]:
    """champion ``chat:1``, whose template refuses the system role, and challenger ``chat:2``
    (plain ChatML, other weights)."""
    from transformers import AutoTokenizer

    tok = make_tokenizer(tmp_path / "tok")
    refusing = make_model(tmp_path / "champ", tok)
    t = AutoTokenizer.from_pretrained(str(refusing))
    t.chat_template = REFUSES_SYSTEM
    t.save_pretrained(str(refusing))
    champ = store.assets.register("model", "chat", refusing)
    chall = store.assets.register("model", "chat", make_model(tmp_path / "chall", tok, seed=1))
    return {"champion": champ.ref, "challenger": chall.ref}


def test_the_logged_call_is_the_answer_scored(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model = make_model(tmp_path / "m", make_tokenizer(tmp_path / "tok"))
    tok = AutoTokenizer.from_pretrained(str(model))
    calling = _chat_rows(_write(tmp_path / "a.jsonl", [CALLING]))
    [(_, answer)] = _render(tok, calling)  # type: ignore[misc]
    # the call's text, not the end of its turn (ChatML's <|im_end|>, not the tokenizer's
    # end token <|endoftext|>)
    assert tok.eos_token != "<|im_end|>" and answer.endswith("</tool_call>"), answer
    assert '"get_weather"' in answer and '"Paris"' in answer
    nll = _nll_per_char(model, {"a": _render(tok, calling)}, "cpu")["a"]  # type: ignore[dict-item]
    assert nll > 0
    other = json.loads(json.dumps(CALLING))
    other["messages"][-1]["tool_calls"][0]["function"]["arguments"] = '{"city": "Lyon"}'
    lyon = _render(tok, _chat_rows(_write(tmp_path / "b.jsonl", [other])))
    assert _nll_per_char(model, {"b": lyon}, "cpu")["b"] != nll  # type: ignore[dict-item]


def test_chats_one_template_cannot_render_are_left_out_for_both_models(
    store: Any, tmp_path: Path
) -> None:
    models = _models(store, tmp_path)
    chats = _chat_rows(_write(tmp_path / "h.jsonl", [PLAIN, CALLING, ANSWERED]))
    skipped: dict[str, dict[str, int]] = {}
    scores = _compare(store, models, {"holdout": chats}, "cpu", skipped)
    why = "champion chat:1: its chat template cannot render it (System role not supported)"
    assert skipped == {"holdout": {why: 2}}
    # both scored on the plain chat alone: the same scores as a set of only that chat
    alone = _compare(store, models, {"holdout": chats[:1]}, "cpu", {})
    assert scores == alone and scores["champion"]["holdout"] > 0


def test_a_set_with_nothing_both_models_can_score_fails_the_evaluation(
    store: Any, tmp_path: Path
) -> None:
    models = _models(store, tmp_path)
    chats = _chat_rows(_write(tmp_path / "h.jsonl", [CALLING]))
    skipped: dict[str, dict[str, int]] = {}
    # a score of nothing would be 0.0, a perfect one: a challenger promoted on nothing
    with pytest.raises(UserError, match=r"holdout: none of its 1 chat can be scored by both"):
        _compare(store, models, {"holdout": chats}, "cpu", skipped)
    assert list(skipped["holdout"].values()) == [1]
    with pytest.raises(UserError, match=r"eval_set: none of its 0 chats .*assistant's answer"):
        _compare(store, models, {"eval_set": []}, "cpu", {})
