"""The tool-call text format models write (Hermes/Qwen), shared by the gateway (which
renders and parses it, serve/tools.py) and evaluation (which scores it, eval/tools.py)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Chat templates that take ``tools`` render this format and their models write it; a model
whose template does not gets :func:`system_prompt`, the instructions those templates use.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

__all__ = ["CLOSE", "OPEN", "call_text", "find_calls", "read_call", "system_prompt"]

OPEN, CLOSE = "<tool_call>", "</tool_call>"

_SYSTEM = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\nFor each function call, return a json object with function name "
    "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def system_prompt(tools: list[dict[str, Any]]) -> str:
    """The instructions listing ``tools`` (OpenAI tool objects) and the call format."""
    return _SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def call_text(name: str, arguments: Any) -> str:
    """One call as the model writes it (``arguments``: a value, not a JSON string)."""
    payload = {"name": name, "arguments": arguments}
    return f"{OPEN}\n{json.dumps(payload, ensure_ascii=False)}\n{CLOSE}"


def read_call(block: str) -> tuple[str, Any] | None:
    """``(name, arguments)`` of one call's JSON (``{"name", "arguments"}``; arguments
    given as a JSON string are decoded), or None if it is not one."""
    try:
        obj = json.loads(block)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        with contextlib.suppress(ValueError):
            args = json.loads(args)
    return obj["name"], args


_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.S)


def find_calls(text: str) -> list[tuple[str, Any]]:
    """Every complete call in ``text``; a reply that is one bare call object counts too."""
    calls = [c for c in (read_call(m.strip()) for m in _BLOCK.findall(text)) if c is not None]
    if not calls and OPEN not in text:
        bare = read_call(text.strip())
        if bare is not None:
            calls.append(bare)
    return calls
