"""Grammar-constrained decoding inside the engine's continuous batching
(lmops.models.grammar) and the tool-call text format (lmops.serve.tools), without a
server: each sequence keeps its own grammar beside free ones in one batch; a triggered
grammar leaves the text free until the trigger, then constrains the rest; replies split
into content and complete calls the same way whole or streamed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import pytest

from lmops.models.engine import Engine
from lmops.models.types import Delta, Done, GenRequest
from lmops.serve.protocol import ChatRequest
from lmops.serve.tools import (
    ToolStream,
    compile_plan,
    finish_reason,
    parse_reply,
    plan_request,
    render,
    without_spans,
)
from tests.train.tiny import make_model, make_tokenizer

pytest.importorskip("llguidance", reason="grammar-constrained decoding needs llguidance")

SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 999},
        "tag": {"type": "string", "enum": ["a", "bb", "ccc"]},
    },
    "required": ["n", "tag"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("grammar")
    e = Engine(make_model(root / "m", make_tokenizer(root / "tok"), seed=7), max_running=8)
    yield e
    e.close()


def grammars(engine: Engine) -> Any:
    from lmops.models.grammar import grammars_for

    return grammars_for(engine.tokenizer, engine.model.config.vocab_size, sorted(engine.eos_ids))


async def run(engine: Engine, reqs: list[GenRequest]) -> list[tuple[str, Done]]:
    async def one(req: GenRequest) -> tuple[str, Done]:
        text = ""
        async for ev in engine.generate(req):
            if isinstance(ev, Delta):
                text += ev.text
            else:
                return text, ev
        raise AssertionError("no Done")

    return await asyncio.gather(*(one(r) for r in reqs))


def test_constrained_and_free_sequences_share_a_batch(engine: Engine) -> None:
    from lmops.models.grammar import json_rule

    g = grammars(engine)
    prompt = engine.encode("The quick brown")
    free = [
        GenRequest(f"f{i}", prompt_ids=prompt, max_tokens=40, temperature=0.0) for i in range(2)
    ]
    constrained = [
        GenRequest(
            f"c{i}",
            prompt_ids=prompt,
            max_tokens=80,
            temperature=1.0,
            seed=i,
            constraint=g.constraint(f"start: {json_rule(SCHEMA)}"),
        )
        for i in range(4)
    ]
    results = asyncio.run(run(engine, [*free, *constrained]))
    alone = asyncio.run(run(engine, [free[0]]))[0]
    assert results[0][0] == results[1][0] == alone[0]  # free rows are unaffected by masks
    for text, done in results[2:]:
        assert done.finish_reason == "stop", text  # ended as soon as the grammar was complete
        jsonschema.validate(json.loads(text), SCHEMA)


def test_a_trigger_constrains_only_what_follows_it(engine: Engine) -> None:
    from lmops.models.grammar import json_rule

    prompt = engine.encode("Hello, how are")
    free_text, _ = asyncio.run(
        run(engine, [GenRequest("f", prompt_ids=prompt, max_tokens=12, temperature=0.0)])
    )[0]
    trigger = free_text[:3]
    assert len(trigger) == 3
    req = GenRequest(
        "t",
        prompt_ids=prompt,
        max_tokens=80,
        temperature=0.0,
        constraint=grammars(engine).constraint(f'start: "!" {json_rule(SCHEMA)}', trigger=trigger),
    )
    text, done = asyncio.run(run(engine, [req]))[0]
    at = text.index(trigger) + len(trigger)
    assert text[:at] == free_text[:at]  # free (greedy, identical) up to the trigger
    assert done.finish_reason == "stop" and text[at] == "!", text
    jsonschema.validate(json.loads(text[at + 1 :]), SCHEMA)


def test_the_tool_grammar_gives_parsable_calls(engine: Engine) -> None:
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": SCHEMA}},
        {"type": "function", "function": {"name": "g"}},
    ]
    plan = plan_request(
        ChatRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools,
             "tool_choice": "required"}
        )
    )  # fmt: skip
    assert plan is not None
    compile_plan(plan)
    assert plan.grammar is not None and plan.trigger is None
    # the shortest further call, for the engine's reserve (a list ends with no room for it)
    assert plan.next_calls == tuple(
        f'\n<tool_call>\n{{"name": "{t["function"]["name"]}", "arguments": {{}}}}\n</tool_call>'
        for t in tools
    )
    reqs = [
        GenRequest(
            f"c{i}",
            prompt_ids=engine.encode("Machine"),
            max_tokens=120,
            temperature=1.0,
            seed=i,
            constraint=grammars(engine).constraint(plan.grammar),
        )
        for i in range(3)
    ]
    for text, done in asyncio.run(run(engine, reqs)):
        parsed = parse_reply(text, plan)
        assert done.finish_reason == "stop" and parsed.calls and not parsed.cut, text
        for call in parsed.calls:
            args = json.loads(call["function"]["arguments"])
            if call["function"]["name"] == "f":
                jsonschema.validate(args, SCHEMA)
            else:
                assert isinstance(args, dict)


def test_replies_split_the_same_whole_or_streamed() -> None:
    plan = plan_request(
        ChatRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}],
             "tools": [{"type": "function", "function": {"name": "f"}}]}
        )
    )  # fmt: skip
    assert plan is not None and plan.mode == "auto"
    text = (
        'Let me see <tool_cal not yet.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n'
        '</tool_call>\n<tool_call>\n{"name": "f", "arguments": {"b": "<tool_call>"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "f", "argu'
    )
    whole = parse_reply(text, plan, "length")
    # the complete calls, and the text around them (the cut one's too) as the content
    want = 'Let me see <tool_cal not yet.\n<tool_call>\n{"name": "f", "argu'
    assert whole.content == want and whole.cut
    assert [c["function"]["arguments"] for c in whole.calls] == ['{"a": 1}', '{"b": "<tool_call>"}']
    # the spans that went out as calls, taken out of the reply, leave exactly the content
    assert without_spans(text, [], whole.hidden)[0] == want
    for step in (1, 3, 7):
        s = ToolStream(plan)
        content, calls, hidden = "", [], []
        for k in range(0, len(text), step):
            piece, got = s.feed(text[k : k + step])
            content += piece
            calls += got
            hidden += s.take_hidden()
        tail, _ = s.finish("length")
        assert content + tail == whole.content and s.cut
        assert [c["function"] for c in calls] == [c["function"] for c in whole.calls]
        assert hidden + s.take_hidden() == whole.hidden


def test_finish_reason_with_complete_calls() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    # a reply max_tokens cut after complete calls is length, as OpenAI and vLLM say
    assert [finish_reason(r, calls) for r in ("stop", "length", "content_filter")] == [
        "tool_calls",
        "length",
        "content_filter",
    ]
    assert finish_reason("length", []) == "length"


def test_fallback_rendering_of_tools_calls_and_results() -> None:
    plan = plan_request(
        ChatRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}],
             "tools": [{"type": "function", "function": {"name": "f"}}]}
        )
    )  # fmt: skip
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "r1"},
        {"role": "tool", "tool_call_id": "call_2", "content": "r2"},
    ]  # fmt: skip
    out, tools = render(messages, plan, native=False)
    assert tools is None and out[0]["role"] == "system" and '"name": "f"' in out[0]["content"]
    assert out[2] == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>',
    }
    assert out[3] == {
        "role": "user",
        "content": "<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response>",
    }
    native, native_tools = render(messages, plan, native=True)
    assert native_tools == plan.tools  # type: ignore[union-attr]
    assert native[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}


NATIVE_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t.function.name }};{% endfor %}"
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}'
    "\n</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_with_tools_support_renders_them_itself(engine: Engine) -> None:
    import copy

    from lmops.serve.tools import template_has_tools

    assert not template_has_tools(engine.tokenizer)  # the tiny model's plain ChatML
    tok = copy.deepcopy(engine.tokenizer)
    tok.chat_template = NATIVE_TEMPLATE
    assert template_has_tools(tok)
    plan = plan_request(
        ChatRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}],
             "tools": [{"type": "function", "function": {"name": "lookup"}}]}
        )
    )  # fmt: skip
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
    ]  # fmt: skip
    out, tools = render(messages, plan, native=True)
    text = tok.apply_chat_template(out, tools=tools, tokenize=False, add_generation_prompt=True)
    # the tools list, the call with its arguments as an object (not a quoted string), the result
    assert "lookup;" in text
    assert '<tool_call>\n{"name": "lookup", "arguments": {"q": "x"}}\n</tool_call>' in text
    assert "<|im_start|>tool\nfound<|im_end|>" in text


def test_nested_pydantic_tools_keep_their_references(engine: Engine) -> None:
    """openai.pydantic_function_tool writes nested models as $defs + $ref; the call's
    grammar must still resolve them."""
    openai = pytest.importorskip("openai")
    from pydantic import BaseModel, Field

    class Address(BaseModel):
        city: str = Field(max_length=6)

    class Person(BaseModel):
        age: int = Field(ge=0, le=99)
        home: Address

    tool = openai.pydantic_function_tool(Person)
    assert "$defs" in tool["function"]["parameters"]
    plan = plan_request(
        ChatRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [tool],
             "tool_choice": "required", "parallel_tool_calls": False}
        )
    )  # fmt: skip
    assert plan is not None
    compile_plan(plan)
    assert plan.grammar is not None
    reqs = [
        GenRequest(
            f"p{i}",
            prompt_ids=engine.encode("Hello"),
            max_tokens=120,
            temperature=1.0,
            seed=i,
            constraint=grammars(engine).constraint(plan.grammar),
        )
        for i in range(2)
    ]
    for text, done in asyncio.run(run(engine, reqs)):
        (call,) = parse_reply(text, plan).calls
        assert done.finish_reason == "stop"
        Person.model_validate_json(call["function"]["arguments"])
