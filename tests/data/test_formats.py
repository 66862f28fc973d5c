"""Training-set formats: detection, validation with exact reasons, chat conversion."""

from __future__ import annotations

from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.core.formats import detect_format, to_chat, to_preference, validate_row, validate_rows

PRETRAIN_OK: list[dict[str, Any]] = [
    {"text": "The quick brown fox."},
    {"text": "今天天气很好。", "id": "zh-1"},
]
ALPACA_OK: list[dict[str, Any]] = [
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "写一首关于春天的诗。", "input": "", "output": "春风拂面，花开满园。"},
    {"instruction": "Say hi.", "output": "Hi!"},  # input is optional
    {"instruction": "Say hi.", "input": None, "output": "Hi!", "system": "Be brief."},
]
CHAT_OK: list[dict[str, Any]] = [
    {
        "messages": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "你是一个乐于助人的助手。"},
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！有什么可以帮你？"},
            {"role": "user", "content": "讲个笑话"},
            {"role": "assistant", "content": "好的……"},
        ]
    },
    {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"}]},
]  # fmt: skip
PREFERENCE_OK: list[dict[str, Any]] = [
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "London."},
    {"prompt": "中国的首都是哪里？", "chosen": "北京。", "rejected": "上海。"},
    {
        "prompt": [
            {"role": "system", "content": "Be accurate."},
            {"role": "user", "content": "2+2?"},
        ],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    },
    {"prompt": [{"role": "user", "content": "hi"}], "chosen": "hello", "rejected": "go away"},
]


@pytest.mark.parametrize(
    ("fmt", "rows"),
    [
        ("pretrain", PRETRAIN_OK),
        ("sft_alpaca", ALPACA_OK),
        ("sft_chat", CHAT_OK),
        ("preference", PREFERENCE_OK),
    ],
)
def test_valid_rows_pass_and_are_detected(fmt: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        assert detect_format(row) == fmt
    for given in (fmt, "auto"):
        report = validate_rows(rows, given)
        assert report.format == fmt
        assert (report.total_rows, report.valid_rows, report.errors) == (len(rows), len(rows), [])
        assert report.ok


def test_detect_format_unknown() -> None:
    assert detect_format({"question": "?", "answer": "!"}) is None
    assert detect_format(["text"]) is None


def messages(*roles: str) -> list[dict[str, str]]:
    return [{"role": r, "content": f"{r} 内容 {i}"} for i, r in enumerate(roles)]


@pytest.mark.parametrize(
    ("fmt", "row", "expected"),
    [
        # pretrain
        ("pretrain", {"txt": "hello"}, ["field 'text': required field is missing"]),
        ("pretrain", {"text": 42}, ["field 'text': expected a string, got number"]),
        ("pretrain", {"text": " \n "}, ["field 'text': must not be empty"]),
        ("pretrain", ["not", "a", "dict"], ["expected a JSON object, got array"]),
        # sft_alpaca
        (
            "sft_alpaca",
            {"instruction": "翻译成英文", "input": ["你好"]},
            [
                "field 'input': expected a string or null, got array",
                "field 'output': required field is missing",
            ],
        ),
        (
            "sft_alpaca",
            {"instruction": "", "output": "x"},
            ["field 'instruction': must not be empty"],
        ),
        (
            "sft_alpaca",
            {"instruction": "Hi", "output": None},
            ["field 'output': expected a string, got null"],
        ),
        # sft_chat
        (
            "sft_chat",
            {"messages": messages("user", "user", "assistant")},
            ["field 'messages[1].role': expected 'assistant' after 'user', got 'user'"],
        ),
        (
            "sft_chat",
            {"messages": messages("assistant", "user", "assistant")},
            ["field 'messages[0].role': expected 'system' or 'user' first, got 'assistant'"],
        ),
        (
            "sft_chat",
            {"messages": messages("user", "assistant", "system", "assistant")},
            ["field 'messages[2].role': expected 'user' after 'assistant', got 'system'"],
        ),
        (
            "sft_chat",
            {"messages": messages("system", "system", "user", "assistant")},
            ["field 'messages[1].role': expected 'user' after 'system', got 'system'"],
        ),
        (
            "sft_chat",
            {"messages": messages("user", "assistant", "user")},
            ["field 'messages[2].role': the last turn must be 'assistant', got 'user'"],
        ),
        (
            "sft_chat",
            {"messages": messages("system")},
            ["field 'messages[0].role': the last turn must be 'assistant', got 'system'"],
        ),
        (
            "sft_chat",
            {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}]},
            ["field 'messages[1].role': expected 'assistant' after 'user', got 'tool'"],
        ),
        (
            "sft_chat",
            {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "{}"}]},
            [
                "field 'messages[1].role': expected one of 'system', 'user', 'assistant', "
                "'tool', got 'bot'"
            ],
        ),
        (
            "sft_chat",
            {"messages": [{"role": "user"}, {"role": "assistant", "content": ""}]},
            [
                "field 'messages[0].content': required field is missing",
                "field 'messages[1].content': must not be empty",
            ],
        ),
        ("sft_chat", {"messages": []}, ["field 'messages': must not be empty"]),
        (
            "sft_chat",
            {"messages": "hi"},
            ["field 'messages': expected a list of messages, got string"],
        ),
        (
            "sft_chat",
            {"messages": [{"role": "user", "content": "hi"}, "hello"]},
            ["field 'messages[1]': expected a message object, got string"],
        ),
        # OpenAI's weight: 0 or 1, on an assistant turn
        (
            "sft_chat",
            {
                "messages": [
                    {"role": "user", "content": "hi", "weight": 0},
                    {"role": "assistant", "content": "yo", "weight": 2},
                ]
            },
            [
                "field 'messages[0].weight': only an assistant turn has a weight",
                "field 'messages[1].weight': expected 0 or 1, got 2",
            ],
        ),
        # preference
        (
            "preference",
            {"prompt": "首都？", "chosen": "北京", "rejected": "北京"},
            ["field 'rejected': must differ from 'chosen'"],
        ),
        (
            "preference",
            {"prompt": "Q?", "chosen": "A"},
            ["field 'rejected': required field is missing"],
        ),
        (
            "preference",
            {"prompt": "Q?", "chosen": "", "rejected": 3},
            [
                "field 'chosen': must not be empty",
                "field 'rejected': expected a string or a list of messages, got number",
            ],
        ),
        (
            "preference",
            {
                "prompt": messages("user", "assistant"),
                "chosen": messages("assistant"),
                "rejected": messages("user"),
            },
            [
                "field 'prompt[1].role': the last turn must be 'user', got 'assistant'",
                "field 'rejected[0].role': expected 'assistant' first, got 'user'",
            ],
        ),
    ],
)
def test_invalid_rows_name_field_and_reason(fmt: str, row: Any, expected: list[str]) -> None:
    assert [str(e) for e in validate_row(row, fmt, row_number=17)] == [
        f"row 17: {e}" for e in expected
    ]
    report = validate_rows([row], fmt)
    assert (report.total_rows, report.valid_rows, report.invalid_rows) == (1, 0, 1)
    assert [str(e) for e in report.errors] == [f"row 1: {e}" for e in expected]


