"""Tool calls train: OpenAI/TRL ``tool_calls`` and ``tool`` turns, ShareGPT's
``function_call``/``observation`` with a ``tools`` column (and LLaMA-Factory's ``columns``
and ``tags`` for them) give the token ids and labels of the equivalent OpenAI row; the
calls are learned, the tools list and the results are not; a prompt's text is the
gateway's prompt for the same conversation, token for token; a template without tools
support is refused in one line; and a tiny model trained on one tool call, registered and
served, answers the official ``openai`` client with a parsed ``tool_calls``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmops.core.errors import UserError
from lmops.models.chat import CHATML_TOOLS, chat_text, render_tools
from lmops.models.loading import CHATML, load_tokenizer
from lmops.store import Store
from lmops.train.data import IGNORE, build_sft_examples, load_training_rows
from tests.train.tiny import make_model, make_tokenizer

WEATHER_FN = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
WEATHER = {"type": "function", "function": WEATHER_FN}
# the same function, its keys in another order than a request's (read in the gateway's order)
SHUFFLED_FN = {k: WEATHER_FN[k] for k in ("parameters", "description", "name")}
SYSTEM = {"role": "system", "content": "You check the weather."}
ASK = {"role": "user", "content": "Weather in Paris?"}


def call(city: str, n: int = 1) -> dict[str, Any]:
    """An OpenAI tool call, as a client sends it back (arguments as JSON text)."""
    return {
        "id": f"call_{n}",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }


def calls(*items: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": list(items)}


def result(text: str, n: int = 1) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": f"call_{n}", "content": text}


ANSWER = {"role": "assistant", "content": "It is 21 C."}
# The OpenAI row every other shape below stands for (or a variant of it).
OPENAI = {
    "messages": [SYSTEM, ASK, calls(call("Paris")), result("21 C"), ANSWER],
    "tools": [WEATHER],
}
SHAREGPT_CALL = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})

# (row in another tool's shape, the OpenAI row it stands for, columns/tags)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    # TRL: arguments as objects, no ids, results named by the function
    "trl_messages": (
        {
            "messages": [
                SYSTEM,
                ASK,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                        }
                    ],
                },
                {"role": "tool", "name": "get_weather", "content": "21 C"},
                ANSWER,
            ],
            "tools": [WEATHER],
        },
        OPENAI,
        {},
    ),
    # LLaMA-Factory's sharegpt: the tools column is JSON text of bare functions, their
    # keys in any order
    "sharegpt": (
        {
            "conversations": [
                {"from": "human", "value": "Weather in Paris?"},
                {"from": "function_call", "value": SHAREGPT_CALL},
                {"from": "observation", "value": "21 C"},
                {"from": "gpt", "value": "It is 21 C."},
            ],
            "system": "You check the weather.",
            "tools": json.dumps([SHUFFLED_FN]),
        },
        OPENAI,
        {},
    ),
    # parallel calls: a function_call value that is a list; one observation
    "sharegpt_parallel_calls": (
        {
            "conversations": [
                {"from": "human", "value": "Weather in Paris?"},
                {
                    "from": "function_call",
                    "value": json.dumps(
                        [
                            {"name": "get_weather", "arguments": {"city": "Paris"}},
                            {"name": "get_weather", "arguments": {"city": "Lyon"}},
                        ]
                    ),
                },
                {"from": "observation", "value": "21 C, 19 C"},
                {"from": "gpt", "value": "It is 21 C."},
            ],
            "tools": json.dumps([WEATHER_FN]),
        },
        {
            "messages": [
                ASK,
                calls(call("Paris"), call("Lyon", 2)),
                {"role": "tool", "content": "21 C, 19 C"},
                ANSWER,
            ],
            "tools": [WEATHER],
        },
        {},
    ),
    # a dataset_info entry with its own column and role names
    "llama_factory_columns_tags": (
        {
            "dialog": [
                {"speaker": "Q", "text": "Weather in Paris?"},
                {"speaker": "CALL", "text": SHAREGPT_CALL},
                {"speaker": "RESULT", "text": "21 C"},
                {"speaker": "A", "text": "It is 21 C."},
            ],
            "functions": json.dumps([WEATHER_FN]),
        },
        {"messages": [ASK, calls(call("Paris")), result("21 C"), ANSWER], "tools": [WEATHER]},
        {
            "columns": {"messages": "dialog", "tools": "functions"},
            "tags": {
                "role_tag": "speaker",
                "content_tag": "text",
                "user_tag": "Q",
                "assistant_tag": "A",
                "function_tag": "CALL",
                "observation_tag": "RESULT",
            },
        },
    ),
    # TRL's prompt/completion: the prompt's call is context (weight 0), the answer trains
    "trl_prompt_completion": (
        {
            "prompt": [SYSTEM, ASK, calls(call("Paris")), result("21 C")],
            "completion": [ANSWER],
            "tools": [WEATHER],
        },
        {
            "messages": [
                SYSTEM,
                ASK,
                {**calls(call("Paris")), "weight": 0},
                result("21 C"),
                ANSWER,
            ],
            "tools": [WEATHER],
        },
        {},
    ),
}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
LEARNED = {
    "trl_prompt_completion": "It is 21 C.<|im_end|>",
    "sharegpt_parallel_calls": CALL_TEXT
    + '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call>'
    "<|im_end|>It is 21 C.<|im_end|>",
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tests' tiny tokenizer with ChatML that renders tools."""
    return load_tokenizer(make_tokenizer(tmp_path_factory.mktemp("tok")), CHATML_TOOLS)


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def sft(tok: Any, path: Path, rows: list[Any], **mapping: Any) -> list[tuple[list[int], ...]]:
    loaded = load_training_rows([write(path, rows)], "sft", **mapping)
    examples, _ = build_sft_examples(loaded.rows, tok, 2048)
    return [(e.input_ids, e.labels) for e in examples]


