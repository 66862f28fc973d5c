"""The text summary of a data run: the drop counts it shows add up to what was dropped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmops.data.report import format_summary


def _report(dropped: dict[str, int]) -> dict[str, Any]:
    n = sum(dropped.values())
    empty = {"docs": 0, "total_chars": 0, "total_tokens": 0}
    return {
        "recipe": "r",
        "docs_in": 100,
        "docs_out": 100 - n,
        "wall_seconds": 1.0,
        "docs_per_s": 100.0,
        "shards": 1,
        "workers": 1,
        "ops": [
            {
                "step": 0,
                "name": "gopher_repetition",
                "docs_in": 100,
                "docs_out": 100 - n,
                "dropped": dropped,
                "counters": {},
            }
        ],
        "pii": {},
        "errors": {"count": 0, "by_reason": {}},
        "length": {"before": empty, "after": empty},
    }


def test_reasons_past_the_first_four_are_summed_not_left_out() -> None:
    many = {"dup_5": 10, "dup_9": 5, "dup_10": 4, "top_4": 4, "top_2": 3, "dup_line": 2}
    line = format_summary(_report(many)).splitlines()[1]
    assert line.endswith("dropped 28 (dup_5 10, dup_9 5, dup_10 4, top_4 4, 2 other reasons 5)"), (
        line
    )
    five = dict(list(many.items())[:5])  # five are shown as they are
    line = format_summary(_report(five)).splitlines()[1]
    assert line.endswith("dropped 26 (dup_5 10, dup_9 5, dup_10 4, top_4 4, top_2 3)"), line


def test_data_report_prints_the_dropped_examples_short(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # the report kept three examples per reason, and `lmops data report` never showed them
    rep = _report({"dup_line_frac": 7, "top_2_gram": 1})
    rep["ops"][0]["examples"] = {
        "dup_line_frac": [
            {"id": "doc-1", "text": "Buy now!\nBuy now!\n\tBuy now!"},
            {"id": "doc-2", "text": "word " * 100},
        ],
        "top_2_gram": [{"id": "doc-3", "text": ""}],
    }
    (tmp_path / "_report").mkdir()
    (tmp_path / "_report" / "report.json").write_text(json.dumps(rep))
    r = cli("data", "report", str(tmp_path))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    at = lines.index("dropped examples (the first per reason):")
    assert lines[at + 1 :] == [
        "   0. gopher_repetition dup_line_frac (7 dropped), e.g.:",
        "        doc-1: Buy now! Buy now! Buy now!",
        "        doc-2: " + "word " * 16 + "word…",
        "   0. gopher_repetition top_2_gram (1 dropped), e.g.:",
        "        doc-3: (empty)",
    ]
    assert len(lines[at + 3]) == 100
    assert json.loads(cli("data", "report", str(tmp_path), "--json").out) == rep  # as stored