def test_report_rows_counts_and_cap() -> None:
    rows: list[Any] = [
        *CHAT_OK,
        {"messages": messages("user", "user", "assistant")},  # row 4
        {"messages": messages("user", "assistant", "user")},  # row 5
        {"text": "wrong format"},  # row 6
        {"messages": messages("user", "user", "assistant")},  # row 7
    ]
    report = validate_rows(rows, "auto", max_errors=2)
    assert report.format == "sft_chat"
    assert (report.total_rows, report.valid_rows, report.invalid_rows) == (7, 3, 4)
    assert [str(e) for e in report.errors] == [
        "row 4: field 'messages[1].role': expected 'assistant' after 'user', got 'user'",
        "row 5: field 'messages[2].role': the last turn must be 'assistant', got 'user'",
    ]
    assert report.truncated
    assert report.error_counts == {"role_order": 2, "last_turn": 1, "missing": 1}
    assert not report.ok
    assert report.summary().splitlines()[0] == "7 rows, 3 valid, 4 invalid (format: sft_chat)"
    assert report.summary().splitlines()[-1] == "... and 2 more problems"
    d = report.to_dict()
    assert d["errors"][0]["code"] == "role_order" and d["errors"][0]["row"] == 4
    assert d["errors"][0]["field"] == "messages[1].role"


def test_auto_uses_first_detectable_row() -> None:
    rows: list[Any] = [{"question": "?"}, "junk", *ALPACA_OK]
    report = validate_rows(rows, "auto")
    assert report.format == "sft_alpaca"
    assert [str(e) for e in report.errors] == [
        "row 1: cannot detect the format: expected one of the keys 'chosen', 'rejected', "
        "'messages', 'instruction', 'output', 'text', got ['question']",
        "row 2: expected a JSON object, got string",
    ]
    assert report.error_counts == {"undetected": 1, "not_object": 1}
    assert validate_rows([], "auto").format is None
    with pytest.raises(UserError, match="unknown format 'sharegpt'"):
        validate_rows([], "sharegpt")


def test_to_chat_from_alpaca() -> None:
    assert to_chat(ALPACA_OK[0]) == [
        {"role": "user", "content": "Translate to French.\n\nGood morning"},
        {"role": "assistant", "content": "Bonjour"},
    ]
    assert to_chat(ALPACA_OK[1]) == [  # empty input: instruction alone
        {"role": "user", "content": "写一首关于春天的诗。"},
        {"role": "assistant", "content": "春风拂面，花开满园。"},
    ]
    assert to_chat(ALPACA_OK[3]) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    ]


def test_to_chat_from_chat_and_preference() -> None:
    row = {"messages": [{"role": "user", "content": "你好", "name": "u1"},
                        {"role": "assistant", "content": "你好！"}]}  # fmt: skip
    assert to_chat(row) == [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
    ]
    assert to_chat(PREFERENCE_OK[1]) == [
        {"role": "user", "content": "中国的首都是哪里？"},
        {"role": "assistant", "content": "北京。"},
    ]
    prompt, chosen, rejected = to_preference(PREFERENCE_OK[2])
    assert prompt == PREFERENCE_OK[2]["prompt"]
    assert chosen == [{"role": "assistant", "content": "4"}]
    assert rejected == [{"role": "assistant", "content": "5"}]


def test_to_chat_rejects_invalid_and_pretrain_rows() -> None:
    with pytest.raises(
        UserError,
        match=r"invalid sft_chat row: field 'messages\[1\]\.role': expected 'assistant' after 'user', got 'user'",
    ):
        to_chat({"messages": messages("user", "user")})
    with pytest.raises(UserError, match="pretrain rows have no chat form"):
        to_chat({"text": "hello"})
    with pytest.raises(UserError, match="cannot detect the format"):
        to_chat({"q": "?"})