def learned(tok: Any, example: tuple[list[int], ...]) -> str:
    ids, labels = example
    return tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE])


def test_the_named_template_is_chatml_of_the_gateways_tool_text() -> None:
    """chatml-tools renders what the gateway writes for a model without tools support
    (the Hermes text) in ChatML; a chat without tools exactly as ChatML."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from lmops.models.chat import render_tools
    from lmops.models.loading import CHATML
    from lmops.train.spec import check_chat_template

    assert check_chat_template("chatml-tools") == CHATML_TOOLS

    def text(template: str, messages: list[Any], tools: Any) -> str:
        return render_jinja_template(conversations=[messages], tools=tools, chat_template=template)[
            0
        ][0]

    parallel = [ASK, calls(call("Paris"), call("Lyon", 2)), result("21 C"), result("19 C", 2)]
    chats = [
        OPENAI["messages"],
        OPENAI["messages"][1:],
        [*parallel, {"role": "assistant", "content": "Warm.", "tool_calls": [call("Nice", 3)]}],
        [SYSTEM, ASK, ANSWER],
        [{"role": "developer", "content": "Be terse."}, ASK, calls(call("Paris"))],
    ]
    for messages in chats:
        for tools in ([WEATHER], None):
            native, _ = render_tools(messages, tools, native=True)
            hermes, _ = render_tools(messages, tools, native=False)
            assert text(CHATML_TOOLS, native, tools) == text(CHATML, hermes, None)
    assert text(CHATML_TOOLS, [SYSTEM, ASK, ANSWER], None) == text(
        CHATML, [SYSTEM, ASK, ANSWER], None
    )


@pytest.mark.parametrize("case", list(CASES))
def test_each_tool_shape_trains_as_the_openai_row_it_stands_for(
    tok: Any, tmp_path: Path, case: str
) -> None:
    foreign, native, mapping = CASES[case]
    got = sft(tok, tmp_path / "foreign.jsonl", [foreign], **mapping)
    want = sft(tok, tmp_path / "native.jsonl", [native])
    assert got == want
    # the calls and the answer are learned; the tools list, the results and the prompt not
    assert learned(tok, got[0]) == LEARNED.get(case, CALL_TEXT + "<|im_end|>It is 21 C.<|im_end|>")
    text = tok.decode(got[0][0])
    assert '"description": "The weather in a city"' in text and "<tool_response>" in text


def test_a_call_turn_of_weight_0_is_context(tok: Any, tmp_path: Path) -> None:
    weighted = copy.deepcopy(OPENAI)
    weighted["messages"][2]["weight"] = 0
    (plain,) = sft(tok, tmp_path / "plain.jsonl", [OPENAI])
    (got,) = sft(tok, tmp_path / "weighted.jsonl", [weighted])
    assert got[0] == plain[0] and learned(tok, got) == "It is 21 C.<|im_end|>"


# -- the gateway reads what training taught -----------------------------------------------------
# a template of another layout than ChatML's (results as `tool` turns, tools by name)
OTHER_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t.function.name }};{% endfor %}"
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}'
    "\n</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize(
    "template", ["chatml-tools", OTHER_TEMPLATE], ids=["chatml-tools", "other"]
)
@pytest.mark.parametrize("case", ["trl_messages", "sharegpt", "llama_factory_columns_tags"])
def test_the_prompt_of_each_answer_is_the_gateways_prompt(
    tmp_path: Path, template: str, case: str
) -> None:
    """For every assistant turn of a training row, the gateway's prompt ids for the same
    conversation (the OpenAI request a client sends, through ``encode_messages``) are the
    training ids up to that turn, and the labels begin exactly where that prompt ends."""
    from lmops.models.engine import Engine
    from lmops.serve.backends import encode_messages
    from lmops.serve.protocol import ChatRequest
    from lmops.serve.tools import plan_request
    from lmops.train.spec import check_chat_template
    from tests.train.tiny import make_model

    folder = make_model(tmp_path / "m", make_tokenizer(tmp_path / "tok"))
    tok = load_tokenizer(folder, check_chat_template(template))
    foreign, native, mapping = CASES[case]
    ((ids, labels),) = sft(tok, tmp_path / "rows.jsonl", [foreign], **mapping)
    engine = Engine(folder)
    try:
        engine.tokenizer.chat_template = tok.chat_template  # as the trained model's folder has it
        conversation = native["messages"]
        for k, m in enumerate(conversation):
            if m["role"] != "assistant":
                continue
            req = ChatRequest.model_validate(
                {"model": "m", "messages": conversation[:k], "tools": native["tools"]}
            )
            messages = [m.model_dump(exclude_none=True) for m in req.messages]
            prompt = encode_messages(engine, messages, plan_request(req), "escape")
            assert ids[: len(prompt)] == prompt
            assert labels[len(prompt) - 1] == IGNORE and labels[len(prompt)] != IGNORE
            rendered = chat_text(tok, messages, native["tools"], add_generation_prompt=True)
            assert tok(rendered, add_special_tokens=False)["input_ids"] == prompt
    finally:
        engine.close()


def test_a_call_turn_renders_as_trained_beside_a_message_with_special_tokens(
    tmp_path: Path,
) -> None:
    """The gateway escapes special-token strings in a message's text by rendering a
    placeholder in that message: only there, so a tool-call turn's empty content stays
    empty and the call renders as training renders it (``assistant\\n<tool_call>``)."""
    from lmops.models.engine import Engine

    folder = make_model(tmp_path / "m", make_tokenizer(tmp_path / "tok"))
    engine = Engine(folder)
    try:
        engine.tokenizer.chat_template = CHATML_TOOLS
        start = engine.tokenizer.convert_tokens_to_ids("<|im_start|>")

        def turns_after_the_user(user: str) -> list[int]:
            messages = [{"role": "user", "content": user}, calls(call("Paris")), result("21 C")]
            rendered, tools = render_tools(messages, [WEATHER], native=True)
            ids = engine.encode_chat(rendered, tools=tools)
            starts = [i for i, t in enumerate(ids) if t == start]
            return ids[starts[2] :]  # the system (tools) turn, the user's, then the call's

        plain = turns_after_the_user("Weather in Paris?")
        forged = turns_after_the_user("Weather in Paris?<|im_end|>")
        assert forged == plain
        assert engine.tokenizer.decode(forged).startswith("<|im_start|>assistant\n<tool_call>\n")
    finally:
        engine.close()


# -- refusals --------------------------------------------------------------------------------------
def test_a_template_without_tools_is_refused_naming_the_row_and_the_fix(tmp_path: Path) -> None:
    plain = load_tokenizer(make_tokenizer(tmp_path / "tok"))  # ChatML, no tools
    path = write(tmp_path / "rows.jsonl", [{"messages": [ASK, ANSWER]}, OPENAI])
    rows = load_training_rows([path], "sft").rows
    with pytest.raises(UserError) as e:
        build_sft_examples(rows, plain, 2048)
    assert str(e.value) == (
        f"{path}:2: the row has tool calls, and the model's chat template does not render "
        "tools as the gateway reads them (<tool_call> text, and the results); set "
        "chat_template: chatml-tools in the job (ChatML with tool calls in the format the "
        "gateway parses), or train a model whose own template takes tools (Qwen2.5's does)"
    )
    only_tools = write(tmp_path / "t.jsonl", [{"messages": [ASK, ANSWER], "tools": [WEATHER]}])
    with pytest.raises(UserError, match=r"t\.jsonl:1: the row has tools, and the model's"):
        build_sft_examples(load_training_rows([only_tools], "sft").rows, plain, 2048)


# Templates that name tools and still do not write a call as the gateway reads it.
LLAMA_LIKE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}"
    "{% for c in m.tool_calls %}"
    '{"name": "{{ c.function.name }}", "parameters": {{ c.function.arguments | tojson }}}'
    "{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN25_CALLS = (  # the tool-call part of Qwen2.5's template, which the probe accepts
    "{%- if tools %}<|im_start|>system\n{%- for tool in tools %}{{- tool | tojson }}"
    "{%- endfor %}<|im_end|>\n{%- endif %}{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant' }}{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' }}{{- tool_call.name }}'
    "{{- '\", \"arguments\": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response>"
    "<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content"
    " + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.mark.parametrize(
    ("template", "trains"),
    [
        (LLAMA_LIKE, False),  # calls as bare JSON with "parameters": the parser finds none
        ("{#- supports tools? no -#}" + CHATML, False),  # names tools, drops the call
        (CHATML, False),
        (QWEN25_CALLS, True),
        (CHATML_TOOLS, True),
    ],
)
def test_only_a_template_that_writes_calls_as_the_gateway_reads_them_trains_tool_rows(
    tmp_path: Path, template: str, trains: bool
) -> None:
    tok = load_tokenizer(make_tokenizer(tmp_path / "tok"), template)
    rows = load_training_rows([write(tmp_path / "rows.jsonl", [OPENAI])], "sft").rows
    if trains:
        (example,) = build_sft_examples(rows, tok, 2048)[0]
        assert CALL_TEXT in tok.decode(example.input_ids)
        return
    with pytest.raises(UserError, match=r"rows\.jsonl:1: the row has tool calls, and the model"):
        build_sft_examples(rows, tok, 2048)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"conversations": [{"from": "human", "value": "x"},
                               {"from": "function_call", "value": "{get_weather"}]},
            "field 'conversations[1].value': not valid JSON",
        ),
        (
            {"conversations": [{"from": "human", "value": "x"},
                               {"from": "function_call", "value": SHAREGPT_CALL.replace("get_", "got_")}],
             "tools": json.dumps([WEATHER_FN])},
            "field 'conversations[1].value': calls 'got_weather', which the row's tools do not "
            "list (get_weather)",
        ),
        (
            {"conversations": [{"from": "human", "value": "x"},
                               {"from": "function_call", "value": SHAREGPT_CALL},
                               {"from": "human", "value": "and?"}],
             "tools": json.dumps([WEATHER_FN])},
            "field 'conversations[2].from': expected 'observation' (the results) after tool "
            "calls, got 'human'",
        ),
        (
            {"messages": [ASK, calls({"type": "function",
                                      "function": {"name": "get_weather", "arguments": "[1]"}})],
             "tools": [WEATHER]},
            "field 'messages[1].tool_calls[0].function.arguments': expected a JSON object",
        ),
        (
            {"messages": [ASK, ANSWER], "tools": "[{\"name\": \"get weather\"}]"},
            "field 'tools[0].function.name': expected a name of 1 to 64 letters",
        ),
        (
            {"messages": [ASK, ANSWER], "tools": "{oops"},
            "field 'tools': not valid JSON",
        ),
        (
            {"messages": [ASK, ANSWER],
             "tools": [{"name": "get_weather", "parameters": {"type": "objekt"}}]},
            "field 'tools[0].function.parameters': invalid JSON schema at type:",
        ),
        (  # the gateway's check: a local $ref must resolve
            {"messages": [ASK, ANSWER],
             "tools": [{"name": "get_weather", "parameters": {"$ref": "#/$defs/city"}}]},
            "field 'tools[0].function.parameters': $ref '#/$defs/city' points at nothing in "
            "this schema",
        ),
        (
            {"messages": [ASK, {"role": "function", "content": "21 C"}]},
            "field 'messages[1].role': 'function' is OpenAI's retired role",
        ),
        (
            {"messages": [ASK, calls(call("Paris")), result("21 C")], "tools": [WEATHER]},
            "field 'messages[2].role': the last turn must be 'assistant', got 'tool'",
        ),
        # calls without tools: the gateway reports calls of the request's tools only
        (
            {"messages": [ASK, calls(call("Paris")), result("21 C"), ANSWER]},
            "field 'messages[1].tool_calls[0].function.name': the row calls get_weather but "
            "lists no tools; add a tools column (columns.tools)",
        ),
        (
            {"messages": [ASK, calls(call("Paris")), result("21 C"), ANSWER], "tools": []},
            "field 'messages[1].tool_calls[0].function.name': the row calls get_weather but "
            "lists no tools",
        ),
        (
            {"conversations": [{"from": "human", "value": "x"},
                               {"from": "function_call", "value": SHAREGPT_CALL},
                               {"from": "observation", "value": "21 C"},
                               {"from": "gpt", "value": "ok"}],
             "tools": ""},
            "field 'conversations[1].value': the row calls get_weather but lists no tools",
        ),
        (
            {"messages": [ASK, calls({"type": "function",
                                      "function": {"name": "rm -rf", "arguments": "{}"}}),
                          result("ok"), ANSWER]},
            "field 'messages[1].tool_calls[0].function.name': expected a name of 1 to 64 "
            "letters, digits, '_' or '-', got 'rm -rf'",
        ),
    ],
)  # fmt: skip
def test_bad_tool_rows_are_named_in_the_rows_own_fields(
    tmp_path: Path, row: dict[str, Any], message: str
) -> None:
    path = write(tmp_path / "rows.jsonl", [row])
    with pytest.raises(UserError) as e:
        load_training_rows([path], "sft")
    assert str(e.value).startswith(f"{path}:1: {message}"), str(e.value)


def test_the_readme_tool_job_and_its_row_read_as_shown(tok: Any, tmp_path: Path) -> None:
    import re

    from lmops.train.spec import load_spec

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text("utf-8")
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "# tools.yaml" in b)
    comment = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    row = json.loads("".join(comment[1:]))
    (tmp_path / "tools.yaml").write_text(block, "utf-8")
    spec = load_spec(tmp_path / "tools.yaml")
    assert spec.chat_template == CHATML_TOOLS and spec.stage == "sft"
    ((ids, labels),) = sft(tok, tmp_path / "readme.jsonl", [row])
    assert learned(tok, (ids, labels)) == CALL_TEXT + "<|im_end|>"


# -- arguments as the gateway's grammar writes them ---------------------------------------------------
UNITS_FN = {
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]},
            "when": {"type": "object", "properties": {"day": {"type": "string"},
                                                      "hour": {"type": "integer"}}},
        },
        "required": ["city", "unit"],
    },
}  # fmt: skip


def test_arguments_train_in_the_order_the_gateways_grammar_writes_them(
    tok: Any, tmp_path: Path
) -> None:
    """Arguments written in another order than the schema's ``properties`` (at any depth,
    as an object or as JSON text, with a key the schema does not name) train in the
    schema's order, which is the only order the gateway's grammar lets the model write:
    the grammar of the same tools accepts, token by token, the call the model learned."""
    pytest.importorskip("llguidance", reason="the gateway's grammar is llguidance")
    from llguidance import LLMatcher
    from llguidance.hf import from_tokenizer

    from lmops.serve.tools import ToolPlan, compile_plan

    args = {"when": {"hour": 9, "day": "mon"}, "note": "x", "unit": "c", "city": "Paris"}
    want = '{"city": "Paris", "unit": "c", "when": {"day": "mon", "hour": 9}, "note": "x"}'
    rows = [
        {"messages": [ASK, calls({"type": "function", "function": {"name": "get_weather",
                                                                   "arguments": value}})],
         "tools": [{"type": "function", "function": UNITS_FN}]}
        for value in (args, json.dumps(args))
    ] + [
        {"conversations": [{"from": "human", "value": "Weather in Paris?"},
                           {"from": "function_call",
                            "value": json.dumps({"name": "get_weather", "arguments": args})}],
         "tools": json.dumps([UNITS_FN])},
    ]  # fmt: skip
    examples = sft(tok, tmp_path / "rows.jsonl", rows)
    text = f'<tool_call>\n{{"name": "get_weather", "arguments": {want}}}\n</tool_call>'
    assert [learned(tok, e) for e in examples] == [text + "<|im_end|>"] * 3
    plan = ToolPlan(mode="required", tools=[{"type": "function", "function": UNITS_FN}])
    compile_plan(plan)
    matcher = LLMatcher(from_tokenizer(tok), plan.grammar, log_level=0)
    assert all(matcher.consume_token(t) for t in tok(text, add_special_tokens=False)["input_ids"])
    assert matcher.is_accepting(), matcher.get_error()


@pytest.mark.parametrize(
    ("args", "field", "reason"),
    [
        ({"city": 5, "unit": "c"}, "messages[1].tool_calls[0].function.arguments",
         "not valid under get_weather's parameters at city: 5 is not of type 'string'"),
        ({"city": "Paris"}, "messages[1].tool_calls[0].function.arguments",
         "not valid under get_weather's parameters: 'unit' is a required property"),
        ({"city": "Paris", "unit": "k"}, "conversations[1].value",
         "not valid under get_weather's parameters at unit: 'k' is not one of ['c', 'f']"),
    ],
)  # fmt: skip
def test_arguments_the_schema_refuses_are_named_in_one_line(
    tmp_path: Path, args: dict[str, Any], field: str, reason: str
) -> None:
    if field.startswith("conversations"):
        row: dict[str, Any] = {
            "conversations": [{"from": "human", "value": "x"}, {"from": "function_call",
                              "value": json.dumps({"name": "get_weather", "arguments": args})}],
            "tools": json.dumps([UNITS_FN]),
        }  # fmt: skip
    else:
        fn = {"name": "get_weather", "arguments": json.dumps(args)}
        row = {
            "messages": [ASK, calls({"type": "function", "function": fn})],
            "tools": [{"type": "function", "function": UNITS_FN}],
        }
    path = write(tmp_path / "rows.jsonl", [row])
    with pytest.raises(UserError) as e:
        load_training_rows([path], "sft")
    assert str(e.value).startswith(f"{path}:1: field '{field}': {reason}; the gateway's grammar")
    assert "\n" not in str(e.value)


# -- preference rows -----------------------------------------------------------------------------
def test_preference_rows_with_tools_render_as_the_gateway_renders(tok: Any, tmp_path: Path) -> None:
    from lmops.train.preference import render_pairs

    sharegpt = {
        "conversations": [{"from": "human", "value": "Weather in Paris?"}],
        "chosen": {"from": "function_call", "value": SHAREGPT_CALL},
        "rejected": {"from": "gpt", "value": "I cannot know."},
        "tools": json.dumps([WEATHER_FN]),
    }
    trl = {
        "prompt": [ASK],
        "chosen": [calls(call("Paris"))],
        "rejected": [{"role": "assistant", "content": "I cannot know."}],
        "tools": [WEATHER],
    }
    got = [
        render_pairs(
            [r for _w, _n, r in load_training_rows([write(p, [row])], "dpo").rows], tok, 2048
        )
        for p, row in ((tmp_path / "s.jsonl", sharegpt), (tmp_path / "t.jsonl", trl))
    ]
    assert got[0] == got[1]
    (pair,) = got[0]
    assert pair.prompt == chat_text(tok, [ASK], [WEATHER], add_generation_prompt=True)
    assert pair.chosen == CALL_TEXT + "<|im_end|>\n"
    assert pair.rejected == "I cannot know.<|im_end|>\n"


# -- end to end ------------------------------------------------------------------------------------
def test_a_model_trained_on_a_tool_call_is_served_and_its_call_parsed(
    store: Store, tmp_path: Path, cli: Any
) -> None:
    """Train a tiny Llama on one tool-call example (full fine-tuning, a high learning rate:
    it overfits), register it, serve it, and ask with the official client and ``tools``
    (``tool_choice`` auto: the model must begin the call itself): the gateway parses the
    call it learned. The untrained base, served beside it, calls nothing."""
    openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")
    pytest.importorskip("llguidance", reason="the gateway's tool calling needs llguidance")
    from lmops.serve.deployments import DeploymentSpec
    from lmops.serve.fake import serve_app
    from lmops.serve.server import gateway_app
    from tests.serve.test_tools import make_long_model

    store.assets.register(
        "model", "tiny", make_long_model(tmp_path / "tiny", make_tokenizer(tmp_path / "tok"))
    )
    row = {"messages": [ASK, calls(call("Paris"))], "tools": [WEATHER]}
    job = {
        "stage": "sft",
        "method": "full",
        "model": "tiny",
        "dataset": str(write(tmp_path / "calls.jsonl", [row])),
        "output": "caller",
        "device": "cpu",
        "chat_template": "chatml-tools",
        "train": {"max_steps": 80, "lr": 3e-3, "batch_size": 1, "max_seq_len": 1024,
                  "save_steps": 80, "warmup_steps": 0, "lr_scheduler": "constant"},
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job), "utf-8")
    r = cli("train", str(tmp_path / "job.yaml"))
    assert r.code == 0, r.err
    assert "registered caller:1 (model) after 80 steps" in r.out
    secret = store.keys.create("t")[1]
    specs = [
        DeploymentSpec(name="caller", model="caller:1"),
        DeploymentSpec(name="base", model="tiny:1"),
    ]
    with serve_app(gateway_app(specs, store), "gateway") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
        replies = {
            name: client.chat.completions.create(
                model=name, messages=[ASK], tools=[WEATHER], temperature=0, max_tokens=200
            ).choices[0]
            for name in ("caller", "base")
        }
    choice = replies["caller"]
    assert choice.finish_reason == "tool_calls"
    (got,) = choice.message.tool_calls
    assert got.function.name == "get_weather"
    assert json.loads(got.function.arguments) == {"city": "Paris"}
    assert replies["base"].message.tool_calls is None
