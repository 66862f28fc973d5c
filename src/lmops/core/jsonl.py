"""Reading JSON rows with errors that name ``file:line``.

- :func:`json_objects`: JSONL text, one object per line (for small resource files).
- :func:`parse_object`: one JSON object that remembers, for every member, the exact JSON
  text of its key and its value as written (``1.10`` stays ``1.10``, ``"\\u00e9"`` stays
  escaped), so a row can be written back with its fields byte-for-byte unchanged.
- :func:`json_array_elements`: the elements of a JSON array (the format of the Alpaca
  releases), each with the line it starts on.
- :func:`finite`: a value to write as JSON, NaN and infinities made ``null``.

Both parsers use the standard library's scanner (the C one where available) for values,
so they accept exactly what :func:`json.loads` accepts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from json.decoder import JSONDecodeError
from typing import Any, cast

from lmops.core.errors import UserError

__all__ = [
    "ArrayElementError",
    "JSONDecodeError",
    "RawMembers",
    "finite",
    "json_array_elements",
    "json_objects",
    "line_col",
    "parse_object",
    "type_name",
]

# key -> (the key's JSON text, the value's JSON text), in the object's order.
RawMembers = dict[str, tuple[str, str]]

_WS = re.compile(r"[ \t\n\r]*")
# The standard library's scanners (C where available): a string's body, and any JSON value.
scanstring = cast(Callable[[str, int], tuple[str, int]], json.decoder.scanstring)  # type: ignore[attr-defined]
_scan = cast(Callable[[str, int], tuple[Any, int]], json.JSONDecoder().scan_once)  # type: ignore[attr-defined]


def _ws(s: str, pos: int) -> int:
    """The index of the first non-whitespace character at or after ``pos``."""
    m = _WS.match(s, pos)
    return m.end() if m else pos


def json_objects(text: str, source: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Yield ``(line, where, row)`` for each non-blank line of ``text`` (``where`` is
    ``source:line``). Lines are split on ``\\n`` only: ``str.splitlines`` would also split on
    U+2028 and friends, which are legal inside JSON strings."""
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not a JSON object: {e.msg} (column {e.colno})") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield lineno, where, row


def _value(s: str, pos: int) -> tuple[Any, int]:
    try:
        return _scan(s, pos)
    except StopIteration as e:
        raise JSONDecodeError("Expecting value", s, e.value) from None


def _members(s: str, pos: int) -> tuple[dict[str, Any], RawMembers, int]:
    """Parse the object whose ``{`` is at ``s[pos]``; return values, raw members and the
    index after its ``}``. A repeated key keeps its first place and its last value, as
    :func:`json.loads` keeps the last value."""
    values: dict[str, Any] = {}
    raw: RawMembers = {}
    pos = _ws(s, pos + 1)
    if s[pos : pos + 1] == "}":
        return values, raw, pos + 1
    while True:
        if s[pos : pos + 1] != '"':
            raise JSONDecodeError("Expecting property name enclosed in double quotes", s, pos)
        key, end = scanstring(s, pos + 1)
        raw_key = s[pos:end]
        pos = _ws(s, end)
        if s[pos : pos + 1] != ":":
            raise JSONDecodeError("Expecting ':' delimiter", s, pos)
        start = _ws(s, pos + 1)
        value, pos = _value(s, start)
        values[key] = value
        raw[key] = (raw_key, s[start:pos])
        pos = _ws(s, pos)
        c = s[pos : pos + 1]
        if c == ",":
            pos = _ws(s, pos + 1)
        elif c == "}":
            return values, raw, pos + 1
        else:
            raise JSONDecodeError("Expecting ',' delimiter", s, pos)


def type_name(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def parse_object(line: str) -> tuple[dict[str, Any], RawMembers]:
    """One JSON object (a JSONL line): its values and each member's JSON text as written.

    Raises :class:`json.JSONDecodeError` for malformed JSON and :class:`ValueError`
    (``"expected a JSON object, got array"``) for valid JSON that is not an object.
    """
    pos = _ws(line, 0)
    if line[pos : pos + 1] != "{":
        value, end = _value(line, pos)
        _trailing(line, end)
        raise ValueError(f"expected a JSON object, got {type_name(value)}")
    values, raw, end = _members(line, pos)
    _trailing(line, end)
    return values, raw


def _trailing(s: str, end: int) -> None:
    end = _ws(s, end)
    if end != len(s):
        raise JSONDecodeError("Extra data", s, end)


def line_col(s: str, pos: int) -> tuple[int, int]:
    """1-based line and column of ``s[pos]``."""
    line = s.count("\n", 0, pos) + 1
    return line, pos - (s.rfind("\n", 0, pos) + 1) + 1


class ArrayElementError(JSONDecodeError):
    """Malformed JSON inside element ``element`` (from 0) of an array."""

    def __init__(self, e: JSONDecodeError, element: int) -> None:
        super().__init__(e.msg, e.doc, e.pos)
        self.element = element


def json_array_elements(
    text: str,
) -> Iterator[tuple[int, int, dict[str, Any] | None, RawMembers | str]]:
    """Yield ``(index, line, values, raw)`` for each element of the JSON array ``text``.

    ``index`` counts from 0 (``jq '.[index]'``), ``line`` is where the element starts. An
    object element gives its values and raw members; any other element gives ``None`` and a
    reason (``"expected a JSON object, got string"``), so a caller can skip it. Malformed
    JSON raises :class:`json.JSONDecodeError` (the rest of the array cannot be read), an
    :class:`ArrayElementError` when it is inside an element.
    """
    pos = _ws(text, 0)
    if text[pos : pos + 1] != "[":
        raise JSONDecodeError("Expecting '['", text, pos)
    pos = _ws(text, pos + 1)
    line, counted = 1, 0
    if text[pos : pos + 1] == "]":
        _trailing(text, pos + 1)
        return
    index = 0
    while True:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            if text[pos : pos + 1] == "{":
                values, raw, pos = _members(text, pos)
                yield index, line, values, raw
            else:
                value, pos = _value(text, pos)
                yield index, line, None, f"expected a JSON object, got {type_name(value)}"
        except JSONDecodeError as e:
            raise ArrayElementError(e, index) from None
        index += 1
        pos = _ws(text, pos)
        c = text[pos : pos + 1]
        if c == ",":
            pos = _ws(text, pos + 1)
        elif c == "]":
            _trailing(text, pos + 1)
            return
        else:
            raise JSONDecodeError("Expecting ',' delimiter", text, pos)


def finite(value: Any) -> Any:
    """``value`` (dicts, lists, tuples of JSON values) with every NaN and infinity ``None``:
    JSON has neither (``json.dumps`` writes ``NaN``, which PostgreSQL, JavaScript and jq
    refuse). Written as ``null``, read back as ``None``: "no value"."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
