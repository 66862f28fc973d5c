"""The one text helper of the deploy stage (``deploy/_text.py``): the same documents for
quantization calibration, report perplexity, pruning calibration and distillation; text
files read whole, rows by ``text`` or their chat form, a data run's ``_report`` skipped;
token streams and packed blocks of the same ids; bad input one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


def test_texts_rows_and_chat_rows_in_name_order(tok: Any, tmp_path: Path) -> None:
    from lmops.deploy._text import texts_of

    d = tmp_path / "data"
    (d / "_report").mkdir(parents=True)
    (d / "_report" / "stats.json").write_text('{"not": "a document"}')
    (d / ".hidden.txt").write_text("hidden")
    (d / "a.txt").write_text("plain text")
    rows = [{"text": "a row"}, {"instruction": "1+1=", "output": "2"}]
    (d / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = list(texts_of(d, tok))
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}],
        tokenize=False,
    )
    assert got == ["plain text", "a row", chat]


def test_a_tool_call_row_reads_as_the_gateway_renders_it(tok: Any, tmp_path: Path) -> None:
    """Calibration text of a chat with tool calls is its prompt as the gateway serves this
    model (its template takes no tools: the Hermes text), not a failed template."""
    from lmops.deploy._text import texts_of
    from lmops.models.chat import render_tools

    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
    ]  # fmt: skip
    # as training reads tools: a list of tool objects, bare functions, or their JSON text
    rows = [
        {"messages": messages, "tools": tools},
        {"messages": messages, "tools": [tools[0]["function"]]},
        {"messages": messages, "tools": json.dumps([tools[0]["function"]])},
    ]
    (tmp_path / "calls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = list(texts_of(tmp_path / "calls.jsonl", tok))
    hermes, _ = render_tools(messages, tools, native=False)
    assert got == [tok.apply_chat_template(hermes, tokenize=False)] * 3
    assert '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>' in got[0]


def test_stream_and_blocks_are_the_same_ids(tok: Any, tmp_path: Path) -> None:
    from lmops.deploy._text import token_blocks, token_stream

    f = tmp_path / "t.txt"
    f.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    stream = token_stream(f, tok, 10_000)
    assert stream[-1] == tok.eos_token_id  # the document ends with EOS
    blocks = token_blocks(f, tok, seq_len=16, max_blocks=3)
    assert blocks.shape == (3, 16)
    assert blocks.reshape(-1).tolist() == stream[:48]
    assert token_stream(f, tok, 20) == stream[:20]


def test_bad_text_sources_are_one_line(tok: Any, tmp_path: Path) -> None:
    from lmops.core.errors import UserError
    from lmops.deploy._text import token_blocks, token_stream

    rows = tmp_path / "r.jsonl"
    rows.write_text(json.dumps({"label": 1}) + "\n")
    with pytest.raises(UserError, match=r"r\.jsonl:1: no 'text'"):
        token_stream(rows, tok, 100)
    short = tmp_path / "s.txt"
    short.write_text("hi")
    with pytest.raises(UserError, match="fewer than one block of 512"):
        token_blocks(short, tok, seq_len=512, max_blocks=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no files to read text from"):
        token_stream(empty, tok, 100)
    binary = tmp_path / "w.bin"
    binary.write_bytes(b"\0")
    with pytest.raises(UserError, match=r"w\.bin: not text"):
        token_stream(binary, tok, 100)
