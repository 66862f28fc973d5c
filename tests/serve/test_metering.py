"""Request log, usage reports and the flow-back of served chats into an SFT dataset."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.monitor.metering import export_conversations, log_request, usage
from lmops.store import Store

NOW = datetime.now(UTC)


def log(store: Store, **kw: Any) -> int:
    row: dict[str, Any] = {
        "request_id": "req",
        "key_name": "ci",
        "deployment": "chat",
        "model_ref": "tiny:1",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "latency_ms": 100.0,
        "ttft_ms": None,
    }
    row.update(kw)
    return log_request(store, **row)


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": r, "content": c} for r, c in turns]}


def reply(text: str | None) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}


def test_usage_per_key_and_deployment(store: Store) -> None:
    for i, lat in enumerate([100.0, 200.0, 300.0, 400.0]):
        log(store, request_id=f"c{i}", latency_ms=lat, ttft_ms=10.0 * (i + 1))
    log(
        store,
        request_id="limited",
        status=429,
        prompt_tokens=0,
        completion_tokens=0,
        latency_ms=1.0,
        error="rate limit reached",
    )
    log(
        store,
        request_id="w1",
        key_name="web",
        deployment="code",
        prompt_tokens=7,
        completion_tokens=3,
        latency_ms=50.0,
    )
    log(store, request_id="anon", key_name=None, deployment="code", status=500, latency_ms=9.0)
    log(store, request_id="old", at=NOW - timedelta(days=3), prompt_tokens=1000)

    report = usage(store, since=NOW - timedelta(days=1))
    ci = report.by_key["ci"]
    assert (ci.requests, ci.errors, ci.prompt_tokens, ci.completion_tokens) == (5, 1, 40, 20)
    assert ci.total_tokens == 60
    # Latency of successful requests only: 100..400 -> p50 250, p90 300 + 0.7 * 100.
    assert (ci.latency_p50_ms, ci.latency_p90_ms) == (250.0, 370.0)
    assert ci.ttft_p50_ms == 25.0
    assert report.by_key["web"].requests == 1
    assert report.by_key["(none)"].errors == 1
    assert set(report.by_deployment) == {"chat", "code"}
    code = report.by_deployment["code"]
    assert (code.requests, code.errors, code.prompt_tokens, code.latency_p50_ms) == (
        2,
        1,
        17,
        50.0,
    )
    assert report.total.requests == 7 and report.total.prompt_tokens == 57
    assert report.total.ttft_p50_ms == 25.0

    everything = usage(store, since=None)
    assert everything.total.requests == 8 and everything.by_key["ci"].prompt_tokens == 1040
    only = usage(store, key="web", deployment="code", since=NOW - timedelta(days=1))
    assert list(only.by_key) == ["web"] and only.total.requests == 1
    assert usage(store, deployment="nope", since=None).total.latency_p50_ms is None

    d = report.to_dict()
    assert json.loads(json.dumps(d))["by_key"]["ci"]["latency_p90_ms"] == 370.0
    assert d["since"].startswith(str((NOW - timedelta(days=1)).date()))


def test_export_conversations_to_sft_dataset(store: Store, tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"tiny model")
    store.assets.register("model", "tiny", weights)
    store.assets.register("model", "tiny", weights)  # tiny:2 serves later requests

    exported = [
        {
            "request_id": "a",
            "request_body": chat(("user", "What is 2+2?")),
            "response_body": reply("4"),
        },
        {
            "request_id": "b",
            "model_ref": "tiny:2",
            "request_body": chat(("system", "Be brief."), ("user", "Capital of France?")),
            "response_body": reply("Paris."),
        },
        {
            "request_id": "ext",
            "model_ref": "upstream-gpt",
            "request_body": chat(("user", "Hi")),
            "response_body": reply("Hello!"),
        },
        {  # OpenAI's developer turn is a system turn; text parts are their text
            "request_id": "parts",
            "request_body": {
                "messages": [
                    {"role": "developer", "content": "Be kind."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Hi "},
                            {"type": "text", "text": "there"},
                        ],
                    },
                ]
            },
            "response_body": reply("Hello."),
        },
    ]
    left_out = [  # each for its own reason
        {"request_id": "no-bodies"},
        {
            "request_id": "failed",
            "status": 500,
            "request_body": chat(("user", "x")),
            "response_body": reply("y"),
        },
        {
            "request_id": "other-dep",
            "deployment": "code",
            "request_body": chat(("user", "x")),
            "response_body": reply("y"),
        },
        {
            "request_id": "dup",
            "request_body": chat(("user", "What is 2+2?")),
            "response_body": reply("4"),
        },
        {
            "request_id": "completion",
            "endpoint": "/v1/completions",
            "request_body": {"prompt": "Once"},
            "response_body": {"choices": [{"text": " upon"}]},
        },
        {  # a tool result answering no call: a row training would refuse
            "request_id": "tool",
            "request_body": {
                "messages": [
                    {"role": "user", "content": "weather?"},
                    {"role": "tool", "content": "sunny", "tool_call_id": "1"},
                ]
            },
            "response_body": reply("Sunny."),
        },
        {
            "request_id": "image",
            "request_body": {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "response_body": reply("A cat."),
        },
        {"request_id": "empty", "request_body": chat(("user", "?")), "response_body": reply(None)},
        {
            "request_id": "old",
            "at": NOW - timedelta(days=10),
            "request_body": chat(("user", "old")),
            "response_body": reply("old"),
        },
    ]
    for row in exported + left_out:
        log(store, **row)

    since = NOW - timedelta(days=1)
    v = export_conversations(store, deployment="chat", since=since, output="chat-flowback")
    rows = [json.loads(x) for x in store.assets.path(v.ref).read_text().splitlines()]
    assert rows == [
        {
            "messages": [
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        },
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
            ]
        },
        {
            "messages": [
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello."},
            ]
        },
    ]
    assert v.kind == "dataset" and v.ref == "chat-flowback:1"
    meta = v.metadata
    assert meta["deployment"] == "chat" and meta["count"] == 4
    assert meta["format"] == "sft_chat"
    assert meta["since"] == since.isoformat() and meta["until"] is None
    assert meta["first"] <= meta["last"] and meta["first"] >= since.isoformat()
    assert meta["skipped"] == {
        "duplicate": 1,
        "failed": 1,  # counted now, as every reason a logged exchange was left out
        "invalid_row": 1,
        "no_answer": 1,
        "not_chat": 1,
        "unsupported_message": 1,
    }
    assert meta["first_invalid"].startswith("request tool: field 'messages[1].role'")
    assert meta["tool_rows"] == 0
    assert meta["models"] == ["tiny:1", "tiny:2", "upstream-gpt"]
    assert meta["unregistered_models"] == ["upstream-gpt"]
    edges = store.assets.lineage(v.ref).upstream
    assert sorted((e.parent, e.role) for e in edges) == [
        ("tiny:1", "served_by"),
        ("tiny:2", "served_by"),
    ]

    everything = export_conversations(store, deployment="chat", since=None, output="chat-flowback")
    assert everything.version == 2 and everything.metadata["count"] == 5  # + the old one


def test_export_with_nothing_logged_is_a_clear_error(store: Store) -> None:
    log(store, request_id="no-bodies")
    log(
        store,
        request_id="other",
        deployment="code",
        request_body=chat(("user", "x")),
        response_body=reply("y"),
    )
    with pytest.raises(
        UserError, match="no chat requests with logged bodies for deployment 'chat'"
    ):
        export_conversations(store, deployment="chat", since=None, output="out")
    log(store, request_id="c", request_body={"prompt": "x"}, response_body={"choices": []})
    with pytest.raises(UserError, match=r"skipped: 1 not_chat.*enable body logging"):
        export_conversations(store, deployment="chat", since=None, output="out")
    assert not store.assets.exists("out")


def test_request_log_batches_rows_and_flushes_on_close(store: Store) -> None:
    from sqlalchemy import func, select

    from lmops.store import RequestRecord
    from lmops.store.models import RequestLogRow

    rows: dict[str, Any] = {
        "key_name": "ci",
        "deployment": "chat",
        "model_ref": "tiny:1",
        "endpoint": "chat",
        "status": 200,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "latency_ms": 3.0,
        "ttft_ms": 1.0,
    }
    writer = store.requests.writer(interval_s=0.5)  # a long rest: rows pile up into batches
    for i in range(300):
        writer.submit(RequestRecord(request_id=f"r{i}", **rows))
    body = chat(("user", "hi"))
    writer.submit(
        RequestRecord(
            request_id="with-body", request_body=body, response_body=reply("hello"), **rows
        )
    )
    assert writer.flush(timeout=30)
    assert usage(store).total.requests == 301 and usage(store).total.completion_tokens == 1505
    writer.submit(RequestRecord(request_id="last", **rows))
    writer.close()  # shutdown writes what is pending
    writer.submit(RequestRecord(request_id="after-close", **rows))  # written at once, not lost
    assert writer.failed == 0
    c = RequestLogRow
    with store.db.session() as s:
        assert s.scalar(select(func.count()).select_from(c)) == 303
        # rows without bodies keep SQL NULL there (not JSON null), as log_request does
        assert s.scalar(select(func.count()).where(c.request_body.is_not(None))) == 1
    exported = export_conversations(store, deployment="chat", output="from-writer")
    assert exported.metadata["count"] == 1 and exported.metadata["skipped"] == {}


def test_usage_table_prints_readable_numbers(store: Store, cli: Any) -> None:
    """`lmops usage` printed a latency as 1343.1578199997602 (issue #13 item 7)."""
    log(store, latency_ms=1343.1578199997602, ttft_ms=None, prompt_tokens=12345)
    r = cli("usage")
    assert r.code == 0, r.err
    assert "1,343.2" in r.out and "12,345" in r.out and "1343.157" not in r.out


def test_export_leaves_out_what_is_not_worth_learning_from(store: Store) -> None:
    """Truncated, content-filtered, flagged and failed exchanges stay out of a flow-back
    dataset unless asked for (issue #13 item 10), and are counted."""

    def answer(text: str, finish: str) -> dict[str, Any]:
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish}]}  # fmt: skip

    log(
        store,
        request_id="good",
        request_body=chat(("user", "a")),
        response_body=answer("ok", "stop"),
    )
    log(
        store,
        request_id="cut",
        request_body=chat(("user", "b")),
        response_body=answer("half", "length"),
    )
    log(store, request_id="filtered", request_body=chat(("user", "c")),
        response_body=answer("Sorry", "content_filter"))  # fmt: skip
    log(store, request_id="flagged", request_body=chat(("user", "d")),
        response_body=answer("Here is how", "stop"),
        guardrails={"actions": [{"type": "moderation_flag", "category": "weapons", "count": 1}]})  # fmt: skip
    log(store, request_id="masked", request_body=chat(("user", "e <PHONE>")),
        response_body=answer("noted", "stop"),
        guardrails={"actions": [{"type": "pii_mask", "pii_type": "PHONE", "count": 1}]})  # fmt: skip
    log(store, request_id="failed", status=502, request_body=chat(("user", "f")))

    v = export_conversations(store, deployment="chat", output="flow")
    assert v.metadata["count"] == 2  # good, and masked (a masked phone is fine to learn from)
    assert v.metadata["skipped"] == {
        "content_filtered": 1,
        "failed": 1,
        "flagged": 1,
        "truncated": 1,
    }
    kept = export_conversations(store, deployment="chat", output="flow", keep=["truncated"])
    assert kept.metadata["count"] == 3 and kept.metadata["kept"] == ["truncated"]
    with pytest.raises(UserError, match="unknown reasons to keep"):
        export_conversations(store, deployment="chat", output="flow", keep=["everything"])


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        # vLLM's hermes parser returns a block of broken JSON (a "}" missing) as content
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>',
         "broken_tool_call"),
        # a call cut by a stop word: no closing tag, finish "stop"
        ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"ci',
         "broken_tool_call"),
        ("Let me look.\n<tool_call>", "broken_tool_call"),  # cut right after the tag
        # one readable call, then a broken one
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
         '\n<tool_call>\n{"name": get_weather}\n</tool_call>', "broken_tool_call"),
        # the tag named in prose, before a call that is cut
        ('I write <tool_call> and the call:\n<tool_call>\n{"name": "get_we',
         "broken_tool_call"),
        # whole answers: the tag only named in prose, a block that reads as a call
        ("I write <tool_call> and the call.", None),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
         None),
    ],
)  # fmt: skip
def test_an_answer_holding_a_call_that_does_not_parse_never_trains(
    store: Store, text: str, why: str | None
) -> None:
    """Only a call cut by max_tokens (finish_reason "length") was left out: a block a tool
    parser could not read, or a call a stop word cut, ends "stop" and was exported, teaching
    the model its broken calls."""
    body = {**chat(("user", "Weather in Paris?")), "tools": [WEATHER]}
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                           "finish_reason": "stop"}]}  # fmt: skip
    log(store, request_id="call", request_body=body, response_body=answer)
    log(store, request_id="plain", request_body=chat(("user", "hi")), response_body=reply("ok"))
    v = export_conversations(store, deployment="chat", output="flow")
    assert v.metadata["skipped"] == ({why: 1} if why else {})
    assert v.metadata["count"] == (1 if why else 2)


def test_a_broken_call_in_an_earlier_assistant_turn_never_trains(store: Store) -> None:
    """The client sent the parser's text back as the history: that turn trains too."""
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>'
    body = {
        **chat(("user", "Weather?"), ("assistant", broken), ("user", "Well?")),
        "tools": [WEATHER],
    }
    log(store, request_id="again", request_body=body, response_body=reply("Sunny."))
    log(store, request_id="plain", request_body=chat(("user", "hi")), response_body=reply("ok"))
    v = export_conversations(store, deployment="chat", output="flow")
    assert v.metadata["skipped"] == {"broken_tool_call": 1} and v.metadata["count"] == 1
