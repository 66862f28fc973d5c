"""The schema check's cache (core/toolrows.schema_problem) keeps answers, not schemas: keyed
on the full schema text, 128 request bodies of up to 8 MiB each were held per gateway
process (about 3 GiB)."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest

from lmops.core import toolrows
from lmops.core.toolrows import schema_problem

MB = 1 << 20


def test_the_cache_holds_no_schema_text() -> None:
    """Large schemas, valid ones and invalid ones whose problem quotes them: once checked,
    nothing of their size stays in memory."""
    schema_problem({"type": "strin"})  # the validator and its meta-schemas loaded
    answers: list[str | None] = []  # no assert inside: pytest keeps an assert's operands
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(4):
            answers.append(schema_problem({"type": "object", "description": f"{i}" + "x" * MB}))
            answers.append((schema_problem({"type": f"{i}" + "y" * MB}) or "")[:40])
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert answers[0::2] == [None] * 4
    assert all(str(a).startswith("invalid JSON schema at type") for a in answers[1::2])
    assert held < MB // 4, f"{held} bytes held after checking 8 schemas of 1 MiB"


def test_a_repeated_schema_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the cache is for: a training set repeats the same tools on every row."""
    calls: list[Any] = []
    real = toolrows._schema_problem

    def counted(schema: Any) -> str | None:
        calls.append(schema)
        return real(schema)

    monkeypatch.setattr(toolrows, "_schema_problem", counted)
    schema = {"type": "object", "properties": {"city": {"type": "string", "minLength": 7}}}
    assert [schema_problem(dict(schema)) for _ in range(3)] == [None] * 3
    bad = {"type": "object", "properties": {"city": {"type": "strin"}}}
    first = schema_problem(bad)
    assert first is not None and schema_problem(dict(bad)) == first
    assert len(calls) == 2
