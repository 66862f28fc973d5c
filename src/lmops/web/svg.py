"""Charts and the lineage graph as inline SVG, drawn on the server.

Pure functions from data to markup (``markupsafe.Markup``, every text escaped), so pages
need no chart library and no script, and the tests can read the drawing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from markupsafe import Markup, escape

from lmops.store import LineageGraph

__all__ = ["PALETTE", "Series", "line_chart", "lineage_svg"]

# Colour-blind-safe (Okabe-Ito), in the order runs are compared.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]  # (step, value), in step order
    color: str = PALETTE[0]


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return str(v)
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4g}"


def _downsample(points: Sequence[tuple[float, float]], most: int) -> list[tuple[float, float]]:
    # A chart 600 px wide shows no more than this many points; keep first and last.
    if len(points) <= most:
        return list(points)
    stride = len(points) / most
    out = [points[int(i * stride)] for i in range(most)]
    out[-1] = points[-1]
    return out


def line_chart(
    title: str, series: Sequence[Series], *, width: int = 560, height: int = 220
) -> Markup:
    """One metric over steps, one polyline per series, axes with min/max labels. Non-finite
    values are left out (a NaN loss would flatten every other point)."""
    clean = [
        Series(s.label, [(x, y) for x, y in s.points if math.isfinite(y)], s.color) for s in series
    ]
    pts = [p for s in clean for p in s.points]
    left, right, top, bottom = 56, 12, 24, 28
    w, h = width - left - right, height - top - bottom
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="15" class="chart-title">{escape(title)}</text>',
    ]
    if not pts:
        out.append(f'<text x="{left}" y="{top + h / 2}" class="muted">no finite values</text>')
        return Markup("".join(out) + "</svg>")
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * h

    out.append(
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="plot-area"/>'
        f'<text x="{left - 6}" y="{top + 4}" class="tick" text-anchor="end">{_fmt(y1)}</text>'
        f'<text x="{left - 6}" y="{top + h}" class="tick" text-anchor="end">{_fmt(y0)}</text>'
        f'<text x="{left}" y="{height - 8}" class="tick">{_fmt(x0)}</text>'
        f'<text x="{left + w}" y="{height - 8}" class="tick" text-anchor="end">'
        f"step {_fmt(x1)}</text>"
    )
    for s in clean:
        if not s.points:
            continue
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in _downsample(s.points, 600))
        out.append(
            f'<polyline points="{coords}" fill="none" stroke="{s.color}" stroke-width="1.8">'
            f"<title>{escape(s.label)}</title></polyline>"
        )
        if len(s.points) == 1:
            x, y = s.points[0]
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{s.color}"/>')
    return Markup("".join(out) + "</svg>")


# -- lineage ---------------------------------------------------------------------------------------
NODE_W, NODE_H, COL_GAP, ROW_GAP = 210, 44, 70, 16


def _depths(graph: LineageGraph) -> dict[str, int]:
    """Column of each node: 0 for the root, -n for n steps upstream, +n downstream (the
    longest path, so a parent is always left of every child on its side)."""
    depth = {graph.root: 0}
    for _ in range(len(graph.nodes)):  # relax until stable; a DAG needs at most |V| rounds
        changed = False
        for e in graph.upstream:
            if e.child in depth and e.parent != graph.root:
                want = depth[e.child] - 1
                if want < depth.get(e.parent, 1):
                    depth[e.parent], changed = want, True
        for e in graph.downstream:
            if e.parent in depth and e.child != graph.root:
                want = depth[e.parent] + 1
                if want > depth.get(e.child, -1):
                    depth[e.child], changed = want, True
        if not changed:
            break
    for ref in graph.nodes:
        depth.setdefault(ref, 0)
    return depth


def _clip(text: str, most: int = 28) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def lineage_svg(graph: LineageGraph, *, base: str = "/ui/assets") -> Markup:
    """The graph left to right (inputs left of the root, consumers right), each node a
    link to its version's page (``base/<name>/<version>``), each edge labelled with its
    role. The root is outlined."""
    depth = _depths(graph)
    cols: dict[int, list[str]] = {}
    for ref in sorted(graph.nodes, key=lambda r: (graph.nodes[r].kind, r)):
        cols.setdefault(depth[ref], []).append(ref)
    first = min(cols)
    rows = max(len(v) for v in cols.values())
    width = (max(cols) - first + 1) * (NODE_W + COL_GAP) - COL_GAP + 20
    height = rows * (NODE_H + ROW_GAP) - ROW_GAP + 20
    pos: dict[str, tuple[float, float]] = {}
    for d, refs in cols.items():
        # centre short columns against the tallest one
        offset = (rows - len(refs)) * (NODE_H + ROW_GAP) / 2
        for i, ref in enumerate(refs):
            pos[ref] = (10 + (d - first) * (NODE_W + COL_GAP), 10 + offset + i * (NODE_H + ROW_GAP))
    out = [
        f'<svg class="lineage" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="lineage graph">'
    ]
    seen: set[tuple[str, str]] = set()
    for e in [*graph.upstream, *graph.downstream]:
        if (e.parent, e.child) in seen or e.parent not in pos or e.child not in pos:
            continue
        seen.add((e.parent, e.child))
        (px, py), (cx, cy) = pos[e.parent], pos[e.child]
        x1, y1, x2, y2 = px + NODE_W, py + NODE_H / 2, cx, cy + NODE_H / 2
        mid = (x1 + x2) / 2
        out.append(
            f'<path d="M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"'
            f' class="edge"/><text x="{mid:.0f}" y="{(y1 + y2) / 2 - 3:.0f}" class="edge-label"'
            f' text-anchor="middle">{escape(_clip(e.role, 16))}</text>'
        )
    for ref, (x, y) in pos.items():
        v = graph.nodes[ref]
        cls = "node root" if ref == graph.root else "node"
        href = f"{base}/{quote(v.asset, safe='')}/{v.version}"
        out.append(
            f'<a href="{escape(href)}" class="node-link" data-ref="{escape(ref)}">'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="6" '
            f'class="{cls} kind-{escape(v.kind)}"/>'
            f'<text x="{x + 10:.0f}" y="{y + 18:.0f}" class="node-name">{escape(_clip(ref))}</text>'
            f'<text x="{x + 10:.0f}" y="{y + 34:.0f}" class="node-kind">{escape(v.kind)}'
            f"{' · ' + escape(v.status.value) if v.status.value != 'READY' else ''}</text>"
            f"<title>{escape(ref)} ({escape(v.kind)})</title></a>"
        )
    return Markup("".join(out) + "</svg>")
