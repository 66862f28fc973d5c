"""Reading JSONL text with errors that name ``file:line``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from lmops.core.errors import UserError

__all__ = ["json_objects"]


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
