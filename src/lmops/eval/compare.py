"""Comparing eval reports: side-by-side tables with deltas and paired significance,
a PNG chart, and a leaderboard over every registered report."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError

__all__ = ["CompareResult", "compare_reports", "leaderboard", "plot_compare"]


def _load(store: Any, ref: str) -> tuple[Any, dict[str, Any], dict[str, list[dict[str, Any]]]]:
    v = store.assets.resolve(ref)
    if v.kind != "eval_report":
        raise UserError(f"{ref!r} is a {v.kind}, not an eval_report")
    folder = store.assets.path(v.ref)
    report = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    items: dict[str, list[dict[str, Any]]] = {}
    f = folder / "items.jsonl"
    if f.exists():
        for line in f.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                row = json.loads(line)
                items.setdefault(row["task"], []).append(row)
    return v, report, items


@dataclass
class CompareRow:
    task: str
    metric: str
    values: list[float | None]
    deltas: list[float | None]  # value - first report's value
    p_values: list[float | None]  # paired test against the first report (same items)
    significant: list[bool | None]


@dataclass
class CompareResult:
    reports: list[str]
    models: list[str]
    rows: list[CompareRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reports": self.reports,
            "models": self.models,
            "rows": [r.__dict__ for r in self.rows],
        }


def compare_reports(store: Any, refs: list[str], *, alpha: float = 0.05) -> CompareResult:
    """Every (task, metric) of the first report, compared with the other reports. A
    difference is significant when a paired permutation test on the per-item scores of
    the same items gives p < ``alpha``."""
    from lmops.eval.metrics import paired_comparison

    if len(refs) < 2:
        raise UserError("compare needs at least two eval reports")
    loaded = [_load(store, r) for r in refs]
    out = CompareResult(
        [v.ref for v, _, _ in loaded],
        [rep["model"].get("ref") or rep["model"].get("name") for _, rep, _ in loaded],
    )
    _, first, first_items = loaded[0]
    for task, metrics in first["results"].items():
        for metric, value in metrics.items():
            if (
                not isinstance(value, int | float)
                or "stderr" in metric
                or metric in ("n", "excluded", "num_fewshot", "seconds")
            ):
                continue
            values: list[float | None] = []
            deltas: list[float | None] = []
            pvals: list[float | None] = []
            sig: list[bool | None] = []
            for j, (_v, rep, items) in enumerate(loaded):
                other = rep["results"].get(task, {}).get(metric)
                values.append(float(other) if isinstance(other, int | float) else None)
                if j == 0 or other is None:
                    deltas.append(None)
                    pvals.append(None)
                    sig.append(None)
                    continue
                deltas.append(float(other) - float(value))
                a = [it.get("scores", {}).get(metric) for it in first_items.get(task, [])]
                b = [it.get("scores", {}).get(metric) for it in items.get(task, [])]
                same_items = (
                    len(a) == len(b)
                    and a
                    and None not in a
                    and None not in b
                    and [it.get("context") for it in first_items.get(task, [])]
                    == [it.get("context") for it in items.get(task, [])]
                )
                if same_items:
                    cmp = paired_comparison(
                        [float(x) for x in b], [float(x) for x in a], alpha=alpha
                    )
                    pvals.append(cmp.p_value)
                    sig.append(cmp.significant)
                else:
                    pvals.append(None)
                    sig.append(None)
            out.rows.append(CompareRow(task, metric, values, deltas, pvals, sig))
    return out


def _finite(v: float | None) -> float:
    return float(v) if v is not None and not math.isnan(v) else 0.0


def plot_compare(result: CompareResult, path: Path, *, max_rows: int = 16) -> Path:
    """Grouped bars: one group per (task, metric), one bar per report; * marks significance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.rows if not r.metric.endswith("_fraction")][:max_rows]
    width = 0.8 / max(1, len(result.reports))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4.5))
    for j, name in enumerate(result.models):
        xs = [i + j * width for i in range(len(rows))]
        ys = [_finite(r.values[j]) for r in rows]
        bars = ax.bar(xs, ys, width=width, label=str(name))
        for bar, r in zip(bars, rows, strict=True):
            if r.significant[j]:
                ax.annotate(
                    "*",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                )
    ax.set_xticks([i + width * (len(result.reports) - 1) / 2 for i in range(len(rows))])
    ax.set_xticklabels([f"{r.task}\n{r.metric}" for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_title("eval comparison (* = significant vs the first, paired test)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def leaderboard(
    store: Any, *, task: str | None = None, metric: str | None = None
) -> list[dict[str, Any]]:
    """Every READY eval report's scores, best first per (task, metric)."""
    rows = []
    for asset in store.assets.list(kind="eval_report"):
        for v in store.assets.show(asset.name).versions:
            if v.status.value != "READY":
                continue
            model = (v.metadata.get("model") or {}).get("ref") or (
                v.metadata.get("model") or {}
            ).get("name")
            for t, metrics in (v.metadata.get("results") or {}).items():
                if task and t != task and not t.startswith(task):
                    continue
                for m, value in metrics.items():
                    if (
                        not isinstance(value, int | float)
                        or "stderr" in m
                        or m in ("n", "excluded", "num_fewshot", "seconds")
                    ):
                        continue
                    if metric and m != metric:
                        continue
                    rows.append(
                        {
                            "task": t,
                            "metric": m,
                            "model": model,
                            "value": float(value),
                            "report": v.ref,
                            "n": metrics.get("n"),
                        }
                    )
            for g, agg in (v.metadata.get("groups") or {}).items():
                if task and g != task:
                    continue
                for m, value in agg.items():
                    if (
                        isinstance(value, int | float)
                        and "stderr" not in m
                        and m not in ("n", "tasks", "excluded")
                        and (not metric or m == metric)
                    ):
                        rows.append(
                            {
                                "task": g,
                                "metric": m,
                                "model": model,
                                "value": float(value),
                                "report": v.ref,
                                "n": agg.get("n"),
                            }
                        )
    lower_better = ("perplexity", "bits_per_byte", "contaminated_fraction")
    rows.sort(
        key=lambda r: (
            r["task"],
            r["metric"],
            r["value"] if any(x in r["metric"] for x in lower_better) else -r["value"],
        )
    )
    return rows
