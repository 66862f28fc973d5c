"""OpenAI's Responses API (``/v1/responses``) through the official ``openai`` client against
`lmops serve` (real uvicorn on 127.0.0.1): text, streamed events in OpenAI's order, function
tools and a tool round trip, structured output, the chat path's guardrails and limits, the
request log found by the response id, and one-line 400s for what is not served."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.serve.conftest import lmops_cli, lmops_env, start_server, stop_server
from tests.serve.test_tools import make_long_model
from tests.train.tiny import make_tokenizer

openai = pytest.importorskip("openai", reason="the official openai client is in the dev extra")
pytest.importorskip("llguidance", reason="grammar-constrained decoding needs llguidance")

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("responses")
    env = lmops_env(root / "home")
    model = make_long_model(root / "long", make_tokenizer(root / "tok"))
    (root / "d.yaml").write_text(
        "deployments:\n"
        f"  - {{name: tiny, model: {model}, guardrails: {{preset: 'off'}}}}\n"
        f"  - {{name: guarded, model: {model}, log_bodies: true}}\n"
        "  - {name: fake, fake: {reply: 'Hello there friend'}}\n"
        "  - {name: harmful, fake: {reply: 'Here is how to make a bomb step by step.'}}\n"
    )
    lmops = lmops_cli(env)
    key = json.loads(lmops("keys", "create", "--name", "k", "--json"))["key"]
    proc, base = start_server(env, "--deployments", str(root / "d.yaml"))
    yield {"base": base, "key": key, "lmops": lmops}
    stop_server(proc)


def client(server: dict[str, Any]) -> Any:
    return openai.OpenAI(
        base_url=server["base"] + "/v1", api_key=server["key"], max_retries=0, timeout=120
    )


def test_text_in_and_out(server: dict[str, Any]) -> None:
    r = client(server).responses.create(
        model="fake", input="hi", instructions="Be brief.", max_output_tokens=10
    )
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.output_text == "Hello there friend" and r.instructions == "Be brief."
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage.output_tokens == 3 and r.usage.total_tokens == r.usage.input_tokens + 3
    assert r.store is True  # kept for previous_response_id (tests/serve/test_stored_responses)

    # a budget that cuts the reply: incomplete, as OpenAI says it
    cut = client(server).responses.create(model="fake", input="hi", max_output_tokens=2)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output_text == "Hello there"


def test_a_stream_is_openais_events_in_order(server: dict[str, Any]) -> None:
    events = list(client(server).responses.create(model="fake", input="hi", stream=True))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "Hello there friend"
    )
    done = events[-1].response
    assert done.output_text == "Hello there friend" and done.usage.output_tokens == 3
    assert done.id == events[0].response.id and events[0].response.status == "in_progress"


@pytest.mark.parametrize("stream", [False, True])
def test_function_tools_and_a_round_trip(server: dict[str, Any], stream: bool) -> None:
    c = client(server)
    kw: dict[str, Any] = {"model": "tiny", "tools": [WEATHER], "temperature": 0}
    kw |= {"tool_choice": "required", "max_output_tokens": 200}
    if stream:
        events = list(c.responses.create(input="Weather in Paris?", stream=True, **kw))
        kinds = [e.type for e in events]
        assert kinds[:3] == ["response.created", "response.in_progress",
                             "response.output_item.added"]  # fmt: skip
        assert "response.function_call_arguments.delta" in kinds
        assert kinds[-3:] == ["response.function_call_arguments.done",
                              "response.output_item.done", "response.completed"]  # fmt: skip
        r = events[-1].response
        for item in r.output:  # each call's argument deltas add up to its arguments
            deltas = "".join(
                e.delta
                for e in events
                if e.type == "response.function_call_arguments.delta" and e.item_id == item.id
            )
            assert deltas == item.arguments
    else:
        r = c.responses.create(input="Weather in Paris?", **kw)
    call = r.output[0]
    assert r.status == "completed" and call.type == "function_call"
    assert call.name == "get_weather" and call.call_id and call.status == "completed"
    args = json.loads(call.arguments)  # the grammar holds it to the schema
    assert set(args) == {"city"} and len(args["city"]) <= 12

    # the round trip: the call and its output go back as input items
    follow = c.responses.create(
        model="tiny",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=[WEATHER],
        max_output_tokens=4,
        temperature=0,
    )
    assert follow.status in ("completed", "incomplete") and follow.output[0].type == "message"


def test_structured_output(server: dict[str, Any]) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": 8}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    r = client(server).responses.create(
        model="tiny",
        input="Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}},
        max_output_tokens=200,
        temperature=0,
    )
    assert r.status == "completed" and set(json.loads(r.output_text)) == {"answer"}


def test_guardrails_limits_and_the_request_log(server: dict[str, Any]) -> None:
    c = client(server)
    # input guardrails: a blocked request is the chat path's 400
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="guarded", input="How do I make a bomb to kill people?")
    assert e.value.body["code"] == "content_filter" and e.value.body["param"] == "input"
    # output guardrails: the reply is cut, and the response says why
    r = c.responses.create(model="harmful", input="hi")
    assert r.status == "incomplete" and r.incomplete_details.reason == "content_filter"
    assert "bomb" not in r.output_text
    events = list(c.responses.create(model="harmful", input="hi", stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "content_filter"
    # the request log has it as the chat request it was answered as: trace finds it by its id
    r = c.responses.create(model="guarded", input="mail bob@example.com", max_output_tokens=2)
    shown = json.loads(server["lmops"]("trace", r.id, "--json"))
    assert shown["request_id"] == "chatcmpl-" + r.id.removeprefix("resp_")
    assert shown["deployment"] == "guarded" and "bob@example.com" not in json.dumps(shown)


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "'resp_1' not found"),
        ({"conversation": "conv_1"}, "conversation", "continue a response with"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "'web_search' tools are not"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", "items are not"),
        ({"include": ["file_search_call.results"]}, "include", "is not served here"),
        ({"background": True}, "background", "foreground only"),
        ({"input": []}, "input", "give a string or a non-empty list"),
        ({"bogus": 1}, "bogus", "not part of the Responses API"),
        ({"include": [["x"]]}, "include", "is not served here"),
    ],
)
def test_what_is_not_served_is_a_one_line_400(
    server: dict[str, Any], fields: dict[str, Any], param: str, says: str
) -> None:
    body: dict[str, Any] = {"model": "fake", "input": "hi", **fields}
    with pytest.raises(openai.BadRequestError) as e:
        client(server).post("/responses", body=body, cast_to=object)
    err = e.value.body
    assert err["param"] == param and says in err["message"] and "\n" not in err["message"]


IMAGE = {"type": "input_image", "image_url": "http://127.0.0.1:9/cat.png"}


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"max_output_tokens": 10**9}, "max_output_tokens", "max_output_tokens is too large"),
        (
            {
                "instructions": "Be brief.",
                "input": [
                    {"role": "user", "content": [{"type": "input_text", "text": "hi"}, IMAGE]}
                ],
            },
            "input[0].content[1].type",
            "reads text only",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c9", "output": "3"}]},
            "input[0].call_id",
            "none has the id 'c9'",
        ),
        (
            {"tools": [{"type": "function", "name": "f", "parameters": {"type": "bogus"}}]},
            "tools[0].parameters",
            "tools[0].parameters",
        ),
    ],
)
def test_the_chat_paths_refusals_name_the_responses_fields(
    server: dict[str, Any], fields: dict[str, Any], param: str, says: str
) -> None:
    """A request refused after its translation (by the chat path) names the field the
    client sent, not the chat field it was translated to."""
    body: dict[str, Any] = {"model": "tiny", "input": "hi", **fields}
    with pytest.raises(openai.BadRequestError) as e:
        client(server).post("/responses", body=body, cast_to=object)
    err = e.value.body
    assert err["param"] == param and says in err["message"], err
    assert "messages" not in err["message"] and "max_completion_tokens" not in err["message"]


def test_logprobs_and_a_registered_prompt(server: dict[str, Any]) -> None:
    c = client(server)
    r = c.responses.create(
        model="tiny",
        input="hello",
        include=["message.output_text.logprobs"],
        top_logprobs=2,
        max_output_tokens=4,
        temperature=0,
    )
    part = r.output[0].content[0]
    assert part.logprobs and all(len(e.top_logprobs) == 2 for e in part.logprobs)
    assert "".join(e.token for e in part.logprobs) == part.text
    # OpenAI's prompt {id, version, variables} names a prompt registered in lmops
    server["lmops"]("prompts", "create", "greet", "Say hello to {{who}}.", "--label", "prod")
    r = c.responses.create(
        model="fake", prompt={"id": "greet@prod", "variables": {"who": "Ann"}}, input="hi"
    )
    assert r.output_text == "Hello there friend"
    shown = json.loads(server["lmops"]("trace", r.id, "--json"))
    assert shown["prompt_ref"] == "greet:1"
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="fake", prompt={"id": "greet", "version": "9"}, input="hi")
    assert e.value.body["param"] == "prompt"


def test_a_finished_stream_is_logged_as_answered(server: dict[str, Any]) -> None:
    """The chat stream under a Responses stream runs to its end: the request log says 200,
    not 499 (a client that left)."""
    events = list(client(server).responses.create(model="fake", input="hi", stream=True))
    rid = events[-1].response.id
    for _ in range(100):  # the log's own thread writes it
        shown = json.loads(server["lmops"]("trace", rid, "--json"))
        if shown.get("status"):
            break
    assert shown["status"] == 200 and not shown.get("error")


def test_text_after_a_tool_call_is_a_message_item_of_its_own() -> None:
    """Each output item has its own id, so the openai client's stream state (which keys
    items by id) can follow a reply with text, a call, then text again."""
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    from lmops.serve.responses import _Events

    head = {"id": "chatcmpl-abc", "created": 0}
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}  # fmt: skip
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"content": "Let me check."}}]},
        {**head, "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": " Done."}}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    ev = _Events({"model": "m"})
    out = [e for c in chunks for e in ev.chunk(c)] + ev.end()
    events = [json.loads(e.split("data: ", 1)[1]) for e in out]
    done = events[-1]["response"]["output"]
    assert [o["type"] for o in done] == ["message", "function_call", "message"]
    assert len({o["id"] for o in done}) == 3
    from openai import omit

    state: Any = ResponseStreamState(input_tools=[], text_format=omit)
    adapter: Any = TypeAdapter(ResponseStreamEvent)
    for e in events:
        state.handle_event(adapter.validate_python(e))


def test_chat_field_names_are_mapped_back_without_guessing() -> None:
    """Unit cases of the mapping: a prompt wrapped around the messages (bound or picked)
    leaves only ``input``; a tool call's field is its function_call item's; an operator's
    refusal text is kept as written."""
    from lmops.serve.protocol import OpenAIError
    from lmops.serve.responses import as_responses_error

    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    body = {"instructions": "Be brief.", "input": [{"role": "user", "content": "hi"}, call]}

    def mapped(param: str, message: str = "m", **kw: Any) -> tuple[str | None, str]:
        e = as_responses_error(OpenAIError(400, message, param=param, **kw), body)
        wrapped = as_responses_error(OpenAIError(400, message, param=param), body, wrapped=True)
        assert wrapped.param is not None and wrapped.param.startswith(("input", param))
        return e.param, e.message

    assert mapped("messages[1].content") == ("input[0].content", "m")
    assert mapped("messages[2].tool_calls[0].function.arguments")[0] == "input[1].arguments"
    assert mapped("messages[2].tool_calls[0].id")[0] == "input[1].call_id"  # the item's own
    assert mapped("messages[0].content")[0] == "instructions"
    wrapped = as_responses_error(
        OpenAIError(400, "x", param="messages[1].content"), body, wrapped=True
    )
    assert wrapped.param == "input"
    refusal = "We do not answer messages about max_completion_tokens."
    kept = as_responses_error(
        OpenAIError(400, refusal, param="messages", code="content_filter"), body
    )
    assert kept.message == refusal and kept.param == "input"
