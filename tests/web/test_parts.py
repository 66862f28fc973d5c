"""The console's pure parts, without a browser: the SVG drawings and the playground's
variable parsing (these run where chromium is missing too)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from lmops.core.errors import UserError
from lmops.store import LineageEdge, LineageGraph, Version, VersionStatus
from lmops.web.playground import parse_variables
from lmops.web.svg import Series, line_chart, lineage_svg


def _v(ref: str, kind: str) -> Version:
    name, _, n = ref.partition(":")
    return Version(
        asset=name,
        kind=kind,
        version=int(n),
        status=VersionStatus.READY,
        created_at=datetime.now(UTC),
    )


def test_lineage_puts_inputs_left_of_what_was_made_from_them() -> None:
    # raw -> clean -> model (root) -> report, plus a tokenizer feeding the model directly
    nodes = {
        r: _v(r, k)
        for r, k in [
            ("raw:1", "dataset"),
            ("clean:1", "dataset"),
            ("tok:1", "tokenizer"),
            ("model:2", "model"),
            ("report:1", "eval_report"),
        ]
    }
    graph = LineageGraph(
        root="model:2",
        nodes=nodes,
        upstream=[
            LineageEdge(child="model:2", parent="clean:1", role="dataset"),
            LineageEdge(child="model:2", parent="tok:1", role="tokenizer"),
            LineageEdge(child="clean:1", parent="raw:1", role="input"),
        ],
        downstream=[LineageEdge(child="report:1", parent="model:2", role="model")],
        runs={},
    )
    svg = str(lineage_svg(graph, base="/ui/assets"))
    x = {
        ref: float(m.group(2))
        for m in re.finditer(r'data-ref="([^"]+)"><rect x="([0-9.]+)"', svg)
        for ref in [m.group(1)]
    }
    assert x["raw:1"] < x["clean:1"] < x["model:2"] < x["report:1"]
    assert x["tok:1"] == x["clean:1"]  # one step upstream, like the dataset
    assert 'href="/ui/assets/raw/1"' in svg and svg.count("<path") == 4
    assert 'class="node root' in svg


def test_lineage_escapes_names() -> None:
    graph = LineageGraph(
        root="a<b:1", nodes={"a<b:1": _v("a<b:1", "model")}, upstream=[], downstream=[], runs={}
    )
    svg = str(lineage_svg(graph))
    assert "a<b" not in svg and "a&lt;b:1" in svg


def test_line_chart_overlays_series_and_skips_non_finite_values() -> None:
    svg = str(
        line_chart(
            "loss",
            [
                Series("a", [(0, 2.0), (1, float("nan")), (2, 1.0)]),
                Series("b", [(0, 3.0), (2, 1.5)], "#d55e00"),
            ],
        )
    )
    assert svg.count("<polyline") == 2
    first = re.search(r'points="([^"]+)"', svg)
    assert first is not None and len(first.group(1).split()) == 2  # the NaN point left out
    assert "nan" not in svg.lower().replace('aria-label="loss"', "")


def test_parse_variables() -> None:
    assert parse_variables("topic=tides\n\nmood = calm") == {"topic": "tides", "mood": "calm"}
    assert parse_variables('{"n": 3}') == {"n": 3}
    assert parse_variables("  ") == {}
    with pytest.raises(UserError, match="line 1"):
        parse_variables("no equals sign")
    with pytest.raises(UserError, match="JSON object"):
        parse_variables("{not json")
